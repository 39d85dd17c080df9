//! `profiler web`: nginx serving one file across environments (host, a native container on a
//! bridge lab, a Docker container), driven by wrk at given connection counts. Per environment
//! and count: requests/s, the response-time histogram, and the server's CPU time over the run
//! (its cgroup's, host-side). Then one traced run per environment (`trace --attach-only` on the
//! server's port) gives the network layers under the responses, so the report says where the
//! response-time difference from host goes.

pub mod wrk;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Result, anyhow, bail};
use serde::Serialize;

use crate::{
    hist::{Summary, fmt_ns},
    lab::{Lab, Mode},
    server::{Place, Workdir, nginx},
};

/// Where the server runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum WebEnv {
    /// nginx and wrk in the host's namespaces, over loopback.
    Host,
    /// nginx in a native container (its own network, mount, UTS and IPC namespaces and a
    /// cgroup) on a bridge lab, wrk in the lab's other container.
    Native,
    /// nginx in a Docker container (an image built here from the installed nginx) on Docker's
    /// default bridge, wrk on the host.
    Docker,
    /// Refused: the workload guest has no network and no nginx (`VM_REFUSAL`).
    Vm,
}

/// `--env vm`, in one line: why there is no VM environment.
pub const VM_REFUSAL: &str = "--env vm: web has no VM environment: the workload guest (`run --env vm`) is a busybox initramfs started with -net none, so nothing can reach a server in it, and it carries no nginx, its modules or /etc/nginx; use host, native or docker";

impl WebEnv {
    pub fn name(self) -> &'static str {
        match self {
            WebEnv::Host => "host",
            WebEnv::Native => "native",
            WebEnv::Docker => "docker",
            WebEnv::Vm => "vm",
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct WebArgs {
    /// Environments, in order (host, native, docker; vm is refused: its guest has no network
    /// and no nginx).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "host,native")]
    pub env: Vec<WebEnv>,
    /// Open connections (wrk -c) per run, e.g. 1,64,256.
    #[arg(long, value_delimiter = ',', default_value = "1,64,256",
          value_parser = crate::opts::at_least::<usize, 1>)]
    pub connections: Vec<usize>,
    /// Seconds per run (whole seconds: wrk's -d).
    #[arg(short = 'l', default_value = "5", value_parser = crate::opts::at_least::<u64, 1>)]
    pub length: u64,
    /// Bytes in the served file.
    #[arg(long, default_value_t = 1024, value_parser = crate::opts::at_least::<usize, 1>)]
    pub size: usize,
    /// nginx worker processes (default: one per CPU, as `worker_processes auto`).
    #[arg(long, value_parser = crate::opts::at_least::<usize, 1>)]
    pub workers: Option<usize>,
    /// Seconds of the traced run per environment (at the first connection count).
    #[arg(long, default_value = "3", value_parser = crate::opts::at_least::<u64, 1>)]
    pub trace_length: u64,
    /// No traced run.
    #[arg(long)]
    pub no_trace: bool,
    /// The report as JSON: on stdout instead of the table (no FILE, or -) or into FILE.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    pub json: Option<PathBuf>,
}

/// The most connections one run may open: two descriptors per connection (wrk's and
/// nginx's) must fit the open-file limit we can raise to.
fn check(args: &WebArgs) -> Result<()> {
    crate::opts::output_file(args.json.as_deref(), "--json")?;
    if args.size > 64 << 20 {
        bail!(
            "--size {} is over 64 MiB: pass a smaller file size, e.g. --size 1024",
            args.size
        );
    }
    let hard = nofile().1;
    let max = *args.connections.iter().max().unwrap_or(&1) as u64;
    if max + 256 > hard {
        bail!(
            "--connections {max} needs {} open files; this process may open {hard} (ulimit -Hn): pass fewer connections or raise the limit",
            max + 256
        );
    }
    if args.env.contains(&WebEnv::Vm) {
        bail!("{VM_REFUSAL}");
    }
    if args.env.contains(&WebEnv::Docker) && !std::path::Path::new(crate::docker::SOCKET).exists() {
        bail!(
            "--env docker: no Docker daemon ({} is missing): start dockerd, or leave docker out of --env",
            crate::docker::SOCKET
        );
    }
    let mut seen = vec![];
    for e in &args.env {
        if seen.contains(e) {
            bail!(
                "--env {} is given twice: name each environment once",
                e.name()
            );
        }
        seen.push(*e);
    }
    Ok(())
}

/// Raises the soft open-file limit to the hard one (wrk and nginx inherit it).
fn raise_nofile() {
    let (_, hard) = nofile();
    let l = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    // SAFETY: a plain syscall on a struct we own.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) };
}

/// RLIMIT_NOFILE: (soft, hard).
fn nofile() -> (u64, u64) {
    let mut l = libc::rlimit {
        rlim_cur: 1024,
        rlim_max: 1024,
    };
    // SAFETY: a plain syscall filling a struct we own.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) };
    (l.rlim_cur, l.rlim_max)
}

/// One run at one connection count.
#[derive(Debug, Serialize)]
pub struct WebRun {
    #[serde(flatten)]
    pub wrk: wrk::WrkRun,
    /// The server's CPU time over the run (its cgroup's usage, host-side), s.
    pub server_cpu_s: f64,
    /// That over the run's wall time, % of one CPU.
    pub server_cpu_pct: f64,
    /// The same, % of the machine (all CPUs), as a VM's or container's CPU% is usually given.
    pub server_cpu_machine_pct: f64,
    /// wrk's CPU time over the run (this process's waited-for children), % of one CPU: on a
    /// machine this small the client competes with the server for the same CPUs.
    pub client_cpu_pct: f64,
}

/// CPU time of this process's terminated and waited-for children so far, s.
fn children_cpu_s() -> f64 {
    // SAFETY: getrusage fills a struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// One layer under the traced run, per direction.
#[derive(Debug, Serialize)]
pub struct Layer {
    pub layer: String,
    pub p50_ns: u64,
    pub crossings: u64,
    /// p50 x crossings over the one-way p50.
    pub share: f64,
}

#[derive(Debug, Serialize)]
pub struct TracedDirection {
    pub direction: String,
    pub one_way_p50_ns: Option<u64>,
    pub packets: Option<u64>,
    pub layers: Vec<Layer>,
}

/// The traced run: wrk at the first connection count with the tracer attached to the server's
/// port.
#[derive(Debug, Serialize)]
pub struct Traced {
    pub connections: usize,
    pub seconds: f64,
    pub directions: Vec<TracedDirection>,
    /// The tracer's measured share of one CPU (bpf_stats), where measured.
    pub tracer_cpu_share: Option<f64>,
    pub follow_every: f64,
    pub duty_cycle: f64,
    /// wrk's result while traced (for the tracer's effect on it).
    pub requests_per_sec: Option<f64>,
    pub latency: Option<Summary>,
}

#[derive(Debug, Serialize)]
pub struct EnvReport {
    pub env: WebEnv,
    /// Where the server listened and where the client ran.
    pub server: String,
    /// The server's cgroup (host-side accounting).
    pub cgroup: String,
    pub runs: Vec<WebRun>,
    pub traced: Option<Traced>,
    /// Why the traced run is missing, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct WebReport {
    pub server: String,
    pub generator: String,
    pub size_bytes: usize,
    pub length_s: u64,
    pub workers: usize,
    pub cpus: usize,
    pub envs: Vec<EnvReport>,
}

pub fn main(args: &WebArgs) -> Result<()> {
    check(args)?;
    crate::kernel::require_root("profiler web")?;
    let r = run(args)?;
    crate::export::json::emit(args.json.as_ref(), &r, print)
}

pub fn run(args: &WebArgs) -> Result<WebReport> {
    // Again for callers other than `main` (an experiment's rows).
    check(args)?;
    let server = nginx::version()?;
    let generator = format!("wrk {}", wrk::version()?);
    raise_nofile();
    crate::cleanup::set_interruptible();
    let cpus = wrk::num_cpus();
    let workers = args.workers.unwrap_or(cpus);
    let mut envs = vec![];
    for &env in &args.env {
        if crate::cleanup::stop_requested() {
            bail!("{}", crate::cleanup::interrupted());
        }
        eprintln!("profiler web: {}", env.name());
        envs.push(one_env(args, env, workers)?);
    }
    Ok(WebReport {
        server,
        generator,
        size_bytes: args.size,
        length_s: args.length,
        workers,
        cpus,
        envs,
    })
}

/// A port of our own for the server (the tracer filters on it): above the labs' 20000 range,
/// by our pid, so two runs at once rarely share one.
fn port() -> u16 {
    40_000 + (std::process::id() % 20_000) as u16
}

/// Where the server and the client run, and the server once it runs.
struct Setup {
    client: Place,
    connect: SocketAddr,
    server_at: String,
    server: Running,
    /// Torn down after the server (fields drop in order).
    _lab: Option<Lab>,
}

/// The server, as each environment runs it.
enum Running {
    /// nginx as our child, on the host or in a native container.
    Local(nginx::Nginx),
    /// nginx in a Docker container; the work directory holds what went into its image.
    Docker(crate::docker::service::Service, Workdir),
}

impl Running {
    fn dir(&self) -> &Workdir {
        match self {
            Running::Local(n) => &n.dir,
            Running::Docker(_, d) => d,
        }
    }

    fn cgroup(&self) -> Option<PathBuf> {
        match self {
            Running::Local(n) => Some(n.server.cgroup.clone()),
            Running::Docker(s, _) => s.cgroup.clone(),
        }
    }

    fn cpu_usec(&self) -> Option<u64> {
        crate::docker::service::cpu_usec(&self.cgroup()?)
    }
}

fn setup(env: WebEnv, workers: usize, connections: usize, size: usize) -> Result<Setup> {
    Ok(match env {
        WebEnv::Vm => bail!("{VM_REFUSAL}"),
        WebEnv::Host => {
            // The host's loopback is shared with everyone: another port when ours is taken.
            let mut tries = 0;
            let (a, ngx) = loop {
                let a = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port() + tries * 7);
                match nginx::start(&Place::Host, a, workers, connections, size) {
                    Ok(n) => break (a, n),
                    Err(e) if tries < 3 && format!("{e:#}").contains("bind()") => {
                        tries += 1;
                    }
                    Err(e) => return Err(e),
                }
            };
            Setup {
                client: Place::Host,
                connect: a,
                server_at: format!("{a} in the host's namespaces"),
                server: Running::Local(ngx),
                _lab: None,
            }
        }
        WebEnv::Native => {
            let lab = Lab::up(Mode::Bridge, None)?;
            let d = &lab.desc;
            let p = d.ports.0;
            let listen = SocketAddr::new(d.server.addr, p);
            let place = Place::Container(d.server.netns.clone());
            Setup {
                client: Place::Netns(d.client.netns.clone()),
                connect: SocketAddr::new(d.connect, p),
                server_at: format!(
                    "{listen} in a native container on bridge lab {} (netns {}); client in netns {}",
                    d.id, d.server.netns, d.client.netns
                ),
                server: Running::Local(nginx::start(&place, listen, workers, connections, size)?),
                _lab: Some(lab),
            }
        }
        WebEnv::Docker => {
            let dir = Workdir::new("nginx")?;
            let listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port());
            nginx::prepare(&dir, nginx::IMAGE_DIR, listen, workers, connections, size)?;
            let svc = crate::docker::service::start(
                nginx::rootfs(&dir)?,
                "web",
                nginx::image_command(),
                "bridge",
                // The document root from the work directory: this host's Docker stores images
                // on fuse-overlayfs, where each open() of the file is a trip to user space.
                vec![format!(
                    "{}:{}/html:ro",
                    dir.join("html").display(),
                    nginx::IMAGE_DIR
                )],
                Duration::from_secs(30),
            )?;
            let connect = SocketAddr::new(svc.ip, listen.port());
            let t0 = std::time::Instant::now();
            while !nginx::http_ok(connect) {
                if crate::cleanup::stop_requested() {
                    bail!("{}", crate::cleanup::interrupted());
                }
                if t0.elapsed() > Duration::from_secs(10) {
                    bail!(
                        "nginx in container {} did not answer on {connect} within 10 s",
                        svc.name
                    );
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Setup {
                client: Place::Host,
                connect,
                server_at: format!(
                    "{connect} in Docker container {} (image {}, network bridge, document root bind-mounted; images on {}); client on the host",
                    svc.name, svc.image, svc.storage_driver
                ),
                server: Running::Docker(svc, dir),
                _lab: None,
            }
        }
    })
}

fn one_env(args: &WebArgs, env: WebEnv, workers: usize) -> Result<EnvReport> {
    let max = *args.connections.iter().max().unwrap_or(&1);
    let st = setup(env, workers, max, args.size)?;
    let script = st.server.dir().join("report.lua");
    std::fs::write(&script, wrk::SCRIPT)?;
    let url = format!("http://{}{}", st.connect, nginx::PATH);
    let length = Duration::from_secs(args.length);
    let cgroup = st.server.cgroup().ok_or_else(|| {
        anyhow!(
            "the {} server's cgroup was not found: no CPU time to read",
            env.name()
        )
    })?;
    let mut runs = vec![];
    for &c in &args.connections {
        let cpu0 = st.server.cpu_usec();
        let client0 = children_cpu_s();
        let t = std::time::Instant::now();
        let w = wrk::run(&st.client, &url, c, length, &script)?;
        let wall = t.elapsed().as_secs_f64();
        let client = children_cpu_s() - client0;
        let cpu = match (cpu0, st.server.cpu_usec()) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1e6,
            _ => bail!("reading the server's CPU time ({})", cgroup.display()),
        };
        // wrk's own duration excludes its start-up; the server's CPU is over the same span.
        let secs = w.seconds.min(wall).max(1e-9);
        eprintln!(
            "profiler web: {} {c} connections: {:.0} requests/s, p50 {}",
            env.name(),
            w.requests_per_sec,
            fmt_ns(w.latency.p50 as f64)
        );
        runs.push(WebRun {
            server_cpu_s: cpu,
            server_cpu_pct: cpu / secs * 100.0,
            server_cpu_machine_pct: cpu / secs * 100.0 / wrk::num_cpus() as f64,
            client_cpu_pct: client / wall.max(1e-9) * 100.0,
            wrk: w,
        });
    }
    let (traced, trace_error) = if args.no_trace {
        (None, None)
    } else {
        match traced_run(args, &st, &url, &script) {
            Ok(t) => (Some(t), None),
            Err(e) if crate::cleanup::stop_requested() => return Err(e),
            Err(e) => (None, Some(format!("{e:#}"))),
        }
    };
    Ok(EnvReport {
        env,
        server: st.server_at.clone(),
        cgroup: cgroup.display().to_string(),
        runs,
        traced,
        trace_error,
    })
}

/// wrk at the first connection count while the packet tracer follows the server's port.
fn traced_run(args: &WebArgs, st: &Setup, url: &str, script: &std::path::Path) -> Result<Traced> {
    #[derive(clap::Parser)]
    struct Wrap {
        #[command(flatten)]
        args: crate::trace::cli::TraceArgs,
    }
    let c = args.connections[0];
    let port = st.connect.port().to_string();
    let secs = format!("{}", args.trace_length);
    let w = <Wrap as clap::Parser>::try_parse_from([
        "trace",
        "--attach-only",
        "--port",
        &port,
        "-l",
        &secs,
    ])
    .map_err(|e| anyhow!("{}", crate::opts::one_line(&e.to_string())))?;
    // wrk runs past the trace on both sides: the tracer's load and its detach.
    let load = Duration::from_secs(args.trace_length + 4);
    let (client, url, script) = (st.client.clone(), url.to_string(), script.to_path_buf());
    let worker = crate::cleanup::spawn("web-traced-wrk", move || {
        wrk::run(&client, &url, c, load, &script)
    })?;
    std::thread::sleep(Duration::from_millis(300));
    let report = crate::trace::run::run(&w.args);
    let during = worker
        .join()
        .map_err(|_| anyhow!("the traced wrk run panicked"))?;
    let report = report?;
    let directions = report
        .net
        .directions
        .iter()
        .map(|d| TracedDirection {
            direction: d.name.to_string(),
            one_way_p50_ns: d.one_way.as_ref().map(|r| r.summary.p50),
            packets: d.one_way.as_ref().map(|r| r.summary.count),
            layers: d
                .layers
                .iter()
                .filter(|r| r.crossings > 0)
                .map(|r| Layer {
                    layer: r.layer.to_string(),
                    p50_ns: r.summary.p50,
                    crossings: r.crossings,
                    share: r.share,
                })
                .collect(),
        })
        .collect();
    let during = during.ok();
    Ok(Traced {
        connections: c,
        seconds: args.trace_length as f64,
        directions,
        tracer_cpu_share: report.tracer.measured_share,
        follow_every: report.tracer.follow_every,
        duty_cycle: report.tracer.duty_cycle,
        requests_per_sec: during.as_ref().map(|w| w.requests_per_sec),
        latency: during.map(|w| w.latency),
    })
}

pub fn print(r: &WebReport) {
    println!(
        "web: {} serving {} B ({} workers), {} keep-alive, {} s per run, {} CPUs; server CPU (% of one CPU, of the machine) from its cgroup, host-side; wrk's % of one CPU",
        r.server, r.size_bytes, r.workers, r.generator, r.length_s, r.cpus
    );
    println!(
        "  {:<7} {:>6} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7} {:>14} {:>10} {:>8}",
        "env",
        "conns",
        "req/s",
        "p50",
        "p90",
        "p99",
        "max",
        "errors",
        "server CPU",
        "(machine)",
        "wrk CPU"
    );
    for e in &r.envs {
        for run in &e.runs {
            let l = &run.wrk.latency;
            println!(
                "  {:<7} {:>6} {:>10.0} {:>9} {:>9} {:>9} {:>9} {:>7} {:>13.1}% {:>9.1}% {:>7.0}%",
                e.env.name(),
                run.wrk.connections,
                run.wrk.requests_per_sec,
                fmt_ns(l.p50 as f64),
                fmt_ns(l.p90 as f64),
                fmt_ns(l.p99 as f64),
                fmt_ns(l.max as f64),
                run.wrk.errors.total(),
                run.server_cpu_pct,
                run.server_cpu_machine_pct,
                run.client_cpu_pct
            );
        }
    }
    let host = r.envs.iter().find(|e| e.env == WebEnv::Host);
    for e in r.envs.iter().filter(|e| e.env != WebEnv::Host) {
        let Some(h) = host else { break };
        for (a, b) in h.runs.iter().zip(&e.runs) {
            println!(
                "  {} against host at {} connections: requests/s x{:.2}, p50 {}, CPU per request x{:.2}",
                e.env.name(),
                a.wrk.connections,
                b.wrk.requests_per_sec / a.wrk.requests_per_sec.max(1e-9),
                signed(b.wrk.latency.p50 as f64 - a.wrk.latency.p50 as f64),
                (b.server_cpu_s / b.wrk.requests.max(1) as f64)
                    / (a.server_cpu_s / a.wrk.requests.max(1) as f64).max(1e-12)
            );
        }
    }
    for e in &r.envs {
        println!("  {}: server {}", e.env.name(), e.server);
        if let Some(err) = &e.trace_error {
            println!("    traced run failed: {err}");
        }
        let Some(t) = &e.traced else { continue };
        println!(
            "    network layers under {} connections (traced {:.1} s; tracer {}, one packet in {:.0}, attached {:.0}% of the time{}):",
            t.connections,
            t.seconds,
            t.tracer_cpu_share
                .map_or("cost not measured".into(), |s| format!(
                    "{:.2}% of one CPU",
                    s * 100.0
                )),
            t.follow_every,
            t.duty_cycle * 100.0,
            t.requests_per_sec.map_or(String::new(), |v| format!(
                "; wrk {v:.0} requests/s while traced"
            ))
        );
        for d in &t.directions {
            println!(
                "      {:<34} one-way p50 {:>9} ({} packets)",
                d.direction,
                d.one_way_p50_ns.map_or("-".into(), |v| fmt_ns(v as f64)),
                d.packets.unwrap_or(0)
            );
            for l in &d.layers {
                println!(
                    "        {:<44} {:>9} x{} {:>6.1}%",
                    l.layer,
                    fmt_ns(l.p50_ns as f64),
                    l.crossings,
                    l.share * 100.0
                );
            }
        }
    }
    if let Some(h) = host.and_then(|h| h.traced.as_ref()) {
        for e in r.envs.iter().filter(|e| e.env != WebEnv::Host) {
            let Some(t) = &e.traced else { continue };
            let sum = |t: &Traced| -> Option<i64> {
                t.directions
                    .iter()
                    .map(|d| d.one_way_p50_ns.map(|v| v as i64))
                    .sum()
            };
            let rt = |t: &Traced| t.latency.map(|l| l.p50 as i64);
            if let (Some(a), Some(b), Some(ra), Some(rb)) = (sum(h), sum(t), rt(h), rt(t)) {
                let net = b - a;
                let resp = rb - ra;
                println!(
                    "  {} against host, traced runs: response p50 {}, of which the network path (request + response one-way p50s) {}; the rest ({}) is above the traced path (nginx, wrk, the sockets' wake-ups)",
                    e.env.name(),
                    signed(resp as f64),
                    signed(net as f64),
                    signed((resp - net) as f64)
                );
            }
        }
    }
}

/// A difference with its sign, e.g. "+12.0 µs".
fn signed(ns: f64) -> String {
    if ns >= 0.0 {
        format!("+{}", fmt_ns(ns))
    } else {
        fmt_ns(ns)
    }
}
