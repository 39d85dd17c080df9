//! Process exec and thread-rename events (sched:sched_process_exec, task:task_rename), for
//! start-up phases the kernel sees.

/// `ExecEvent::kind`: a program was exec'd.
pub const KIND_EXEC: u32 = 0;
/// `ExecEvent::kind`: a thread named itself (QEMU names its vCPU threads `CPU n/KVM|TCG`).
pub const KIND_RENAME: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    /// CLOCK_MONOTONIC, ns (bpf_ktime_get_ns).
    pub ts: u64,
    /// Thread group (process) id.
    pub pid: u32,
    /// exec: the pid before the exec; rename: the thread's id.
    pub ppid: u32,
    /// The new program's name (exec) or the thread's new name (rename).
    pub comm: [u8; 16],
    pub kind: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for ExecEvent {}
