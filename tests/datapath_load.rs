//! The BPF object embedded in netpath loads, and the kernel's verifier
//! accepts every program in it.

mod common;

use netpath_common::programs;

#[test]
fn every_program_passes_the_verifier() {
    common::require_root();
    let ebpf = netpath::datapath::object::load(None, netpath_common::FDB_CAPACITY).expect("loading the BPF object");
    let mut loaded: Vec<&str> = ebpf
        .programs()
        .map(|(name, program)| {
            let info = program.info().unwrap_or_else(|e| panic!("{name} is not loaded in the kernel: {e}"));
            assert!(info.id() > 0, "{name} has no kernel program id");
            name
        })
        .collect();
    loaded.sort();
    let mut expected = vec![programs::TC_FORWARD, programs::XDP_FORWARD, programs::XDP_PEER];
    expected.sort();
    assert_eq!(loaded, expected);
}
