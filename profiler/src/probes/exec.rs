//! Process execs (and, when asked, thread renames) with their kernel timestamps (user side of
//! profiler-ebpf/src/exec.rs).

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Btf, Ebpf,
    maps::{MapData, RingBuf},
};
use profiler_common::{
    exec::{ExecEvent, KIND_RENAME},
    names::{map, program as prog},
};

use crate::attach::{self, Point};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Exec {
    /// CLOCK_MONOTONIC, ns: comparable with [`monotonic_ns`].
    pub ts: u64,
    pub pid: u32,
    pub comm: String,
    /// A thread of `pid` took the name `comm` (not an exec).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub renamed: bool,
}

pub struct ExecTracer {
    ebpf: Ebpf,
}

pub use crate::kernel::monotonic_ns;

/// Execs, then thread renames (attached only when asked).
pub const POINTS: &[Point] = &[
    crate::point!(TpBtf, "sched", "sched_process_exec", prog::EXEC),
    crate::point!(TpBtf, "task", "task_rename", prog::RENAME),
];

impl ExecTracer {
    /// Execs only.
    pub fn start() -> Result<ExecTracer> {
        Self::start_with(false)
    }

    /// Execs and thread renames (task:task_rename).
    pub fn start_with_renames() -> Result<ExecTracer> {
        Self::start_with(true)
    }

    fn start_with(renames: bool) -> Result<ExecTracer> {
        let mut ebpf = crate::probes::loader(crate::probes::Subject::Exec)
            .load(crate::probes::OBJECT)
            .context("loading the exec tracer")?;
        let btf = Btf::from_sys_fs().context("reading vmlinux BTF")?;
        let points = if renames { POINTS } else { &POINTS[..1] };
        for point in points {
            if let (None, how) = attach::link::attach_point(&mut ebpf, point, Some(&btf)) {
                anyhow::bail!("{}: {}", how.event, how.how);
            }
        }
        Ok(ExecTracer { ebpf })
    }

    /// Every exec since the last call.
    pub fn drain(&mut self) -> Result<Vec<Exec>> {
        let mut rb: RingBuf<&mut MapData> = RingBuf::try_from(
            self.ebpf
                .map_mut(map::EXEC_EVENTS)
                .ok_or_else(|| anyhow!("EXEC_EVENTS missing"))?,
        )?;
        let mut out = vec![];
        while let Some(item) = rb.next() {
            if item.len() < std::mem::size_of::<ExecEvent>() {
                continue;
            }
            // SAFETY: the kernel wrote one ExecEvent; read_unaligned copes with alignment.
            let e: ExecEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            let end = e.comm.iter().position(|&b| b == 0).unwrap_or(16);
            out.push(Exec {
                ts: e.ts,
                pid: e.pid,
                comm: String::from_utf8_lossy(&e.comm[..end]).into_owned(),
                renamed: e.kind == KIND_RENAME,
            });
        }
        Ok(out)
    }
}

/// One tracer for concurrent users (N boots at once): whoever drains the ring keeps every
/// event here, so each finds its own.
pub struct SharedExecs(std::sync::Mutex<(ExecTracer, Vec<Exec>)>);

impl SharedExecs {
    /// Execs and thread renames.
    pub fn start() -> Result<SharedExecs> {
        Ok(SharedExecs(std::sync::Mutex::new((
            ExecTracer::start_with_renames()?,
            Vec::new(),
        ))))
    }

    /// Every event since the start.
    pub fn seen(&self) -> Vec<Exec> {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (tracer, seen) = &mut *g;
        if let Ok(new) = tracer.drain() {
            seen.extend(new);
        }
        seen.clone()
    }
}
