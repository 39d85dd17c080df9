//! `profiler boot`: how long a VM takes to boot, cut into phases.
//!
//! `--vm qemu` boots Debian's cloud kernel with a busybox initramfs in qemu-system-x86_64 and
//! cuts the boot at lines on its serial console (firmware banner, hand-over to the kernel, the
//! kernel's first printk, `/init`'s markers) plus the spawn and exit of the process, as
//! Firecracker and qemu-boot-time do with their magic I/O port. `--vm micro` times the stages of
//! the built-in KVM micro-VM. Phases are consecutive, so they add up to spawn-to-exit.

pub mod artefacts;
pub mod cli;
pub mod console;
pub mod cpio;
pub mod html;
#[cfg(feature = "libvirt")]
pub mod libvirt;
pub mod micro;
pub mod probe_cache;
pub mod qemu;
pub mod serial;
pub mod stock;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::{
    hist::fmt_ns,
    startup::{Instance, Laps, PhaseStats, Wall, summary},
};

use crate::startup::Phase;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Vm {
    /// qemu-system-x86_64 with Debian's cloud kernel and a busybox initramfs.
    Qemu,
    /// The same guest as a transient libvirt domain (libvirtd must be running).
    Libvirt,
    /// The built-in real-mode micro-VM on /dev/kvm (no QEMU, no kernel).
    Micro,
}

/// QEMU's accelerator for `--vm qemu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccelChoice {
    /// KVM when a stock guest boots on it (tried first, with a short limit), else TCG.
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BootArgs {
    /// The VM to boot: `qemu` (a Linux guest in qemu-system-x86_64) or `micro` (the built-in
    /// KVM micro-VM).
    #[arg(long, value_enum)]
    pub vm: Option<Vm>,
    /// Boot N VMs at once and report each phase's distribution.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = crate::opts::at_least::<u32, 1>)]
    pub count: u32,
    /// The report as JSON (written even when a boot fails): on stdout instead of the table (no
    /// FILE, or -) or into FILE.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    pub json: Option<PathBuf>,
    /// Write the report as one self-contained HTML page: a phase timeline per instance and the
    /// phase table (`--vm`).
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Write each phase's times over the instances as an HdrHistogram interval log (one
    /// interval for the run, one Tag per phase, `phase/<name>`, ns; `--vm`).
    #[arg(long, value_name = "FILE")]
    pub hdr_log: Option<PathBuf>,
    /// A VM not ready after this many seconds is killed and the run fails.
    #[arg(long, value_name = "SECS", default_value_t = 60.0, value_parser = crate::opts::seconds)]
    pub timeout: f64,
    /// QEMU's accelerator (`--vm qemu`).
    #[arg(long, value_enum, default_value_t = AccelChoice::Auto)]
    pub accel: AccelChoice,
    /// With `--accel auto`: probe KVM again instead of using the answer kept from the last
    /// probe on this kernel, QEMU and /dev/kvm (and keep the new one).
    #[arg(long)]
    pub probe_again: bool,
    /// Start even what does not fit this machine's memory, tasks or CPUs.
    #[arg(long)]
    pub force: bool,
}

impl Default for BootArgs {
    fn default() -> Self {
        Self {
            vm: None,
            count: 1,
            json: None,
            html: None,
            hdr_log: None,
            timeout: 60.0,
            accel: AccelChoice::Auto,
            probe_again: false,
            force: false,
        }
    }
}

/// Runs `boot(i)` for i in 0..n, each on its own thread, all at once (a qemu's PDEATHSIG is
/// tied to the thread that spawned it, so each boot keeps its thread to the end). A panicked
/// boot is an error naming its VM. After a signal no further boot starts; a thread that cannot
/// start stops the others and is the run's error.
pub fn all_at_once(n: u32, boot: impl Fn(u32) -> Result<Boot> + Sync) -> Result<Vec<Boot>> {
    // The VM whose failure stopped the others: its error is the run's, not theirs
    // ("interrupted before its start").
    let first = std::sync::atomic::AtomicU32::new(u32::MAX);
    let first = &first;
    let done =
        crate::progress::Count::new(format!("VMs booted and shut down (--count {n})"), n.into());
    let done = &done;
    std::thread::scope(|s| {
        let boot = &boot;
        let mut handles = Vec::new();
        let mut failed = None;
        for i in 0..n {
            if crate::cleanup::stop_requested() {
                break;
            }
            let name = format!("boot-{i}");
            match std::thread::Builder::new()
                .name(name.clone())
                .spawn_scoped(s, move || {
                    let r = boot(i);
                    done.tick();
                    // A VM that could not start ends the run: the others stop too.
                    if r.is_err() {
                        let _ = first.compare_exchange(
                            u32::MAX,
                            i,
                            std::sync::atomic::Ordering::SeqCst,
                            std::sync::atomic::Ordering::SeqCst,
                        );
                        crate::cleanup::request_stop();
                    }
                    r
                }) {
                Ok(h) => handles.push(h),
                Err(e) => {
                    crate::cleanup::request_stop();
                    failed = Some(crate::cleanup::thread_error(&name, &e));
                    break;
                }
            }
        }
        let mut results: Vec<Result<Boot>> = handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("the thread of VM {i} panicked")))
            })
            .collect();
        if let Some(e) = failed {
            return Err(e);
        }
        let first = first.load(std::sync::atomic::Ordering::SeqCst) as usize;
        if first < results.len() && results[first].is_err() {
            results.swap_remove(first)?;
        }
        let mut boots: Vec<Boot> = results.into_iter().collect::<Result<_>>()?;
        // The VMs a signal kept from starting: failed boots, so the report says so.
        for i in boots.len() as u32..n {
            boots.push(Boot {
                index: i,
                error: Some("not started: interrupted".into()),
                ..Default::default()
            });
        }
        Ok(boots)
    })
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Boot {
    pub index: u32,
    /// `kvm` or `tcg`.
    pub accelerator: String,
    pub phases: Vec<Phase>,
    /// Spawn to exit (qemu) or KVM open to teardown (micro): the sum of `phases`.
    pub total_ns: u64,
    /// The guest reached its ready marker.
    pub ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// qemu-system-x86_64's exit code (None when killed by a signal).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The guest kernel's clock (s) at its markers: first_printk, init, ready, power_down.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub guest_clock: BTreeMap<String, f64>,
    /// KVM's exits in each phase (by VMX/SVM reason where kvm_exit fires, and the kvm: events
    /// by kind), when one VM booted on KVM; every VM on the host counts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exits_by_phase: Vec<PhaseExits>,
    /// What the tracers saw that explains a phase (e.g. libvirtd re-probing QEMU).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The last console lines, when the boot failed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub console_tail: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PhaseExits {
    pub phase: String,
    pub exits: BTreeMap<String, u64>,
}

/// What a kind of boot ran: its accelerator and its boots; [`BootReport::new`] adds the clock.
#[derive(Debug, Default)]
pub struct Booted {
    pub accelerator: String,
    pub accelerator_reason: String,
    pub kvm_probe: Option<Boot>,
    pub boots: Vec<Boot>,
    pub artefacts: Option<artefacts::Artefacts>,
    /// Why the run ended before any boot.
    pub error: Option<String>,
}

impl Booted {
    /// qemu or libvirt: the boots are over, so the instances' span ends and the exec tracer
    /// closes (a teardown lap: closing its perf descriptors takes a while).
    pub fn vm(
        laps: &mut Laps,
        execs: Option<crate::probes::exec::SharedExecs>,
        accel: (qemu::Accel, String),
        kvm_probe: Option<Boot>,
        boots: Vec<Boot>,
        artefacts: artefacts::Artefacts,
    ) -> Self {
        laps.instances();
        drop(execs);
        laps.lap("exec tracer closed");
        Booted {
            accelerator: accel.0.name().into(),
            accelerator_reason: accel.1,
            kvm_probe,
            boots,
            artefacts: Some(artefacts),
            error: None,
        }
    }
}

impl Instance for Boot {
    fn complete_phases(&self) -> Vec<(&str, u64)> {
        self.phases.complete_phases()
    }

    fn ready_total_ns(&self) -> Option<u64> {
        self.ready.then_some(self.total_ns)
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct BootReport {
    pub vm: Vm,
    pub count: u32,
    /// `kvm` or `tcg` (qemu), `kvm` (micro).
    pub accelerator: String,
    /// Why that accelerator (the KVM probe's outcome under `--accel auto`).
    pub accelerator_reason: String,
    /// KVM backend of this host (vmx, svm, pvm, ...).
    pub kvm_backend: crate::kernel::KvmBackend,
    /// setup (artefacts, tracers, the KVM probe), the boots together, teardown: the whole run.
    #[serde(flatten)]
    pub wall: Wall,
    /// The KVM attempt, when `--accel auto` fell back to TCG (how far KVM got).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kvm_probe: Option<Boot>,
    pub boots: Vec<Boot>,
    /// Per phase over the boots (and `total`).
    pub summary: Vec<PhaseStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artefacts: Option<artefacts::Artefacts>,
    /// Every boot reached ready.
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl BootReport {
    pub fn new(vm: Vm, count: u32, b: Booted, wall: Wall) -> Self {
        let failed: Vec<String> = b
            .boots
            .iter()
            .filter(|b| !b.ready)
            .map(|b| {
                format!(
                    "VM {}: {}",
                    b.index,
                    b.error.as_deref().unwrap_or("not ready")
                )
            })
            .collect();
        let error = match b.error {
            Some(e) => Some(e),
            None if b.boots.is_empty() => Some("no VM booted".into()),
            None => (!failed.is_empty()).then(|| failed.join("; ")),
        };
        BootReport {
            vm,
            count,
            accelerator: b.accelerator,
            accelerator_reason: b.accelerator_reason,
            kvm_backend: crate::kernel::kvm_backend(),
            wall,
            kvm_probe: b.kvm_probe,
            summary: summary(&b.boots, |n| describe(vm, n)),
            boots: b.boots,
            artefacts: b.artefacts,
            ok: error.is_none(),
            error,
        }
    }

    pub fn phase_sum_ns(&self, boot: usize) -> u64 {
        self.boots
            .get(boot)
            .map_or(0, |b| b.phases.iter().map(|p| p.ns).sum())
    }
}

/// Runs the boots, writes `--json` when asked. A failed boot (timeout, Ctrl-C, a guest that
/// never got ready) is a report with `ok: false`, not an error: its phases so far are in it.
pub fn run(args: &BootArgs) -> Result<BootReport> {
    run_from(args, Laps::new(Instant::now()))
}

fn run_from(args: &BootArgs, mut laps: Laps) -> Result<BootReport> {
    let Some(vm) = args.vm else {
        bail!("profiler boot needs --vm qemu|libvirt|micro");
    };
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        bail!("--timeout must be a positive number of seconds");
    }
    let each = match vm {
        Vm::Qemu | Vm::Libvirt => crate::fit::Each::qemu(qemu::GUEST_MB, 1),
        Vm::Micro => crate::fit::Each::micro_vm(),
    };
    let asked = format!("--count {}", args.count);
    crate::fit::require(args.force, &asked, args.count.into(), &each)?;
    crate::kernel::require_root("profiler boot")?;
    crate::cleanup::set_interruptible();
    let timeout = Duration::from_secs_f64(args.timeout);
    let booted = match vm {
        Vm::Qemu => qemu::run(args, &mut laps)?,
        #[cfg(feature = "libvirt")]
        Vm::Libvirt => libvirt::run(args, &mut laps)?,
        #[cfg(not(feature = "libvirt"))]
        Vm::Libvirt => bail!("this profiler was built without libvirt (the `libvirt` feature)"),
        Vm::Micro => micro::run(args.count, timeout, &mut laps)?,
    };
    let report = BootReport::new(vm, args.count, booted, laps.finish());
    write_json(args.json.as_deref(), &report)?;
    Ok(report)
}

pub use crate::export::json::{table, write as write_json};
pub use crate::startup::print_laps;

fn print_exits(phases: &[PhaseExits]) {
    if phases.is_empty() {
        return;
    }
    println!("  KVM exits per phase (kvm: tracepoints, every VM on the host):");
    for p in phases {
        let mut e: Vec<(&String, &u64)> = p.exits.iter().collect();
        e.sort_by(|a, b| b.1.cmp(a.1));
        let top: Vec<String> = e.iter().take(6).map(|(k, n)| format!("{k} {n}")).collect();
        println!(
            "    {:<22} {}",
            p.phase,
            if top.is_empty() {
                "none".into()
            } else {
                top.join(", ")
            }
        );
    }
}

/// run + print, failing (non-zero exit) when a VM did not get ready: what `boot --vm` runs.
pub fn cli(args: &BootArgs, laps: Laps) -> Result<()> {
    // Both files are checked before the boots: a run is not lost to an unwritable path.
    crate::opts::output_file(args.html.as_deref(), "--html")?;
    let hdr = args
        .hdr_log
        .as_deref()
        .map(crate::export::hdr_log::HdrLog::create)
        .transpose()?;
    let r = run_from(args, laps)?;
    if table(args.json.as_deref()) {
        print(&r);
    }
    if let Some(mut log) = hdr {
        log.interval(
            std::time::Duration::from_nanos(r.wall.wall_ns),
            html::tagged(&r),
        )?;
        log.finish()?;
    }
    if let Some(p) = &args.html {
        std::fs::write(p, html::boot(&r))
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", p.display()))?;
    }
    if let Some(e) = &r.error {
        bail!("boot failed: {e}");
    }
    Ok(())
}

/// What a phase name stands for, for the table.
pub fn describe(vm: Vm, name: &str) -> String {
    let find = |table: &[(&str, &'static str)], n: &str| {
        table.iter().find(|(p, _)| *p == n).map_or("", |(_, w)| *w)
    };
    if name == "total" {
        return match vm {
            Vm::Qemu => "spawn of qemu-system-x86_64 to its exit".into(),
            Vm::Libvirt => "connecting to libvirtd to its report that the domain is gone".into(),
            Vm::Micro => "opening /dev/kvm to the VM's teardown".into(),
        };
    }
    let parts: Vec<&str> = name
        .split('+')
        .map(|n| match vm {
            Vm::Qemu => [find(&qemu::PHASES, n), find(&qemu::VMM_PHASES, n)]
                .into_iter()
                .chain([find(&[qemu::WORKLOAD_PHASE], n)])
                .find(|w| !w.is_empty())
                .unwrap_or(""),
            #[cfg(feature = "libvirt")]
            Vm::Libvirt => libvirt::describe(n),
            #[cfg(not(feature = "libvirt"))]
            Vm::Libvirt => "",
            Vm::Micro => find(&micro::PHASES, n),
        })
        .collect();
    parts.join("; ")
}

pub fn print(r: &BootReport) {
    let vm = match r.vm {
        Vm::Qemu => "qemu",
        Vm::Libvirt => "libvirt",
        Vm::Micro => "micro",
    };
    println!(
        "boot: {} x {vm}, accelerator {} ({})",
        r.count, r.accelerator, r.accelerator_reason
    );
    if let Some(a) = &r.artefacts {
        println!(
            "  guest: {} ({}), initramfs {}, busybox: {}",
            a.kernel.display(),
            a.kernel_package,
            a.initramfs.display(),
            a.busybox_from
        );
    }
    if let Some(p) = &r.kvm_probe {
        let got: Vec<String> = p
            .phases
            .iter()
            .map(|ph| {
                let cut = if ph.complete { "" } else { " (cut)" };
                format!("{}{cut} {}", ph.name, fmt_ns(ph.ns as f64))
            })
            .collect();
        println!("  kvm probe: {}", got.join(", "));
        print_exits(&p.exits_by_phase);
    }
    print_laps("setup", &r.wall.setup);
    if r.count == 1
        && let Some(b) = r.boots.first()
    {
        println!(
            "  {:<24} {:>9} {:>7} {:>12}  what",
            "phase", "time", "share", "guest clock"
        );
        for p in &b.phases {
            let share = 100.0 * p.ns as f64 / b.total_ns.max(1) as f64;
            let guest = p.guest_ns.map_or(String::new(), |g| fmt_ns(g as f64));
            let name = if p.complete {
                p.name.clone()
            } else {
                format!("{} (cut)", p.name)
            };
            println!(
                "  {:<24} {:>9} {:>6.1}% {:>12}  {}",
                name,
                fmt_ns(p.ns as f64),
                share,
                guest,
                describe(r.vm, &p.name)
            );
        }
        println!(
            "  {:<24} {:>9} {:>6.1}%",
            "total",
            fmt_ns(b.total_ns as f64),
            100.0
        );
        print_exits(&b.exits_by_phase);
        for n in &b.notes {
            println!("  note: {n}");
        }
    } else {
        println!(
            "  {:<24} {:>5} {:>9} {:>9} {:>9} {:>9}  what",
            "phase", "count", "min", "p50", "p90", "max"
        );
        for s in &r.summary {
            let cols = [s.min_ns, s.p50_ns, s.p90_ns, s.max_ns].map(|v| v as f64);
            println!(
                "  {:<24} {:>5} {}  {}",
                s.name,
                s.count,
                crate::hist::columns(&cols),
                s.what
            );
        }
        println!(
            "  all {} boots together (first spawn to last exit): {}",
            r.count,
            fmt_ns(r.wall.instances_wall_ns as f64)
        );
    }
    print_laps("teardown", &r.wall.teardown);
    println!(
        "  whole run (setup + boots + teardown): {}",
        fmt_ns(r.wall.wall_ns as f64)
    );
    for b in r.boots.iter().filter(|b| !b.ready) {
        println!(
            "  VM {} failed: {}",
            b.index,
            b.error.as_deref().unwrap_or("not ready")
        );
        for l in &b.console_tail {
            println!("    | {l}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_is_required() {
        let e = run(&BootArgs::default()).unwrap_err().to_string();
        assert_eq!(e, "profiler boot needs --vm qemu|libvirt|micro");
    }
}
