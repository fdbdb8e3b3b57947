//! containerd drives netpath-cni as a Kubernetes node runs it (issue 25):
//! its CRI plugin, called through the CRI gRPC API as the kubelet calls it,
//! runs pod sandboxes on a netpath network (CNI_ARGS with the pod's
//! namespace, name and UID); containerd's own client, `ctr run --cni`,
//! runs containers on it; and a containerd killed in the middle of a
//! sandbox's network set-up and started again leaves nothing of the dead
//! attempt once the pod is gone, whether or not the dead sandbox is stopped
//! before the pod runs again. Each test has a containerd of its own on
//! a host namespace of its own (see common/containerd.rs): nothing is
//! pulled, and nothing of the machine's containerd, CNI directories or
//! network is used or touched.

mod common;

use std::time::Duration;

use common::{
    containerd::{Containerd, Options},
    outside,
    runtime::{Endpoint, address_in, assert_fast_path, text, wait_for_file},
    within,
};
use netpath::model::naming::cni_host_veth;
use serde_json::{Value, json};

/// Two pods (RunPodSandbox, as the kubelet asks) on a netpath-cni network
/// reach each other over the fast path; netpath records each pod's
/// namespace, name and UID from containerd's CNI_ARGS, and a third pod's
/// rate limits from its `kubernetes.io/*-bandwidth` annotations (the
/// `bandwidth` capability: `tests/cni.rs` measures them); StopPodSandbox
/// and RemovePodSandbox (DEL) leave no veth, bridge, pin, record, address
/// or namespace.
#[test]
fn cri_pods_talk_over_the_fast_path_and_leave_nothing() {
    let options = Options {
        subnet: "10.189.0.0/24",
        hold: false,
    };
    let containerd = Containerd::start(options);
    let network = containerd.cni_network(&options);
    let a = containerd.run_pod(&containerd.pod_spec("a"), 0);
    let b = containerd.run_pod(&containerd.pod_spec("b"), 0);
    containerd.assert_recorded(&a);
    containerd.assert_recorded(&b);
    assert_fast_path(
        &containerd.host,
        &containerd.network,
        &Endpoint {
            name: &a.spec.name,
            netns: &a.netns,
            ip: &a.ip,
        },
        &Endpoint {
            name: &b.spec.name,
            netns: &b.netns,
            ip: &b.ip,
        },
    );

    let mut limited = containerd.pod_spec("c");
    limited.annotations.extend([
        (
            "kubernetes.io/ingress-bandwidth".to_owned(),
            "10M".to_owned(),
        ),
        (
            "kubernetes.io/egress-bandwidth".to_owned(),
            "20M".to_owned(),
        ),
    ]);
    let c = containerd.run_pod(&limited, 0);
    let status: Value = serde_json::from_str(&containerd.host.netpath_ok(&[
        "status",
        "--name",
        &containerd.network,
        "--json",
    ]))
    .unwrap();
    let rates: Vec<(Value, Value)> = status["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["bandwidth"]["ingressRate"].clone(),
                p["bandwidth"]["egressRate"].clone(),
            )
        })
        .collect();
    assert_eq!(
        rates,
        [
            (Value::Null, Value::Null),
            (Value::Null, Value::Null),
            (json!(10_000_000), json!(20_000_000))
        ],
        "the annotations of pod c are not its rates: {status}"
    );

    containerd.remove_pod(&a.id);
    containerd.remove_pod(&b.id);
    containerd.remove_pod(&c.id);
    containerd.assert_nothing_left(&network, &[&a, &b, &c]);
}

/// `ctr run --rm --cni` in the foreground on the netpath conflist (ctr reads
/// /etc/cni/net.d and /opt/cni/bin: the test's, in a mount namespace of
/// ctr's own): two containers talk over the fast path, and when their
/// tasks end ctr's DEL leaves nothing.
#[test]
fn ctr_run_cni_containers_talk_over_the_fast_path_and_leave_nothing() {
    let options = Options {
        subnet: "10.190.0.0/24",
        hold: false,
    };
    let containerd = Containerd::start(options);
    let network = containerd.cni_network(&options);
    let ids = ["a", "b"];
    let mut runs: Vec<common::KillOnDrop> = ids
        .iter()
        .map(|id| containerd.spawn_ctr_run(id, &["/bin/sleep", "600"]))
        .collect();
    let mut names = Vec::new();
    let mut ips = Vec::new();
    for (id, run) in ids.iter().zip(&mut runs) {
        let pid = containerd.ctr_task_pid(id);
        // ctr calls the CNI ADD after it wrote the pid, before it starts
        // the task: the address comes a moment later.
        let name = containerd.attach_netns(&format!("{}-{id}", containerd.network), pid);
        let mut ip = None;
        within(
            Duration::from_secs(30),
            &format!("ctr's CNI ADD to address container {id}"),
            || {
                if let Ok(Some(status)) = run.try_wait() {
                    panic!("ctr run {id} exited ({status}) before its container was addressed");
                }
                ip = address_in(&name, "eth0");
                ip.is_some()
            },
        );
        names.push(name);
        ips.push(ip.unwrap());
    }
    // ctr names the CNI container ID NAMESPACE-ID; no Kubernetes pod. The
    // ADD records the attachment last, after it addressed the container.
    for id in ids {
        let full = format!("{}-{id}", containerd.ctr_namespace());
        let mut attachment = None;
        within(
            Duration::from_secs(10),
            &format!("netpath recording the attachment of {full}"),
            || {
                attachment = containerd
                    .record()
                    .attachments
                    .into_iter()
                    .find(|a| a.container_id == full);
                attachment.is_some()
            },
        );
        let a = attachment.expect("found within the deadline");
        assert_eq!(a.pod, None, "{full}: a pod name without K8S_POD_NAME");
    }
    assert_fast_path(
        &containerd.host,
        &containerd.network,
        &Endpoint {
            name: "ctr container a",
            netns: &names[0],
            ip: &ips[0],
        },
        &Endpoint {
            name: "ctr container b",
            netns: &names[1],
            ip: &ips[1],
        },
    );

    for ((id, name), run) in ids.iter().zip(&names).zip(runs) {
        // The name the test gave would keep the namespace (and so the
        // container's veth end) alive after the task.
        containerd.detach_netns(name);
        let mut kill = containerd.ctr(containerd.ctr_namespace());
        kill.args(["tasks", "kill", "--signal", "SIGKILL", id]);
        common::runtime::ok_within(kill, Duration::from_secs(30), "ctr tasks kill");
        // ctr run exits with the task's status (137): it ran its DEL and
        // removed the container (--rm) first.
        let out = common::output_within(run, Duration::from_secs(60), "ctr run to end");
        println!("ctr run {id}: {} {}", out.status, text(&out.stderr));
    }
    let mut list = containerd.ctr(containerd.ctr_namespace());
    list.args(["containers", "list", "--quiet"]);
    let left = common::runtime::ok_within(list, Duration::from_secs(30), "ctr containers list");
    assert!(left.is_empty(), "ctr run --rm left containers: {left}");
    containerd.assert_nothing_left(&network, &[]);
    for name in &names {
        assert!(
            !netpath::host::netns::path(name).exists(),
            "namespace {name} left"
        );
    }
}

/// containerd SIGKILLed in the middle of RunPodSandbox, while the CNI ADD
/// of the sandbox's network runs (netpath-cni's part done, a chained step
/// holding), then started again: the kubelet's retry succeeds, the dead
/// attempt's veth, attachment and address are gone by the time the new
/// sandbox is up, and removing the pod leaves nothing.
///
/// containerd 1.6.20 knows the half-made sandbox again after the restart
/// (NOTREADY: it records the sandbox container, with its namespace, before
/// the network's set-up), so the kubelet stops it before it runs the pod
/// again (attempt + 1), and that StopPodSandbox DELs it.
#[test]
fn a_runtime_killed_in_the_middle_of_run_pod_sandbox_leaves_nothing() {
    killed_in_run_pod_sandbox(Retry::StopFirst, "10.191.0.0/24");
}

/// The same, where the dead sandbox is not stopped before the pod runs
/// again: as with a runtime that forgets a sandbox it was setting up (one
/// that persists the sandbox only after its network is up) and so never
/// DELs it. The ADD of the pod's new sandbox forgets the dead attempt's
/// attachment (the same K8S_POD_UID, another sandbox ID: netpath-cni's
/// `forget_replaced`): its veth lives on in a namespace containerd keeps
/// mounted, so it is not stale.
#[test]
fn a_sandbox_its_runtime_never_stops_is_replaced_by_the_pods_next() {
    killed_in_run_pod_sandbox(Retry::RunFirst, "10.194.0.0/24");
}

/// What the test does with the dead attempt after the restart.
#[derive(PartialEq)]
enum Retry {
    /// As the kubelet: stop (and remove) it, then run the pod again.
    StopFirst,
    /// Run the pod again, and remove the dead sandbox only afterwards.
    RunFirst,
}

fn killed_in_run_pod_sandbox(retry: Retry, subnet: &'static str) {
    let options = Options { subnet, hold: true };
    let mut containerd = Containerd::start(options);
    let network = containerd.cni_network(&options);
    let spec = containerd.pod_spec("a");
    let call = containerd.spawn_run_pod(&spec);
    let held = wait_for_file(
        &containerd.held_file(),
        Duration::from_secs(60),
        "the sandbox's CNI ADD to reach the hold step",
    );
    let (dead_id, dead_netns) = held
        .trim()
        .split_once(' ')
        .unwrap_or_else(|| panic!("the hold step wrote {held:?}"));
    let dead_id = dead_id.to_owned();
    let dead_netns = containerd.learn_netns(std::path::Path::new(dead_netns));
    let dead_veth = cni_host_veth(&dead_id, "eth0");
    assert!(
        containerd.host.link_names().contains(&dead_veth),
        "netpath-cni's ADD of {dead_id} is done, yet no host veth {dead_veth}"
    );
    assert!(
        containerd
            .record()
            .attachments
            .iter()
            .any(|a| a.container_id == dead_id),
        "netpath-cni's ADD of {dead_id} is done, yet unrecorded"
    );

    containerd.kill_daemon();
    // Lets the hold step go: its result goes to nobody.
    std::fs::remove_file(containerd.held_file()).unwrap();
    let failed = containerd.join_run_pod(call, Duration::from_secs(30));
    assert!(
        failed.is_err(),
        "RunPodSandbox succeeded though containerd was killed in it: {failed:?}"
    );
    containerd.restart();

    // The kubelet's retry: NOTREADY sandboxes of the pod are stopped (and
    // here removed at once, as its GC would later), then the pod runs
    // again with the next attempt (the same attempt if none is known).
    let known = containerd.sandboxes_of(&spec);
    println!("after the restart, containerd knows these sandboxes of the pod: {known:?}");
    let mut attempt = 0;
    for (id, seen, ready) in &known {
        assert!(!ready, "sandbox {id} of the dead attempt is ready");
        if retry == Retry::StopFirst {
            containerd.remove_pod(id);
        }
        attempt = attempt.max(seen + 1);
    }
    let pod = containerd.run_pod(&spec, attempt);
    containerd.assert_recorded(&pod);
    let record = containerd.record();
    let mine: Vec<&str> = record
        .attachments
        .iter()
        .filter(|a| a.pod_uid.as_deref() == Some(spec.uid.as_str()))
        .map(|a| a.container_id.as_str())
        .collect();
    assert_eq!(
        mine,
        [pod.id.as_str()],
        "netpath's attachments of the pod after the retry (the dead attempt was {dead_id})"
    );
    assert!(
        !containerd.host.link_names().contains(&dead_veth),
        "the dead attempt's host veth {dead_veth} is still there"
    );
    assert_eq!(
        record.attachments.len(),
        1,
        "attachments other than the pod's: {:?}",
        record.attachments
    );

    containerd.remove_pod(&pod.id);
    if retry == Retry::RunFirst {
        for (id, _, _) in &known {
            containerd.remove_pod(id);
        }
    }
    containerd.assert_nothing_left(&network, &[&pod]);
    if netpath::host::netns::path(&dead_netns).exists() {
        // containerd's own leak when it forgot the sandbox: the namespace
        // of the dead attempt stays mounted (empty: netpath took its veth).
        let out = outside("ip", &["-n", &dead_netns, "-o", "link", "show"]);
        println!(
            "containerd left the dead attempt's namespace {dead_netns}: {}",
            text(&out.stdout)
        );
        assert!(
            !text(&out.stdout).contains("eth0"),
            "the dead attempt's eth0 is still in {dead_netns}"
        );
    }
}
