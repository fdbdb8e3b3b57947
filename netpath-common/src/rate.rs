//! Rate limits of a container, both ways (the CNI `bandwidth` capability):
//! a policer the programs run on every path a frame takes to or from the
//! container (redirect, tunnel, bridge), shared by every CPU.
//!
//! A policer, not a shaper: the fast path hands frames from one namespace
//! to another without a queue (`bpf_redirect_peer` skips the host veth's
//! qdisc, which is where the reference `bandwidth` plugin's TBF sits), so
//! a frame over the rate is dropped, and TCP backs off as it does from a
//! full queue.

/// One direction's limit, as the generic cell rate algorithm keeps it: a
/// frame of `len` bytes costs `len` bytes' time at the rate, and is let
/// through if the time it would be sent (`next_ns` or now, whichever is
/// later) is at most `burst_ns` ahead of now. `bytes_per_s` 0: no limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RateLimit {
    pub bytes_per_s: u64,
    /// The bucket's depth, as the time the rate takes to send it.
    pub burst_ns: u64,
    /// When everything let through so far has been sent at the rate
    /// (`bpf_ktime_get_ns()` time); kept by the programs.
    pub next_ns: u64,
}

/// The smallest bucket: a GSO packet (64 KiB) and its headers must fit, or
/// TCP over tc would never get one through.
pub const MIN_BURST_BYTES: u64 = 96 * 1024;

/// The smallest bucket as time at the rate: a policer drops where a
/// shaper would queue, and TCP over a bucket shallower than this falls to a
/// fraction of the rate (measured on veth, one stream at 40 Mbit/s: a 50 ms
/// bucket carried 23% of the rate, 200 ms 92-98%, 400 ms 101%).
pub const MIN_BURST_NS: u64 = 200_000_000;

/// The largest bucket, as time at the rate: containerd (and the kubelet)
/// pass 2^32-1 bits of burst for "no burst given", which would let a pod
/// send half a gigabyte at line rate before its rate held.
pub const MAX_BURST_NS: u64 = 1_000_000_000;

impl RateLimit {
    /// `bits_per_s` with a bucket of `burst_bits`, at least
    /// [`MIN_BURST_BYTES`] and [`MIN_BURST_NS`] of the rate and at most
    /// [`MAX_BURST_NS`] of it; None for a rate of 0 (CNI's "no limit").
    pub fn new(bits_per_s: u64, burst_bits: u64) -> Option<RateLimit> {
        let bytes_per_s = bits_per_s / 8;
        if bytes_per_s == 0 {
            return None;
        }
        // Bounded first, so the product below cannot overflow.
        let burst = (burst_bits / 8).clamp(MIN_BURST_BYTES, u32::MAX as u64);
        let cap = MAX_BURST_NS.max(Self::ns_for(MIN_BURST_BYTES, bytes_per_s));
        Some(RateLimit {
            bytes_per_s,
            burst_ns: Self::ns_for(burst, bytes_per_s).max(MIN_BURST_NS).min(cap),
            next_ns: 0,
        })
    }

    /// Whether a frame of `len` bytes may pass at `now_ns`, taking its cost
    /// if so. Two CPUs at once may both take from the same state (one
    /// frame's cost then lost): a frame over the rate per race, no more.
    #[inline(always)]
    pub fn admit(&mut self, now_ns: u64, len: u32) -> bool {
        if self.bytes_per_s == 0 {
            return true;
        }
        let start = if self.next_ns > now_ns {
            self.next_ns
        } else {
            now_ns
        };
        let next = start + Self::ns_for(len as u64, self.bytes_per_s);
        if next - now_ns > self.burst_ns {
            return false;
        }
        self.next_ns = next;
        true
    }

    #[inline(always)]
    fn ns_for(bytes: u64, bytes_per_s: u64) -> u64 {
        bytes * 1_000_000_000 / bytes_per_s
    }
}

/// A port's limits: `egress` on what its container sends, `ingress` on
/// what it is sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PortRates {
    pub egress: RateLimit,
    pub ingress: RateLimit,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What passes in `seconds` of frames of `len` bytes offered back to
    /// back at `offered_bytes_per_s`.
    fn passed(limit: &mut RateLimit, offered_bytes_per_s: u64, len: u32, seconds: u64) -> u64 {
        let gap = len as u64 * 1_000_000_000 / offered_bytes_per_s;
        let mut bytes = 0;
        let mut now = 1_000;
        while now < seconds * 1_000_000_000 {
            if limit.admit(now, len) {
                bytes += len as u64;
            }
            now += gap;
        }
        bytes
    }

    #[test]
    fn over_a_second_the_rate_and_one_bucket_pass() {
        // 80 Mbit/s with a 40 Mbit bucket, offered 1 Gbit/s of 1500-byte frames.
        let mut limit = RateLimit::new(80_000_000, 40_000_000).unwrap();
        let bytes = passed(&mut limit, 125_000_000, 1500, 10);
        let expected = 10 * 10_000_000 + 5_000_000;
        assert!(bytes.abs_diff(expected) < 3_000, "{bytes} vs {expected}");
    }

    #[test]
    fn below_the_rate_everything_passes() {
        let mut limit = RateLimit::new(80_000_000, 0).unwrap();
        let offered = 5_000_000; // 40 Mbit/s
        assert_eq!(passed(&mut limit, offered, 1000, 2), 2 * offered);
    }

    #[test]
    fn a_gso_packet_always_fits_the_bucket_and_huge_bursts_are_capped() {
        let limit = RateLimit::new(8_000, 8).unwrap(); // 1 kB/s, a 1-byte burst asked
        let mut full = limit;
        assert!(
            full.admit(1, 65_535 + 200),
            "a 64 KiB GSO packet never passed"
        );
        let capped = RateLimit::new(80_000_000, u32::MAX as u64).unwrap();
        assert_eq!(capped.burst_ns, MAX_BURST_NS);
        let floored = RateLimit::new(80_000_000, 800_000).unwrap(); // 10 ms asked
        assert_eq!(floored.burst_ns, MIN_BURST_NS);
        assert_eq!(
            RateLimit::new(7, 100),
            None,
            "below a byte a second is no rate"
        );
        assert_eq!(RateLimit::new(0, 100), None);
    }
}
