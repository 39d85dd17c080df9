//! Runs an experiment's matrix: every distinct run once per repetition, interleaved (each
//! repetition runs the whole matrix before the next starts), one lab per mode kept up for the
//! whole experiment; then one traced tcp_rr per mode for the per-layer explanation.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use anyhow::{Result, anyhow, bail};
use clap::Parser as _;
use serde::Serialize;

use super::spec::{Placement, Run, Spec};
use crate::{
    cleanup,
    lab::{self, Mode, Role},
    trace::{cli::TraceArgs, run::TraceReport},
    workload::{self, Endpoints, Options},
};

/// What one run measured, per repetition.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Measured {
    /// metric -> one value per repetition that produced it.
    pub values: BTreeMap<String, Vec<f64>>,
    /// What the reader should know (the accelerator and why, the placement used).
    pub notes: Vec<String>,
    /// The first repetition's error, in one line; the run is not repeated after one.
    pub error: Option<String>,
}

impl Measured {
    fn push(&mut self, metric: &str, v: f64) {
        if v.is_finite() {
            self.values.entry(metric.into()).or_default().push(v);
        }
    }

    fn note(&mut self, n: String) {
        if !self.notes.contains(&n) {
            self.notes.push(n);
        }
    }
}

/// Everything the matrix measured, by run.
pub struct Results {
    pub runs: Vec<(Run, Measured)>,
    /// One traced tcp_rr per mode (host first), or why it could not run.
    pub traces: Vec<(Mode, Result<TraceReport, String>)>,
}

impl Results {
    pub fn get(&self, run: &Run) -> Option<&Measured> {
        self.runs.iter().find(|(r, _)| r == run).map(|(_, m)| m)
    }
}

/// The lab of each mode, built on first use and kept to the end (or why it failed).
#[derive(Default)]
struct Labs(BTreeMap<&'static str, Result<(lab::Description, Option<lab::Lab>), String>>);

impl Labs {
    fn get(&mut self, mode: Mode) -> Result<&lab::Description, String> {
        self.0
            .entry(mode.name())
            .or_insert_with(|| {
                eprintln!("profiler: experiment: building a {mode} lab");
                lab::existing_or_new(None, mode).map_err(|e| one_line(&e))
            })
            .as_ref()
            .map(|(d, _)| d)
            .map_err(Clone::clone)
    }
}

fn one_line(e: &anyhow::Error) -> String {
    crate::opts::one_line(&format!("{e:#}"))
}

/// The runs the tables need, in first-use order, without repeats.
pub fn matrix(spec: &Spec, quick: bool) -> Result<Vec<Run>> {
    let mut runs: Vec<Run> = vec![];
    for t in &spec.tables {
        for r in t.rows.iter().filter(|r| r.unsupported.is_none()) {
            if let Some(run) = t.run_of(r, spec, quick)?
                && !runs.contains(&run)
            {
                runs.push(run);
            }
        }
    }
    Ok(runs)
}

pub fn run_all(spec: &Spec, quick: bool) -> Result<Results> {
    crate::kernel::require_root("profiler experiment")?;
    lab::reap_stale();
    cleanup::set_interruptible();
    let runs = matrix(spec, quick)?;
    let reps = spec.repetitions(quick);
    let length = Duration::from_secs_f64(spec.length_s(quick));
    let mut labs = Labs::default();
    let mut measured: Vec<Measured> = vec![Measured::default(); runs.len()];
    let total = runs.len() as u32 * reps;
    let mut step = 0;
    for rep in 1..=reps {
        for (run, m) in runs.iter().zip(measured.iter_mut()) {
            step += 1;
            if cleanup::stop_requested() {
                bail!("interrupted");
            }
            if m.error.is_some() {
                continue;
            }
            eprintln!(
                "profiler: experiment [{step}/{total}] {} (repetition {rep}/{reps})",
                describe(run)
            );
            if let Err(e) = run_one(run, length, &mut labs, m) {
                eprintln!("profiler: experiment: {}: {}", describe(run), one_line(&e));
                m.error = Some(one_line(&e));
            }
        }
    }
    // The explanation: the tracer in each mode a net row used, host first.
    let mut modes: Vec<Mode> = vec![];
    for r in &runs {
        if let Run::Net(n) = r
            && !modes.contains(&n.mode)
        {
            modes.push(n.mode);
        }
    }
    if !modes.is_empty() && !modes.contains(&Mode::Host) {
        modes.insert(0, Mode::Host);
    }
    modes.sort_by_key(|m| *m != Mode::Host);
    let mut traces = vec![];
    for mode in modes {
        if cleanup::stop_requested() {
            bail!("interrupted");
        }
        let t = match labs.get(mode) {
            Ok(desc) => {
                eprintln!(
                    "profiler: experiment: tracing tcp_rr in {mode} for the per-layer explanation"
                );
                trace(desc, length).map_err(|e| one_line(&e))
            }
            Err(e) => Err(e),
        };
        traces.push((mode, t));
    }
    Ok(Results {
        runs: runs.into_iter().zip(measured).collect(),
        traces,
    })
}

pub fn describe(run: &Run) -> String {
    match run {
        Run::Net(n) => {
            let size = match (n.test.is_rr(), &n.send_size) {
                (true, _) => format!(" -r {}", n.rr),
                (false, Some(m)) => format!(" -m {m}"),
                (false, None) => String::new(),
            };
            format!("{}{size} in {} ({})", n.test, n.mode, n.placement.name())
        }
        Run::VmBoot { count } => format!("boot --vm qemu --count {count}"),
        Run::ContainerBoot { net, count } => {
            format!(
                "boot --container native --net {} --count {count}",
                net.name()
            )
        }
        Run::Oltp(o) => {
            let (env, count, w) = (o.env.name(), o.count, o.workload().join(" "));
            if count == 1 {
                format!("run --env {env} {w}")
            } else {
                format!("{count} x `{w}` at once in {env} (density), each with its own server")
            }
        }
        Run::Sysbench {
            env,
            max_prime,
            time_s,
        } => format!(
            "run --env {} sysbench cpu --cpu-max-prime {max_prime} --time {time_s}",
            env.name()
        ),
        Run::Web {
            env,
            connections,
            size,
        } => format!(
            "web --env {} --connections {connections} --size {size}",
            env.name()
        ),
    }
}

fn run_one(run: &Run, length: Duration, labs: &mut Labs, m: &mut Measured) -> Result<()> {
    match run {
        Run::Net(n) => {
            let (mode, placement, test) = (&n.mode, &n.placement, &n.test);
            let (rr, send_size) = (&n.rr, &n.send_size);
            let desc = labs.get(*mode).map_err(|e| anyhow!("{e}"))?;
            let mut opts = Options::new(*test);
            opts.duration = length;
            (opts.request, opts.response) = workload::parse_rr(rr)?;
            if let Some(s) = send_size {
                opts.send_size = workload::parse_size(s)?;
            }
            opts.validate()?;
            if *placement == Placement::VmHost {
                return vm_host(desc, *test, rr, send_size.as_deref(), length, m);
            }
            let endpoints = placed(desc, *placement)?;
            let r = workload::run(&endpoints, &opts)?;
            net_metrics(&r, m);
            if *placement != Placement::ContainerContainer && *placement != Placement::HostHost {
                m.note(format!(
                    "{}: one end on the lab host's bridge address",
                    placement.name()
                ));
            }
        }
        Run::VmBoot { count } => {
            let args = crate::boot::BootArgs {
                vm: Some(crate::boot::Vm::Qemu),
                count: *count,
                timeout: 180.0,
                ..Default::default()
            };
            let r = crate::boot::run(&args)?;
            m.note(format!("{}: {}", r.accelerator, r.accelerator_reason));
            if !r.ok {
                bail!(
                    "not every VM booted: {}",
                    r.error
                        .as_deref()
                        .unwrap_or("a guest never reached its ready mark")
                );
            }
            let shutdown = |b: &crate::boot::Boot| {
                b.phases
                    .iter()
                    .filter(|p| p.name.split('+').any(|n| n == "shutdown"))
                    .map(|p| p.ns)
                    .sum::<u64>()
            };
            let boots: Vec<f64> = r
                .boots
                .iter()
                .map(|b| (b.total_ns - shutdown(b)) as f64 / 1e9)
                .collect();
            let downs: Vec<f64> = r.boots.iter().map(|b| shutdown(b) as f64 / 1e9).collect();
            m.push("boot_s", median(&boots));
            m.push("shutdown_s", median(&downs));
        }
        Run::ContainerBoot { net, count } => {
            let args = crate::container::ContainerBootArgs {
                count: *count as usize,
                net: *net,
                ..Default::default()
            };
            let r = crate::container::run(&args)?;
            m.push("boot_s", r.total().map_or(0, |t| t.p50_ns) as f64 / 1e9);
            m.push("boot_ms", r.total().map_or(0, |t| t.p50_ns) as f64 / 1e6);
            m.push(
                "shutdown_s",
                r.shutdown.as_ref().map_or(0, |t| t.p50_ns) as f64 / 1e9,
            );
        }
        Run::Sysbench {
            env,
            max_prime,
            time_s,
        } => {
            let w: Vec<String> = [
                "sysbench".to_string(),
                "cpu".into(),
                "--cpu-max-prime".into(),
                max_prime.to_string(),
                "--time".into(),
                time_s.to_string(),
            ]
            .into();
            let r = crate::envs::run(
                *env,
                &w,
                Duration::from_secs(600),
                crate::boot::AccelChoice::Auto,
            )?;
            if let (Some(a), Some(why)) = (&r.accelerator, &r.accelerator_reason) {
                m.note(format!("{a}: {why}"));
            }
            let eps = r
                .report
                .pointer("/run/events_per_sec")
                .and_then(|v| v.as_f64())
                .ok_or_else(|| anyhow!("the workload's report has no run.events_per_sec"))?;
            m.push("events_per_sec", eps);
        }
        Run::Oltp(o) => {
            let (env, count, w) = (&o.env, &o.count, o.workload());
            let get = |r: &serde_json::Value, k: &str| -> Result<f64> {
                r.pointer(&format!("/run/oltp/{k}"))
                    .and_then(|v| v.as_f64())
                    .ok_or_else(|| anyhow!("the workload's report has no run.oltp.{k}"))
            };
            if *count == 1 {
                let r = crate::envs::run(
                    *env,
                    &w,
                    Duration::from_secs(600),
                    crate::boot::AccelChoice::Auto,
                )?;
                for k in [
                    "transactions_per_sec",
                    "queries_per_sec",
                    "reads_per_sec",
                    "writes_per_sec",
                ] {
                    m.push(k, get(&r.report, k)?);
                }
            } else {
                let d = crate::envs::density(
                    *env,
                    &w,
                    &[*count as usize],
                    Duration::from_secs(600),
                    crate::boot::AccelChoice::Auto,
                    false,
                    crate::startup::Laps::new(std::time::Instant::now()),
                )?;
                let row = d
                    .rows
                    .first()
                    .ok_or_else(|| anyhow!("density returned no row"))?;
                let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
                // Per instance, the mean over the N running at once.
                m.push("transactions_per_sec", row.mean);
                m.push("reads_per_sec", mean(&row.reads_per_sec));
                m.push("writes_per_sec", mean(&row.writes_per_sec));
                m.push("queries_per_sec", mean(&row.queries_per_sec));
            }
        }
        Run::Web {
            env,
            connections,
            size,
        } => {
            let args = crate::web::WebArgs {
                env: vec![*env],
                connections: vec![*connections],
                length: length.as_secs().max(1),
                size: *size,
                workers: None,
                trace_length: 1,
                no_trace: true,
                json: None,
            };
            let r = crate::web::run(&args)?;
            let run = r
                .envs
                .first()
                .and_then(|e| e.runs.first())
                .ok_or_else(|| anyhow!("web measured nothing"))?;
            let l = &run.wrk.latency;
            m.push("requests_per_sec", run.wrk.requests_per_sec);
            m.push("response_ms", l.mean / 1e6);
            m.push("response_stddev_ms", l.stddev / 1e6);
            m.push("response_p50_ms", l.p50 as f64 / 1e6);
            m.push("response_p99_ms", l.p99 as f64 / 1e6);
            m.push("server_cpu_pct", run.server_cpu_pct);
            m.push("server_cpu_machine_pct", run.server_cpu_machine_pct);
            m.push("client_cpu_pct", run.client_cpu_pct);
            m.note(format!("{}, {}", r.server, r.generator));
        }
    }
    Ok(())
}

/// The stock guest VM-H runs in: the 6.1 cloud kernel, whose modules carry virtio_net.
const VM_KERNEL: &str = "debian-6.1";

/// VM-H: the client in a stock-kernel guest whose NIC is a tap on the bridge lab's bridge, the
/// built-in server on the lab host at the bridge's address.
fn vm_host(
    desc: &lab::Description,
    test: workload::Test,
    rr: &str,
    send_size: Option<&str>,
    length: Duration,
    m: &mut Measured,
) -> Result<()> {
    use std::sync::{Arc, atomic::AtomicBool};
    let (ns, gw) = bridge_address(desc, Placement::VmHost)?;
    let port = desc.ports.0;
    let mut args: Vec<String> = ["bench", test.name(), "-H", &gw.to_string()]
        .map(String::from)
        .into();
    args.extend(["-p".into(), port.to_string(), "-r".into(), rr.to_string()]);
    args.extend(["-l".into(), format!("{}", length.as_secs_f64())]);
    if let Some(s) = send_size {
        args.extend(["-m".into(), s.to_string()]);
    }
    args.push("--json".into());
    let kernel: crate::boot::stock::KernelChoice =
        VM_KERNEL.parse().map_err(|e: String| anyhow!(e))?;
    lab::tap::add(desc, lab::plan::VM_TAP)?;
    let stop = Arc::new(AtomicBool::new(false));
    let served = workload::serve_in(&ns, gw.into(), port, stop.clone());
    let run = served.and_then(|server| {
        let net = crate::envs::GuestNet {
            netns: ns.clone(),
            tap: lab::plan::VM_TAP.into(),
            addr: lab::plan::at(lab::plan::CONTAINER_NET, lab::plan::VM_HOST),
            prefix: lab::plan::CONTAINER_PREFIX,
        };
        let r = crate::envs::stock(
            &kernel,
            &args,
            &[],
            Duration::from_secs(300) + length,
            crate::boot::AccelChoice::Auto,
            Some(&net),
            false,
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = server.join();
        r
    });
    let removed = lab::tap::remove(&ns, lab::plan::VM_TAP);
    let r = run?;
    removed?;
    for n in &r.notes {
        if n.contains("could not") {
            m.note(format!("VM-H: {n}"));
        }
    }
    if r.exit != 0 {
        let err = r
            .stderr
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("no stderr");
        bail!("the client in the {} guest failed: {err}", r.kernel);
    }
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim())
        .map_err(|e| anyhow!("the guest's bench printed no JSON report ({e})"))?;
    let f = |k: &str| v.pointer(k).and_then(|x| x.as_f64()).unwrap_or(f64::NAN);
    m.push("throughput_mbps", f("/throughput_mbps"));
    m.push("throughput_gbps", f("/throughput_mbps") / 1e3);
    if test.is_rr() {
        m.push("transactions_per_sec", f("/transactions_per_sec"));
        m.push("rr_latency_us", f("/latency/mean_us"));
        m.push("p99_us", f("/latency/p99_us"));
    }
    m.note(format!(
        "VM-H: the client in a {} guest under {} on a tap on the lab bridge, the server on the \
         lab host{}",
        r.kernel,
        r.accel.name(),
        if r.accel == crate::boot::qemu::Accel::Tcg {
            " (TCG translates the guest's every instruction: its figures are the emulator's \
             speed, not virtualization overhead)"
        } else {
            ""
        }
    ));
    Ok(())
}

/// The lab host's namespace and its bridge's address (where C-H, H-C and VM-H put the host end).
fn bridge_address(desc: &lab::Description, p: Placement) -> Result<(String, std::net::Ipv4Addr)> {
    let br = desc
        .device(Role::Bridge)
        .next()
        .ok_or_else(|| anyhow!("placement {} needs a bridge lab", p.name()))?;
    let addr = br
        .addr
        .as_deref()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| anyhow!("the lab's bridge {} has no address", br.name))?;
    Ok((br.netns.clone(), addr))
}

/// The endpoints for a placement: the lab's two ends (C-C, and H-H in the host lab), or one
/// end moved to the lab host, on its bridge's gateway address (bridge labs); in the nested
/// lab, the host and the inner container either way round.
fn placed(desc: &lab::Description, p: Placement) -> Result<Endpoints> {
    let lab_ends = Endpoints::in_lab(desc);
    let host_side =
        || -> Result<(String, IpAddr)> { bridge_address(desc, p).map(|(ns, a)| (ns, a.into())) };
    if desc.mode == Mode::Nested {
        // The lab's own ends are H-C: the client on the lab host, at its bridge's address.
        return Ok(match p {
            Placement::HostContainer => lab_ends,
            Placement::ContainerHost => Endpoints {
                client_netns: lab_ends.server_netns.clone(),
                server_netns: lab_ends.client_netns.clone(),
                server_bind: desc.client.addr,
                connect: desc.client.addr,
                ..lab_ends
            },
            _ => bail!("placement {} in a nested lab: use C-H or H-C", p.name()),
        });
    }
    Ok(match p {
        Placement::HostHost | Placement::ContainerContainer => lab_ends,
        Placement::ContainerHost => {
            let (ns, addr) = host_side()?;
            Endpoints {
                server_netns: Some(ns),
                server_bind: addr,
                connect: addr,
                ..lab_ends
            }
        }
        Placement::HostContainer => {
            let (ns, _) = host_side()?;
            Endpoints {
                client_netns: Some(ns),
                ..lab_ends
            }
        }
        Placement::VmHost => bail!("VM-H runs its client in a guest, not in the lab"),
    })
}

fn net_metrics(r: &workload::Report, m: &mut Measured) {
    m.push("throughput_mbps", r.throughput_mbps);
    m.push("throughput_gbps", r.throughput_mbps / 1e3);
    if r.test.is_rr() {
        m.push("transactions_per_sec", r.transactions_per_sec);
        m.push("rr_latency_us", r.latency.mean_us);
        m.push("p99_us", r.latency.p99_us);
    }
    if r.duration_secs > 0.0 {
        m.push(
            "client_cpu_pct",
            r.client_cpu_secs / r.duration_secs * 100.0,
        );
        m.push(
            "server_cpu_pct",
            r.server_cpu_secs / r.duration_secs * 100.0,
        );
    }
    if r.transactions > 0 {
        let per = |cpu: f64| cpu * 1e6 / r.transactions as f64;
        m.push("client_sd_us", per(r.client_cpu_secs));
        m.push("server_sd_us", per(r.server_cpu_secs));
    }
}

/// One traced tcp_rr in the lab, as `profiler trace --lab ID -l S` does it.
fn trace(desc: &lab::Description, length: Duration) -> Result<TraceReport> {
    #[derive(clap::Parser)]
    struct Wrap {
        #[command(flatten)]
        args: TraceArgs,
    }
    let secs = format!("{}", length.as_secs_f64().max(2.0));
    let w = Wrap::try_parse_from(["trace", "--lab", &desc.id, "-t", "tcp_rr", "-l", &secs])
        .map_err(|e| anyhow!("{}", crate::opts::one_line(&e.to_string())))?;
    crate::trace::run::run(&w.args)
}

pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}
