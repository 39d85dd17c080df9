//! Tiny programs the doctor loads and attaches, one per mechanism, to learn what the kernel allows.
//! Each counts its hits, so the doctor knows it not only attached but fired.
//! All of them sit on the transmit path of one UDP datagram on loopback.

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action::XDP_PASS},
    macros::{
        btf_tracepoint, classifier, fentry, fexit, kprobe, kretprobe, map, raw_tracepoint,
        tracepoint, xdp,
    },
    maps::Array,
    programs::{
        BtfTracePointContext, FEntryContext, FExitContext, ProbeContext, RawTracePointContext,
        RetProbeContext, TcContext, TracePointContext, XdpContext,
    },
};
use profiler_common::probe::{PROBE_SLOTS, ProbeSlot};

#[map]
static PROBE_HITS: Array<u64> = Array::with_max_entries(PROBE_SLOTS, 0);

#[inline(always)]
fn hit(slot: ProbeSlot) {
    if let Some(p) = PROBE_HITS.get_ptr_mut(slot as u32) {
        // A racy increment is enough: the doctor only asks whether the count is above zero.
        // SAFETY: the pointer is into a live array map value.
        unsafe { *p += 1 };
    }
}

#[kprobe]
pub fn doctor_kprobe(_ctx: ProbeContext) -> u32 {
    hit(ProbeSlot::Kprobe);
    0
}

#[kretprobe]
pub fn doctor_kretprobe(_ctx: RetProbeContext) -> u32 {
    hit(ProbeSlot::Kretprobe);
    0
}

#[fentry(function = "__dev_queue_xmit")]
pub fn doctor_fentry(_ctx: FEntryContext) -> u32 {
    hit(ProbeSlot::Fentry);
    0
}

#[fexit(function = "__dev_queue_xmit")]
pub fn doctor_fexit(_ctx: FExitContext) -> u32 {
    hit(ProbeSlot::Fexit);
    0
}

#[btf_tracepoint(function = "net_dev_queue")]
pub fn doctor_tp_btf(_ctx: BtfTracePointContext) -> i32 {
    hit(ProbeSlot::TpBtf);
    0
}

#[raw_tracepoint(tracepoint = "net_dev_queue")]
pub fn doctor_raw_tp(_ctx: RawTracePointContext) -> i32 {
    hit(ProbeSlot::RawTracepoint);
    0
}

#[tracepoint]
pub fn doctor_tracepoint(_ctx: TracePointContext) -> u32 {
    hit(ProbeSlot::Tracepoint);
    0
}

#[tracepoint]
pub fn doctor_kvm_exit(_ctx: TracePointContext) -> u32 {
    hit(ProbeSlot::KvmExit);
    0
}

#[classifier]
pub fn doctor_tc(_ctx: TcContext) -> i32 {
    hit(ProbeSlot::Tc);
    TC_ACT_OK
}

#[xdp]
pub fn doctor_xdp(_ctx: XdpContext) -> u32 {
    hit(ProbeSlot::Xdp);
    XDP_PASS
}
