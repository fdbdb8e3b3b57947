//! The BPF object embedded in netpath loads, and the kernel's verifier
//! accepts every program in it.

mod common;

use netpath::datapath::object::MapSizes;
use netpath_common::programs;

#[test]
fn every_program_passes_the_verifier() {
    common::require_root();
    let sizes = MapSizes::new(netpath_common::FDB_CAPACITY, true, true).unwrap();
    let ebpf = netpath::datapath::object::load(None, sizes, &programs::ALL)
        .expect("loading the BPF object");
    let mut loaded: Vec<&str> = ebpf
        .programs()
        .map(|(name, program)| {
            let info = program
                .info()
                .unwrap_or_else(|e| panic!("{name} is not loaded in the kernel: {e}"));
            assert!(info.id() > 0, "{name} has no kernel program id");
            name
        })
        .collect();
    loaded.sort();
    let mut expected = programs::ALL.to_vec();
    expected.sort();
    assert_eq!(loaded, expected);
}

/// Pins made by a netpath of another map layout are refused with the pin
/// directory and the fix, by every verb that would read them; `down` still
/// removes them.
#[test]
fn pins_of_another_layout_are_refused() {
    use aya::maps::{Array, Map, MapData};

    let topology = common::words("--containers 2 --subnet 10.160.0.0/24 --mode tc");
    let t = common::Topology::up("lay", &topology);
    let dir = netpath::datapath::object::pin_dir(&t.name);
    let set_layout = |version: u32| {
        let data =
            MapData::from_pin(dir.join(netpath_common::maps::LAYOUT)).expect("pinned LAYOUT map");
        let mut layout: Array<_, u32> = Array::try_from(Map::Array(data)).unwrap();
        layout.set(0, version, 0).unwrap();
    };
    // What a build of another layout would have left.
    set_layout(netpath_common::LAYOUT_VERSION + 7);
    let up = t.up_args(&topology);
    for args in [
        &up[..],
        &["fdb", "dump", "--name", &t.name],
        &["stats", "--name", &t.name],
    ] {
        let out = t.netpath(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "netpath {args:?} used pins of another layout"
        );
        let expected = format!("map layout {}", netpath_common::LAYOUT_VERSION + 7);
        assert!(
            stderr.contains(&expected) && stderr.contains(&dir.display().to_string()),
            "netpath {args:?}: {stderr}"
        );
    }
    set_layout(netpath_common::LAYOUT_VERSION);
    t.netpath_ok(&up);
    t.netpath_ok(&["fdb", "dump", "--name", &t.name]);
    set_layout(netpath_common::LAYOUT_VERSION + 7);
    t.netpath_ok(&["down", "--name", &t.name]);
    assert!(!dir.exists(), "down left the pins of another layout");
}
