//! Run-queue latency tracer's load-time configuration.

/// `SCHED_CONFIG`: task_struct offsets from this kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SchedConfig {
    pub off_task_pid: u32,
    pub off_task_tgid: u32,
    pub off_task_state: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
// SAFETY: plain old data, `#[repr(C)]`, no implicit padding.
unsafe impl aya::Pod for SchedConfig {}
