//! Log-linear (HDR-style) latency histograms kept in per-CPU array maps.
//!
//! Values below `2^(SUB_BITS+1)` ns get one bucket each. Above that, every power of two
//! `[2^k, 2^(k+1))` is split into `2^SUB_BITS` equal sub-buckets of width `2^(k-SUB_BITS)`, so
//! the bucket's midpoint is within `1/2^(SUB_BITS+1)` of any value in it. The layout is the
//! same as `hdrhistogram` with 2 significant figures (256 sub-buckets, lowest value 1), so
//! merged buckets land in exactly one HDR bucket each and add no second rounding.

/// Linear sub-buckets per power of two: `2^7 = 128`.
pub const HIST_SUB_BITS: u32 = 7;
const SUB: u64 = 1 << HIST_SUB_BITS;
/// Highest power of two with its own sub-buckets: `[2^33, 2^34)` ns holds 10 s (≈ 2^33.2).
pub const HIST_TOP_BIT: u32 = 33;
/// Values at or above this (≈ 17.2 s) go into the overflow bucket.
pub const HIST_OVERFLOW_NS: u64 = 1 << (HIST_TOP_BIT + 1);
/// The last bucket: everything `>= HIST_OVERFLOW_NS`.
pub const HIST_OVERFLOW: u32 = ((HIST_TOP_BIT - HIST_SUB_BITS + 2) as u64 * SUB) as u32;
/// 128 exact buckets for 0..128, 128 per power of two from 2^7 to 2^33, one overflow bucket.
pub const HIST_BUCKETS: u32 = HIST_OVERFLOW + 1;

// The kernel refuses per-CPU values above PCPU_MIN_UNIT_SIZE (32 KiB); this is 28 KiB + 8.
const _: () = assert!(core::mem::size_of::<Hist>() < 32 * 1024);
const _: () = assert!(core::mem::size_of::<Hist>() == HIST_BUCKETS as usize * 8);
// The requirement: 1% resolution up to 10 s.
const _: () = assert!(HIST_OVERFLOW_NS > 10_000_000_000);

/// One histogram: a count per bucket. Per-CPU in the kernel, so plain `+= 1` is race-free.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Hist {
    pub buckets: [u64; HIST_BUCKETS as usize],
}

impl Hist {
    pub const ZERO: Hist = Hist {
        buckets: [0; HIST_BUCKETS as usize],
    };
}

impl Default for Hist {
    fn default() -> Self {
        Self::ZERO
    }
}

#[cfg(feature = "user")]
// SAFETY: plain old data, `#[repr(C)]`, no padding, every bit pattern valid.
unsafe impl aya::Pod for Hist {}

/// Index of the highest set bit (0 for 0): a fixed 6-step binary search, no loop for the verifier.
#[inline(always)]
fn msb(mut v: u64) -> u32 {
    let mut n = 0;
    if v >= 1 << 32 {
        v >>= 32;
        n += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        n += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        n += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        n += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        n += 2;
    }
    if v >= 1 << 1 {
        n += 1;
    }
    n
}

/// The bucket of a value in ns; always `< HIST_BUCKETS`. No loops, floats or division.
#[inline(always)]
pub fn bucket_index(ns: u64) -> u32 {
    if ns < 2 * SUB {
        // Exact buckets; also the first log-linear octave, whose width is 1.
        return ns as u32;
    }
    if ns >= HIST_OVERFLOW_NS {
        return HIST_OVERFLOW;
    }
    let k = msb(ns); // 8..=HIST_TOP_BIT here
    let shift = k - HIST_SUB_BITS;
    // (ns >> shift) is in [SUB, 2*SUB): the octave's leading 1 plus the sub-bucket bits.
    let sub = ((ns >> shift) as u32) & (SUB as u32 - 1);
    let i = (shift + 1) * SUB as u32 + sub;
    // Redundant for valid input, but keeps the result visibly bounded for the verifier.
    if i < HIST_OVERFLOW { i } else { HIST_OVERFLOW }
}

/// Lowest and highest value (inclusive) that fall into bucket `i`.
/// Indices past the end are treated as the overflow bucket.
pub fn bucket_range(i: u32) -> (u64, u64) {
    if i >= HIST_OVERFLOW {
        return (HIST_OVERFLOW_NS, u64::MAX);
    }
    let i = i as u64;
    if i < 2 * SUB {
        return (i, i);
    }
    let shift = i / SUB - 1; // octave 2^(shift+SUB_BITS)
    let lo = (SUB + i % SUB) << shift;
    (lo, lo + (1 << shift) - 1)
}

/// The value user space records for bucket `i`: the midpoint (rounded up, as HDR's
/// `median_equivalent`); for the overflow bucket its lower bound.
pub fn bucket_value(i: u32) -> u64 {
    let (lo, hi) = bucket_range(i);
    if i >= HIST_OVERFLOW {
        return lo;
    }
    lo + (hi - lo).div_ceil(2)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    fn rel_err(v: u64) -> f64 {
        let r = bucket_value(bucket_index(v));
        (r as f64 - v as f64).abs() / v as f64
    }

    #[test]
    fn layout() {
        assert_eq!(HIST_OVERFLOW, 3584);
        assert_eq!(HIST_BUCKETS, 3585);
        assert_eq!(bucket_range(HIST_OVERFLOW - 1).1, HIST_OVERFLOW_NS - 1);
    }

    #[test]
    fn msb_matches_leading_zeros() {
        for b in 0..64 {
            let v = 1u64 << b;
            for x in [v, v | (v >> 1), v.wrapping_sub(1).max(1), (v - 1) | v] {
                assert_eq!(msb(x), 63 - x.leading_zeros(), "{x}");
            }
        }
        assert_eq!(msb(0), 0);
        assert_eq!(msb(u64::MAX), 63);
    }

    #[test]
    fn extremes() {
        assert_eq!(bucket_index(0), 0);
        assert_eq!(bucket_index(u64::MAX), HIST_OVERFLOW);
        assert_eq!(bucket_index(HIST_OVERFLOW_NS), HIST_OVERFLOW);
        assert_eq!(bucket_index(HIST_OVERFLOW_NS - 1), HIST_OVERFLOW - 1);
        assert_eq!(bucket_range(u32::MAX), (HIST_OVERFLOW_NS, u64::MAX));
        for b in 0..64 {
            assert!(bucket_index(1 << b) < HIST_BUCKETS);
        }
    }

    #[test]
    fn ranges_tile_the_line() {
        // Consecutive buckets are adjacent and non-empty, and each one's ends map back to it.
        let mut next = 0u64;
        for i in 0..HIST_BUCKETS {
            let (lo, hi) = bucket_range(i);
            assert_eq!(lo, next, "bucket {i}");
            assert!(lo <= hi);
            assert_eq!(bucket_index(lo), i);
            assert_eq!(bucket_index(hi), i);
            let v = bucket_value(i);
            assert!(lo <= v && v <= hi);
            next = hi.wrapping_add(1);
        }
        assert_eq!(next, 0, "last bucket ends at u64::MAX");
    }

    #[test]
    fn monotonic_and_contained_dense() {
        // Every value up to 2^20, then a geometric sweep (step ~0.01%) to 2^40.
        let mut prev = 0;
        let mut check = |v: u64| {
            let i = bucket_index(v);
            assert!(i < HIST_BUCKETS);
            assert!(i >= prev, "not monotonic at {v}");
            let (lo, hi) = bucket_range(i);
            assert!(lo <= v && v <= hi, "{v} not in bucket {i} [{lo}, {hi}]");
            prev = i;
        };
        for v in 0..1 << 20 {
            check(v);
        }
        let mut v = 1u64 << 20;
        while v < 1 << 40 {
            check(v);
            v += v / 10_000 + 1;
        }
    }

    #[test]
    fn power_of_two_boundaries() {
        for b in 1..64 {
            let p = 1u64 << b;
            for v in [p - 1, p, p + 1] {
                let i = bucket_index(v);
                let (lo, hi) = bucket_range(i);
                assert!(lo <= v && v <= hi, "{v}");
            }
            assert!(bucket_index(p - 1) <= bucket_index(p));
            assert!(bucket_index(p) <= bucket_index(p + 1));
        }
    }

    #[test]
    fn relative_error_within_one_percent_100ns_to_10s() {
        const LO: u64 = 100;
        const HI: u64 = 10_000_000_000;
        let mut worst = 0f64;
        // Dense: every value to 2^20, then a geometric sweep.
        for v in LO..1 << 20 {
            worst = worst.max(rel_err(v));
        }
        let mut v = 1u64 << 20;
        while v <= HI {
            worst = worst.max(rel_err(v));
            v += v / 100_000 + 1;
        }
        // Power-of-two boundaries and every bucket's edges, where the error peaks.
        for b in 7..=HIST_TOP_BIT {
            for v in [(1u64 << b) - 1, 1 << b, (1 << b) + 1] {
                if (LO..=HI).contains(&v) {
                    worst = worst.max(rel_err(v));
                }
            }
        }
        for i in 0..HIST_OVERFLOW {
            let (lo, hi) = bucket_range(i);
            for v in [lo, hi] {
                if (LO..=HI).contains(&v) {
                    worst = worst.max(rel_err(v));
                }
            }
        }
        worst = worst.max(rel_err(HI));
        std::println!("worst relative error 100 ns..10 s: {:.4}%", worst * 100.0);
        assert!(worst <= 1.0 / 256.0 + 1e-12, "{worst}");
        assert!(worst < 0.01);
    }
}
