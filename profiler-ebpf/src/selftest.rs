//! Programs that exist to prove shared code passes the verifier, loaded by the integration tests.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns, macros::map, macros::tracepoint, maps::Array,
    programs::TracePointContext,
};
use profiler_common::hist::Hist;

use crate::hist::record_shared;

#[map]
static SELFTEST_HIST: Array<Hist> = Array::with_max_entries(1, 0);

/// Records a pseudo-random value (low 24 bits of the clock: 0 .. 16.7 ms) per hit.
#[tracepoint]
pub fn selftest_hist(_ctx: TracePointContext) -> u32 {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let ns = unsafe { bpf_ktime_get_ns() } & 0xff_ffff;
    record_shared(&SELFTEST_HIST, 0, ns);
    0
}
