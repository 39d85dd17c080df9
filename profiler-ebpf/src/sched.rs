//! Run-queue latency of chosen processes (a workload in a container or on the host): from a
//! wakeup, or from being preempted while runnable, to running again. What CPU contention and
//! cgroup limits cost a workload shows up here.

use aya_ebpf::{
    Global,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap},
    programs::BtfTracePointContext,
};
use profiler_common::{hist::Hist, sched::SchedConfig};

use crate::hist::record_shared;

/// task_struct offsets, set by the loader (profiler/src/probes/sched.rs).
#[unsafe(no_mangle)]
static SCHED_CONFIG: Global<SchedConfig> = Global::new(SchedConfig {
    off_task_pid: 0,
    off_task_tgid: 0,
    off_task_state: 0,
    _pad: 0,
});

/// Processes (tgid) to watch, written by user space.
#[map]
static SCHED_TGIDS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);
/// Thread id -> when it became runnable.
#[map]
static SCHED_READY: HashMap<u32, u64> = HashMap::with_max_entries(16384, 0);
#[map]
static SCHED_HIST: Array<Hist> = Array::with_max_entries(1, 0);

#[inline(always)]
fn field<T>(task: u64, off: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel tolerates any address.
    unsafe { bpf_probe_read_kernel((task + off as u64) as *const T).ok() }
}

/// (pid, tgid) of a watched task.
#[inline(always)]
fn watched(task: u64) -> Option<u32> {
    let tgid: u32 = field(task, SCHED_CONFIG.load().off_task_tgid)?;
    // SAFETY: the map value is not used.
    unsafe { SCHED_TGIDS.get(tgid) }?;
    field(task, SCHED_CONFIG.load().off_task_pid)
}

fn runnable(task: u64) {
    if let Some(pid) = watched(task) {
        // SAFETY: helper without preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        let _ = SCHED_READY.insert(pid, now, 0);
    }
}

#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup(ctx: BtfTracePointContext) -> i32 {
    runnable(ctx.arg::<u64>(0));
    0
}

#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: BtfTracePointContext) -> i32 {
    runnable(ctx.arg::<u64>(0));
    0
}

/// sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next, ...)
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    let (prev, next): (u64, u64) = (ctx.arg(1), ctx.arg(2));
    // Preempted while still runnable (state 0): it waits in the run queue from now.
    if field::<u32>(prev, SCHED_CONFIG.load().off_task_state) == Some(0) {
        runnable(prev);
    }
    if let Some(pid) = watched(next) {
        // SAFETY: helper without preconditions; the value is copied out at once.
        let now = unsafe { bpf_ktime_get_ns() };
        if let Some(&t) = unsafe { SCHED_READY.get(pid) } {
            record_shared(&SCHED_HIST, 0, now.saturating_sub(t));
            let _ = SCHED_READY.remove(pid);
        }
    }
    0
}
