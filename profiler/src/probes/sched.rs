//! Run-queue latency of the processes of a workload (user side of profiler-ebpf/src/sched.rs),
//! and the cgroup's CPU throttling where the cgroup is known.

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Btf as AyaBtf, Ebpf,
    maps::{Array, HashMap, MapData},
};
use profiler_common::{
    hist::Hist,
    names::{map, program as prog},
};
use serde::Serialize;

use crate::{
    attach::{self, Point},
    hist::Summary,
};

pub const POINTS: &[Point] = &[
    crate::point!(TpBtf, "sched", "sched_wakeup", prog::SCHED_WAKEUP),
    crate::point!(TpBtf, "sched", "sched_wakeup_new", prog::SCHED_WAKEUP_NEW),
    crate::point!(TpBtf, "sched", "sched_switch", prog::SCHED_SWITCH),
];

pub struct SchedTracer {
    ebpf: Ebpf,
}

#[derive(Debug, Serialize)]
pub struct SchedReport {
    /// Wakeup (or preemption) to running again, for the workload's threads.
    pub runq_latency: Summary,
    /// Total time the workload's threads waited to run, ns.
    pub runq_total_ns: u64,
}

impl SchedTracer {
    pub fn start() -> Result<SchedTracer> {
        let btf = crate::kernel::btf::Btf::vmlinux()?;
        let (pid, tgid, state) = (
            btf.offset("task_struct.pid")?,
            btf.offset("task_struct.tgid")?,
            btf.offset("task_struct.__state")?,
        );
        drop(btf);
        let mut ebpf = crate::probes::loader(crate::probes::Subject::Sched)
            .override_global(
                map::SCHED_CONFIG,
                &profiler_common::sched::SchedConfig {
                    off_task_pid: pid,
                    off_task_tgid: tgid,
                    off_task_state: state,
                    _pad: 0,
                },
                true,
            )
            .load(crate::probes::OBJECT)
            .context("loading the scheduler tracer")?;
        let btf = AyaBtf::from_sys_fs().context("reading vmlinux BTF")?;
        for point in POINTS {
            if let (None, how) = attach::link::attach_point(&mut ebpf, point, Some(&btf)) {
                anyhow::bail!("{}: {}", how.event, how.how);
            }
        }
        Ok(SchedTracer { ebpf })
    }

    /// Adds a process (its threads included) to those watched.
    pub fn watch(&mut self, tgid: u32) -> Result<()> {
        let mut m: HashMap<&mut MapData, u32, u8> = HashMap::try_from(
            self.ebpf
                .map_mut(map::SCHED_TGIDS)
                .ok_or_else(|| anyhow!("SCHED_TGIDS missing"))?,
        )?;
        m.insert(tgid, 1, 0)?;
        Ok(())
    }

    pub fn report(&self) -> Result<SchedReport> {
        let m: Array<&MapData, Hist> = Array::try_from(
            self.ebpf
                .map(map::SCHED_HIST)
                .ok_or_else(|| anyhow!("SCHED_HIST missing"))?,
        )?;
        let h = crate::hist::to_histogram(&m.get(&0, 0)?);
        let total = h
            .iter_recorded()
            .map(|v| v.value_iterated_to() * v.count_at_value())
            .sum();
        Ok(SchedReport {
            runq_latency: Summary::of(&h),
            runq_total_ns: total,
        })
    }
}

/// CPU throttling of a cgroup v2 directory (`cpu.stat`): (periods throttled, time throttled µs).
pub fn throttling(cgroup: &std::path::Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(cgroup.join("cpu.stat")).ok()?;
    let get = |k: &str| {
        text.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((get("nr_throttled")?, get("throttled_usec")?))
}
