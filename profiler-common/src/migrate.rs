//! Live migration's kernel side (profiler-ebpf/src/migrate.rs, profiler/src/probes/migrate.rs):
//! the migration stream's bytes per time bucket, from sock:sock_send_length (the source QEMU)
//! and sock:sock_recv_length (the destination's), and the vCPU threads' runs from
//! sched:sched_switch.

/// Sides, the index of a bucket row and of a `VcpuRuns::side`.
pub const SOURCE: u32 = 0;
pub const DESTINATION: u32 = 1;

/// Time buckets per side in `MIGRATE_BYTES`; bytes past the last go to `COUNT_LATE`.
pub const BUCKETS: u32 = 1 << 17;

/// `MIGRATE_COUNTERS` slots: per side bytes and calls (exact, whatever the buckets).
pub const COUNT_SRC_BYTES: u32 = 0;
pub const COUNT_SRC_CALLS: u32 = 1;
pub const COUNT_DST_BYTES: u32 = 2;
pub const COUNT_DST_CALLS: u32 = 3;
/// Bytes that fell beyond the last bucket.
pub const COUNT_LATE: u32 = 4;
pub const COUNTERS: u32 = 5;

/// Runs kept per vCPU thread: a source thread's last ones (a ring), a destination thread's
/// first ones after `MIGRATE_ARM`.
pub const RUNS: usize = 32;

/// `MIGRATE_CONFIG`: set at load, after both QEMUs started.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MigrateConfig {
    pub src_tgid: u32,
    pub dst_tgid: u32,
    /// The migration's TCP port (host order): the source's peer port, the destination's own.
    pub port: u32,
    pub off_task_pid: u32,
    pub off_sk_num: u32,
    pub off_sk_dport: u32,
    /// bpf_ktime_get_ns at bucket 0.
    pub start_ns: u64,
    pub bucket_ns: u64,
}

/// One vCPU thread's runs (`MIGRATE_VCPUS`, keyed by thread id, entered by user space). A run
/// is a switch-in to the next switch-out: a vCPU thread also wakes for QEMU's work items
/// without running the guest, so user space picks the runs around STOP and RESUME.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct VcpuRuns {
    pub side: u32,
    pub _pad: u32,
    /// Switch-ins counted, and those at or after `MIGRATE_ARM`.
    pub runs: u64,
    pub armed_runs: u64,
    /// Source: a ring, slot `(runs - 1) % RUNS` the latest. Destination: the first `RUNS`
    /// runs after the arm, in order. End 0 while it runs.
    pub start: [u64; RUNS],
    pub end: [u64; RUNS],
}

impl Default for VcpuRuns {
    fn default() -> Self {
        Self {
            side: 0,
            _pad: 0,
            runs: 0,
            armed_runs: 0,
            start: [0; RUNS],
            end: [0; RUNS],
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: plain old data, `#[repr(C)]`, no implicit padding.
unsafe impl aya::Pod for MigrateConfig {}
#[cfg(feature = "user")]
// SAFETY: plain old data, `#[repr(C)]`, no implicit padding.
unsafe impl aya::Pod for VcpuRuns {}
