//! Every exec on the host, with its time: runc, containerd-shim, iptables and the container's
//! entrypoint show when each start-up phase happened, as the kernel saw it.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_comm, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map},
    maps::RingBuf,
    programs::BtfTracePointContext,
};
use profiler_common::exec::ExecEvent;

#[map]
static EXEC_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 18, 0);

#[btf_tracepoint(function = "sched_process_exec")]
pub fn exec_event(ctx: BtfTracePointContext) -> i32 {
    let Some(mut e) = EXEC_EVENTS.reserve::<ExecEvent>(0) else {
        return 0;
    };
    // (struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
    let ppid = ctx.arg::<u64>(1) as u32;
    e.write(ExecEvent {
        // SAFETY: helper without preconditions.
        ts: unsafe { bpf_ktime_get_ns() },
        pid: ctx.tgid(),
        ppid,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    });
    e.submit(0);
    0
}
