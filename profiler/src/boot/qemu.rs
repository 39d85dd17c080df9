//! `--vm qemu`: qemu-system-x86_64 boots the cached kernel and initramfs; its serial console is
//! read on a thread that stamps each line as it arrives, and the process's exit is caught with
//! `waitid(WNOWAIT)` on another, so a kill can never hit a reused pid.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _},
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{probes::exec::SharedExecs, probes::kvm::KvmTracer};

use super::{
    AccelChoice, Boot, Booted, PhaseExits, artefacts,
    console::{Console, DONE, FIRST_PRINTK, KERNEL_ENTRY, Marks, kill_reason},
    serial::LineSplitter,
};
use crate::startup::{Laps, Phase, ns, phases};

pub const QEMU: &str = "qemu-system-x86_64";

/// Phase names and what ends each; the markers are the serial lines that close them.
pub const PHASES: [(&str, &str); 7] = [
    (
        "vmm_setup",
        "spawn of qemu-system-x86_64 to the firmware's first serial byte (machine built, vCPU runs SeaBIOS)",
    ),
    (
        "firmware",
        "SeaBIOS POST to \"Booting from ROM\" (hand-over to QEMU's linuxboot option ROM)",
    ),
    (
        "kernel_load",
        "the option ROM loads kernel and initramfs over fw_cfg, to the kernel's first output (real-mode setup)",
    ),
    (
        "kernel_decompress",
        "real-mode setup, decompression and early start_kernel, to the first printk line",
    ),
    (
        "kernel_boot",
        "kernel initialisation to /init's first marker (PROFILER_MARK init)",
    ),
    (
        "init",
        "/init mounts devtmpfs, proc and sys (PROFILER_MARK ready)",
    ),
    ("shutdown", "poweroff -f to the exit of qemu-system-x86_64"),
];

/// `vmm_setup` cut at QEMU's exec and at its first vCPU thread naming itself, both stamped in
/// the kernel (sched_process_exec, task_rename), when the exec tracer runs.
pub const VMM_PHASES: [(&str, &str); 3] = [
    (
        "spawn",
        "fork and exec of qemu-system-x86_64 (sched_process_exec)",
    ),
    (
        "vmm_init",
        "QEMU's exec to its first vCPU thread (`CPU 0/KVM|TCG`, task_rename): accelerator, machine, memory and devices",
    ),
    (
        "vcpu_start",
        "the vCPU thread's start to the firmware's first serial byte",
    ),
];

/// The phase names of one boot: VMM phases split when the exec tracer saw them, and the
/// `workload` phase in a workload guest.
pub fn names(split_vmm: bool, workload: bool) -> Vec<&'static str> {
    let mut names: Vec<&str> = Vec::new();
    if split_vmm {
        names.extend(VMM_PHASES.iter().map(|(n, _)| *n));
    } else {
        names.push(PHASES[0].0);
    }
    names.extend(PHASES[1..PHASES.len() - 1].iter().map(|(n, _)| *n));
    if workload {
        names.push(WORKLOAD_PHASE.0);
    }
    names.push(PHASES[PHASES.len() - 1].0);
    names
}

/// QEMU's exec and its first vCPU thread, as offsets from `t0_mono` (CLOCK_MONOTONIC ns).
pub fn vmm_marks(
    events: &[crate::probes::exec::Exec],
    pid: u32,
    t0_mono: u64,
) -> [Option<Duration>; 2] {
    let at = |f: &dyn Fn(&crate::probes::exec::Exec) -> bool| {
        events
            .iter()
            // After the spawn only: an earlier event is a former holder of the pid.
            .filter(|e| e.pid == pid && e.ts >= t0_mono && f(e))
            .map(|e| Duration::from_nanos(e.ts - t0_mono))
            .min()
    };
    [
        at(&|e| !e.renamed && e.comm.starts_with("qemu-system")),
        at(&|e| e.renamed && e.comm.starts_with("CPU ")),
    ]
}

/// A workload guest's phase between `init` and `shutdown` (whose end is then qemu's exit).
pub const WORKLOAD_PHASE: (&str, &str) = (
    "workload",
    "/init runs the workload to its exit (PROFILER_MARK done)",
);

/// KVM probe: the kernel must print its first printk line this soon after its entry...
const PROBE_AFTER_ENTRY: Duration = Duration::from_secs(3);
/// ...and the console must not go silent this long before that.
const PROBE_SILENCE: Duration = Duration::from_secs(5);
const PROBE_LIMIT: Duration = Duration::from_secs(30);

/// The stock guest's memory (`boot --vm qemu|libvirt`).
pub const GUEST_MB: u64 = 256;

pub const APPEND: &str = "console=ttyS0 earlyprintk=serial loglevel=4 panic=-1";

/// Owns a spawned qemu: registered with `cleanup::children` while unreaped (a signal's teardown
/// kills it), killed and reaped on drop.
struct ChildGuard {
    child: Child,
    pid: i32,
    reaped: bool,
}

impl ChildGuard {
    fn new(child: Child) -> Self {
        let pid = child.id() as i32;
        crate::cleanup::children::add(pid);
        Self {
            child,
            pid,
            reaped: false,
        }
    }

    fn kill(&self) {
        if !self.reaped {
            // SAFETY: not yet reaped, so the pid is still our child (a zombie at worst).
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }

    fn reap(&mut self) -> Option<std::process::ExitStatus> {
        crate::cleanup::children::remove(self.pid);
        let status = self.child.wait().ok();
        self.reaped = true;
        status
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill();
            self.reap();
        }
    }
}

enum Event {
    Line(Instant, String),
    Stderr(String),
    Exited(Instant),
}

/// Spawns qemu from a thread with a file table of its own (unshare(CLONE_FILES), every
/// inherited descriptor closed), which also runs its console and stderr readers and waits for
/// its exit. PR_SET_PDEATHSIG follows the spawning thread, and a `kill -9` ends this one at
/// once; a thread sharing the process's table may be the one that closes its BPF and perf
/// descriptors on the way out (0.8 s with KVM's tracepoints here), and its qemu would outlive
/// the kill that long. Returns the child with its spawn time (Instant, CLOCK_MONOTONIC ns).
fn spawn_alone(mut cmd: Command, tx: mpsc::Sender<Event>) -> Result<(Child, Instant, u64)> {
    let (spawned_tx, spawned) = mpsc::channel::<Result<(Child, Instant, u64)>>();
    crate::cleanup::spawn("qemu-spawner", move || {
        // SAFETY: unshare and close_range act on this thread's own (new) table only.
        let alone = unsafe {
            libc::unshare(libc::CLONE_FILES) == 0
                && libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) == 0
        };
        if !alone {
            let e = std::io::Error::last_os_error();
            let _ = spawned_tx.send(Err(anyhow::anyhow!(
                "giving qemu's spawner a file table of its own: {e}"
            )));
            return;
        }
        let t0 = Instant::now();
        let t0_mono = crate::kernel::monotonic_ns();
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let _ = spawned_tx.send(Err(anyhow::anyhow!(
                    "{QEMU} not found: install it with `apt-get install qemu-system-x86`"
                )));
                return;
            }
            Err(e) => {
                let _ = spawned_tx.send(Err(anyhow::anyhow!("spawning {QEMU}: {e}")));
                return;
            }
        };
        let pid = child.id() as i32;
        let readers = match readers(&mut child, &tx) {
            Ok(r) => r,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = spawned_tx.send(Err(e));
                return;
            }
        };
        if spawned_tx.send(Ok((child, t0, t0_mono))).is_err() {
            // SAFETY: our unreaped child; the guard that would have reaped it is gone.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = tx.send(Event::Exited(crate::cleanup::children::wait_exit(pid)));
        for r in readers {
            let _ = r.join();
        }
    })?;
    spawned
        .recv()
        .map_err(|_| anyhow::anyhow!("qemu's spawner thread ended without a word"))?
}

/// Threads that send qemu's console lines (stamped on arrival) and stderr lines to `tx`.
fn readers(
    child: &mut Child,
    tx: &mpsc::Sender<Event>,
) -> Result<[std::thread::JoinHandle<()>; 2]> {
    let mut stdout = child.stdout.take().context("qemu stdout")?;
    let stderr = child.stderr.take().context("qemu stderr")?;
    let out_tx = tx.clone();
    let console = crate::cleanup::spawn("qemu-console", move || {
        let mut split = LineSplitter::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            let now = Instant::now();
            for (t, l) in split.feed(&buf[..n], now) {
                let _ = out_tx.send(Event::Line(t, l));
            }
        }
        if let Some((t, l)) = split.finish() {
            let _ = out_tx.send(Event::Line(t, l));
        }
    })?;
    let err_tx = tx.clone();
    let errors = crate::cleanup::spawn("qemu-stderr", move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = err_tx.send(Event::Stderr(line));
        }
    })?;
    Ok([console, errors])
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// How to run one boot.
struct How {
    accel: Accel,
    timeout: Duration,
    /// A KVM probe: give up early when the guest stops making progress.
    probe: bool,
}

/// The tracers a boot reads: KVM's exits (snapshotted at every mark; one boot at a time, as
/// it sees all VMs) and QEMU's exec and vCPU thread (the VMM's marks).
#[derive(Clone, Copy, Default)]
struct Tracers<'a> {
    exits: Option<&'a KvmTracer>,
    execs: Option<&'a SharedExecs>,
}

/// What to boot: the stock guest of `boot --vm qemu`, or a workload's initramfs.
pub struct Guest<'a> {
    pub kernel: &'a Path,
    pub initramfs: &'a Path,
    pub memory_mb: u64,
    pub smp: u32,
    /// Appended to the kernel command line.
    pub append: &'a str,
    /// A workload guest: its `done` mark closes a `workload` phase, and every console line
    /// is kept (the result is printed there).
    pub workload: bool,
    /// `-cpu max`: a stock guest sees SVM (TCG) or the host's virtualization, so KVM loads in it.
    pub cpu_max: bool,
    /// A virtio-net NIC on this existing tap device (in qemu's namespace: the spawning
    /// thread's); none without it.
    pub tap: Option<&'a str>,
    /// TCG only: the guest's clock from QEMU's instruction counter (`-icount shift=0,sleep=off`:
    /// 1 ns an instruction, idle time skipped), so its timers fire exactly when due. Under plain
    /// TCG here a timer's interrupt arrives 35-90 us late (QEMU's wake-ups on the host).
    pub icount: bool,
}

impl<'a> Guest<'a> {
    pub fn stock(a: &'a artefacts::Artefacts) -> Self {
        Self {
            kernel: &a.kernel,
            initramfs: &a.initramfs,
            memory_mb: GUEST_MB,
            smp: 1,
            append: "",
            workload: false,
            cpu_max: false,
            tap: None,
            icount: false,
        }
    }
}

/// One boot and, for a workload guest, its whole console.
pub struct GuestRun {
    pub boot: Boot,
    pub console: Vec<String>,
    /// Killed at the time limit (not by Ctrl-C or an error).
    pub timed_out: bool,
}

/// Boots a workload guest to its exit with a known accelerator; `on_spawn` gets qemu's pid
/// (to trace it) before the guest has run far.
pub fn run_guest(
    guest: &Guest,
    accel: Accel,
    timeout: Duration,
    on_spawn: &mut dyn FnMut(u32),
) -> Result<GuestRun> {
    let how = How {
        accel,
        timeout,
        probe: false,
    };
    boot(0, guest, &how, on_spawn, Tracers::default())
}

/// KVM's exit counters by name, now (see `kvm::report::exit_counts`).
fn exit_snapshot(t: Option<&KvmTracer>) -> Option<BTreeMap<String, u64>> {
    t.and_then(|t| t.read().ok())
        .map(|r| crate::kvm::report::exit_counts(&r))
}

/// Per phase, the exits between its start and end snapshots. `at_end[i]` was taken when
/// `names[i]` ended (None: no snapshot there, e.g. the kernel-stamped VMM marks); a phase
/// ends at the snapshot of the last name it merges, or at the exit (`last`) when it is the
/// final or a cut phase. A phase with no snapshot at its end folds its exits into the next.
fn exits_by_phase(
    phases: &[Phase],
    names: &[&str],
    first: &BTreeMap<String, u64>,
    at_end: &[Option<BTreeMap<String, u64>>],
    last: &BTreeMap<String, u64>,
) -> Vec<PhaseExits> {
    let mut prev = first;
    phases
        .iter()
        .map(|p| {
            let end_name = p.name.rsplit('+').next().unwrap_or(&p.name);
            let end = match names.iter().position(|n| *n == end_name) {
                Some(i) if p.complete && i + 1 < names.len() => {
                    at_end.get(i).and_then(Option::as_ref)
                }
                _ => Some(last),
            };
            let exits = match end {
                Some(end) => {
                    let e = crate::kvm::report::counts_between(prev, end);
                    prev = end;
                    e
                }
                None => BTreeMap::new(),
            };
            PhaseExits {
                phase: p.name.clone(),
                exits,
            }
        })
        .collect()
}

/// qemu's command line for `guest` on `accel`, named for its owner and index.
fn command(index: u32, guest: &Guest, accel: Accel) -> Command {
    let append = format!("{APPEND} {}", guest.append);
    let mut cmd = Command::new(QEMU);
    cmd.args(["-accel", accel.name()])
        .args(if guest.icount && accel == Accel::Tcg {
            &["-icount", "shift=0,sleep=off"][..]
        } else {
            &[]
        })
        .arg("-m")
        .arg(guest.memory_mb.to_string())
        .arg("-smp")
        .arg(guest.smp.max(1).to_string())
        .args(if guest.cpu_max {
            &["-cpu", "max"][..]
        } else {
            &[]
        })
        .args(["-nographic", "-no-reboot"])
        // Named threads (`CPU 0/TCG`): the vCPU thread's start is a kernel-stamped mark. The
        // name carries the owner: the reaper kills a QEMU that outlived it.
        .arg("-name")
        .arg(format!(
            "{},debug-threads=on",
            crate::cleanup::owner::name(&crate::cleanup::Owner::me(), index)
        ))
        .args(match guest.tap {
            Some(tap) => vec![
                "-netdev".to_string(),
                format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
                "-device".into(),
                "virtio-net-pci,netdev=n0".into(),
            ],
            None => vec!["-net".into(), "none".into()],
        })
        .args(["-monitor", "none", "-serial", "stdio"])
        .arg("-kernel")
        .arg(guest.kernel)
        .arg("-initrd")
        .arg(guest.initramfs)
        .arg("-append")
        .arg(append.trim_end())
        // Not a tty: qemu leaves the terminal alone. Own group: Ctrl-C reaches us, not it.
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    cmd
}

/// Boots one VM to its exit (or kill); errors only when qemu cannot be started.
fn boot(
    index: u32,
    guest: &Guest,
    how: &How,
    on_spawn: &mut dyn FnMut(u32),
    tracers: Tracers,
) -> Result<GuestRun> {
    let Tracers { exits, execs } = tracers;
    let accel = how.accel;
    let first_exits = exit_snapshot(exits);
    let mut mark_exits: Vec<Option<BTreeMap<String, u64>>> = vec![None; Marks::default().at.len()];
    let mut cmd = command(index, guest, accel);
    // The child dies if the thread that spawned it does.
    crate::cleanup::die_with_parent(&mut cmd);
    if crate::cleanup::stop_requested() {
        anyhow::bail!("VM {index}: interrupted before its start");
    }
    let (tx, rx) = mpsc::channel();
    let (child, t0, t0_mono) = spawn_alone(cmd, tx)?;
    let mut guard = ChildGuard::new(child);

    // After the readers run: what the caller does here (load a tracer) must not delay the
    // console's time stamps.
    on_spawn(guard.pid as u32);
    let mut console = Console::new(guest.workload);
    let mut stderr_lines: Vec<String> = Vec::new();
    let mut last_output = t0;
    let mut killed: Option<String> = None;
    let mut timed_out = false;
    let limit = if how.probe {
        how.timeout.min(PROBE_LIMIT)
    } else {
        how.timeout
    };
    let exited = loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(Event::Line(t, l)) => {
                last_output = last_output.max(t);
                console.line(t, l);
                if first_exits.is_some() {
                    for (i, m) in console.marks.at.iter().enumerate() {
                        if m.is_some() && mark_exits[i].is_none() {
                            mark_exits[i] = exit_snapshot(exits);
                        }
                    }
                }
            }
            Ok(Event::Stderr(l)) => {
                if killed.is_none() && l.contains("KVM internal error") {
                    guard.kill();
                    killed = Some(format!("qemu: {}", l.trim()));
                }
                stderr_lines.push(l);
            }
            Ok(Event::Exited(t)) => break t,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break Instant::now(),
        }
        if killed.is_some() {
            continue;
        }
        let now = Instant::now();
        let marks = &console.marks;
        let why = if let Some((why, limit_hit)) =
            kill_reason(now - t0, limit, marks, guest.workload, QEMU)
        {
            timed_out = limit_hit;
            Some(why)
        } else if how.probe && marks.at[FIRST_PRINTK].is_none() {
            match marks.at[KERNEL_ENTRY] {
                Some(entry) if now - entry >= PROBE_AFTER_ENTRY => Some(format!(
                    "no kernel log line {:.0} s after the kernel's entry",
                    PROBE_AFTER_ENTRY.as_secs_f64()
                )),
                _ if now - last_output >= PROBE_SILENCE => Some(format!(
                    "no console output for {:.0} s",
                    PROBE_SILENCE.as_secs_f64()
                )),
                _ => None,
            }
        } else {
            None
        };
        if let Some(why) = why {
            guard.kill();
            killed = Some(why);
        }
    };
    let status = guard.reap();
    let last_exits = exit_snapshot(exits);
    // The console's last bytes may still be in the pipe: the readers end (and the channel
    // closes) once they are read.
    while let Ok(ev) = rx.recv() {
        match ev {
            Event::Line(t, l) => console.line(t, l),
            Event::Stderr(l) => stderr_lines.push(l),
            Event::Exited(_) => {}
        }
    }

    let ready = console.ready() && killed.is_none();
    let vmm = execs.map(|x| vmm_marks(&x.seen(), guard.pid as u32, t0_mono));
    let names = names(vmm.is_some(), guest.workload);
    let marked = if guest.workload { DONE + 1 } else { DONE };
    let offsets: Vec<Option<Duration>> = vmm
        .iter()
        .flatten()
        .copied()
        .chain(console.offsets(t0, marked))
        .collect();
    // qemu wrote every console byte before it exited: a line stamped later than the exit
    // only means its reader was scheduled late, so the exit is seen no earlier than it.
    let last_mark = console
        .marks
        .at
        .iter()
        .flatten()
        .max()
        .copied()
        .unwrap_or(t0);
    let end = exited.max(last_mark).saturating_duration_since(t0);
    let mut phases = phases(&names, &offsets, end, ready);
    fill_guest_clock(&mut phases, &console.marks.guest);
    let exits_by_phase = match (&first_exits, &last_exits) {
        (Some(first), Some(last)) => {
            // Snapshots are taken at console marks; the VMM's marks come first in `names`.
            let vmm = names.len() - (marked + 1);
            let at_end: Vec<_> = std::iter::repeat_n(None, vmm)
                .chain(mark_exits.iter().take(marked).cloned())
                .collect();
            exits_by_phase(&phases, &names, first, &at_end, last)
        }
        _ => Vec::new(),
    };
    let error = match (&killed, ready) {
        (Some(why), _) => Some(why.clone()),
        (None, true) => None,
        (None, false) => {
            let err = stderr_lines
                .iter()
                .rev()
                .find(|l| !l.contains("warning"))
                .map(|l| format!(": {}", l.trim()))
                .unwrap_or_default();
            Some(format!(
                "{QEMU} exited ({}) before the guest was ready{err}",
                status.map_or("?".into(), |s| s.to_string())
            ))
        }
    };
    let boot = Boot {
        index,
        accelerator: accel.name().into(),
        phases,
        total_ns: ns(end),
        ready,
        console_tail: console.tail(ready),
        error,
        exit_code: status.and_then(|s| s.code()),
        guest_clock: console.marks.guest,
        exits_by_phase,
        notes: Vec::new(),
    };
    Ok(GuestRun {
        boot,
        console: console.lines,
        timed_out,
    })
}

/// Guest-clock spans for phases both of whose ends carry a printk timestamp.
fn fill_guest_clock(phases: &mut [Phase], guest: &BTreeMap<String, f64>) {
    let span = |a: &str, b: &str| {
        let (a, b) = (guest.get(a)?, guest.get(b)?);
        (b >= a).then(|| ((b - a) * 1e9).round() as u64)
    };
    for p in phases.iter_mut().filter(|p| p.complete) {
        p.guest_ns = match p.name.as_str() {
            "kernel_boot" => span("first_printk", "init"),
            "init" => span("init", "ready"),
            "workload" => span("ready", "done"),
            _ => None,
        };
    }
}

/// N boots at once, one thread each (a qemu's PDEATHSIG is tied to its spawning thread).
fn boot_many(
    n: u32,
    a: &artefacts::Artefacts,
    how: &How,
    execs: Option<&SharedExecs>,
) -> Result<Vec<Boot>> {
    let tracers = Tracers { exits: None, execs };
    super::all_at_once(n, |i| {
        boot(i, &Guest::stock(a), how, &mut |_| {}, tracers).map(|r| r.boot)
    })
}

pub fn run(args: &super::BootArgs, laps: &mut Laps) -> Result<Booted> {
    let (count, choice, probe_again) = (args.count, args.accel, args.probe_again);
    let timeout = Duration::from_secs_f64(args.timeout);
    let artefacts = artefacts::prepare()?;
    laps.lap(artefacts.lap_name());
    // QEMU's exec and vCPU thread, stamped in the kernel: splits vmm_setup. Without it (no
    // BPF), vmm_setup stays whole.
    let execs = SharedExecs::start().ok();
    laps.lap(if execs.is_some() {
        "exec tracer"
    } else {
        "exec tracer (failed)"
    });
    let (accel, reason, probe) = choose(choice, probe_again, &artefacts, timeout, execs.as_ref())?;
    // One VM on KVM: the probe was the boot (the instances' span); more: they start together,
    // after it.
    let (kvm_probe, reused) = match probe {
        Some(p) if p.ready && count == 1 => (None, Some(p)),
        p => (p, None),
    };
    if kvm_probe.is_some() {
        laps.lap("kvm probe");
    }
    let stopped = crate::cleanup::stop_requested();
    let how = How {
        accel,
        timeout,
        probe: false,
    };
    let boots = match reused {
        Some(b) => vec![b],
        None if stopped => Vec::new(),
        // One VM on KVM: its exits per phase (the tracer is loaded before the boot's clock).
        None if count == 1 && accel == Accel::Kvm => {
            let tracer = exit_tracer();
            let tracers = Tracers {
                exits: tracer.as_ref(),
                execs: execs.as_ref(),
            };
            let b = boot(0, &Guest::stock(&artefacts), &how, &mut |_| {}, tracers)?;
            vec![b.boot]
        }
        None => boot_many(count, &artefacts, &how, execs.as_ref())?,
    };
    let error = (stopped && boots.is_empty())
        .then(|| format!("{} before the boots", crate::cleanup::interrupted()));
    let booted = Booted::vm(laps, execs, (accel, reason), kvm_probe, boots, artefacts);
    Ok(Booted { error, ..booted })
}

/// The accelerator `choice` asks for; under `auto`, KVM when a stock guest boots on it in a
/// probe (returned, with why), else TCG.
/// `execs` splits the probe's VMM phases (it may become the reported boot).
pub fn choose(
    choice: AccelChoice,
    probe_again: bool,
    a: &artefacts::Artefacts,
    timeout: Duration,
    execs: Option<&SharedExecs>,
) -> Result<(Accel, String, Option<Boot>)> {
    let backend = crate::kernel::kvm_backend();
    Ok(match choice {
        AccelChoice::Kvm => (Accel::Kvm, "--accel kvm".to_string(), None),
        AccelChoice::Tcg => (Accel::Tcg, "--accel tcg".to_string(), None),
        AccelChoice::Auto if !Path::new("/dev/kvm").exists() => {
            (Accel::Tcg, "/dev/kvm is absent".to_string(), None)
        }
        AccelChoice::Auto => {
            // The answer is the same until the kernel, QEMU or /dev/kvm change.
            let key = super::probe_cache::Key::now();
            if !probe_again && let Some((accel, why, age)) = super::probe_cache::lookup(&key) {
                let why = format!(
                    "{why} (the probe's answer of {} min ago, kept in {}; --probe-again to redo it)",
                    age.as_secs() / 60,
                    super::probe_cache::path().display()
                );
                return Ok((accel, why, None));
            }
            let how = How {
                accel: Accel::Kvm,
                timeout,
                probe: true,
            };
            let tracer = exit_tracer();
            let tracers = Tracers {
                exits: tracer.as_ref(),
                execs,
            };
            let run = boot(0, &Guest::stock(a), &how, &mut |_| {}, tracers)?;
            // A probe cut short by --timeout or a signal says nothing about KVM: not kept. Its
            // own verdicts (silence, no kernel log, a KVM internal error) are.
            let finished = !run.timed_out;
            let probe = run.boot;
            let chosen = if probe.ready {
                let why = format!(
                    "a stock guest booted on KVM ({}) in the probe",
                    backend_name(backend)
                );
                (Accel::Kvm, why, Some(probe))
            } else {
                let why = format!(
                    "KVM ({} backend) failed a stock guest: {}; fell back to TCG",
                    backend_name(backend),
                    probe.error.as_deref().unwrap_or("not ready")
                );
                (Accel::Tcg, why, Some(probe))
            };
            if finished && !crate::cleanup::stop_requested() {
                super::probe_cache::store(key, chosen.0, &chosen.1);
            }
            chosen
        }
    })
}

/// The KVM exit tracer on every VM (a boot's qemu has no pid before its spawn), or None when
/// it cannot load: the boot goes on without exits per phase.
fn exit_tracer() -> Option<KvmTracer> {
    KvmTracer::start(crate::probes::kvm::Filter::default()).ok()
}

fn backend_name(b: crate::kernel::KvmBackend) -> String {
    format!("{b:?}").to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::console::READY;

    const CONSOLE: &[&str] = &[
        "SeaBIOS (version 1.16.2-debian-1.16.2-1)",
        "Booting from ROM...",
        "PPrroobbiinngg  EEDDDD  ((eedddd==ooffff  ttoo  ddiissaabbllee))......  ook",
        "[    0.000000] Linux version 6.1.0-56-cloud-amd64",
        "[    0.000000] Command line: console=ttyS0",
        "Memory KASLR using RDTSC...",
        "[    1.834503] PROFILER_MARK init",
        "[    1.858261] PROFILER_MARK ready",
        "[    1.866135] reboot: Power down",
    ];

    #[test]
    fn console_lines_set_every_mark_in_order() {
        let t0 = Instant::now();
        let mut m = Marks::default();
        let at = |i: usize| t0 + Duration::from_millis(10 * (i as u64 + 1));
        for (i, l) in CONSOLE.iter().enumerate() {
            m.note(at(i), l);
        }
        assert_eq!(
            m.at,
            [
                Some(at(0)),
                Some(at(1)),
                Some(at(2)),
                Some(at(3)),
                Some(at(6)),
                Some(at(7)),
                None
            ]
        );
        assert_eq!(m.guest["first_printk"], 0.0);
        assert_eq!(m.guest["init"], 1.834503);
        assert_eq!(m.guest["ready"], 1.858261);
        assert_eq!(m.guest["power_down"], 1.866135);
    }

    #[test]
    fn without_firmware_output_the_firmware_phases_merge() {
        let t0 = Instant::now();
        let mut m = Marks::default();
        for (i, l) in CONSOLE[3..].iter().enumerate() {
            m.note(t0 + Duration::from_millis(i as u64 + 1), l);
        }
        assert_eq!(&m.at[..3], &[None, None, None]);
        assert!(m.at[FIRST_PRINTK].is_some() && m.at[READY].is_some());
        let offsets: Vec<Option<Duration>> =
            m.at[..DONE].iter().map(|t| t.map(|t| t - t0)).collect();
        let names: Vec<&str> = PHASES.iter().map(|(n, _)| *n).collect();
        let p = phases(&names, &offsets, Duration::from_millis(50), true);
        assert_eq!(
            p[0].name,
            "vmm_setup+firmware+kernel_load+kernel_decompress"
        );
        assert_eq!(p.iter().map(|p| p.ns).sum::<u64>(), 50_000_000);
    }

    #[test]
    fn a_workload_guest_marks_done() {
        let t0 = Instant::now();
        let mut m = Marks::default();
        let lines = [
            "[    4.70] PROFILER_MARK init",
            "[    4.75] PROFILER_MARK ready",
            "[    6.45] PROFILER_MARK done",
            "PROFILER_RESULT_BEGIN",
            "{",
            "PROFILER_RESULT_END",
        ];
        for (i, l) in lines.iter().enumerate() {
            m.note(t0 + Duration::from_millis(i as u64 + 1), l);
        }
        assert_eq!(m.at[DONE], Some(t0 + Duration::from_millis(3)));
        assert_eq!(m.guest["done"], 6.45);
        let mut p = vec![Phase {
            name: WORKLOAD_PHASE.0.into(),
            ns: 1,
            complete: true,
            guest_ns: None,
        }];
        fill_guest_clock(&mut p, &m.guest);
        assert_eq!(p[0].guest_ns, Some(1_700_000_000));
    }

    #[test]
    fn vmm_marks_take_qemus_own_exec_and_first_vcpu_thread() {
        use crate::probes::exec::Exec;
        let ev = |ts: u64, pid: u32, comm: &str, renamed: bool| Exec {
            ts,
            pid,
            comm: comm.into(),
            renamed,
        };
        let events = [
            ev(900, 7, "qemu-system-x86", false),   // before t0: not ours
            ev(1_500, 8, "qemu-system-x86", false), // another VM
            ev(2_000, 7, "qemu-system-x86", false),
            ev(3_000, 7, "call_rcu", true),
            ev(9_000, 7, "CPU 1/TCG", true),
            ev(5_000, 7, "CPU 0/TCG", true),
        ];
        assert_eq!(
            vmm_marks(&events, 7, 1_000),
            [
                Some(Duration::from_nanos(1_000)),
                Some(Duration::from_nanos(4_000))
            ]
        );
        assert_eq!(vmm_marks(&events, 9, 1_000), [None, None]);
        assert_eq!(
            names(true, false)[..4],
            ["spawn", "vmm_init", "vcpu_start", "firmware"]
        );
        assert_eq!(names(false, true)[0], "vmm_setup");
        assert_eq!(names(false, true)[names(false, true).len() - 2], "workload");
    }

    #[test]
    fn exits_split_at_each_phase_end_mark() {
        let c = |n: u64| BTreeMap::from([("kvm_pio out".to_string(), n)]);
        let names = ["a", "b", "c", "d"];
        // "b" merged into "c" (its mark was missed): the merged phase ends at c's snapshot.
        let marks = [Some(c(10)), None, Some(c(70))];
        let p = |name: &str, complete: bool| Phase {
            name: name.into(),
            ns: 1,
            complete,
            guest_ns: None,
        };
        let phases = [p("a", true), p("b+c", true), p("d", false)];
        let e = exits_by_phase(&phases, &names, &c(0), &marks, &c(100));
        let got: Vec<(String, u64)> = e
            .iter()
            .map(|p| {
                (
                    p.phase.clone(),
                    p.exits.get("kvm_pio out").copied().unwrap_or(0),
                )
            })
            .collect();
        assert_eq!(
            got,
            [("a".into(), 10), ("b+c".into(), 60), ("d".into(), 30)]
        );
        assert_eq!(
            e.iter().map(|p| p.exits.values().sum::<u64>()).sum::<u64>(),
            100
        );

        // Split VMM phases have no snapshot: their exits fold into the next phase.
        let names = super::names(true, false);
        let mut at_end = vec![None; names.len()];
        at_end[2] = Some(c(5)); // vcpu_start ends at the first console byte
        at_end[3] = Some(c(8)); // firmware
        let phases: Vec<Phase> = names.iter().map(|n| p(n, true)).collect();
        let e = exits_by_phase(&phases, &names, &c(0), &at_end, &c(20));
        let n = |i: usize| e[i].exits.get("kvm_pio out").copied().unwrap_or(0);
        assert_eq!((n(0), n(1), n(2), n(3)), (0, 0, 5, 3));
        // kernel_load..init have no snapshot either: all of it lands in shutdown.
        assert_eq!(n(names.len() - 1), 12);
    }

    #[test]
    fn guest_clock_spans() {
        let mut g = BTreeMap::new();
        g.insert("first_printk".to_string(), 0.0);
        g.insert("init".to_string(), 1.5);
        g.insert("ready".to_string(), 1.75);
        let mut p = vec![
            Phase {
                name: "kernel_boot".into(),
                ns: 1,
                complete: true,
                guest_ns: None,
            },
            Phase {
                name: "init".into(),
                ns: 1,
                complete: true,
                guest_ns: None,
            },
        ];
        fill_guest_clock(&mut p, &g);
        assert_eq!(p[0].guest_ns, Some(1_500_000_000));
        assert_eq!(p[1].guest_ns, Some(250_000_000));
    }
}
