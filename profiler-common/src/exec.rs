//! Process exec events (sched:sched_process_exec), for start-up phases the kernel sees.

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    /// CLOCK_MONOTONIC, ns (bpf_ktime_get_ns).
    pub ts: u64,
    pub pid: u32,
    pub ppid: u32,
    /// The new program's name (task comm after exec).
    pub comm: [u8; 16],
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for ExecEvent {}
