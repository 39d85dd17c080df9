//! Where a workload runs: the host, a native container, a Docker container, or a VM. The
//! workload is this very binary's own subcommand (e.g. `sysbench cpu ...`), so the same code
//! runs everywhere and prints its JSON report; the environment adds how it was started.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Env {
    Host,
    Native,
    Docker,
    Vm,
}

/// One run of a workload in an environment.
#[derive(Debug, Serialize)]
pub struct EnvRun {
    pub env: Env,
    /// The workload's own JSON report.
    pub report: serde_json::Value,
    /// From asking the environment to run it to its report: start-up plus the run.
    pub wall_ns: u64,
    /// What the environment cost the workload's threads: run-queue latency (wakeup or
    /// preemption to running), from the scheduler's tracepoints.
    pub sched: Option<crate::probes::sched::SchedReport>,
    /// The container's cgroup CPU throttling (periods, µs), where it has a cgroup v2.
    pub throttled: Option<(u64, u64)>,
    /// `kvm` or `tcg` (vm only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accelerator_reason: Option<String>,
    /// The VM's boot phases and exits (vm only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmRun>,
}

/// How a workload's VM went: what ran before it, its phases from qemu's spawn to its exit
/// (start-up up to `init`, the run in `workload`), and its KVM exits.
#[derive(Debug, Serialize)]
pub struct VmRun {
    /// Before the VM: the cached guest, this workload's initramfs, the KVM probe.
    pub setup: Vec<crate::startup::Phase>,
    /// `shutdown` includes printing the result on the console.
    pub phases: Vec<crate::startup::Phase>,
    /// qemu's spawn to its exit: the sum of `phases`.
    pub total_ns: u64,
    /// The guest kernel's clock (s) at its markers.
    pub guest_clock: std::collections::BTreeMap<String, f64>,
    pub memory_mb: u64,
    pub smp: u32,
    pub initramfs_bytes: u64,
    /// KVM exits of qemu's threads while it ran; null under TCG.
    pub vm_exits: Option<crate::kvm::report::KvmReport>,
    pub notes: Vec<String>,
}

fn self_exe() -> Result<String> {
    Ok(std::fs::read_link("/proc/self/exe")
        .context("finding this program")?
        .to_string_lossy()
        .into_owned())
}

/// Runs `workload` (this binary's arguments, e.g. ["sysbench", "cpu", "--time", "2"]) in `env`
/// and returns its JSON report.
/// `accel` is QEMU's accelerator for `Env::Vm` (ignored elsewhere).
pub fn run(
    env: Env,
    workload: &[String],
    timeout: Duration,
    accel: crate::boot::AccelChoice,
) -> Result<EnvRun> {
    let mut args = workload.to_vec();
    args.push("--json".into());
    let mut tracer = crate::probes::sched::SchedTracer::start().ok();
    let mut watch = |pid: u32| {
        if let Some(t) = tracer.as_mut() {
            let _ = t.watch(pid);
        }
    };
    let start = Instant::now();
    let mut throttled = None;
    let mut vm_run = None;
    let stdout = match env {
        Env::Host => {
            let mut cmd = Command::new(self_exe()?);
            let child = crate::cleanup::die_with_parent(&mut cmd)
                .env(crate::cleanup::WORKLOAD_ENV, "1")
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("running the workload on the host")?;
            watch(child.id());
            let out = wait_with_timeout(child, timeout)?;
            if !out.status.success() {
                bail!(
                    "the workload failed on the host: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
        Env::Docker => crate::docker::run_self(&args, timeout, &mut watch)?.stdout,
        Env::Native => native(&args, timeout, &mut watch, &mut throttled)?,
        Env::Vm => {
            let (stdout, r) = vm(&args, timeout, start, &mut watch, accel)?;
            vm_run = Some(r);
            stdout
        }
    };
    let wall_ns = start.elapsed().as_nanos() as u64;
    let json = stdout
        .find('{')
        .map(|i| &stdout[i..])
        .ok_or_else(|| anyhow!("the workload printed no JSON report: {}", stdout.trim()))?;
    Ok(EnvRun {
        env,
        report: serde_json::from_str(json).context("reading the workload's report")?,
        wall_ns,
        sched: tracer.and_then(|t| t.report().ok()),
        throttled,
        accelerator: vm_run.as_ref().map(|v| v.0.name().to_string()),
        accelerator_reason: vm_run.as_ref().map(|v| v.1.clone()),
        vm: vm_run.map(|v| v.2),
    })
}

/// The accelerator for workload VMs, chosen once per process (density starts many); auto
/// probes KVM with the stock guest.
fn vm_accelerator(
    a: &crate::boot::artefacts::Artefacts,
    timeout: Duration,
    choice: crate::boot::AccelChoice,
) -> Result<(crate::boot::qemu::Accel, String, bool)> {
    use crate::boot::AccelChoice;
    type Chosen = (AccelChoice, crate::boot::qemu::Accel, String);
    static CHOSEN: std::sync::Mutex<Option<Chosen>> = std::sync::Mutex::new(None);
    let mut chosen = CHOSEN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((asked, accel, why)) = chosen.as_ref()
        && *asked == choice
    {
        return Ok((*accel, why.clone(), false));
    }
    let (accel, mut why, probe) = crate::boot::qemu::choose(choice, a, timeout, None)?;
    if choice != AccelChoice::Auto {
        why = format!("--accel {}", accel.name());
    }
    if !crate::cleanup::stop_requested() {
        *chosen = Some((choice, accel, why.clone()));
    }
    Ok((accel, why, probe.is_some()))
}

/// `--threads N` of the workload: the guest's vCPUs (1 without it), at most the host's CPUs.
pub fn vm_smp(args: &[String]) -> u32 {
    let threads = args.iter().enumerate().find_map(|(i, a)| match a.as_str() {
        "--threads" => args.get(i + 1).and_then(|v| v.parse::<u32>().ok()),
        _ => a.strip_prefix("--threads=").and_then(|v| v.parse().ok()),
    });
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    threads.unwrap_or(1).clamp(1, cpus.max(1))
}

/// Guest memory: the kernel and user space, plus the initramfs twice (the image qemu loads and
/// the files it unpacks to).
pub fn vm_memory_mb(initramfs_bytes: u64) -> u64 {
    (256 + 2 * initramfs_bytes.div_ceil(1 << 20)).max(512)
}

/// The workload in a qemu guest that carries this binary: boots it, reads the result off the
/// serial console, and returns the workload's stdout with how the VM went.
fn vm(
    args: &[String],
    timeout: Duration,
    start: Instant,
    watch: &mut dyn FnMut(u32),
    accel: crate::boot::AccelChoice,
) -> Result<(String, (crate::boot::qemu::Accel, String, VmRun))> {
    use crate::{
        boot::{artefacts, qemu},
        startup::Laps,
    };
    crate::kernel::require_root("profiler run --env vm")?;
    // Ctrl-C: the boot loop sees it, kills qemu, and the temp initramfs goes with this frame.
    crate::cleanup::set_interruptible();
    let mut setup = Laps::new(start);
    let a = artefacts::prepare()?;
    setup.lap("artefacts");
    let image = shared_image(&a, args)?;
    setup.lap("workload initramfs");
    let (accel, reason, probed) = vm_accelerator(&a, timeout, accel)?;
    if probed {
        setup.lap("kvm probe");
    }
    if crate::cleanup::stop_requested() {
        bail!("{} before the VM started", crate::cleanup::interrupted());
    }
    let guest = qemu::Guest {
        kernel: &a.kernel,
        initramfs: &image.path,
        memory_mb: vm_memory_mb(image.bytes),
        smp: vm_smp(args),
        append: "",
        workload: true,
    };
    let mut notes = Vec::new();
    if image.stripped {
        notes.push("this program went into the guest without its debug sections (objcopy)".into());
    }
    let mut kvm: Option<(crate::probes::kvm::KvmTracer, u32, Instant)> = None;
    let mut kvm_error = None;
    let run = qemu::run_guest(&guest, accel, timeout, &mut |pid| {
        watch(pid);
        if accel == qemu::Accel::Kvm {
            let filter = crate::probes::kvm::Filter { tgid: pid, tid: 0 };
            match crate::probes::kvm::KvmTracer::start(filter) {
                Ok(t) => kvm = Some((t, pid, Instant::now())),
                Err(e) => kvm_error = Some(format!("{e:#}")),
            }
        }
    })?;
    let vm_exits = match kvm {
        Some((mut t, pid, since)) => {
            let seconds = since.elapsed().as_secs_f64();
            t.detach()?;
            let ctx = crate::kvm::report::Context {
                backend: crate::kernel::kvm_backend(),
                pid: Some(pid),
                seconds,
                attached: t.attached.clone(),
            };
            notes.push(
                "KVM exits from the tracer's attach (after qemu's spawn) to qemu's exit".into(),
            );
            Some(crate::kvm::report::build(&t.read()?, &ctx))
        }
        None => {
            notes.push(match (accel, kvm_error) {
                (qemu::Accel::Tcg, _) => "TCG: no KVM exits".to_string(),
                (qemu::Accel::Kvm, Some(e)) => format!("KVM exit tracer: {e}"),
                (qemu::Accel::Kvm, None) => "KVM exit tracer not started".to_string(),
            });
            None
        }
    };
    let b = &run.boot;
    if !b.ready || b.error.is_some() {
        let why = b.error.as_deref().unwrap_or("not ready");
        let last = b
            .console_tail
            .last()
            .map(|l| format!(" (console: {l})"))
            .unwrap_or_default();
        if run.timed_out || crate::cleanup::stop_requested() {
            bail!("the workload's VM ({}) was killed: {why}", accel.name());
        }
        bail!("the workload's VM ({}) failed: {why}{last}", accel.name());
    }
    let out = artefacts::parse_guest_output(&run.console);
    match out.exit {
        Some(0) => {}
        Some(code) => {
            let err = out
                .stderr
                .as_deref()
                .and_then(|e| e.lines().map(str::trim).find(|l| !l.is_empty()))
                .unwrap_or("no stderr");
            bail!("the workload failed in the VM (exit status {code}): {err}");
        }
        None => bail!(
            "the workload's VM printed no exit status (console: {})",
            run.console.last().map_or("empty", String::as_str)
        ),
    }
    let stdout = out
        .stdout
        .ok_or_else(|| anyhow!("the workload's VM printed no result block"))?;
    let vm = VmRun {
        setup: setup.setup().to_vec(),
        phases: b.phases.clone(),
        total_ns: b.total_ns,
        guest_clock: b.guest_clock.clone(),
        memory_mb: guest.memory_mb,
        smp: guest.smp,
        initramfs_bytes: image.bytes,
        vm_exits,
        notes,
    };
    drop(image);
    Ok((stdout, (accel, reason, vm)))
}

/// The workload's initramfs, shared by the instances that run the same arguments at once
/// (density): built once, removed when the last of them lets go of it.
fn shared_image(
    a: &crate::boot::artefacts::Artefacts,
    args: &[String],
) -> Result<std::sync::Arc<crate::boot::artefacts::WorkloadImage>> {
    use std::sync::{Arc, Mutex, Weak};
    type Last = Option<(Vec<String>, Weak<crate::boot::artefacts::WorkloadImage>)>;
    static LAST: Mutex<Last> = Mutex::new(None);
    // Held while building: the other instances wait for this one image.
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((built_for, image)) = last.as_ref()
        && built_for == args
        && let Some(image) = image.upgrade()
    {
        return Ok(image);
    }
    let image = Arc::new(crate::boot::artefacts::workload_initramfs(a, args)?);
    *last = Some((args.to_vec(), Arc::downgrade(&image)));
    Ok(image)
}

/// A native container for a workload: new mount, UTS, IPC, network and PID namespaces and a
/// cgroup, the way runc sets one up, without a network (workloads here need none).
fn native(
    args: &[String],
    timeout: Duration,
    watch: &mut dyn FnMut(u32),
    throttled: &mut Option<(u64, u64)>,
) -> Result<String> {
    use std::os::unix::process::CommandExt as _;
    let exe = self_exe()?;
    let mut cmd = Command::new(&exe);
    cmd.args(args)
        .env(crate::cleanup::WORKLOAD_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: unshare is async-signal-safe; the child execs right after.
    unsafe {
        cmd.pre_exec(|| {
            use nix::sched::CloneFlags as F;
            nix::sched::unshare(
                F::CLONE_NEWNS | F::CLONE_NEWUTS | F::CLONE_NEWIPC | F::CLONE_NEWNET,
            )
            .map_err(std::io::Error::from)
        });
    }
    let child = crate::cleanup::die_with_parent(&mut cmd)
        .spawn()
        .context("starting the workload in a native container")?;
    let pid = child.id();
    watch(pid);
    let cg = crate::container::cgroup::root()
        .and_then(|root| {
            crate::container::cgroup::create(
                &root,
                &crate::container::cgroup::run_name(&crate::cleanup::Owner::me(), pid),
                nix::unistd::Pid::from_raw(pid as i32),
            )
        })
        .ok();
    let waited = wait_with_timeout(child, timeout);
    if let Some(cg) = &cg {
        *throttled = crate::probes::sched::throttling(cg);
        let _ = crate::container::cgroup::remove(cg);
    }
    let out = waited?;
    if !out.status.success() {
        bail!(
            "the workload failed in the native container: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_with_timeout(
    child: std::process::Child,
    timeout: Duration,
) -> Result<std::process::Output> {
    // A pidfd signals this process or none: the waiter may reap it at the deadline, and its
    // pid could then be someone else's.
    // SAFETY: plain syscall; a non-negative return is a descriptor we own.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    let pidfd = (pidfd >= 0).then(|| {
        // SAFETY: see above.
        unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(pidfd as i32) }
    });
    let (tx, rx) = std::sync::mpsc::channel();
    // A thread that cannot start drops the child: it dies with this process (PDEATHSIG).
    crate::cleanup::spawn("workload-wait", move || {
        let _ = tx.send(child.wait_with_output());
    })?;
    let deadline = Instant::now() + timeout;
    // Polled so a Ctrl-C (when a vm run made the process interruptible) ends it too.
    let why = loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(r) => return Ok(r?),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                bail!("the workload's waiter went away")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if crate::cleanup::stop_requested() {
            break crate::cleanup::interrupted();
        }
        if Instant::now() >= deadline {
            break format!("the workload did not finish within {timeout:?}");
        }
    };
    if let Some(fd) = &pidfd {
        use std::os::fd::AsRawFd as _;
        // SAFETY: a pidfd we own; no siginfo.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }
    bail!("{why}; killed")
}

/// `profiler density`: N identical instances at once, per N in the list.
#[derive(Debug, Serialize)]
pub struct DensityRow {
    pub instances: usize,
    /// events/s of each instance
    pub events_per_sec: Vec<f64>,
    pub mean: f64,
    /// One instance on the host over the mean instance here: 1.0 = no slowdown.
    pub slowdown: f64,
    /// Start to report, per instance (start-up plus run), ns.
    pub wall_ns: Vec<u64>,
    /// Start-up phases of N containers started at once (native: clone .. ready; docker:
    /// create .. ready; vm: the N VMs' phases, spawn .. exit, the run being `workload`), and
    /// `total`; empty on the host.
    pub startup: Vec<crate::startup::PhaseStats>,
}

#[derive(Debug, Serialize)]
pub struct Density {
    pub env: Env,
    pub workload: Vec<String>,
    pub baseline_events_per_sec: f64,
    pub rows: Vec<DensityRow>,
}

fn events_per_sec(report: &serde_json::Value) -> Result<f64> {
    report
        .pointer("/run/events_per_sec")
        .and_then(|v| v.as_f64())
        .ok_or_else(|| anyhow!("the workload's report has no run.events_per_sec"))
}

/// What one instance of `workload` in `env` takes (its threads and memory, and the
/// environment's own), for [`crate::fit`].
pub fn footprint(env: Env, workload: &[String]) -> crate::fit::Each {
    use crate::fit::Each;
    let (threads, memory, _) =
        crate::sysbench::footprint(workload).unwrap_or((1, 0, String::new()));
    let around = match env {
        Env::Host => Each::NONE,
        Env::Native => Each::native_container(),
        Env::Docker => Each::docker_container(),
        Env::Vm => Each::qemu(vm_memory_mb(0), u64::from(vm_smp(workload))),
    };
    Each::workload(threads, memory, around)
}

/// Refuses a `run` or `density` that cannot fit this machine (`n` instances at most at once),
/// unless `force`.
pub fn check_fit(env: Env, workload: &[String], asked: &str, n: usize, force: bool) -> Result<()> {
    crate::fit::require(force, asked, n as u64, &footprint(env, workload))
}

pub fn density(
    env: Env,
    workload: &[String],
    instances: &[usize],
    timeout: Duration,
    accel: crate::boot::AccelChoice,
    force: bool,
) -> Result<Density> {
    if instances.is_empty() || instances.contains(&0) {
        bail!("--instances wants counts of at least 1, e.g. --instances 1,2,4");
    }
    let most = instances.iter().copied().max().unwrap_or(1);
    check_fit(env, workload, &format!("--instances {most}"), most, force)?;
    // Each row's start-up phases are a `boot --container native` of N.
    if env == Env::Native && most > crate::container::MAX_COUNT {
        bail!(
            "--instances {most}: native containers start at most {} at once",
            crate::container::MAX_COUNT
        );
    }
    crate::kernel::require_root("profiler density")?;
    if env == Env::Vm {
        crate::cleanup::set_interruptible();
        // The accelerator (auto: a KVM probe) once, before the rows: no row's time carries it.
        vm_accelerator(&crate::boot::artefacts::prepare()?, timeout, accel)?;
    }
    let baseline = events_per_sec(&run(Env::Host, workload, timeout, accel)?.report)?;
    let mut rows = vec![];
    for &n in instances {
        let runs: Vec<Result<EnvRun>> = std::thread::scope(|s| {
            let mut handles = Vec::new();
            for i in 0..n {
                if crate::cleanup::stop_requested() {
                    break;
                }
                let spawned = std::thread::Builder::new()
                    .name(format!("instance-{i}"))
                    .spawn_scoped(s, || run(env, workload, timeout, accel));
                match spawned {
                    Ok(h) => handles.push(Ok(h)),
                    Err(e) => {
                        crate::cleanup::request_stop();
                        handles.push(Err(crate::cleanup::thread_error("instance", &e)));
                        break;
                    }
                }
            }
            let mut runs: Vec<Result<EnvRun>> = handles
                .into_iter()
                .map(|h| {
                    h.and_then(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(anyhow!("instance thread panicked")))
                    })
                })
                .collect();
            if runs.len() < n {
                runs.push(Err(anyhow!(
                    "{}: not every instance started",
                    crate::cleanup::interrupted()
                )));
            }
            runs
        });
        let mut eps = vec![];
        let mut wall = vec![];
        let mut vm_phases = vec![];
        for r in runs {
            let r = r?;
            eps.push(events_per_sec(&r.report)?);
            wall.push(r.wall_ns);
            if let Some(v) = r.vm {
                vm_phases.push(v.phases);
            }
        }
        let mean = eps.iter().sum::<f64>() / eps.len() as f64;
        let startup = match env {
            // Each VM's boot was measured in its run: no extra boots.
            Env::Vm => crate::startup::summary(vm_phases.iter().map(Vec::as_slice), |n| {
                crate::boot::describe(crate::boot::Vm::Qemu, n)
            }),
            _ => startup_phases(env, n, timeout)?,
        };
        rows.push(DensityRow {
            startup,
            instances: n,
            slowdown: if mean > 0.0 {
                baseline / mean
            } else {
                f64::INFINITY
            },
            mean,
            events_per_sec: eps,
            wall_ns: wall,
        });
    }
    Ok(Density {
        env,
        workload: workload.to_vec(),
        baseline_events_per_sec: baseline,
        rows,
    })
}

/// Dhar's Tables 5.1-5.2: the start-up of N instances at once, phase by phase.
fn startup_phases(
    env: Env,
    n: usize,
    timeout: Duration,
) -> Result<Vec<crate::startup::PhaseStats>> {
    Ok(match env {
        Env::Native => {
            let native = crate::container::NativeArgs {
                net: crate::container::NetMode::None,
                payload: vec![],
            };
            let a =
                crate::container::ContainerBootArgs::with(n, None, timeout.as_secs_f64(), &native);
            crate::container::run(&a)?.summary
        }
        Env::Docker => {
            let args = crate::docker::DockerBootArgs {
                image: None,
                network: "none".into(),
            };
            crate::docker::boot(&args, n, timeout)?.summary
        }
        // Vm: from the runs themselves (density).
        Env::Host | Env::Vm => vec![],
    })
}

pub fn print_density(d: &Density) {
    println!(
        "profiler density — {} x `{}`; one instance on the host: {:.1} events/s",
        format!("{:?}", d.env).to_lowercase(),
        d.workload.join(" "),
        d.baseline_events_per_sec
    );
    println!(
        "  {:>9} {:>14} {:>12} {:>12} {:>10} {:>12}",
        "instances", "mean events/s", "min", "max", "slowdown", "start+run p50"
    );
    for r in &d.rows {
        let min = r
            .events_per_sec
            .iter()
            .cloned()
            .fold(f64::INFINITY, f64::min);
        let max = r.events_per_sec.iter().cloned().fold(0.0, f64::max);
        let mut w = r.wall_ns.clone();
        w.sort_unstable();
        println!(
            "  {:>9} {:>14.1} {:>12.1} {:>12.1} {:>9.2}x {:>12}",
            r.instances,
            r.mean,
            min,
            max,
            r.slowdown,
            crate::hist::fmt_ns(w[w.len() / 2] as f64)
        );
    }
    if d.rows.iter().any(|r| !r.startup.is_empty()) {
        println!("  start-up of N at once, p50 / max per phase:");
        for r in &d.rows {
            let phases: Vec<String> = r
                .startup
                .iter()
                .map(|s| {
                    format!(
                        "{} {}/{}",
                        s.name,
                        crate::hist::fmt_ns(s.p50_ns as f64),
                        crate::hist::fmt_ns(s.max_ns as f64)
                    )
                })
                .collect();
            println!("  {:>9}  {}", r.instances, phases.join(", "));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn smp_follows_threads_capped_at_the_host() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        assert_eq!(vm_smp(&args(&["sysbench", "cpu", "--time", "1"])), 1);
        assert_eq!(vm_smp(&args(&["sysbench", "cpu", "--threads", "1"])), 1);
        assert_eq!(
            vm_smp(&args(&["sysbench", "cpu", "--threads=2"])),
            2.min(cpus)
        );
        assert_eq!(
            vm_smp(&args(&["sysbench", "cpu", "--threads", "999"])),
            cpus
        );
        assert_eq!(vm_smp(&args(&["sysbench", "cpu", "--threads", "0"])), 1);
        assert_eq!(vm_smp(&args(&["sysbench", "cpu", "--threads", "x"])), 1);
        assert_eq!(vm_smp(&args(&["sysbench", "cpu", "--threads"])), 1);
    }

    #[test]
    fn memory_grows_with_the_initramfs() {
        assert_eq!(vm_memory_mb(0), 512);
        assert_eq!(vm_memory_mb(35 << 20), 512);
        assert_eq!(vm_memory_mb(135 << 20), 526);
        assert_eq!(vm_memory_mb((135 << 20) + 1), 528);
    }
}
