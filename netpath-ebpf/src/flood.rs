//! Head-end replication, tail-called by the port program (`tc.rs`) for a
//! broadcast its overlay floods: a copy to every other node. A program of
//! its own, loaded only when a datapath joins an overlay, because the
//! verifier walks its loop once per node slot: in the port program every
//! datapath paid that at every load, overlay or not.

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};

use crate::{maps::CONFIG, overlay};

#[classifier]
pub fn netpath_flood(ctx: TcContext) -> i32 {
    if let Some(config) = CONFIG.get(0) {
        overlay::flood(&ctx, &config.overlay);
    }
    // The frame itself goes on to the bridge, which floods it to this
    // node's ports.
    TC_ACT_OK
}
