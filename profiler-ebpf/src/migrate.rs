//! Live migration's kernel side (user side: profiler/src/probes/migrate.rs): what QMP cannot
//! see. The migration stream's bytes per time bucket, as the source QEMU's sends and the
//! destination's receives return on the migration's TCP port; and each vCPU thread's runs on
//! the host's clock, so the source's last run and the destination's first are known.

use aya_ebpf::{
    Global,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap},
    programs::RawTracePointContext,
};
use profiler_common::migrate::{
    BUCKETS, COUNT_DST_BYTES, COUNT_DST_CALLS, COUNT_LATE, COUNT_SRC_BYTES, COUNT_SRC_CALLS,
    COUNTERS, DESTINATION, MigrateConfig, RUNS, SOURCE, VcpuRuns,
};

/// The two QEMUs, the port and offsets, set by the loader once both QEMUs run.
#[unsafe(no_mangle)]
static MIGRATE_CONFIG: Global<MigrateConfig> = Global::new(MigrateConfig {
    src_tgid: 0,
    dst_tgid: 0,
    port: 0,
    off_task_pid: 0,
    off_sk_num: 0,
    off_sk_dport: 0,
    start_ns: 0,
    bucket_ns: 1,
});

/// Bytes per time bucket: the source's sends at [0, BUCKETS), the destination's receives after.
#[map]
static MIGRATE_BYTES: Array<u64> = Array::with_max_entries(2 * BUCKETS, 0);
#[map]
static MIGRATE_COUNTERS: Array<u64> = Array::with_max_entries(COUNTERS, 0);
/// vCPU thread id -> its runs; user space enters the threads (query-cpus-fast).
#[map]
static MIGRATE_VCPUS: HashMap<u32, VcpuRuns> = HashMap::with_max_entries(64, 0);
/// Switch-ins from this time (ktime) on count as a thread's first (user space sets it when
/// the migration starts).
#[map]
static MIGRATE_ARM: Array<u64> = Array::with_max_entries(1, 0);

#[inline(always)]
fn add(map: &Array<u64>, i: u32, v: u64) {
    if let Some(p) = map.get_ptr_mut(i) {
        // SAFETY: a live array value; the add is atomic (several CPUs may send at once).
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                p, v,
            );
        }
    }
}

#[inline(always)]
fn read<T>(base: u64, off: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel tolerates any address.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).ok() }
}

/// A send (the source QEMU's) or a receive (the destination's) of `len` bytes on `sk`
/// returned in the current task. A destination of tgid 0 is any process but the source (its
/// QEMU is started by libvirt inside the migration): the port tells it.
#[inline(always)]
fn on_io(sk: u64, len: i64, side: u32) {
    if len <= 0 {
        return;
    }
    let c = MIGRATE_CONFIG.load();
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let ours = if side == SOURCE {
        tgid == c.src_tgid
    } else {
        tgid == c.dst_tgid || (c.dst_tgid == 0 && tgid != c.src_tgid)
    };
    if !ours {
        return;
    }
    // The migration's connection only (QMP and the consoles are other sockets): the source's
    // peer port, the destination's own.
    let port = c.port as u16;
    let on_port = if side == SOURCE {
        u16::from_be(read(sk, c.off_sk_dport).unwrap_or(0)) == port
    } else {
        read::<u16>(sk, c.off_sk_num).unwrap_or(0) == port
    };
    if !on_port {
        return;
    }
    let len = len as u64;
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let b = now.saturating_sub(c.start_ns) / c.bucket_ns.max(1);
    if b < BUCKETS as u64 {
        add(&MIGRATE_BYTES, side * BUCKETS + b as u32, len);
    } else {
        add(&MIGRATE_COUNTERS, COUNT_LATE, len);
    }
    let (bytes, calls) = if side == SOURCE {
        (COUNT_SRC_BYTES, COUNT_SRC_CALLS)
    } else {
        (COUNT_DST_BYTES, COUNT_DST_CALLS)
    };
    add(&MIGRATE_COUNTERS, bytes, len);
    add(&MIGRATE_COUNTERS, calls, 1);
}

/// (sk, ret, flags): the source's sends on the migration connection.
#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn migrate_send(ctx: RawTracePointContext) -> i32 {
    on_io(ctx.arg(0), ctx.arg::<i64>(1) as i32 as i64, SOURCE);
    0
}

/// (sk, ret, flags): the destination's receives on it.
#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn migrate_recv(ctx: RawTracePointContext) -> i32 {
    on_io(ctx.arg(0), ctx.arg::<i64>(1) as i32 as i64, DESTINATION);
    0
}

/// The slot of a thread's current run: the ring's latest on the source, the n-th after the
/// arm on the destination (none past `RUNS`, or before the arm).
#[inline(always)]
fn slot(r: &VcpuRuns) -> Option<usize> {
    let i = if r.side == DESTINATION {
        if r.armed_runs == 0 || r.armed_runs > RUNS as u64 {
            return None;
        }
        (r.armed_runs - 1) as usize
    } else {
        if r.runs == 0 {
            return None;
        }
        ((r.runs - 1) % RUNS as u64) as usize
    };
    (i < RUNS).then_some(i)
}

/// (preempt, prev, next, prev_state): prev is the current task; a watched thread's run ends
/// when it is switched out and starts when it is switched in.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn migrate_switch(ctx: RawTracePointContext) -> i32 {
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let prev = bpf_get_current_pid_tgid() as u32;
    if let Some(r) = MIGRATE_VCPUS.get_ptr_mut(prev) {
        // SAFETY: a live map value; only its own thread's switches write it, one CPU at a time.
        let r = unsafe { &mut *r };
        if let Some(i) = slot(r)
            && r.end[i] == 0
        {
            r.end[i] = now;
        }
    }
    let next: u64 = ctx.arg(2);
    let Some(pid) = read::<u32>(next, MIGRATE_CONFIG.load().off_task_pid) else {
        return 0;
    };
    if let Some(r) = MIGRATE_VCPUS.get_ptr_mut(pid) {
        // SAFETY: as above.
        let r = unsafe { &mut *r };
        r.runs += 1;
        if let Some(&arm) = MIGRATE_ARM.get(0)
            && arm != 0
            && now >= arm
        {
            r.armed_runs += 1;
        }
        if let Some(i) = slot(r) {
            r.start[i] = now;
            r.end[i] = 0;
        }
    }
    0
}
