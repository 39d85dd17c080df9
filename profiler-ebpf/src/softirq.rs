//! NET_RX / NET_TX softirq timing, per CPU: raise-to-entry delay, run time, and packets taken
//! per NET_RX run. A flow whose softirq work all lands on one CPU is serialised there.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::PerCpuArray,
    programs::{BtfTracePointContext, RawTracePointContext},
};
use profiler_common::{
    hist::Hist,
    softirq::{HIST_SLOTS, NET_RX, NET_TX, slot},
};

use crate::hist::record;

#[repr(C)]
#[derive(Clone, Copy)]
struct CpuState {
    raised: [u64; 2],
    entered: [u64; 2],
    packets: u64,
}

#[map]
static SOFTIRQ_STATE: PerCpuArray<CpuState> = PerCpuArray::with_max_entries(1, 0);
#[map]
static SOFTIRQ_HIST: PerCpuArray<Hist> = PerCpuArray::with_max_entries(HIST_SLOTS, 0);

/// 0 for NET_TX, 1 for NET_RX, None for the softirqs we do not follow.
#[inline(always)]
fn which(vec: u64) -> Option<usize> {
    match vec as u32 {
        NET_TX => Some(0),
        NET_RX => Some(1),
        _ => None,
    }
}

#[inline(always)]
fn state() -> Option<&'static mut CpuState> {
    // SAFETY: per-CPU value, this CPU only.
    SOFTIRQ_STATE.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// Called by the net tracer for every netif_receive_skb: counts packets of this NET_RX run.
#[inline(always)]
pub fn packet_received() {
    if let Some(s) = state()
        && s.entered[1] != 0
    {
        s.packets += 1;
    }
}

fn on_raise(vec: u64) {
    let (Some(i), Some(s)) = (which(vec), state()) else {
        return;
    };
    if s.raised[i] == 0 {
        // SAFETY: helper without preconditions.
        s.raised[i] = unsafe { bpf_ktime_get_ns() };
    }
}

fn on_entry(vec: u64) {
    let (Some(i), Some(s)) = (which(vec), state()) else {
        return;
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if s.raised[i] != 0 {
        record(&SOFTIRQ_HIST, slot(i as u32, 0), now - s.raised[i]);
        s.raised[i] = 0;
    }
    s.entered[i] = now;
    if i == 1 {
        s.packets = 0;
    }
}

fn on_exit(vec: u64) {
    let (Some(i), Some(s)) = (which(vec), state()) else {
        return;
    };
    if s.entered[i] == 0 {
        return;
    }
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    record(&SOFTIRQ_HIST, slot(i as u32, 1), now - s.entered[i]);
    s.entered[i] = 0;
    if i == 1 {
        record(&SOFTIRQ_HIST, slot(1, 2), s.packets);
    }
}

macro_rules! softirq_programs {
    ($tp:literal, $btf:ident, $raw:ident, $f:ident) => {
        #[btf_tracepoint(function = $tp)]
        pub fn $btf(ctx: BtfTracePointContext) -> i32 {
            $f(ctx.arg::<u64>(0) & 0xffff_ffff);
            0
        }

        #[raw_tracepoint(tracepoint = $tp)]
        pub fn $raw(ctx: RawTracePointContext) -> i32 {
            $f(ctx.arg::<u64>(0) & 0xffff_ffff);
            0
        }
    };
}

softirq_programs!(
    "softirq_raise",
    softirq_raise_btf,
    softirq_raise_raw,
    on_raise
);
softirq_programs!(
    "softirq_entry",
    softirq_entry_btf,
    softirq_entry_raw,
    on_entry
);
softirq_programs!("softirq_exit", softirq_exit_btf, softirq_exit_raw, on_exit);
