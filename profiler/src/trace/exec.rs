//! Process execs with their kernel timestamps (user side of profiler-ebpf/src/exec.rs).

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Btf, Ebpf,
    maps::{MapData, RingBuf},
    programs::BtfTracePoint,
};
use profiler_common::exec::ExecEvent;
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Exec {
    /// CLOCK_MONOTONIC, ns: comparable with [`monotonic_ns`].
    pub ts: u64,
    pub pid: u32,
    pub comm: String,
}

pub struct ExecTracer {
    ebpf: Ebpf,
}

pub use crate::kernel::monotonic_ns;

impl ExecTracer {
    pub fn start() -> Result<ExecTracer> {
        let mut ebpf = crate::ebpf::load()?;
        let btf = Btf::from_sys_fs().context("reading vmlinux BTF")?;
        let p: &mut BtfTracePoint = ebpf
            .program_mut("exec_event")
            .ok_or_else(|| anyhow!("exec_event missing"))?
            .try_into()?;
        p.load("sched_process_exec", &btf)
            .context("loading the exec tracer")?;
        p.attach()
            .context("attaching to sched:sched_process_exec")?;
        Ok(ExecTracer { ebpf })
    }

    /// Every exec since the last call.
    pub fn drain(&mut self) -> Result<Vec<Exec>> {
        let mut rb: RingBuf<&mut MapData> = RingBuf::try_from(
            self.ebpf
                .map_mut("EXEC_EVENTS")
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
            });
        }
        Ok(out)
    }
}
