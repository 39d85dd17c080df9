//! Every exec on the host, with its time: runc, containerd-shim, iptables and the container's
//! entrypoint show when each start-up phase happened, as the kernel saw it. Renames to `CPU n/...`,
//! when asked for, mark a VMM's vCPU threads coming up.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_comm, bpf_ktime_get_ns, bpf_probe_read_kernel_str_bytes},
    macros::{btf_tracepoint, map},
    maps::RingBuf,
    programs::BtfTracePointContext,
};
use profiler_common::exec::{ExecEvent, KIND_EXEC, KIND_RENAME};

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
        kind: KIND_EXEC,
        _pad: 0,
    });
    e.submit(0);
    0
}

#[btf_tracepoint(function = "task_rename")]
pub fn rename_event(ctx: BtfTracePointContext) -> i32 {
    // (struct task_struct *task, const char *comm): the thread renaming itself (prctl) is
    // current, which is how QEMU names its threads.
    let src: *const u8 = ctx.arg(1);
    let mut comm = [0u8; 16];
    // SAFETY: a kernel string the tracepoint hands over; the helper bounds the read.
    if unsafe { bpf_probe_read_kernel_str_bytes(src, &mut comm) }.is_err() {
        return 0;
    }
    // Only vCPU threads (`CPU 0/KVM`): every exec renames too, and the ring is drained late.
    if comm[..4] != *b"CPU " {
        return 0;
    }
    let Some(mut e) = EXEC_EVENTS.reserve::<ExecEvent>(0) else {
        return 0;
    };
    e.write(ExecEvent {
        // SAFETY: helper without preconditions.
        ts: unsafe { bpf_ktime_get_ns() },
        pid: ctx.tgid(),
        ppid: ctx.pid(),
        comm,
        kind: KIND_RENAME,
        _pad: 0,
    });
    e.submit(0);
    0
}
