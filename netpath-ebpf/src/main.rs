//! netpath's BPF programs: forward frames between host-side veth ends by
//! destination MAC, and hand everything else to the Linux bridge untouched.
// Everything is for the BPF target, which xtask builds with nightly. On any
// other target (`cargo check --workspace`, clippy, rust-analyzer on stable)
// the crate is an empty program, so a fresh clone checks without nightly.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Inline assembly on BPF (a few single instructions) is nightly-only.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

/// The modules, each declared for the BPF target only.
macro_rules! bpf_modules {
    ($($module:ident),* $(,)?) => { $(#[cfg(target_arch = "bpf")] mod $module;)* };
}

bpf_modules!(
    flood, forward, frame, maps, overlay, police, policy, proto, rate, source, tc, trace, tunnel,
    underlay, vxlan, xdp,
);

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach this.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("netpath-ebpf is BPF code: `cargo xtask build` compiles it for bpfel-unknown-none");
}
