//! The one way the programs read and write a frame's headers: a header at
//! an offset, handed out only once the frame is known to hold all of it.
//! Both hooks, the source check and the overlay go through here.

use netpath_common::Counter;

/// The packet bytes `[data, end)` the program can address directly (in tc,
/// the skb's linear part; see the tc program's pull).
pub struct Frame {
    data: usize,
    end: usize,
}

impl Frame {
    /// The frame the context's `data()` and `data_end()` delimit. A helper
    /// that may move packet data (bpf_skb_pull_data() and the like) makes a
    /// frame taken before it stale: the verifier refuses its use after.
    #[inline(always)]
    pub fn new(data: usize, end: usize) -> Frame {
        Frame { data, end }
    }

    /// `data` and `end`, to hand the frame to a function of its own.
    #[inline(always)]
    pub fn bounds(&self) -> (usize, usize) {
        (self.data, self.end)
    }

    /// Bytes the program can address.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.end - self.data
    }

    /// The `T` at `offset`, if the frame holds all of it; a frame shorter
    /// than the header it announces is malformed.
    #[inline(always)]
    pub fn at<T>(&self, offset: usize) -> Result<&T, Counter> {
        // SAFETY: `ptr` only hands out bounds-checked pointers; every `T`
        // read here is bytes or a `repr(C)` struct of integers and byte
        // arrays (any bit pattern valid).
        self.ptr::<T>(offset).map(|ptr| unsafe { &*ptr })
    }

    /// The IPv6 extension header (hop-by-hop, routing or destination
    /// options: a next-header byte and a length in 8-byte units) at
    /// `offset`: the header after it, and where that begins.
    #[inline(always)]
    pub fn ipv6_extension(&self, offset: usize) -> Result<(u8, usize), Counter> {
        let ext: &[u8; 2] = self.at(offset)?;
        Ok((ext[0], offset + (ext[1] as usize + 1) * 8))
    }

    /// As [`Frame::at`], to rewrite the header in place (tc may write
    /// packet data: the kernel unclones the skb first).
    #[inline(always)]
    pub fn at_mut<T>(&mut self, offset: usize) -> Result<&mut T, Counter> {
        // SAFETY: as in `at`; `&mut self` keeps the borrow unique.
        self.ptr::<T>(offset).map(|ptr| unsafe { &mut *ptr })
    }

    /// The address of the `T` at `offset`, checked against the frame's end
    /// where the verifier can see it. Offsets stay far below 64 KiB (the
    /// verifier needs them bounded), hence the mask.
    #[inline(always)]
    fn ptr<T>(&self, offset: usize) -> Result<*mut T, Counter> {
        let start = self.data + (offset & 0xffff);
        if past(start, core::mem::size_of::<T>()) > self.end {
            return Err(Counter::DropMalformed);
        }
        Ok(start as *mut T)
    }
}

/// `addr + size`, computed where LLVM cannot see it: it would turn
/// `addr + 1 > end` into `addr >= end`, from which the verifier learns no
/// packet range and refuses the load that follows.
#[inline(always)]
fn past(mut addr: usize, size: usize) -> usize {
    // SAFETY: one ALU instruction on registers we own.
    unsafe {
        core::arch::asm!("{0} += {1}", inout(reg) addr, in(reg) size, options(pure, nomem, nostack))
    };
    addr
}
