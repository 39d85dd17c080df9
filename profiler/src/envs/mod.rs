//! Where a workload runs: the host, a native container, a Docker container, or a VM. The
//! workload is this very binary's own subcommand (e.g. `sysbench cpu ...`), so the same code
//! runs everywhere and prints its JSON report; the environment adds how it was started.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Serialize;

use crate::startup::Laps;

mod density;
pub mod html;
mod vm;

pub use density::{Density, DensityRow, density, print_density};
pub use vm::{GuestNet, StockRun, VmRun, stock, vm_memory_mb, vm_smp};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Env {
    Host,
    Native,
    Docker,
    Vm,
}

impl Env {
    /// The name `--env` takes.
    pub fn name(self) -> &'static str {
        match self {
            Env::Host => "host",
            Env::Native => "native",
            Env::Docker => "docker",
            Env::Vm => "vm",
        }
    }
}

/// One run of a workload in an environment.
#[derive(Debug, Serialize)]
pub struct EnvRun {
    pub env: Env,
    /// The workload's own JSON report.
    pub report: serde_json::Value,
    /// setup (the scheduler tracer; for docker the image; for vm the guest, its initramfs, the
    /// KVM probe), the workload's run in its environment (start-up included), teardown: the
    /// whole run.
    #[serde(flatten)]
    pub wall: crate::startup::Wall,
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

pub(super) fn self_exe() -> Result<String> {
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
    run_from(env, workload, timeout, accel, Laps::new(Instant::now()))
}

/// [`run`] on a clock that started earlier (the `run` command: at the process's start).
pub fn run_from(
    env: Env,
    workload: &[String],
    timeout: Duration,
    accel: crate::boot::AccelChoice,
    mut laps: Laps,
) -> Result<EnvRun> {
    let mut args = workload.to_vec();
    args.push("--json".into());
    let mut tracer = crate::probes::sched::SchedTracer::start().ok();
    laps.lap("sched tracer");
    let mut watch = |pid: u32| {
        if let Some(t) = tracer.as_mut() {
            let _ = t.watch(pid);
        }
    };
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
            laps.instances();
            if !out.status.success() {
                bail!(
                    "the workload failed on the host: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
        Env::Docker => crate::docker::run_self(&args, timeout, &mut watch, &mut laps)?.stdout,
        Env::Native => native(&args, timeout, &mut watch, &mut throttled, &mut laps)?,
        Env::Vm => {
            let (stdout, r) = vm::vm(&args, timeout, &mut laps, &mut watch, accel)?;
            vm_run = Some(r);
            stdout
        }
    };
    let json = stdout
        .find('{')
        .map(|i| &stdout[i..])
        .ok_or_else(|| anyhow!("the workload printed no JSON report: {}", stdout.trim()))?;
    let report = serde_json::from_str(json).context("reading the workload's report")?;
    let sched = tracer.and_then(|t| t.report().ok());
    laps.lap("sched tracer read");
    Ok(EnvRun {
        env,
        report,
        wall: laps.finish(),
        sched,
        throttled,
        accelerator: vm_run.as_ref().map(|v| v.0.name().to_string()),
        accelerator_reason: vm_run.as_ref().map(|v| v.1.clone()),
        vm: vm_run.map(|v| v.2),
    })
}

/// A native container for a workload: new mount, UTS, IPC, network and PID namespaces and a
/// cgroup, the way runc sets one up, without a network (workloads here need none).
fn native(
    args: &[String],
    timeout: Duration,
    watch: &mut dyn FnMut(u32),
    throttled: &mut Option<(u64, u64)>,
    laps: &mut Laps,
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
    laps.instances();
    if let Some(cg) = &cg {
        *throttled = crate::probes::sched::throttling(cg);
        let _ = crate::container::cgroup::remove(cg);
        laps.lap("cgroup removed");
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

pub(super) fn wait_with_timeout(
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

/// `sysbench oltp_*` in a VM, in one line: why not.
pub const OLTP_VM_REFUSAL: &str = "--env vm: sysbench oltp_* needs a MariaDB server beside it, and the workload guest is a busybox initramfs with this binary and its libraries only (no mariadbd, its libraries, /usr/share/mariadb or mariadb-install-db's tools) started with -net none (no server outside can be reached); use host, native or docker";

/// Refuses a workload its environment cannot hold, before anything starts.
pub fn check_place(env: Env, workload: &[String]) -> Result<()> {
    let oltp = workload.first().map(String::as_str) == Some("sysbench")
        && workload.get(1).is_some_and(|t| t.starts_with("oltp_"));
    if env == Env::Vm && oltp {
        bail!("{OLTP_VM_REFUSAL}");
    }
    Ok(())
}

/// Refuses a `run` or `density` that cannot fit this machine (`n` instances at most at once),
/// unless `force`.
pub fn check_fit(env: Env, workload: &[String], asked: &str, n: usize, force: bool) -> Result<()> {
    check_place(env, workload)?;
    crate::fit::require(force, asked, n as u64, &footprint(env, workload))
}
