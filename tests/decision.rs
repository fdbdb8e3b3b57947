//! The programs' forwarding decision on crafted frames, run by the kernel
//! through BPF_PROG_TEST_RUN: verdicts and per-CPU counters, with maps filled
//! by hand and no veth, bridge or traffic generator. The object is loaded
//! once with fresh maps, which every test empties and refills; each test runs
//! on a thread of its own in a fresh network namespace, where the only device
//! is `lo` (ifindex 1): test_run frames arrive on it, so it plays the ingress
//! port.

mod common;

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
    sync::{Mutex, MutexGuard, OnceLock, PoisonError},
};

use aya::{
    Ebpf,
    maps::{Array, DevMapHash, HashMap, PerCpuHashMap, PerCpuValues, RingBuf},
    programs::{SchedClassifier, Xdp},
    util::nr_cpus,
};
use common::frame;
use netpath_common::{Counter, DatapathConfig, FDB_FLAG_STATIC, FdbEntry, FdbKey, PortState, maps, programs};

/// The ingress port: `lo` of the test's namespace, the device test_run
/// frames arrive on (and the only one an XDP test run may name).
const PORT: u32 = 1;
/// Another port of the datapath. No device has this index, but the devmap,
/// which both programs consult for the destination, maps it to `lo`.
const OTHER: u32 = 7;
const PORT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const OTHER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x07];
const BRIDGE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xbb];
const NEW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x42];
const UNKNOWN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
const BROADCAST: [u8; 6] = [0xff; 6];

const FDB_SIZE: u32 = 64;
const AGEING_NS: u64 = 300_000_000_000;

// Verdicts (linux/pkt_cls.h, linux/bpf.h).
const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
/// IEEE 802 local experimental EtherType: no L3 header to parse.
const ETH_P_EXPERIMENTAL: u16 = 0x88b5;

/// `union bpf_attr` as the BPF_PROG_TEST_RUN command reads it.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The head of `struct __sk_buff` up to `ifindex` (the kernel zero-fills
/// the rest of a shorter context).
#[repr(C)]
#[derive(Default)]
struct SkBuff {
    len: u32,
    pkt_type: u32,
    mark: u32,
    queue_mapping: u32,
    protocol: u32,
    vlan_present: u32,
    vlan_tci: u32,
    vlan_proto: u32,
    priority: u32,
    ingress_ifindex: u32,
    ifindex: u32,
}

/// `struct xdp_md`.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

/// Runs program `fd` once on `data` with context `ctx`; the program's
/// return value, or the syscall's error.
fn test_run<C>(fd: i32, data: &[u8], ctx: &C) -> io::Result<u32> {
    test_run_repeated(fd, data, ctx, 1)
}

/// As [`test_run`], `repeat` times in a row (the last run's return value).
fn test_run_repeated<C>(fd: i32, data: &[u8], ctx: &C, repeat: u32) -> io::Result<u32> {
    let mut attr = TestRunAttr {
        prog_fd: fd as u32,
        data_size_in: data.len() as u32,
        data_in: data.as_ptr() as u64,
        repeat,
        ctx_size_in: std::mem::size_of::<C>() as u32,
        ctx_in: ctx as *const C as u64,
        ..Default::default()
    };
    // SAFETY: attr is a valid test-run attribute whose pointers name live
    // buffers of the given sizes for the duration of the call.
    let ret = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, &mut attr as *mut TestRunAttr, std::mem::size_of::<TestRunAttr>())
    };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(attr.retval) }
}

/// Runs `test` on a thread in a fresh network namespace (so `lo` is the
/// ingress port and ifindex `OTHER` names no device), passing its panic on.
fn in_private_netns(test: impl FnOnce() + Send) {
    common::require_root();
    std::thread::scope(|scope| {
        let result = scope
            .spawn(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
                test()
            })
            .join();
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    })
}

/// The BPF object, loaded once with maps created fresh (loading costs tens
/// of milliseconds, the verifier's work); each test takes it under a lock
/// with its maps emptied and refilled by [`Datapath::reset`].
struct Datapath {
    ebpf: Ebpf,
}

/// The shared datapath, reset for the calling test.
fn datapath() -> MutexGuard<'static, Datapath> {
    static SHARED: OnceLock<Mutex<Datapath>> = OnceLock::new();
    let shared = SHARED.get_or_init(|| {
        let ebpf = netpath::datapath::object::load(None, FDB_SIZE).expect("loading the BPF object");
        Mutex::new(Datapath { ebpf })
    });
    // A failed test poisons the lock; the reset makes the datapath good again.
    let mut dp = shared.lock().unwrap_or_else(PoisonError::into_inner);
    dp.reset();
    dp
}

impl Datapath {
    /// One topology: two ports with a static FDB entry each, the bridge's
    /// MAC, learning on; nothing else in any map, every counter 0.
    fn reset(&mut self) {
        self.set_config(DatapathConfig { bridge_mac: BRIDGE_MAC, learning: 1, ageing_ns: AGEING_NS, ..Default::default() });
        let mut states: PerCpuHashMap<_, u32, PortState> =
            PerCpuHashMap::try_from(self.ebpf.map_mut(maps::PORT_STATE).unwrap()).unwrap();
        for key in states.keys().collect::<Result<Vec<_>, _>>().unwrap() {
            states.remove(&key).unwrap();
        }
        let mut fdb: HashMap<_, FdbKey, FdbEntry> = HashMap::try_from(self.ebpf.map_mut(maps::FDB).unwrap()).unwrap();
        for key in fdb.keys().collect::<Result<Vec<_>, _>>().unwrap() {
            fdb.remove(&key).unwrap();
        }
        self.add_port(PORT, PORT_MAC);
        self.add_port(OTHER, OTHER_MAC);
        self.set_fdb(PORT_MAC, FdbEntry { ifindex: PORT, flags: FDB_FLAG_STATIC, last_seen_ns: 0 });
        self.set_fdb(OTHER_MAC, FdbEntry { ifindex: OTHER, flags: FDB_FLAG_STATIC, last_seen_ns: 0 });
        // XDP redirects through the devmap: OTHER's frames leave by `lo`.
        let mut ports = DevMapHash::try_from(self.ebpf.map_mut(maps::PORTS).unwrap()).unwrap();
        for key in ports.keys().collect::<Result<Vec<_>, _>>().unwrap() {
            ports.remove(key).unwrap();
        }
        ports.insert(OTHER, PORT, None, 0).expect("devmap entry");
    }

    fn set_config(&mut self, config: DatapathConfig) {
        let mut map: Array<_, DatapathConfig> = Array::try_from(self.ebpf.map_mut(maps::CONFIG).unwrap()).unwrap();
        map.set(0, config, 0).unwrap();
    }

    fn add_port(&mut self, ifindex: u32, mac: [u8; 6]) {
        let mut map: PerCpuHashMap<_, u32, PortState> =
            PerCpuHashMap::try_from(self.ebpf.map_mut(maps::PORT_STATE).unwrap()).unwrap();
        let state = PortState { mac, ..Default::default() };
        let values = PerCpuValues::try_from(vec![state; nr_cpus().unwrap()]).unwrap();
        map.insert(ifindex, values, 0).unwrap();
    }

    fn remove_port(&mut self, ifindex: u32) {
        let mut map: PerCpuHashMap<_, u32, PortState> =
            PerCpuHashMap::try_from(self.ebpf.map_mut(maps::PORT_STATE).unwrap()).unwrap();
        map.remove(&ifindex).unwrap();
    }

    fn set_fdb(&mut self, mac: [u8; 6], entry: FdbEntry) {
        let mut map: HashMap<_, FdbKey, FdbEntry> = HashMap::try_from(self.ebpf.map_mut(maps::FDB).unwrap()).unwrap();
        map.insert(FdbKey::new(mac, 0), entry, 0).unwrap();
    }

    fn fdb(&self, mac: [u8; 6]) -> Option<FdbEntry> {
        let map: HashMap<_, FdbKey, FdbEntry> = HashMap::try_from(self.ebpf.map(maps::FDB).unwrap()).unwrap();
        map.get(&FdbKey::new(mac, 0), 0).ok()
    }

    /// A port's counters, summed over the CPUs.
    fn counters(&self, ifindex: u32) -> [u64; Counter::COUNT] {
        let map: PerCpuHashMap<_, u32, PortState> =
            PerCpuHashMap::try_from(self.ebpf.map(maps::PORT_STATE).unwrap()).unwrap();
        let mut sum = [0; Counter::COUNT];
        if let Ok(values) = map.get(&ifindex, 0) {
            for state in values.iter() {
                for (s, n) in sum.iter_mut().zip(state.packets) {
                    *s += n;
                }
            }
        }
        sum
    }

    /// Asserts the port's counters: `expected` ones as given, all others 0.
    fn assert_counters(&self, ifindex: u32, expected: &[(Counter, u64)]) {
        let have = self.counters(ifindex);
        for counter in Counter::ALL {
            let want = expected.iter().find(|(c, _)| *c == counter).map_or(0, |(_, n)| *n);
            assert_eq!(have[counter as usize], want, "counter {} of port {ifindex}", counter.name());
        }
    }

    fn fd(&self, name: &str) -> i32 {
        let program = self.ebpf.program(name).unwrap_or_else(|| panic!("no program {name}"));
        let fd = match name {
            programs::TC_FORWARD => <&SchedClassifier>::try_from(program).unwrap().fd(),
            _ => <&Xdp>::try_from(program).unwrap().fd(),
        };
        fd.unwrap().as_fd().as_raw_fd()
    }

    /// The tc program's verdict on `data` arriving on `PORT`.
    fn tc(&self, data: &[u8]) -> io::Result<u32> {
        self.tc_repeated(data, 1)
    }

    fn tc_repeated(&self, data: &[u8], repeat: u32) -> io::Result<u32> {
        let ctx = SkBuff { ifindex: PORT, ingress_ifindex: PORT, ..Default::default() };
        test_run_repeated(self.fd(programs::TC_FORWARD), data, &ctx, repeat)
    }

    /// Frames in the trace ring buffer, which this takes out.
    fn drain_trace(&mut self) -> usize {
        let mut ring = RingBuf::try_from(self.ebpf.map_mut(maps::TRACE).unwrap()).unwrap();
        let mut frames = 0;
        while ring.next().is_some() {
            frames += 1;
        }
        frames
    }

    /// The XDP program's verdict on `data` arriving on `PORT`, of which the
    /// first `meta` bytes are metadata in front of the frame.
    fn xdp_with_meta(&self, data: &[u8], meta: u32) -> io::Result<u32> {
        let ctx = XdpMd { data: meta, data_end: data.len() as u32, ingress_ifindex: PORT, ..Default::default() };
        test_run(self.fd(programs::XDP_FORWARD), data, &ctx)
    }

    fn xdp(&self, data: &[u8]) -> io::Result<u32> {
        self.xdp_with_meta(data, 0)
    }
}

/// An Ethernet frame from `src` to `dst`, padded to the 60-byte minimum.
fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    frame(dst, src, ethertype, &[0x45; 46])
}

/// Runs both programs on `data` (tc first), each on a freshly reset
/// datapath, and asserts their verdicts and that both counted exactly
/// `counters` on PORT.
fn both_decide(data: &[u8], tc_verdict: u32, xdp_verdict: u32, counters: &[(Counter, u64)]) {
    let mut dp = datapath();
    assert_eq!(dp.tc(data).expect("tc test run"), tc_verdict, "tc verdict");
    dp.assert_counters(PORT, counters);
    dp.assert_counters(OTHER, &[]);
    dp.reset();
    assert_eq!(dp.xdp(data).expect("xdp test run"), xdp_verdict, "xdp verdict");
    dp.assert_counters(PORT, counters);
    dp.assert_counters(OTHER, &[]);
}

#[test]
fn unicast_to_another_port_is_redirected() {
    in_private_netns(|| {
        both_decide(&eth(OTHER_MAC, PORT_MAC, ETH_P_IP), TC_ACT_REDIRECT, XDP_REDIRECT, &[(Counter::Redirected, 1)]);
    });
}

/// A destination whose port is gone (its FDB entry is stale) is never a
/// black hole: bpf_redirect_peer() would accept any ifindex (the device is
/// looked up after the program, in skb_do_redirect(), and a missing one
/// drops the frame), so the tc program first asks the devmap, which the
/// kernel keeps to live devices; XDP's redirect goes through the devmap
/// anyway. Both pass the frame to the bridge and count it.
#[test]
fn a_destination_port_that_is_gone_passes_to_the_bridge() {
    in_private_netns(|| {
        let mut dp = datapath();
        let ghost = [0x02, 0, 0, 0, 0x0e, 0xe0];
        dp.set_fdb(ghost, FdbEntry { ifindex: 4242, flags: FDB_FLAG_STATIC, last_seen_ns: 0 });
        let data = eth(ghost, PORT_MAC, ETH_P_IP);
        assert_eq!(dp.tc(&data).unwrap(), TC_ACT_OK);
        dp.assert_counters(PORT, &[(Counter::PassRedirectFailed, 1)]);
        assert_eq!(dp.xdp(&data).unwrap(), XDP_PASS);
        dp.assert_counters(PORT, &[(Counter::PassRedirectFailed, 2)]);
    });
}

/// A runt never reaches the programs: test_run refuses data shorter than an
/// Ethernet header (EINVAL), for tc and for XDP, and on this kernel (6.18)
/// also when XDP metadata stands in front of a frame shorter than a header
/// (`xdp_md.data` = 4 in 14 bytes of data: a 10-byte frame). AF_PACKET
/// refuses them too (reliability.rs), so the programs' runt check and
/// `drop_runt` are a guard for the verifier that nothing here can trigger.
/// A frame of exactly a header is no runt and is decided normally.
#[test]
fn runts_are_refused_before_the_programs() {
    in_private_netns(|| {
        let dp = datapath();
        let einval = |result: io::Result<u32>| result.map_err(|e| e.raw_os_error());
        assert_eq!(einval(dp.tc(&[0xaa; 13])), Err(Some(libc::EINVAL)), "tc test run of 13 bytes");
        assert_eq!(einval(dp.xdp(&[0xaa; 13])), Err(Some(libc::EINVAL)), "xdp test run of 13 bytes");
        assert_eq!(einval(dp.xdp_with_meta(&[0xaa; 14], 4)), Err(Some(libc::EINVAL)), "xdp: 10-byte frame behind metadata");
        // For tc, test_run also parses the L3 header of IPv4 frames and
        // refuses a truncated one, so such frames cannot be crafted there.
        let truncated_ipv4 = frame(UNKNOWN_MAC, PORT_MAC, ETH_P_IP, &[0x45; 19]);
        assert_eq!(einval(dp.tc(&truncated_ipv4)), Err(Some(libc::EINVAL)), "tc: truncated IPv4 header");
        dp.assert_counters(PORT, &[]);
        let header_only = frame(UNKNOWN_MAC, PORT_MAC, ETH_P_EXPERIMENTAL, &[]);
        assert_eq!(dp.tc(&header_only).unwrap(), TC_ACT_OK);
        assert_eq!(dp.xdp(&header_only).unwrap(), XDP_PASS);
        // The metadata path itself works: 4 bytes of it in front of a header.
        assert_eq!(dp.xdp_with_meta(&[&[0; 4][..], &header_only].concat(), 4).unwrap(), XDP_PASS);
        assert_eq!(dp.xdp(&truncated_ipv4).unwrap(), XDP_PASS);
        dp.assert_counters(PORT, &[(Counter::PassUnknown, 4)]);
    });
}

#[test]
fn multicast_destinations_go_to_the_bridge() {
    in_private_netns(|| {
        for dst in [BROADCAST, [0x01, 0x00, 0x5e, 0, 0, 0x01], [0x33, 0x33, 0xff, 0, 0, 0x02]] {
            both_decide(&eth(dst, PORT_MAC, ETH_P_IP), TC_ACT_OK, XDP_PASS, &[(Counter::PassMulticast, 1)]);
        }
    });
}

#[test]
fn unknown_destinations_go_to_the_bridge() {
    in_private_netns(|| {
        both_decide(&eth(UNKNOWN_MAC, PORT_MAC, ETH_P_IP), TC_ACT_OK, XDP_PASS, &[(Counter::PassUnknown, 1)]);
    });
}

#[test]
fn frames_for_the_bridge_mac_go_to_the_host() {
    in_private_netns(|| {
        both_decide(&eth(BRIDGE_MAC, PORT_MAC, ETH_P_IP), TC_ACT_OK, XDP_PASS, &[(Counter::PassHost, 1)]);
    });
}

/// A destination behind the ingress port itself.
#[test]
fn hairpin_frames_go_to_the_bridge() {
    in_private_netns(|| {
        both_decide(&eth(PORT_MAC, PORT_MAC, ETH_P_IP), TC_ACT_OK, XDP_PASS, &[(Counter::PassHairpin, 1)]);
    });
}

/// A learned entry older than the ageing time is unknown, and the program
/// removes it.
#[test]
fn aged_entries_are_unknown_and_removed() {
    in_private_netns(|| {
        let mut dp = datapath();
        // Seen 1 ns after boot, with a 1 ms ageing time: aged on any machine
        // up for longer than that (a fresh VM is up for seconds, not 300).
        dp.set_config(DatapathConfig { bridge_mac: BRIDGE_MAC, learning: 1, ageing_ns: 1_000_000, ..Default::default() });
        dp.set_fdb(NEW_MAC, FdbEntry { ifindex: OTHER, flags: 0, last_seen_ns: 1 });
        assert_eq!(dp.tc(&eth(NEW_MAC, PORT_MAC, ETH_P_IP)).unwrap(), TC_ACT_OK);
        dp.assert_counters(PORT, &[(Counter::PassUnknown, 1)]);
        assert_eq!(dp.fdb(NEW_MAC), None, "the aged entry was not removed");
    });
}

/// An entry refreshed (on another CPU) after the program read the clock is
/// younger than "now": it is live, never aged out by a wrapped difference.
#[test]
fn entries_refreshed_after_the_clock_read_are_live() {
    in_private_netns(|| {
        let mut dp = datapath();
        let future = netpath::datapath::fdb::monotonic_ns() + 10_000_000_000;
        dp.set_fdb(NEW_MAC, FdbEntry { ifindex: OTHER, flags: 0, last_seen_ns: future });
        assert_eq!(dp.tc(&eth(NEW_MAC, PORT_MAC, ETH_P_IP)).unwrap(), TC_ACT_REDIRECT);
        dp.assert_counters(PORT, &[(Counter::Redirected, 1)]);
        assert!(dp.fdb(NEW_MAC).is_some(), "a live entry was aged out");
    });
}

/// Another port's static MAC as source: counted, never learned; the frame
/// itself is still decided by its destination.
#[test]
fn spoofed_sources_are_counted_not_learned() {
    in_private_netns(|| {
        let runs: [(fn(&Datapath, &[u8]) -> io::Result<u32>, u32); 2] = [(Datapath::tc, TC_ACT_OK), (Datapath::xdp, XDP_PASS)];
        for (run, verdict) in runs {
            let dp = datapath();
            assert_eq!(run(&dp, &eth(UNKNOWN_MAC, OTHER_MAC, ETH_P_IP)).unwrap(), verdict);
            dp.assert_counters(PORT, &[(Counter::SpoofedSource, 1), (Counter::PassUnknown, 1)]);
            let entry = dp.fdb(OTHER_MAC).expect("OTHER's static entry");
            assert_eq!((entry.ifindex, entry.flags), (OTHER, FDB_FLAG_STATIC), "the static entry moved");
        }
    });
}

/// Multicast and all-zero sources: counted, never learned.
#[test]
fn bad_sources_are_counted_not_learned() {
    in_private_netns(|| {
        for src in [[0x01, 0x00, 0x5e, 0, 0, 0x09], [0; 6]] {
            both_decide(
                &eth(OTHER_MAC, src, ETH_P_IP),
                TC_ACT_REDIRECT,
                XDP_REDIRECT,
                &[(Counter::BadSource, 1), (Counter::Redirected, 1)],
            );
            let dp = datapath();
            dp.tc(&eth(OTHER_MAC, src, ETH_P_IP)).unwrap();
            assert_eq!(dp.fdb(src), None, "bad source {src:x?} learned");
        }
    });
}

/// A new unicast source is learned on the ingress port, once; the port's own
/// container MAC needs no learning.
#[test]
fn new_sources_are_learned_once() {
    in_private_netns(|| {
        for run in [Datapath::tc, Datapath::xdp] {
            let mut dp = datapath();
            run(&dp, &eth(OTHER_MAC, NEW_MAC, ETH_P_IP)).unwrap();
            let entry = dp.fdb(NEW_MAC).expect("NEW_MAC learned");
            assert_eq!((entry.ifindex, entry.flags), (PORT, 0));
            assert!(entry.last_seen_ns > 0);
            run(&dp, &eth(OTHER_MAC, NEW_MAC, ETH_P_IP)).unwrap();
            dp.assert_counters(PORT, &[(Counter::Learned, 1), (Counter::Redirected, 2)]);
            // And the learned entry is a destination like any other.
            dp.set_fdb(NEW_MAC, FdbEntry { ifindex: OTHER, ..entry });
            assert_eq!(dp.tc(&eth(NEW_MAC, PORT_MAC, ETH_P_IP)).unwrap(), TC_ACT_REDIRECT);
        }
    });
}

#[test]
fn learning_off_learns_nothing() {
    in_private_netns(|| {
        let mut dp = datapath();
        dp.set_config(DatapathConfig { bridge_mac: BRIDGE_MAC, learning: 0, ageing_ns: AGEING_NS, ..Default::default() });
        assert_eq!(dp.tc(&eth(OTHER_MAC, NEW_MAC, ETH_P_IP)).unwrap(), TC_ACT_REDIRECT);
        assert_eq!(dp.fdb(NEW_MAC), None);
        dp.assert_counters(PORT, &[(Counter::Redirected, 1)]);
    });
}

/// 802.1Q-tagged frames are forwarded by destination MAC like any other.
#[test]
fn vlan_tagged_frames_are_forwarded() {
    in_private_netns(|| {
        let tagged = frame(OTHER_MAC, PORT_MAC, ETH_P_8021Q, &[&[0x00, 0x0a, 0x88, 0xb5][..], &[0; 42]].concat());
        both_decide(&tagged, TC_ACT_REDIRECT, XDP_REDIRECT, &[(Counter::Redirected, 1)]);
    });
}

/// IPv6 unicast takes the fast path; neighbour discovery (multicast) the bridge.
#[test]
fn ipv6_unicast_is_forwarded_and_nd_goes_to_the_bridge() {
    in_private_netns(|| {
        let v6 = |dst| frame(dst, PORT_MAC, ETH_P_IPV6, &[&[0x60][..], &[0; 53]].concat());
        both_decide(&v6(OTHER_MAC), TC_ACT_REDIRECT, XDP_REDIRECT, &[(Counter::Redirected, 1)]);
        both_decide(&v6([0x33, 0x33, 0xff, 0, 0, 0x07]), TC_ACT_OK, XDP_PASS, &[(Counter::PassMulticast, 1)]);
    });
}

/// Frames from an interface the datapath does not manage are not its
/// business: passed, counted nowhere, not learned.
#[test]
fn frames_from_unmanaged_interfaces_are_passed_untouched() {
    in_private_netns(|| {
        let mut dp = datapath();
        dp.remove_port(PORT);
        assert_eq!(dp.tc(&eth(OTHER_MAC, NEW_MAC, ETH_P_IP)).unwrap(), TC_ACT_OK);
        assert_eq!(dp.xdp(&eth(OTHER_MAC, NEW_MAC, ETH_P_IP)).unwrap(), XDP_PASS);
        assert_eq!(dp.tc(&[0xaa; 14]).unwrap(), TC_ACT_OK);
        assert_eq!(dp.fdb(NEW_MAC), None);
        dp.assert_counters(OTHER, &[]);
    });
}

/// Redirected frames are copied for `netpath trace` only while its lease
/// runs (a killed tracer stops tracing by itself); when the ring buffer is
/// full, the frames it could not take are counted, not silently lost.
#[test]
fn tracing_follows_the_lease_and_counts_what_the_ring_cannot_take() {
    in_private_netns(|| {
        let mut dp = datapath();
        dp.drain_trace();
        let frame = eth(OTHER_MAC, PORT_MAC, ETH_P_IP);
        let config = |trace_until_ns| DatapathConfig {
            bridge_mac: BRIDGE_MAC,
            learning: 1,
            ageing_ns: AGEING_NS,
            trace_until_ns,
            ..Default::default()
        };
        // A lease that ran out (1 ns after boot): nothing is copied.
        dp.set_config(config(1));
        assert_eq!(dp.tc(&frame).unwrap(), TC_ACT_REDIRECT);
        assert_eq!(dp.drain_trace(), 0, "frames copied after the lease ran out");
        dp.assert_counters(PORT, &[(Counter::Redirected, 1)]);

        // A live lease, and more frames than the 1 MiB ring holds.
        dp.reset();
        dp.set_config(config(u64::MAX));
        let sent = 20_000;
        assert_eq!(dp.tc_repeated(&frame, sent).unwrap(), TC_ACT_REDIRECT);
        let copied = dp.drain_trace() as u64;
        let lost = dp.counters(PORT)[Counter::TraceLost as usize];
        assert!(copied > 1000 && lost > 0, "copied {copied}, lost {lost}");
        dp.assert_counters(PORT, &[(Counter::Redirected, sent as u64), (Counter::TraceLost, sent as u64 - copied)]);
    });
}
