//! Points the loader at the BPF object that `cargo xtask build` produced.

use std::path::Path;

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let object = Path::new(&manifest).join("../target/bpfel-unknown-none/release/netpath");
    println!("cargo:rerun-if-changed={}", object.display());
    if !object.exists() {
        panic!(
            "BPF object {} is missing: build through `cargo xtask build` (or `cargo xtask test`), \
             which compiles netpath-ebpf first",
            object.display()
        );
    }
    println!("cargo:rustc-env=NETPATH_BPF_OBJECT={}", object.display());
}
