//! The histogram self-test (user side of profiler-ebpf/src/selftest.rs).

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::TracePoint,
};
use profiler_common::{
    hist::Hist,
    names::{map, program as prog},
};

/// Loads and attaches `selftest_hist` (profiler-ebpf/src/selftest.rs) to
/// `syscalls:sys_enter_getpid` and hands back its map: proof that the bucket code passes
/// this kernel's verifier. The program stays attached while `ebpf` lives.
pub fn selftest_attach(ebpf: &mut Ebpf) -> Result<Array<MapData, Hist>> {
    crate::kernel::tracefs()?;
    anyhow::ensure!(
        crate::kernel::tracepoint_exists("syscalls", "sys_enter_getpid"),
        "tracepoint syscalls:sys_enter_getpid missing (CONFIG_FTRACE_SYSCALLS off?)"
    );
    let prog: &mut TracePoint = ebpf
        .program_mut(prog::SELFTEST)
        .context("selftest_hist not in the eBPF object")?
        .try_into()?;
    prog.load().context("verifier rejected selftest_hist")?;
    prog.attach("syscalls", "sys_enter_getpid")
        .context("attaching selftest_hist to syscalls:sys_enter_getpid")?;
    let map = ebpf
        .take_map(map::SELFTEST_HIST)
        .context("SELFTEST_HIST not in the eBPF object")?;
    Ok(Array::try_from(map)?)
}
