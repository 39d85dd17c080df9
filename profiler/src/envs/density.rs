//! `profiler density`: N identical instances of a workload at once, per N, against one on the
//! host; each row with the start-up of N at once (the model of `crate::startup`).

use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use serde::Serialize;

use super::{Env, EnvRun, check_fit, run, vm::vm_accelerator};
use crate::startup::{Laps, Wall};

/// `profiler density`: N identical instances at once, per N in the list.
#[derive(Debug, Serialize)]
pub struct DensityRow {
    pub instances: usize,
    /// events/s of each instance
    pub events_per_sec: Vec<f64>,
    pub mean: f64,
    /// sysbench oltp_*: each instance's read and write queries per second (Dhar's figures).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reads_per_sec: Vec<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub writes_per_sec: Vec<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub queries_per_sec: Vec<f64>,
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
    /// setup (the process's start, the KVM probe, the baseline on the host), the rows: the
    /// whole run.
    #[serde(flatten)]
    pub wall: Wall,
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
    accel: crate::boot::AccelChoice,
    force: bool,
    mut laps: Laps,
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
        laps.lap("artefacts, kvm probe");
    }
    let baseline = events_per_sec(&run(Env::Host, workload, timeout, accel)?.report)?;
    laps.lap("baseline on the host");
    let mut rows = vec![];
    for (step, &n) in instances.iter().enumerate() {
        let _progress = crate::progress::Cleared;
        crate::progress::show(&format!(
            "density: step {} of {}, {n} instance{} at once",
            step + 1,
            instances.len(),
            if n == 1 { "" } else { "s" }
        ));
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
        let (mut reads, mut writes, mut queries) = (vec![], vec![], vec![]);
        let mut wall = vec![];
        let mut vm_phases = vec![];
        for r in runs {
            let r = r?;
            eps.push(events_per_sec(&r.report)?);
            let q = |k: &str| {
                r.report
                    .pointer(&format!("/run/oltp/{k}"))
                    .and_then(|v| v.as_f64())
            };
            if let (Some(rd), Some(wr), Some(all)) = (
                q("reads_per_sec"),
                q("writes_per_sec"),
                q("queries_per_sec"),
            ) {
                reads.push(rd);
                writes.push(wr);
                queries.push(all);
            }
            wall.push(r.wall.wall_ns);
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
            reads_per_sec: reads,
            writes_per_sec: writes,
            queries_per_sec: queries,
            wall_ns: wall,
        });
    }
    Ok(Density {
        env,
        workload: workload.to_vec(),
        baseline_events_per_sec: baseline,
        rows,
        wall: laps.finish(),
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
    for r in d.rows.iter().filter(|r| !r.reads_per_sec.is_empty()) {
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        println!(
            "  {:>9} instance(s): reads {:.1}/s, writes {:.1}/s per instance (mean)",
            r.instances,
            mean(&r.reads_per_sec),
            mean(&r.writes_per_sec)
        );
    }
    crate::boot::print_laps("setup", &d.wall.setup);
    println!(
        "  rows: {}, whole run: {}",
        crate::hist::fmt_ns(d.wall.instances_wall_ns as f64),
        crate::hist::fmt_ns(d.wall.wall_ns as f64)
    );
}
