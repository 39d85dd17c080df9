//! Recording into the shared log-linear histograms (`profiler_common::hist`).

use aya_ebpf::maps::{Array, PerCpuArray};
use profiler_common::hist::{HIST_BUCKETS, Hist, bucket_index};

/// Adds one sample of `ns` to histogram `index` of `map`, on this CPU.
#[inline(always)]
pub fn record(map: &PerCpuArray<Hist>, index: u32, ns: u64) {
    let i = bucket_index(ns) as usize;
    // Explicit bound the verifier can see on the pointer offset (bucket_index already clamps).
    if i >= HIST_BUCKETS as usize {
        return;
    }
    if let Some(h) = map.get_ptr_mut(index) {
        // SAFETY: a live per-CPU map value, only touched by this CPU (no preemption in BPF
        // tracing programs), and `i` is in bounds.
        unsafe {
            let b = (*h).buckets.as_mut_ptr().add(i);
            *b += 1;
        }
    }
}

/// Adds one sample of `ns` to histogram `index` of a map shared by all CPUs, with an atomic
/// add: its memory does not grow with the CPU count, and the overhead budget bounds how often
/// followed events contend for a line.
#[inline(always)]
pub fn record_shared(map: &Array<Hist>, index: u32, ns: u64) {
    let i = bucket_index(ns) as usize;
    if i >= HIST_BUCKETS as usize {
        return;
    }
    if let Some(h) = map.get_ptr_mut(index) {
        // SAFETY: a live array value and `i` is in bounds; the add is atomic.
        unsafe {
            let b = (*h).buckets.as_mut_ptr().add(i);
            // The BPF target has no `AtomicU64::fetch_add`; the intrinsic lowers to an atomic add.
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                b, 1,
            );
        }
    }
}
