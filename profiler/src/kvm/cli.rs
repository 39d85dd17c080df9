//! `profiler kvm`: exits by reason of running VMs, or of the built-in micro-VM whose exit
//! count is known.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::{
    microvm::{self, Workload},
    report::{self, KvmReport},
};
use crate::kernel::{self, KvmBackend};
use crate::probes::kvm::{Filter, KvmTracer};

#[derive(clap::Args, Clone, Debug)]
pub struct KvmArgs {
    /// Trace only this VMM process (all VMs otherwise).
    #[arg(long, value_name = "PID", conflicts_with = "micro_vm",
          value_parser = crate::opts::at_least::<u32, 1>)]
    pub pid: Option<u32>,
    /// Seconds to trace existing VMs.
    #[arg(short = 'l', value_name = "SECS", default_value = "5", value_parser = crate::opts::seconds)]
    pub length: f64,
    /// The report as JSON: on stdout instead of the table (no FILE, or -) or into FILE.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    pub json: Option<PathBuf>,
    /// Run the built-in micro-VM in this process instead, with a known number of exits.
    #[arg(long, value_enum, value_name = "WORKLOAD")]
    pub micro_vm: Option<Workload>,
    /// Exits the micro-VM performs.
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = crate::opts::at_least::<u32, 1>)]
    pub count: u32,
    /// Print the kernel side's messages on rare conditions (a field that does not read, an
    /// exit reason out of range, a full map) on stderr as `bpf warn: ...`.
    #[arg(long)]
    pub debug_bpf: bool,
}

pub fn run(args: &KvmArgs) -> Result<()> {
    let r = measure(args)?;
    crate::export::json::emit(args.json.as_ref(), &r, report::print)
}

/// What `run` prints: the micro-VM when asked for, else the VMs on this host for `-l` seconds.
pub fn measure(args: &KvmArgs) -> Result<KvmReport> {
    kernel::require_root("profiler kvm")?;
    require_kvm()?;
    match args.micro_vm {
        Some(w) => micro_vm(w, args.count, args.debug_bpf),
        None => trace_vms(args.pid, args.length, args.debug_bpf),
    }
}

fn require_kvm() -> Result<KvmBackend> {
    match kernel::kvm_backend() {
        KvmBackend::None => bail!(
            "no /dev/kvm: KVM is not available here (load kvm_intel or kvm_amd, or use a host with virtualization)"
        ),
        b => Ok(b),
    }
}

/// Refuses a pid that is not a VMM: one holding no KVM file descriptor (/dev/kvm, a kvm-vm or
/// kvm-vcpu inode) would be traced for nothing. `--pid 1` was accepted and reported no exits.
fn require_vmm(pid: u32) -> Result<()> {
    let fds = std::path::PathBuf::from(format!("/proc/{pid}/fd"));
    let entries = match std::fs::read_dir(&fds) {
        Ok(e) => e,
        Err(_) => bail!("--pid {pid}: no such process"),
    };
    let kvm = entries.flatten().any(|e| {
        std::fs::read_link(e.path()).is_ok_and(|t| {
            let t = t.to_string_lossy();
            t == "/dev/kvm" || t.starts_with("anon_inode:kvm-")
        })
    });
    if !kvm {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        bail!(
            "--pid {pid} ({}) is not a VMM: it holds no KVM file descriptor (/dev/kvm, kvm-vm, kvm-vcpu); pass a QEMU or other VMM's pid, or leave --pid out to trace every VM",
            comm.trim()
        );
    }
    Ok(())
}

/// Runs the micro-VM on this thread with the tracer following only this thread, and checks
/// the tracer's count of its exits against the VMM's.
pub fn micro_vm(workload: Workload, count: u32, debug_bpf: bool) -> Result<KvmReport> {
    let backend = require_kvm()?;
    let filter = Filter {
        tgid: std::process::id(),
        tid: nix::unistd::gettid().as_raw() as u32,
        debug_bpf,
    };
    let mut tracer = KvmTracer::start(filter)?;
    let start = Instant::now();
    let vmm = microvm::run(workload, count);
    let seconds = start.elapsed().as_secs_f64();
    tracer.detach()?;
    let vmm = vmm?;
    let raw = tracer.read()?;
    let ctx = report::Context {
        backend,
        pid: Some(filter.tgid),
        seconds,
        attached: tracer.attached.clone(),
    };
    let mut r = report::build(&raw, &ctx);
    r.micro_vm = Some(report::micro_vm_check(&raw, workload, count, vmm));
    Ok(r)
}

/// Traces the VMs of `pid` (or all) for `seconds`; the first Ctrl-C ends it early.
pub fn trace_vms(pid: Option<u32>, seconds: f64, debug_bpf: bool) -> Result<KvmReport> {
    let backend = require_kvm()?;
    if !(seconds.is_finite() && seconds > 0.0) {
        bail!("-l must be a positive number of seconds");
    }
    if let Some(p) = pid {
        require_vmm(p)?;
    }
    let mut tracer = KvmTracer::start(Filter {
        tgid: pid.unwrap_or(0),
        tid: 0,
        debug_bpf,
    })?;
    crate::cleanup::set_interruptible();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    while Instant::now() < end && !crate::cleanup::stop_requested() {
        std::thread::sleep(
            Duration::from_millis(100).min(end.saturating_duration_since(Instant::now())),
        );
    }
    let seconds = start.elapsed().as_secs_f64();
    tracer.detach()?;
    let raw = tracer.read()?;
    let ctx = report::Context {
        backend,
        pid,
        seconds,
        attached: tracer.attached.clone(),
    };
    Ok(report::build(&raw, &ctx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        kvm: KvmArgs,
    }

    #[test]
    fn args() {
        let c = Cli::parse_from(["p"]);
        assert_eq!((c.kvm.length, c.kvm.count, c.kvm.pid), (5.0, 10_000, None));
        let c = Cli::parse_from(["p", "--micro-vm", "pio", "--count", "100000", "--json", "x"]);
        assert_eq!(c.kvm.micro_vm, Some(Workload::Pio));
        assert_eq!(c.kvm.count, 100_000);
        let c = Cli::parse_from(["p", "--pid", "42", "-l", "2"]);
        assert_eq!((c.kvm.pid, c.kvm.length), (Some(42), 2.0));
        assert!(Cli::try_parse_from(["p", "--pid", "1", "--micro-vm", "hlt"]).is_err());
    }
}
