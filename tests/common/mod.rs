//! Helpers for the root-only integration tests: a private network namespace
//! that plays the machine ("host") for each test, unique names, running the
//! netpath binary and `ip`, and guards that tear a topology (and then its
//! host) down even when the test fails.
#![allow(dead_code)] // each test binary uses a different subset

pub mod capture;
pub mod cni;
pub mod containerd;
pub mod iperf3;
pub mod packets;
pub mod probe;
pub mod runtime;
pub mod watchdog;

pub use watchdog::{waiting_for, watchdog};

use std::{
    ffi::OsStr,
    fs::File,
    ops::Deref,
    os::unix::process::CommandExt,
    process::{Command, Output},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
};

use anyhow::Context;
use netpath::{
    datapath::object::pin_dir,
    host::{netlink, netns},
    model::naming::nat_table,
    store,
};

/// Fails (never skips) when not root: these tests are the product's proof.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, BPF): run `sudo -E cargo xtask test`"
    );
}

/// Whether the running kernel has netkit devices, asked of the kernel's
/// own symbols rather than of netpath (whose probe the netkit tests check).
pub fn kernel_has_netkit() -> bool {
    std::fs::read_to_string("/proc/kallsyms")
        .expect("reading /proc/kallsyms")
        .lines()
        .any(|line| line.split_whitespace().nth(2) == Some("netkit_xmit"))
}

/// A fixed wait of a test, scaled by NETPATH_TEST_SLOW (a whole number,
/// default 1) where everything runs slower: the kernel matrix sets it, as
/// its guests run under qemu without KVM.
pub fn patience(wait: std::time::Duration) -> std::time::Duration {
    let factor = std::env::var("NETPATH_TEST_SLOW")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(1);
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

/// A network namespace of the test's own that is the "host" netpath runs
/// on: its bridges, host-side veths, nftables tables and sysctls are seen by
/// no other test and never touch the machine's. Containers' namespaces stay
/// global (netpath names them under /run/netns), as do bpffs pins and state
/// files. Dropping the last handle deletes the namespace (after the
/// topologies holding it were torn down: they hold an `Arc` of it). A
/// test still holding its host [`watchdog::TEST_DEADLINE`] after making
/// it aborts the test process, saying what it waited for.
pub struct Host {
    pub name: String,
    _watchdog: watchdog::Watchdog,
}

/// Sysctls a host namespace would otherwise inherit from the machine's,
/// set to what a namespace of a freshly booted kernel has. The thread that
/// writes them has entered the namespace: /proc/sys/net is the writer's.
const KERNEL_DEFAULTS: &[(&str, &str)] = &[
    ("/proc/sys/net/ipv4/ip_forward", "0"),
    ("/proc/sys/net/ipv4/conf/all/rp_filter", "0"),
    ("/proc/sys/net/ipv4/conf/default/rp_filter", "0"),
    ("/proc/sys/net/ipv6/conf/all/forwarding", "0"),
    ("/proc/sys/net/ipv6/conf/default/forwarding", "0"),
];

impl Host {
    pub fn new() -> Arc<Host> {
        Self::with_deadline(watchdog::TEST_DEADLINE)
    }

    /// A host whose test may take `deadline` (scaled by [`patience`])
    /// before its watchdog aborts it.
    pub fn with_deadline(deadline: std::time::Duration) -> Arc<Host> {
        require_root();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "nphost-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let _watchdog = watchdog(&format!("host {name}"), deadline);
        netns::create(&name).unwrap_or_else(|e| panic!("creating host namespace {name}: {e:#}"));
        let host = Host { name, _watchdog }; // deleted again if what follows fails
        // A fresh namespace has `lo` down (the metrics test listens on it).
        // It also inherits the IPv4 settings of the machine's namespace
        // (net.core.devconf_inherit_init_net=0, the default), forwarding and
        // rp_filter included: every Docker or Kubernetes host forwards. Each
        // host starts from the kernel's defaults instead.
        netns::run_in(&host.name, |h| async move {
            for (sysctl, value) in KERNEL_DEFAULTS {
                std::fs::write(sysctl, value).with_context(|| format!("writing {sysctl}"))?;
            }
            let lo = netlink::link_by_name(&h, "lo")
                .await?
                .expect("every namespace has lo");
            netlink::set_up(&h, lo.index).await
        })
        .unwrap_or_else(|e| panic!("setting up host namespace {}: {e:#}", host.name));
        Arc::new(host)
    }

    /// `program` to run inside the host namespace. The child enters only the
    /// network namespace (setns between fork and exec): `ip netns exec` would
    /// also remount /sys and hide the bpffs pins from netpath.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let ns = File::open(netns::path(&self.name)).expect("opening the host namespace");
        let mut cmd = Command::new(program);
        // SAFETY: the hook only makes the setns syscall, which is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
        }
        cmd
    }

    pub fn netpath_command(&self) -> Command {
        let mut cmd = self.command(env!("CARGO_BIN_EXE_netpath"));
        cmd.env("RUST_LOG", "warn");
        cmd
    }

    pub fn netpath(&self, args: &[&str]) -> Output {
        self.netpath_command()
            .args(args)
            .output()
            .expect("running netpath")
    }

    /// `out`, a netpath command about topology `name`, was refused with an
    /// error that says each of `says`, and left nothing of `name` behind.
    #[track_caller]
    pub fn assert_refused(&self, out: &Output, name: &str, says: &[&str]) {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "not refused: {err}");
        for said in says {
            assert!(
                err.contains(said),
                "the refusal does not say {said:?}: {err}"
            );
        }
        assert_eq!(self.leftovers(name), Vec::<String>::new());
    }

    /// A crashed runtime: namespace `ns` goes without anyone telling
    /// netpath; returns once the kernel has taken its veth's host end,
    /// `host_veth`, with it.
    #[track_caller]
    pub fn delete_namespace(&self, ns: &str, host_veth: &str) {
        let deleted = outside("ip", &["netns", "del", ns]);
        assert!(deleted.status.success(), "ip netns del {ns}: {deleted:?}");
        self.wait_link_gone(host_veth);
    }

    /// Waits until the host has no link `dev`: after `ip netns del`, the
    /// kernel dismantles a namespace's devices (and so a veth's host end)
    /// a moment later.
    #[track_caller]
    pub fn wait_link_gone(&self, dev: &str) {
        within(
            std::time::Duration::from_secs(5),
            &format!("link {dev} outlived its namespace"),
            || {
                !self
                    .sh("ip", &["link", "show", "dev", dev])
                    .status
                    .success()
            },
        );
    }

    /// Runs netpath and asserts success, returning stdout.
    pub fn netpath_ok(&self, args: &[&str]) -> String {
        let out = self.netpath(args);
        assert!(
            out.status.success(),
            "netpath {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The row of `netpath list --json` named `name`, if it is listed,
    /// after checking that the `netpath list` table shows the same (other
    /// tests' datapaths are listed too: state under /run/netpath is shared).
    pub fn listed(&self, name: &str) -> Option<serde_json::Value> {
        let doc: serde_json::Value =
            serde_json::from_str(&self.netpath_ok(&["list", "--json"])).expect("list JSON");
        let row = doc
            .as_array()
            .expect("list rows")
            .iter()
            .find(|r| r["name"] == name)
            .cloned();
        let table = self.netpath_ok(&["list"]);
        let line = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name));
        match (&row, line) {
            (None, None) => {}
            (Some(row), Some(line)) => {
                let strings = |key: &str| -> Vec<String> {
                    row[key]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|p| p.as_str().unwrap().to_owned())
                        .collect()
                };
                let ports: Vec<String> = strings("ports")
                    .iter()
                    .zip(strings("containers"))
                    .map(|(port, container)| format!("{port}({container})"))
                    .collect();
                let shown = |key: &str| row[key].as_str().unwrap_or("-").to_owned();
                let expected = [
                    name.to_owned(),
                    shown("kind"),
                    shown("bridge"),
                    shown("mode"),
                    if row["complete"] == true {
                        "up"
                    } else {
                        "half-built"
                    }
                    .to_owned(),
                    ports.len().to_string(),
                    if ports.is_empty() {
                        "-".into()
                    } else {
                        ports.join(",")
                    },
                ];
                let cells: Vec<&str> = line.split_whitespace().collect();
                assert_eq!(
                    cells, expected,
                    "`netpath list` disagrees with --json:\n{table}"
                );
            }
            _ => panic!("`netpath list` and --json disagree about {name}:\n{table}\n{doc}"),
        }
        row
    }

    /// `program` with `args`, run on the host.
    pub fn sh(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"))
    }

    /// The host's links, as `ip -j link show` has them.
    pub fn links(&self) -> Vec<serde_json::Value> {
        let out = self.sh("ip", &["-j", "link", "show"]);
        let links: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("ip -j link show on {}: {e}", self.name));
        links.as_array().cloned().unwrap_or_default()
    }

    /// The names of the host's links.
    pub fn link_names(&self) -> Vec<String> {
        self.links()
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
            .collect()
    }

    /// Runs `work` in this process on a thread inside the host namespace
    /// (e.g. a TCP client of something netpath serves there).
    pub fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        netns::enter_and(&self.name, || Ok(work())).expect("entering the host namespace")
    }

    /// rx and tx packets of a host link, as the kernel counts them.
    pub fn link_packets(&self, dev: &str) -> (u64, u64) {
        parse_link_packets(&self.sh("ip", &["-s", "-j", "link", "show", "dev", dev]))
    }

    /// Names of links and nftables tables on this host, and of namespaces,
    /// bpffs pins and state files (global), that carry `prefix`: what must
    /// be empty after a failed or torn-down topology.
    pub fn leftovers(&self, prefix: &str) -> Vec<String> {
        let mut found = Vec::new();
        let links =
            String::from_utf8_lossy(&self.sh("ip", &["-o", "link", "show"]).stdout).into_owned();
        for line in links.lines() {
            if let Some(name) = line.split(": ").nth(1) {
                let name = name.split('@').next().unwrap_or(name);
                if name.starts_with(&format!("{prefix}-")) {
                    found.push(format!("link {name}"));
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(netns::NETNS_DIR) {
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&format!("{prefix}-")) {
                    found.push(format!("netns {n}"));
                }
            }
        }
        let table = nat_table(prefix);
        let tables =
            String::from_utf8_lossy(&self.sh("nft", &["list", "tables"]).stdout).into_owned();
        if tables
            .lines()
            .any(|l| l.split_whitespace().last() == Some(table.as_str()))
        {
            found.push(format!("nft table {table}"));
        }
        let pins = pin_dir(prefix);
        if pins.exists() {
            found.push(format!("pins {}", pins.display()));
        }
        found.extend(existing([
            store::topology::path(prefix).expect("a valid topology name"),
            lock_path(prefix),
            run_lock_path(prefix),
        ]));
        found
    }
}

/// The words of a command line whose arguments have no spaces: written on
/// one line where a list would take a line per argument.
pub fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// Those of `paths` that exist, for the leftovers a test reports.
pub fn existing(paths: impl IntoIterator<Item = std::path::PathBuf>) -> Vec<String> {
    paths
        .into_iter()
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect()
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Err(e) = netns::delete(&self.name) {
            eprintln!("deleting host namespace {}: {e:#}", self.name);
        }
    }
}

/// The lock files of a topology, named by the product.
pub fn lock_path(topology: &str) -> std::path::PathBuf {
    store::lock::path(topology, store::lock::Purpose::Change)
}

pub fn run_lock_path(topology: &str) -> std::path::PathBuf {
    store::lock::path(topology, store::lock::Purpose::Run)
}

/// Whether a process holds the lock in `path` (netpath's locks are
/// flocks): a test waits for this, not for a sleep, before it races the
/// holder.
pub fn is_locked(path: &std::path::Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(file) = File::open(path) else {
        return false;
    };
    // SAFETY: flock(2) on a descriptor this function owns; closing the file
    // releases a lock taken here.
    let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    !taken
}

/// The state record of a topology, named by the product.
pub fn state_path(topology: &str) -> std::path::PathBuf {
    store::topology::path(topology).expect("a valid topology name")
}

/// Runs a command that is not the host's: `ip netns add|del`, `ip -n
/// CONTAINER ...`, `tcpdump -r FILE` (from the test's own namespace).
pub fn outside(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"))
}

/// Runs a command inside container namespace `ns` (made by netpath or a
/// test: global names under /run/netns).
pub fn in_ns(ns: &str, args: &[&str]) -> Output {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    outside("ip", &full)
}

/// Stops a container's unprompted traffic (IPv6 router solicitations, MLD
/// and ND), so it speaks only when spoken to: tests of learning and ageing
/// need that.
pub fn quiet(ns: &str) {
    assert!(
        in_ns(ns, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
            .status
            .success()
    );
}

/// A command inside container namespace `ns`, started with its output piped.
pub fn spawn_in(ns: &str, args: &[&str]) -> std::process::Child {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {args:?} in {ns}: {e}"))
}

pub fn ping(ns: &str, ip: &str) -> bool {
    in_ns(ns, &["ping", "-c", "1", "-W", "2", "-q", ip])
        .status
        .success()
}

/// Tears its topology down when dropped, so a failing test leaves nothing;
/// its host namespace goes when the last topology on it is gone.
pub struct Topology {
    pub name: String,
    pub host: Arc<Host>,
}

impl Topology {
    /// `netpath up` of a new topology on a host of its own.
    pub fn up(tag: &str, extra: &[&str]) -> Self {
        Self::up_on(&Host::new(), tag, extra)
    }

    /// `netpath up` of a new topology on `host`.
    pub fn up_on(host: &Arc<Host>, tag: &str, extra: &[&str]) -> Self {
        let topology = Self::adopt(host, &unique_name(tag));
        let mut args = vec!["up", "--name", &topology.name];
        args.extend_from_slice(extra);
        host.netpath_ok(&args);
        topology
    }

    /// Takes over the teardown of topology `name` on `host`, up or not.
    pub fn adopt(host: &Arc<Host>, name: &str) -> Self {
        Topology {
            name: name.to_owned(),
            host: host.clone(),
        }
    }

    /// The arguments of `netpath up` of this topology with `extra`: an up
    /// again, to see it is already up (or differs).
    pub fn up_args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        [&["up", "--name", self.name.as_str()][..], extra].concat()
    }

    /// `netpath port add` of container `port` with address `ip` and without
    /// the source check: a router, which sends for others.
    pub fn add_router(&self, port: &str, ip: &str) {
        self.netpath_ok(&[
            "port",
            "add",
            "--name",
            &self.name,
            port,
            "--no-source-check",
            "--ip",
            ip,
        ]);
    }

    pub fn ns(&self, container: &str) -> String {
        format!("{}-{container}", self.name)
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.netpath_ok(&["status", "--name", &self.name, "--json"]))
            .expect("status JSON")
    }

    /// The FDB's rows (`netpath fdb dump --json`).
    pub fn fdb(&self) -> Vec<serde_json::Value> {
        let doc: serde_json::Value = serde_json::from_str(
            &self.netpath_ok(&["fdb", "dump", "--name", &self.name, "--json"]),
        )
        .expect("fdb JSON");
        doc.as_array().expect("fdb rows").clone()
    }

    /// The programs' counters per port (`netpath stats --json`): port -> packets.
    pub fn program_counters(&self) -> Vec<(String, serde_json::Value)> {
        let doc: serde_json::Value =
            serde_json::from_str(&self.netpath_ok(&["stats", "--name", &self.name, "--json"]))
                .unwrap();
        doc.as_array()
            .unwrap()
            .iter()
            .map(|p| (p["port"].as_str().unwrap().to_owned(), p["packets"].clone()))
            .collect()
    }

    /// A per-port counter of the programs (`netpath stats --json`).
    pub fn counter(&self, port: &str, name: &str) -> u64 {
        self.program_counters()
            .into_iter()
            .find(|(p, _)| p == port)
            .map(|(_, packets)| packets[name].as_u64().unwrap())
            .unwrap_or(0)
    }

    /// Every verdict of every port of the topology.
    pub fn all_verdicts(&self) -> u64 {
        self.program_counters()
            .iter()
            .map(|(_, packets)| verdicts(packets))
            .sum()
    }
}

/// A topology's host commands are its host's.
impl Deref for Topology {
    type Target = Host;
    fn deref(&self) -> &Host {
        &self.host
    }
}

/// A teardown that fails fails the test (unless it already fails): a test
/// that leaks its topology would hide the bug that made `down` fail.
impl Drop for Topology {
    fn drop(&mut self) {
        let out = self.host.netpath(&["down", "--name", &self.name]);
        if !out.status.success() && !std::thread::panicking() {
            panic!(
                "netpath down --name {} failed in the teardown: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Frames a port's program decided on: every verdict (sent by the fast
/// path, passed, dropped), not the side counters (learned, trace lost,
/// decapsulated).
pub fn verdicts(packets: &serde_json::Value) -> u64 {
    use netpath_common::Counter;
    Counter::SENT
        .into_iter()
        .chain(Counter::PASSED)
        .chain(Counter::DROPPED)
        .map(|c| packets[c.name()].as_u64().unwrap())
        .sum()
}

/// Sends raw Ethernet frames out of `ifname` inside namespace `ns` through
/// an AF_PACKET socket; returns how many the kernel accepted (it refuses
/// frames shorter than an Ethernet header).
pub fn send_raw_frames(ns: &str, ifname: &str, frames: &[Vec<u8>]) -> usize {
    let socket = RawSocket::open(ns, ifname);
    frames.iter().filter(|frame| socket.send(frame)).count()
}

/// An AF_PACKET socket on an interface of a container, as a container with
/// CAP_NET_RAW has one: whatever it sends leaves by that interface.
pub struct RawSocket {
    fd: std::os::fd::OwnedFd,
    address: libc::sockaddr_ll,
}

impl RawSocket {
    /// The socket belongs to the namespace it is created in (a thread enters
    /// `ns` for that); it can then be used from any thread.
    pub fn open(ns: &str, ifname: &str) -> Self {
        let ns_file = File::open(netns::path(ns)).expect("namespace");
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    nix::sched::setns(&ns_file, nix::sched::CloneFlags::CLONE_NEWNET)
                        .expect("setns");
                    let index = nix::net::if_::if_nametoindex(ifname).expect("interface");
                    // SAFETY: plain socket(2) call.
                    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
                    assert!(
                        fd >= 0,
                        "AF_PACKET socket: {}",
                        std::io::Error::last_os_error()
                    );
                    // SAFETY: sockaddr_ll is plain data; zeroed is a valid start.
                    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                    address.sll_family = libc::AF_PACKET as u16;
                    address.sll_ifindex = index as i32;
                    address.sll_halen = 6;
                    // SAFETY: fd is a socket we just opened and now own.
                    RawSocket {
                        fd: unsafe {
                            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
                        },
                        address,
                    }
                })
                .join()
                .expect("socket thread")
        })
    }

    /// Sends one frame; false if the kernel refused it.
    pub fn send(&self, frame: &[u8]) -> bool {
        use std::os::fd::AsRawFd;
        // SAFETY: frame and address are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&self.address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        n >= 0
    }
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
    let v: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

/// rx and tx packets of a link inside container namespace `ns`.
pub fn link_packets(ns: &str, dev: &str) -> (u64, u64) {
    parse_link_packets(&outside(
        "ip",
        &["-n", ns, "-s", "-j", "link", "show", "dev", dev],
    ))
}

fn parse_link_packets(out: &Output) -> (u64, u64) {
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -s -j link");
    let stats = &doc[0]["stats64"];
    (
        stats["rx"]["packets"].as_u64().unwrap(),
        stats["tx"]["packets"].as_u64().unwrap(),
    )
}

/// Waits up to `limit` (scaled by [`patience`]) for `done`, polling every
/// 20 ms; returns how long it took, or fails the test saying `what`.
#[track_caller]
pub fn within(
    limit: std::time::Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
) -> std::time::Duration {
    let started = std::time::Instant::now();
    let limit = patience(limit);
    let _waiting = waiting_for(what);
    loop {
        if done() {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Runs `work` while `background` runs on a thread of its own, polling the
/// flag it is given to know when to stop: the flag is raised when `work`
/// returns or panics, so a failing `work` fails the test instead of leaving
/// it waiting for the background thread forever. Returns both results.
pub fn while_running<B: Send, T>(
    background: impl FnOnce(&AtomicBool) -> B + Send,
    work: impl FnOnce() -> T,
) -> (B, T) {
    struct RaiseOnDrop<'a>(&'a AtomicBool);
    impl Drop for RaiseOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let handle = scope.spawn(|| background(&stop));
        let result = {
            let _raise = RaiseOnDrop(&stop);
            work()
        };
        let background = {
            let _waiting = waiting_for("the background work of while_running to stop");
            handle.join().expect("the background thread panicked")
        };
        (background, result)
    })
}

/// `netpath run` in the background, on a topology (and host) of its own;
/// killed and torn down when dropped.
pub struct Running {
    pub child: std::process::Child,
    pub topology: Topology,
    /// Where `run`'s log (its stderr) goes.
    log: std::path::PathBuf,
}

impl Running {
    /// Starts `netpath run --name <unique> ARGS` and waits until it is up.
    pub fn start(tag: &str, args: &[&str]) -> Self {
        let host = Host::new();
        let name = unique_name(tag);
        let log = std::env::temp_dir().join(format!("netpath-run-{name}.log"));
        let child = host
            .netpath_command()
            .args(["run", "--name", &name])
            .args(args)
            // The log as a user sees it (netpath's default level).
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("run's log file"))
            .spawn()
            .expect("starting netpath run");
        let running = Running {
            child,
            topology: Topology::adopt(&host, &name),
            log,
        };
        let started = std::time::Instant::now();
        let _waiting = waiting_for(&format!("netpath run to bring {name} up"));
        while started.elapsed() < patience(std::time::Duration::from_secs(10)) {
            if host.netpath(&["status", "--name", &name]).status.success() {
                return running;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("netpath run never brought {name} up: {}", running.log());
    }

    /// What `run` logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Ctrl-C, as a user would; true if `run` then exited successfully.
    /// A `run` still running 30 s later (scaled by [`patience`]) is killed
    /// and fails the test.
    pub fn interrupt(&mut self) -> bool {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .expect("SIGINT");
        let limit = patience(std::time::Duration::from_secs(30));
        let started = std::time::Instant::now();
        let _waiting = waiting_for("netpath run to exit after Ctrl-C");
        loop {
            if let Some(status) = self.child.try_wait().expect("polling netpath run") {
                return status.success();
            }
            if started.elapsed() >= limit {
                let _ = self.child.kill();
                panic!(
                    "netpath run still running {limit:?} after Ctrl-C, killed: {}",
                    self.log()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// An nftables counter in the bridge family's forward hook: it only moves
/// for frames the bridge forwards, whatever the BPF programs claim.
pub struct BridgeForwardCounter {
    table: String,
    host: Arc<Host>,
}

impl BridgeForwardCounter {
    /// Counts forwarded frames on `host` that match `rule` (nft match expressions).
    pub fn new(host: &Arc<Host>, tag: &str, rule: &str) -> Self {
        let table = format!("nptest_{tag}");
        let script = format!(
            "table bridge {table} {{\n chain forward_count {{\n  type filter hook forward priority 0;\n  {rule} counter\n }}\n}}\n"
        );
        let mut nft = host
            .command("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(nft.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
        drop(nft.stdin.take());
        assert!(nft.wait().unwrap().success(), "adding the nftables counter");
        Self {
            table,
            host: host.clone(),
        }
    }

    /// Counts every frame forwarded from a port of the topology.
    pub fn from_ports_of(topology: &Topology) -> Self {
        Self::new(
            &topology.host,
            &topology.name,
            &format!("iifname \"{}-*\"", topology.name),
        )
    }

    /// Counts the IPv4 frames forwarded from a port of the topology: what
    /// the fast path must carry. ARP, and the IPv6 the containers' kernels
    /// send of their own accord after a link comes up (router
    /// solicitations, MLD reports, late in a slow guest), take the bridge
    /// by design.
    pub fn ipv4_from_ports_of(topology: &Topology) -> Self {
        Self::new(
            &topology.host,
            &topology.name,
            &format!("iifname \"{}-*\" ether type ip", topology.name),
        )
    }

    pub fn packets(&self) -> u64 {
        let out = self
            .host
            .sh("nft", &["-j", "list", "table", "bridge", &self.table]);
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
        self.host
            .sh("nft", &["delete", "table", "bridge", &self.table]);
    }
}

/// A child process killed (and reaped) when dropped, so a test that fails
/// while it runs leaves no tracer or monitor behind.
pub struct KillOnDrop(pub std::process::Child);

impl From<std::process::Child> for KillOnDrop {
    fn from(child: std::process::Child) -> Self {
        KillOnDrop(child)
    }
}

impl Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // A no-op for a child already reaped (std never signals a pid it
        // has waited for).
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads a pipe to its end on a thread of its own.
fn read_on_thread(
    pipe: Option<impl std::io::Read + Send + 'static>,
) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// Waits for `child` to exit and collects its output, like
/// `wait_with_output`, but for at most `limit` (scaled by [`patience`]):
/// then the child is killed and the test fails, saying what it was
/// waiting for (`what`) and what the child printed so far.
#[track_caller]
pub fn output_within(
    child: impl Into<KillOnDrop>,
    limit: std::time::Duration,
    what: &str,
) -> Output {
    let limit = patience(limit);
    let mut child = child.into();
    let (stdout, stderr) = (
        read_on_thread(child.stdout.take()),
        read_on_thread(child.stderr.take()),
    );
    let started = std::time::Instant::now();
    let _waiting = waiting_for(what);
    let status = loop {
        if let Some(status) = child.try_wait().expect("polling a child") {
            break Some(status);
        }
        if started.elapsed() >= limit {
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let Some(status) = status else {
        drop(child); // killed: the pipes close and the readers finish
        let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
        panic!(
            "{what}: still running after {limit:?}, killed; stdout: {:?}; stderr: {:?}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        )
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// The lines of a child's pipe, read on a thread, so that a test waits for
/// the next one with a deadline instead of blocking forever.
pub struct Lines {
    lines: std::sync::mpsc::Receiver<String>,
    what: String,
}

impl Lines {
    /// `what` names the pipe in failures (e.g. "monitor's stdout").
    pub fn of(pipe: impl std::io::Read + Send + 'static, what: &str) -> Self {
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(pipe)) {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break; // nobody listens any more
                }
            }
        });
        Lines {
            lines,
            what: what.to_owned(),
        }
    }

    /// The next line, if it comes before `deadline`; fails the test, saying
    /// `waiting_for`, if it does not or the pipe closes.
    #[track_caller]
    pub fn next_before(
        &self,
        deadline: std::time::Instant,
        waiting_for: &dyn std::fmt::Display,
    ) -> String {
        use std::sync::mpsc::RecvTimeoutError;
        let _waiting = watchdog::waiting_for(&format!("{}: {waiting_for}", self.what));
        match self
            .lines
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
        {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                panic!("{}: no line in time; waiting for {waiting_for}", self.what)
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("{}: closed; waiting for {waiting_for}", self.what)
            }
        }
    }
}

/// A directory (of keys, network configurations), removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// A new empty directory under the temporary directory.
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("netpath-{}", unique_name(tag)));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A counter of namespace `ns`'s /proc/net/snmp: `group` (Icmp, Udp, ...)
/// and the counter's `name` (InEchos, RcvbufErrors, ...).
pub fn snmp(ns: &str, group: &str, name: &str) -> u64 {
    let out = in_ns(ns, &["cat", "/proc/net/snmp"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let (names, values) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or_else(|| panic!("no {group} {name} in {ns}'s /proc/net/snmp:\n{text}"))
}
