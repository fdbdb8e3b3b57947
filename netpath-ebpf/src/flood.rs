//! Head-end replication, tail-called by the port program (`tc.rs`) for a
//! broadcast its overlay floods: a copy to every other node. A program of
//! its own, loaded only when a datapath joins an overlay, because the
//! verifier walks its loop once per node slot: in the port program every
//! datapath paid that at every load, overlay or not. It copies to
//! `FLOOD_CHUNK` nodes a run and tail-calls itself for the next ones, so
//! the verifier walks one chunk, not every slot.

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use netpath_common::NODE_CAPACITY;

use crate::{
    maps::{CONFIG, FLOOD},
    overlay::{self, FLOOD_CHUNK},
};

/// The skb's control block word that carries the next node's index from
/// one run to the next (the port program sets it to 0).
pub const NEXT_NODE_CB: usize = 0;

#[classifier]
pub fn netpath_flood(ctx: TcContext) -> i32 {
    // SAFETY: the context pointer is valid for the program's run.
    let first = unsafe { (*ctx.skb.skb).cb[NEXT_NODE_CB] };
    if let Some(config) = CONFIG.get(0)
        && overlay::flood_chunk(&ctx, &config.overlay, first)
    {
        let next = first.saturating_add(FLOOD_CHUNK);
        if next < NODE_CAPACITY {
            // SAFETY: as above; the slot holds this program, and a tail
            // call that fails (the kernel's limit) ends the run here.
            unsafe {
                (*ctx.skb.skb).cb[NEXT_NODE_CB] = next;
                FLOOD.tail_call(&ctx, 0);
            }
        }
    }
    // The frame itself goes on to the bridge, which floods it to this
    // node's ports.
    TC_ACT_OK
}
