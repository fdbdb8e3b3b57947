//! Helpers for the root-only integration tests: unique names, running the
//! netpath binary and `ip`, and a guard that tears a topology down even when
//! the test fails.
#![allow(dead_code)] // each test binary uses a different subset

use std::{
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

/// Fails (never skips) when not root: these tests are the product's proof.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, BPF): run `sudo -E cargo xtask test`"
    );
}

/// A fixed wait of a test, scaled by NETPATH_TEST_SLOW (a whole number,
/// default 1) where everything runs slower: the kernel matrix sets it, as
/// its guests run under qemu without KVM.
pub fn patience(wait: std::time::Duration) -> std::time::Duration {
    let factor = std::env::var("NETPATH_TEST_SLOW").ok().and_then(|v| v.parse::<u32>().ok()).unwrap_or(1);
    wait * factor.max(1)
}

/// A topology name unique to this process and call, short enough that
/// `NAME-cNN` fits in 15 bytes.
pub fn unique_name(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id() % 1000;
    format!("{}{pid}{n}", &tag[..tag.len().min(3)])
}

pub fn netpath(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_netpath"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running netpath")
}

/// Runs netpath and asserts success, returning stdout.
pub fn netpath_ok(args: &[&str]) -> String {
    let out = netpath(args);
    assert!(
        out.status.success(),
        "netpath {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sh(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| panic!("running {program}: {e}"))
}

pub fn in_ns(ns: &str, args: &[&str]) -> Output {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    sh("ip", &full)
}

/// Stops a container's unprompted traffic (IPv6 router solicitations, MLD
/// and ND), so it speaks only when spoken to: tests of learning and ageing
/// need that.
pub fn quiet(ns: &str) {
    assert!(in_ns(ns, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]).status.success());
}

pub fn ping(ns: &str, ip: &str) -> bool {
    in_ns(ns, &["ping", "-c", "1", "-W", "2", "-q", ip]).status.success()
}

/// Tears its topology down when dropped, so a failing test leaves nothing.
pub struct Topology {
    pub name: String,
}

impl Topology {
    pub fn up(tag: &str, extra: &[&str]) -> Self {
        require_root();
        let name = unique_name(tag);
        let topology = Topology { name: name.clone() };
        let mut args = vec!["up", "--name", &name];
        args.extend_from_slice(extra);
        netpath_ok(&args);
        topology
    }

    pub fn ns(&self, container: &str) -> String {
        format!("{}-{container}", self.name)
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&netpath_ok(&["status", "--name", &self.name, "--json"])).expect("status JSON")
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = netpath(&["down", "--name", &self.name]);
    }
}

/// Names of links, namespaces, nftables tables and bpffs pins that carry
/// `prefix`: what must be empty after a failed or torn-down topology.
pub fn leftovers(prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    let links = String::from_utf8_lossy(&sh("ip", &["-o", "link", "show"]).stdout).into_owned();
    for line in links.lines() {
        if let Some(name) = line.split(": ").nth(1) {
            let name = name.split('@').next().unwrap_or(name);
            if name.starts_with(&format!("{prefix}-")) {
                found.push(format!("link {name}"));
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&format!("{prefix}-")) {
                found.push(format!("netns {n}"));
            }
        }
    }
    let tables = String::from_utf8_lossy(&sh("nft", &["list", "tables"]).stdout).into_owned();
    if tables.contains(&format!("netpath-{prefix}\n")) || tables.ends_with(&format!("netpath-{prefix}")) {
        found.push(format!("nft table netpath-{prefix}"));
    }
    if std::path::Path::new(&format!("/sys/fs/bpf/netpath/{prefix}")).exists() {
        found.push(format!("pins /sys/fs/bpf/netpath/{prefix}"));
    }
    for file in [format!("{prefix}.json"), format!("{prefix}.lock"), format!("{prefix}.run.lock")] {
        if std::path::Path::new("/run/netpath").join(&file).exists() {
            found.push(format!("/run/netpath/{file}"));
        }
    }
    found
}

/// Sends raw Ethernet frames out of `ifname` inside namespace `ns` through
/// an AF_PACKET socket; returns how many the kernel accepted (it refuses
/// frames shorter than an Ethernet header).
pub fn send_raw_frames(ns: &str, ifname: &str, frames: &[Vec<u8>]) -> usize {
    use std::os::fd::AsRawFd;
    let ns_file = std::fs::File::open(format!("/run/netns/{ns}")).expect("namespace");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(&ns_file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                let index = nix::net::if_::if_nametoindex(ifname).expect("interface");
                // SAFETY: plain socket(2) call.
                let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
                assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
                // SAFETY: fd is a socket we just opened and now own.
                let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                // SAFETY: sockaddr_ll is plain data; zeroed is a valid start.
                let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                addr.sll_family = libc::AF_PACKET as u16;
                addr.sll_ifindex = index as i32;
                addr.sll_halen = 6;
                let mut sent = 0;
                for frame in frames {
                    // SAFETY: frame and addr are valid for the lengths given.
                    let n = unsafe {
                        libc::sendto(
                            sock.as_raw_fd(),
                            frame.as_ptr().cast(),
                            frame.len(),
                            0,
                            (&addr as *const libc::sockaddr_ll).cast(),
                            std::mem::size_of::<libc::sockaddr_ll>() as u32,
                        )
                    };
                    if n >= 0 {
                        sent += 1;
                    }
                }
                sent
            })
            .join()
            .expect("sender thread")
    })
}

/// A frame from `src` to `dst` with the given EtherType and payload.
pub fn frame(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub fn parse_mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s.split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect();
    v.try_into().unwrap()
}

/// The programs' counters per port (`netpath stats --json`): port -> packets.
pub fn program_counters(topology: &str) -> Vec<(String, serde_json::Value)> {
    let doc: serde_json::Value = serde_json::from_str(&netpath_ok(&["stats", "--name", topology, "--json"])).unwrap();
    doc.as_array().unwrap().iter().map(|p| (p["port"].as_str().unwrap().to_owned(), p["packets"].clone())).collect()
}

/// Frames a port's program decided on: every verdict (redirected, passed,
/// dropped), not the side counters (learned, bad or spoofed sources).
pub fn verdicts(packets: &serde_json::Value) -> u64 {
    use netpath_common::Counter;
    std::iter::once(Counter::Redirected)
        .chain(Counter::PASSED)
        .chain([Counter::DropRunt])
        .map(|c| packets[c.name()].as_u64().unwrap())
        .sum()
}

/// A per-port counter of the programs (`netpath stats --json`).
pub fn counter(topology: &str, port: &str, name: &str) -> u64 {
    program_counters(topology)
        .into_iter()
        .find(|(p, _)| p == port)
        .map(|(_, packets)| packets[name].as_u64().unwrap())
        .unwrap_or(0)
}

/// rx and tx packets of a link, as the kernel counts them.
pub fn link_packets(ns: Option<&str>, dev: &str) -> (u64, u64) {
    let mut args = vec![];
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    args.extend(["-s", "-j", "link", "show", "dev", dev]);
    let doc: serde_json::Value = serde_json::from_slice(&sh("ip", &args).stdout).expect("ip -s -j link");
    let stats = &doc[0]["stats64"];
    (stats["rx"]["packets"].as_u64().unwrap(), stats["tx"]["packets"].as_u64().unwrap())
}

/// `netpath run` in the background, on a topology of its own; killed and
/// torn down when dropped.
pub struct Running {
    pub child: std::process::Child,
    pub topology: Topology,
}

impl Running {
    /// Starts `netpath run --name <unique> ARGS` and waits until it is up.
    pub fn start(tag: &str, args: &[&str]) -> Self {
        require_root();
        let name = unique_name(tag);
        let child = Command::new(env!("CARGO_BIN_EXE_netpath"))
            .args(["run", "--name", &name])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting netpath run");
        let running = Running { child, topology: Topology { name: name.clone() } };
        for _ in 0..100 {
            if netpath(&["status", "--name", &name]).status.success() {
                return running;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("netpath run never brought {name} up");
    }

    /// Ctrl-C, as a user would; true if `run` then exited successfully.
    pub fn interrupt(&mut self) -> bool {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGINT)
            .expect("SIGINT");
        self.child.wait().expect("waiting for netpath run").success()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An nftables counter in the bridge family's forward hook: it only moves
/// for frames the bridge forwards, whatever the BPF programs claim.
pub struct BridgeForwardCounter {
    table: String,
}

impl BridgeForwardCounter {
    /// Counts forwarded frames that match `rule` (nft match expressions).
    pub fn new(tag: &str, rule: &str) -> Self {
        let table = format!("nptest_{tag}");
        let script = format!(
            "table bridge {table} {{\n chain forward_count {{\n  type filter hook forward priority 0;\n  {rule} counter\n }}\n}}\n"
        );
        let mut nft = Command::new("nft").args(["-f", "-"]).stdin(std::process::Stdio::piped()).spawn().unwrap();
        std::io::Write::write_all(nft.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
        drop(nft.stdin.take());
        assert!(nft.wait().unwrap().success(), "adding the nftables counter");
        Self { table }
    }

    /// Counts every frame forwarded from a port of the topology.
    pub fn from_ports_of(topology: &str) -> Self {
        Self::new(topology, &format!("iifname \"{topology}-*\""))
    }

    pub fn packets(&self) -> u64 {
        let out = sh("nft", &["-j", "list", "table", "bridge", &self.table]);
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("nft -j");
        doc["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o.get("rule"))
            .flat_map(|r| r["expr"].as_array().unwrap().iter())
            .filter_map(|e| e.get("counter"))
            .map(|c| c["packets"].as_u64().unwrap())
            .sum()
    }
}

impl Drop for BridgeForwardCounter {
    fn drop(&mut self) {
        sh("nft", &["delete", "table", "bridge", &self.table]);
    }
}
