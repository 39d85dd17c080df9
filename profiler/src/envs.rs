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
    pub sched: Option<crate::trace::sched::SchedReport>,
    /// The container's cgroup CPU throttling (periods, µs), where it has a cgroup v2.
    pub throttled: Option<(u64, u64)>,
}

fn self_exe() -> Result<String> {
    Ok(std::fs::read_link("/proc/self/exe")
        .context("finding this program")?
        .to_string_lossy()
        .into_owned())
}

/// Runs `workload` (this binary's arguments, e.g. ["sysbench", "cpu", "--time", "2"]) in `env`
/// and returns its JSON report.
pub fn run(env: Env, workload: &[String], timeout: Duration) -> Result<EnvRun> {
    let mut args = workload.to_vec();
    args.push("--json".into());
    let mut tracer = crate::trace::sched::SchedTracer::start().ok();
    let mut watch = |pid: u32| {
        if let Some(t) = tracer.as_mut() {
            let _ = t.watch(pid);
        }
    };
    let start = Instant::now();
    let mut throttled = None;
    let stdout = match env {
        Env::Host => {
            let child = Command::new(self_exe()?)
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
        Env::Vm => bail!(
            "--env vm: not built yet (boot --vm qemu boots the guest, but does not yet carry workloads)"
        ),
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
    })
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
    let child = cmd
        .spawn()
        .context("starting the workload in a native container")?;
    let pid = child.id();
    watch(pid);
    let cg = crate::container::cgroup::root()
        .and_then(|root| {
            crate::container::cgroup::create(
                &root,
                &format!("profiler-run-{pid}"),
                nix::unistd::Pid::from_raw(pid as i32),
            )
        })
        .ok();
    let waited = wait_with_timeout(child, timeout);
    if let Some(cg) = &cg {
        *throttled = crate::trace::sched::throttling(cg);
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
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(r) => Ok(r?),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            bail!("the workload did not finish within {timeout:?}; killed")
        }
    }
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
    /// create .. ready), as (phase, p50 ns, max ns); empty on the host.
    pub startup: Vec<(String, u64, u64)>,
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

pub fn density(
    env: Env,
    workload: &[String],
    instances: &[usize],
    timeout: Duration,
) -> Result<Density> {
    crate::kernel::require_root("profiler density")?;
    if instances.is_empty() || instances.contains(&0) {
        bail!("--instances wants counts of at least 1, e.g. --instances 1,2,4");
    }
    let baseline = events_per_sec(&run(Env::Host, workload, timeout)?.report)?;
    let mut rows = vec![];
    for &n in instances {
        let runs: Vec<Result<EnvRun>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|_| s.spawn(|| run(env, workload, timeout)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow!("instance thread panicked")))
                })
                .collect()
        });
        let mut eps = vec![];
        let mut wall = vec![];
        for r in runs {
            let r = r?;
            eps.push(events_per_sec(&r.report)?);
            wall.push(r.wall_ns);
        }
        let mean = eps.iter().sum::<f64>() / eps.len() as f64;
        let startup = startup_phases(env, n, timeout)?;
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
fn startup_phases(env: Env, n: usize, timeout: Duration) -> Result<Vec<(String, u64, u64)>> {
    Ok(match env {
        Env::Native => {
            let native = crate::container::NativeArgs {
                net: crate::container::NetMode::None,
                payload: vec![],
            };
            let a =
                crate::container::ContainerBootArgs::with(n, None, timeout.as_secs_f64(), &native);
            crate::container::run(&a)?
                .phases
                .iter()
                .map(|p| (p.name.clone(), p.p50_ns, p.max_ns))
                .collect()
        }
        Env::Docker => {
            let args = crate::docker::DockerBootArgs {
                image: None,
                network: "none".into(),
            };
            crate::docker::boot(&args, n, timeout)?
                .distribution
                .iter()
                .map(|(p, s)| (p.to_string(), s.p50, s.max))
                .collect()
        }
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
                .map(|(p, p50, max)| {
                    format!(
                        "{p} {}/{}",
                        crate::hist::fmt_ns(*p50 as f64),
                        crate::hist::fmt_ns(*max as f64)
                    )
                })
                .collect();
            println!("  {:>9}  {}", r.instances, phases.join(", "));
        }
    }
}
