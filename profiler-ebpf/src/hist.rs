//! Recording into the shared log-linear histograms (`profiler_common::hist`).

use aya_ebpf::maps::{Array, PerCpuArray};
use profiler_common::hist::{HIST_BUCKETS, Hist, bucket_index};

/// The bucket of `ns` in the histogram at `h`.
#[inline(always)]
fn bucket(h: Option<*mut Hist>, ns: u64) -> Option<*mut u64> {
    let i = bucket_index(ns) as usize;
    // Explicit bound the verifier can see on the pointer offset (bucket_index already clamps).
    if i >= HIST_BUCKETS as usize {
        return None;
    }
    // SAFETY: a live map value and `i` is in bounds.
    h.map(|h| unsafe { (*h).buckets.as_mut_ptr().add(i) })
}

/// Adds one sample of `ns` to histogram `index` of `map`, on this CPU.
#[inline(always)]
pub fn record(map: &PerCpuArray<Hist>, index: u32, ns: u64) {
    if let Some(b) = bucket(map.get_ptr_mut(index), ns) {
        // SAFETY: a per-CPU value, only touched by this CPU (no preemption in BPF tracing
        // programs).
        unsafe { *b += 1 };
    }
}

/// Adds one sample of `ns` to histogram `index` of a map shared by all CPUs, with an atomic
/// add: its memory does not grow with the CPU count, and the overhead budget bounds how often
/// followed events contend for a line (an atomic add measured no dearer than a plain one here).
#[inline(always)]
pub fn record_shared(map: &Array<Hist>, index: u32, ns: u64) {
    if let Some(b) = bucket(map.get_ptr_mut(index), ns) {
        // SAFETY: a live array value; the add is atomic. The BPF target has no
        // `AtomicU64::fetch_add`; the intrinsic lowers to an atomic add.
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                b, 1,
            );
        }
    }
}
