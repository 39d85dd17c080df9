//! Live migration's kernel side (user side of profiler-ebpf/src/migrate.rs): the migration
//! stream's bytes per time bucket on both QEMUs, and the vCPU threads' runs. Loaded once both
//! QEMUs run (their pids and the port are load-time configuration).

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Btf as AyaBtf, Ebpf,
    maps::{Array, HashMap, MapData},
};
use profiler_common::{
    migrate::{BUCKETS, COUNTERS, MigrateConfig, VcpuRuns},
    names::{map, program as prog},
};

use crate::attach::{self, Point};

pub const POINTS: &[Point] = &[
    crate::point!(
        RawTracepoint,
        "sock",
        "sock_send_length",
        prog::MIGRATE_SEND
    ),
    crate::point!(
        RawTracepoint,
        "sock",
        "sock_recv_length",
        prog::MIGRATE_RECV
    ),
    crate::point!(RawTracepoint, "sched", "sched_switch", prog::MIGRATE_SWITCH),
];

/// CLOCK_MONOTONIC, ns: bpf_ktime_get_ns's clock.
pub fn ktime_ns() -> u64 {
    crate::kernel::monotonic_ns()
}

/// CLOCK_REALTIME minus CLOCK_MONOTONIC, ns (QMP's timestamps are on the first).
pub fn realtime_offset_ns() -> i64 {
    let a = ktime_ns() as i64;
    let r = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    let b = ktime_ns() as i64;
    r - (a + b) / 2
}

pub struct MigrateTracer {
    ebpf: Ebpf,
    pub start_ns: u64,
    pub bucket_ns: u64,
}

/// What the kernel recorded, for a time range.
#[derive(Clone, Debug, Default)]
pub struct Raw {
    pub start_ns: u64,
    pub bucket_ns: u64,
    /// The first bucket read; `sent[i]`, `received[i]` are bucket `first + i`.
    pub first: u64,
    pub sent: Vec<u64>,
    pub received: Vec<u64>,
    pub counters: [u64; COUNTERS as usize],
    /// (thread id, its runs).
    pub vcpus: Vec<(u32, VcpuRuns)>,
}

impl MigrateTracer {
    pub fn start(src_tgid: u32, dst_tgid: u32, port: u16, bucket_ns: u64) -> Result<Self> {
        let btf = crate::kernel::btf::Btf::vmlinux()?;
        let off = |p: &str| btf.offset(p);
        let (pid, num, dport) = (
            off("task_struct.pid")?,
            off("sock_common.skc_num")?,
            off("sock_common.skc_dport")?,
        );
        drop(btf);
        let start_ns = ktime_ns();
        let config = MigrateConfig {
            src_tgid,
            dst_tgid,
            port: port as u32,
            off_task_pid: pid,
            off_sk_num: num,
            off_sk_dport: dport,
            start_ns,
            bucket_ns,
        };
        let mut ebpf = crate::probes::loader(crate::probes::Subject::Migrate)
            .override_global(map::MIGRATE_CONFIG, &config, true)
            .load(crate::probes::OBJECT)
            .context("loading the migration's kernel tracer")?;
        let btf = AyaBtf::from_sys_fs().context("reading vmlinux BTF")?;
        for point in POINTS {
            if let (None, how) = attach::link::attach_point(&mut ebpf, point, Some(&btf)) {
                anyhow::bail!("{}: {}", how.event, how.how);
            }
        }
        Ok(Self {
            ebpf,
            start_ns,
            bucket_ns,
        })
    }

    /// Watches a vCPU thread of `side` (profiler_common::migrate::SOURCE or DESTINATION).
    pub fn watch(&mut self, tid: u32, side: u32) -> Result<()> {
        let mut m: HashMap<&mut MapData, u32, VcpuRuns> = HashMap::try_from(
            self.ebpf
                .map_mut(map::MIGRATE_VCPUS)
                .ok_or_else(|| anyhow!("MIGRATE_VCPUS missing"))?,
        )?;
        let r = VcpuRuns {
            side,
            ..Default::default()
        };
        m.insert(tid, r, 0)?;
        Ok(())
    }

    /// From now on a thread's next switch-in is its first.
    pub fn arm(&mut self) -> Result<u64> {
        let mut a: Array<&mut MapData, u64> = Array::try_from(
            self.ebpf
                .map_mut(map::MIGRATE_ARM)
                .ok_or_else(|| anyhow!("MIGRATE_ARM missing"))?,
        )?;
        let now = ktime_ns();
        a.set(0, now, 0)?;
        Ok(now)
    }

    /// The buckets from `from_ns` to `to_ns` (ktime), the counters and the threads' runs.
    pub fn read(&self, from_ns: u64, to_ns: u64) -> Result<Raw> {
        let get = |name: &str| self.ebpf.map(name).ok_or_else(|| anyhow!("{name} missing"));
        let bytes: Array<&MapData, u64> = Array::try_from(get(map::MIGRATE_BYTES)?)?;
        let b = |t: u64| (t.saturating_sub(self.start_ns) / self.bucket_ns).min(BUCKETS as u64);
        let (first, last) = (b(from_ns), b(to_ns).max(b(from_ns)));
        let mut raw = Raw {
            start_ns: self.start_ns,
            bucket_ns: self.bucket_ns,
            first,
            ..Default::default()
        };
        for i in first..(last + 1).min(BUCKETS as u64) {
            raw.sent.push(bytes.get(&(i as u32), 0)?);
            raw.received.push(bytes.get(&(BUCKETS + i as u32), 0)?);
        }
        let c: Array<&MapData, u64> = Array::try_from(get(map::MIGRATE_COUNTERS)?)?;
        for (i, v) in raw.counters.iter_mut().enumerate() {
            *v = c.get(&(i as u32), 0)?;
        }
        let v: HashMap<&MapData, u32, VcpuRuns> = HashMap::try_from(get(map::MIGRATE_VCPUS)?)?;
        for e in v.iter() {
            raw.vcpus.push(e?);
        }
        raw.vcpus.sort_by_key(|(t, r)| (r.side, *t));
        Ok(raw)
    }
}
