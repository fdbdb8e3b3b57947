//! Points the loader at the BPF object that `cargo xtask build` produced.
//!
//! On a fresh clone (`cargo check`, clippy, rust-analyzer) the object does
//! not exist yet: the binary is then built around an empty stub, says so as
//! a build warning, and refuses to load a datapath with the fix (as
//! aya-template's build.rs does). xtask always builds the object first.

use std::path::{Path, PathBuf};

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let object = Path::new(&manifest).join("../target/bpfel-unknown-none/release/netpath");
    println!("cargo:rerun-if-changed={}", object.display());
    let object = if object.exists() {
        object
    } else {
        println!(
            "cargo:warning=BPF object {} is missing: this build carries an empty stub and cannot load a datapath; \
             build through `cargo xtask build` (or `cargo xtask run`/`test`), which compiles netpath-ebpf first",
            object.display()
        );
        let stub = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("netpath-ebpf.stub");
        std::fs::write(&stub, b"").expect("writing the BPF object stub");
        stub
    };
    println!("cargo:rustc-env=NETPATH_BPF_OBJECT={}", object.display());
}
