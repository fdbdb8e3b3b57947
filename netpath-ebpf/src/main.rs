//! netpath's BPF programs: forward frames between host-side veth ends by
//! destination MAC, and hand everything else to the Linux bridge untouched.
#![no_std]
#![no_main]
// Inline assembly on BPF (one mask instruction in trace.rs) is nightly-only.
#![feature(asm_experimental_arch)]

mod forward;
mod maps;
mod overlay;
mod source;
mod tc;
mod trace;
mod vxlan;
mod xdp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach this.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
