//! Kubernetes NetworkPolicy, enforced by the programs: a case table in the
//! spirit of Kubernetes' network policy e2e suite, each case checking that
//! what is allowed connects and what is denied does not (TCP, UDP, ICMP),
//! in tc, xdp and bridge mode (where the policy's programs run alone);
//! what a mode switch keeps; frames the host routes to a container.
//!
//! The topology: in namespace default, `web` (app=web), `cli`
//! (role=client) and `oth` (no labels); in namespace prod, `prd`
//! (role=client).

mod common;

use std::net::IpAddr;

use common::{
    TempDir, Topology,
    probe::{Probe, Servers, answered_all},
};

const SUBNET: &str = "10.91.0.0/24";
const WEB: &str = "10.91.0.10";
const CLI: &str = "10.91.0.11";
const OTH: &str = "10.91.0.12";

const CONTAINERS: &str = r#"
[[container]]
name = "web"
ip = "10.91.0.10"
labels = { app = "web" }
[[container]]
name = "cli"
ip = "10.91.0.11"
labels = { role = "client" }
[[container]]
name = "oth"
ip = "10.91.0.12"
[[container]]
name = "prd"
ip = "10.91.0.13"
namespace = "prod"
labels = { role = "client" }
"#;

/// One case: the policies in force, then probes (from, to, what, whether
/// it must be answered).
struct Case {
    name: &'static str,
    policies: &'static str,
    probes: &'static [(&'static str, &'static str, Probe, bool)],
}

const CASES: &[Case] = &[
    Case {
        name: "no policy: everything connects",
        policies: "",
        probes: &[
            ("cli", WEB, Probe::Tcp(80), true),
            ("oth", WEB, Probe::Udp(53), true),
            ("prd", WEB, Probe::Icmp, true),
        ],
    },
    Case {
        name: "deny all ingress to web; web still reaches out, and its replies come back",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-deny-all}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
"#,
        probes: &[
            ("cli", WEB, Probe::Tcp(80), false),
            ("oth", WEB, Probe::Udp(53), false),
            ("cli", WEB, Probe::Icmp, false),
            ("web", CLI, Probe::Tcp(80), true),
            ("web", CLI, Probe::Udp(53), true),
            ("web", OTH, Probe::Icmp, true),
            ("cli", OTH, Probe::Tcp(80), true),
        ],
    },
    Case {
        name: "allow from a label, in the policy's namespace only",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-clients}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - podSelector: {matchLabels: {role: client}}
"#,
        probes: &[
            ("cli", WEB, Probe::Tcp(80), true),
            ("cli", WEB, Probe::Icmp, true),
            ("oth", WEB, Probe::Tcp(80), false),
            ("prd", WEB, Probe::Tcp(80), false),
        ],
    },
    Case {
        name: "allow a port and a port range (endPort)",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-ports}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - ports:
    - {protocol: TCP, port: 80}
    - {protocol: TCP, port: 9000, endPort: 9100}
"#,
        probes: &[
            ("oth", WEB, Probe::Tcp(80), true),
            ("oth", WEB, Probe::Tcp(81), false),
            ("oth", WEB, Probe::Tcp(9000), true),
            ("oth", WEB, Probe::Tcp(9100), true),
            ("oth", WEB, Probe::Tcp(8080), false),
            ("oth", WEB, Probe::Udp(53), false),
            ("oth", WEB, Probe::Icmp, false),
        ],
    },
    Case {
        name: "ipBlock with except",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-block}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - ipBlock: {cidr: 10.91.0.0/24, except: [10.91.0.11/32]}
"#,
        probes: &[
            ("oth", WEB, Probe::Tcp(80), true),
            ("prd", WEB, Probe::Udp(53), true),
            ("cli", WEB, Probe::Tcp(80), false),
            ("cli", WEB, Probe::Icmp, false),
        ],
    },
    Case {
        name: "egress denied but UDP 53 (in the policy's namespace)",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-dns-only}
spec:
  podSelector: {matchLabels: {role: client}}
  policyTypes: [Egress]
  egress:
  - ports:
    - {protocol: UDP, port: 53}
"#,
        probes: &[
            ("cli", WEB, Probe::Udp(53), true),
            ("cli", WEB, Probe::Udp(5353), false),
            ("cli", WEB, Probe::Tcp(80), false),
            ("cli", WEB, Probe::Icmp, false),
            // A policy selects pods of its own namespace only.
            ("prd", OTH, Probe::Tcp(80), true),
            ("oth", CLI, Probe::Tcp(80), true),
        ],
    },
    Case {
        name: "namespace selector",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: prod}}
"#,
        probes: &[
            ("prd", WEB, Probe::Tcp(80), true),
            ("cli", WEB, Probe::Tcp(80), false),
            ("oth", WEB, Probe::Udp(53), false),
        ],
    },
    Case {
        name: "two policies add up",
        policies: r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-80-from-clients}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - podSelector: {matchLabels: {role: client}}
    ports:
    - {port: 80}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-81-from-all}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - ports:
    - {port: 81}
"#,
        probes: &[
            ("cli", WEB, Probe::Tcp(80), true),
            ("cli", WEB, Probe::Tcp(81), true),
            ("oth", WEB, Probe::Tcp(80), false),
            ("oth", WEB, Probe::Tcp(81), true),
        ],
    },
];

/// Every case of the table in `mode`, on one topology: each case's
/// policies replace the last's, and deleting them all restores access.
fn case_table(mode: &str) {
    let dir = TempDir::new("pol");
    let config = dir.0.join("topology.toml");
    std::fs::write(&config, CONTAINERS).unwrap();
    let topology = Topology::up(
        "pol",
        &[
            "--mode",
            mode,
            "--subnet",
            SUBNET,
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let _servers: Vec<Servers> = ["web", "cli", "oth", "prd"]
        .iter()
        .map(|c| Servers::start(&topology.ns(c), &[80, 81, 8080, 9000, 9100], &[53, 5353]))
        .collect();
    let file = dir.0.join("policies.yaml");
    let mut failures = Vec::new();
    for case in CASES {
        topology.netpath_ok(&["policy", "delete", "--name", &topology.name, "--all"]);
        if !case.policies.is_empty() {
            std::fs::write(&file, case.policies).unwrap();
            topology.netpath_ok(&[
                "policy",
                "apply",
                "--name",
                &topology.name,
                "-f",
                file.to_str().unwrap(),
            ]);
        }
        let probes: Vec<(String, IpAddr, Probe)> = case
            .probes
            .iter()
            .map(|(from, to, probe, _)| (topology.ns(from), to.parse().unwrap(), *probe))
            .collect();
        let answers = answered_all(&probes);
        for ((from, to, probe, want), got) in case.probes.iter().zip(answers) {
            if got != *want {
                failures.push(format!(
                    "{mode}, {}: {probe:?} from {from} to {to}: {} (expected {})",
                    case.name,
                    verdict(got),
                    verdict(*want)
                ));
            }
        }
        // (Counted before the next case: in bridge mode, deleting every
        // policy takes the programs, and their counters, away.)
        if case.name.starts_with("egress")
            && topology.counter(&topology.ns("cli"), "policy_egress_denied") == 0
        {
            failures.push(format!(
                "{mode}, {}: cli counted no policy_egress_denied",
                case.name
            ));
        }
    }
    // The denials were the programs' (counted on the protected ports),
    // and allowed traffic still took the fast path.
    for (port, counter) in [
        ("web", "policy_ingress_denied"),
        ("web", "policy_ingress_allowed"),
    ] {
        if topology.counter(&topology.ns(port), counter) == 0 {
            failures.push(format!("{mode}: {port} counted no {counter}"));
        }
    }
    if mode != "bridge" && topology.counter(&topology.ns("oth"), "redirected") == 0 {
        failures.push(format!("{mode}: nothing took the fast path"));
    }

    // Deleting the last policies restores access at once (in bridge mode,
    // the programs go with them).
    topology.netpath_ok(&["policy", "delete", "--name", &topology.name, "--all"]);
    let probes = [(topology.ns("oth"), WEB.parse().unwrap(), Probe::Tcp(81))];
    if answered_all(&probes) != [true] {
        failures.push(format!(
            "{mode}: oth cannot reach web:81 once every policy is deleted"
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn verdict(answered: bool) -> &'static str {
    if answered { "answered" } else { "not answered" }
}

#[test]
fn the_policy_case_table_holds_in_tc_mode() {
    case_table("tc");
}

/// On netkit pairs a redirected frame passes the destination's primary
/// device, whose egress the policy's program holds too: judged once there
/// (see `TC_INDEX_JUDGED`), the bridge's frames judged as in tc mode.
#[test]
#[ignore = "netkit mode needs a kernel with netkit (Linux 6.7+, CONFIG_NETKIT): the 6.12 guest of the kernel matrix runs it"]
fn the_policy_case_table_holds_in_netkit_mode() {
    case_table("netkit");
}

#[test]
fn the_policy_case_table_holds_in_xdp_mode() {
    case_table("xdp");
}

#[test]
fn the_policy_case_table_holds_in_bridge_mode() {
    case_table("bridge");
}

/// The topology of the case table, in `mode`, with `policies` applied.
fn with_policies(tag: &str, mode: &str, policies: &str, dir: &TempDir) -> Topology {
    let config = dir.0.join("topology.toml");
    std::fs::write(&config, CONTAINERS).unwrap();
    let topology = Topology::up(
        tag,
        &[
            "--mode",
            mode,
            "--subnet",
            SUBNET,
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let file = dir.0.join("policies.yaml");
    std::fs::write(&file, policies).unwrap();
    topology.netpath_ok(&[
        "policy",
        "apply",
        "--name",
        &topology.name,
        "-f",
        file.to_str().unwrap(),
    ]);
    topology
}

/// A mode switch never changes what is allowed: the policy holds in every
/// mode the topology passes through, bridge mode included (where its
/// programs stay when the forwarding ones go).
#[test]
fn a_mode_switch_keeps_the_policy() {
    let dir = TempDir::new("pom");
    let topology = with_policies("pom", "tc", CASES[2].policies, &dir);
    let _servers = Servers::start(&topology.ns("web"), &[80], &[]);
    let probes = [
        (topology.ns("cli"), WEB.parse().unwrap(), Probe::Tcp(80)),
        (topology.ns("oth"), WEB.parse().unwrap(), Probe::Tcp(80)),
    ];
    for mode in ["tc", "bridge", "xdp", "bridge", "tc"] {
        topology.netpath_ok(&["mode", "--name", &topology.name, mode]);
        assert_eq!(answered_all(&probes), [true, false], "in mode {mode}");
    }
}

/// Frames the host routes to a container (here from another topology's
/// subnet, the host forwarding) reach it through the bridge, where no
/// forwarding program sees them: the policy's program on the port's
/// egress judges them.
#[test]
fn frames_the_host_routes_meet_the_policy() {
    let dir = TempDir::new("por");
    let topology = with_policies("por", "tc", CASES[1].policies, &dir);
    let elsewhere = Topology::up_on(
        &topology.host,
        "pox",
        &["--subnet", "10.92.0.0/24", "--containers", "1"],
    );
    let forwarding = topology.sh("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
    assert!(forwarding.status.success(), "{forwarding:?}");
    let _servers = Servers::start(&topology.ns("web"), &[80], &[]);
    let routed = [(elsewhere.ns("c0"), WEB.parse().unwrap(), Probe::Tcp(80))];
    assert_eq!(
        answered_all(&routed),
        [false],
        "a routed flow got past web's deny-all"
    );
    // Allowed by an ipBlock, the same route connects: the denial was the
    // policy's, not the route's.
    let file = dir.0.join("routed.yaml");
    std::fs::write(
        &file,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: from-elsewhere}\n\
         spec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.92.0.0/24}\n",
    )
    .unwrap();
    topology.netpath_ok(&[
        "policy",
        "apply",
        "--name",
        &topology.name,
        "-f",
        file.to_str().unwrap(),
    ]);
    assert_eq!(
        answered_all(&routed),
        [true],
        "the routed flow, allowed, did not connect"
    );
}

/// An invalid document refuses the whole file: nothing of it is applied,
/// and the error names the document and the field.
#[test]
fn an_invalid_policy_file_is_refused_whole() {
    let topology = Topology::up(
        "poi",
        &["--mode", "tc", "--subnet", SUBNET, "--containers", "2"],
    );
    let dir = TempDir::new("poi");
    let file = dir.0.join("bad.yaml");
    std::fs::write(
        &file,
        format!(
            "{}---\n{}",
            CASES[1].policies,
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad}\n\
             spec:\n  podSelector: {}\n  ingress:\n  - ports:\n    - {port: 80, endPort: 70}\n"
        ),
    )
    .unwrap();
    let out = topology.netpath(&[
        "policy",
        "apply",
        "--name",
        &topology.name,
        "-f",
        file.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("document 2") && err.contains("endPort"),
        "{err}"
    );
    let listed = topology.netpath_ok(&["policy", "list", "--name", &topology.name]);
    assert!(listed.contains("No network policies"), "{listed}");
}

/// `trace --denied` shows the frames a policy dropped, and only those.
#[test]
fn denied_flows_show_in_trace() {
    let dir = TempDir::new("pot");
    let topology = with_policies("pot", "tc", CASES[1].policies, &dir);
    let _servers = Servers::start(&topology.ns("web"), &[80], &[]);
    let filter = format!("ip {WEB}");
    let tracer = topology
        .netpath_command()
        .args([
            "trace",
            "--name",
            &topology.name,
            "--denied",
            "--count",
            "1",
        ])
        .args(["--filter", &filter])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting netpath trace");
    std::thread::sleep(common::patience(std::time::Duration::from_millis(500)));
    // Allowed first (web's egress, and its replies), then denied.
    let probes = [
        (topology.ns("web"), CLI.parse().unwrap(), Probe::Icmp),
        (topology.ns("cli"), WEB.parse().unwrap(), Probe::Tcp(80)),
    ];
    assert_eq!(answered_all(&probes[..1]), [true]);
    assert_eq!(answered_all(&probes[1..]), [false]);
    let traced = common::output_within(
        common::KillOnDrop(tracer),
        std::time::Duration::from_secs(10),
        "trace --denied of one denied connect",
    );
    let text = String::from_utf8_lossy(&traced.stdout);
    assert!(
        traced.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&traced.stderr)
    );
    let line = text.lines().next().unwrap_or_default();
    assert!(
        line.contains(&format!("{} > denied", topology.ns("cli")))
            && line.contains(&format!("{CLI} > {WEB} TCP")),
        "the first line traced is not the denied connect: {text}"
    );
}

/// A policy record lost while the maps enforce it fails closed: adopting
/// the topology refuses to switch the policy off, and the policy holds.
#[test]
fn a_lost_policy_record_fails_closed() {
    let dir = TempDir::new("plr");
    let topology = with_policies("plr", "tc", CASES[1].policies, &dir);
    let _servers = Servers::start(&topology.ns("web"), &[80], &[]);
    let record = format!("/run/netpath/policy/{}.json", topology.name);
    std::fs::remove_file(&record).expect("removing the policy record");
    let config = dir.0.join("topology.toml");
    let out = topology.netpath(&[
        "up",
        "--name",
        &topology.name,
        "--mode",
        "tc",
        "--subnet",
        SUBNET,
        "--config",
        config.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("refusing to switch them off"),
        "adopting with the record lost: {err}"
    );
    let denied = [(topology.ns("cli"), WEB.parse().unwrap(), Probe::Tcp(80))];
    assert_eq!(answered_all(&denied), [false], "the policy no longer holds");
    // Deleting the policies on purpose switches them off.
    topology.netpath_ok(&["policy", "delete", "--name", &topology.name, "--all"]);
    assert_eq!(
        answered_all(&denied),
        [true],
        "deleting every policy restored nothing"
    );
}
