//! `profiler trace`: build (or reuse) a lab, start the workload, attach, report, tear down.

use std::{
    io::Write as _,
    net::Ipv4Addr,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Serialize;

use super::{
    budget::{Policy, Sampler},
    report::{self, NetReport},
};
use crate::probes::net::{Filter, NetTracer};
use crate::{
    cleanup,
    lab::{self, Lab, Mode, netns},
    workload::{self, Endpoints, Options, Test},
};

#[derive(clap::Args, Debug)]
pub struct TraceArgs {
    /// Lab mode to build and trace (default overlay). Ignored with --lab or --attach-only.
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Workload: tcp_rr, tcp_crr, tcp_stream, tcp_maerts, udp_rr, udp_stream.
    #[arg(short = 't', long = "test", default_value = "tcp_rr")]
    pub test: String,
    /// Seconds to run.
    #[arg(short = 'l', default_value = "5")]
    pub length: f64,
    /// Print the table every SECS while running.
    #[arg(long)]
    pub interval: Option<f64>,
    /// Write the report (with full histograms) as JSON to FILE.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Print every hook of one followed packet in N, pwru-style (N >= 1).
    #[arg(long, alias = "sample", value_parser = clap::value_parser!(u64).range(1..))]
    pub print_every: Option<u64>,
    /// Trace in this existing lab and leave it up.
    #[arg(long)]
    pub lab: Option<String>,
    /// Trace existing traffic on this host; no lab, no workload.
    #[arg(long)]
    pub attach_only: bool,
    /// Follow packets to or from this port (default: the lab's ports).
    #[arg(long)]
    pub port: Option<u16>,
    /// Follow packets to or from this IPv4 address.
    #[arg(long)]
    pub host: Option<Ipv4Addr>,
    /// Follow packets born in this named network namespace.
    #[arg(long)]
    pub netns: Option<String>,
    /// Follow packets born on this interface index.
    #[arg(long)]
    pub ifindex: Option<u32>,
    /// -r REQ,RESP for the rr workloads.
    #[arg(short = 'r', default_value = "1,1")]
    pub rr: String,
    /// Run the same workload across these modes and print one comparison table.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub compare: Option<Vec<Mode>>,
    /// In a nat lab: trace with NAT, without NAT, and without conntrack, and report the costs.
    #[arg(long)]
    pub ablation: bool,
    /// Follow one packet in N, drawn at its first hook, with the hooks attached all the time
    /// (1: every packet). Without it the tracer keeps to --overhead.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "overhead")]
    pub follow_every: Option<u64>,
    /// The tracer's budget, in percent of one CPU (default 1): it measures its own cost and
    /// chooses N and the share of time its hooks are attached to stay within it.
    #[arg(long)]
    pub overhead: Option<f64>,
    /// Attach an empty program to every hook instead of the tracer (the floor, for
    /// `cargo xtask bench-trace`): measures what running any program there costs.
    #[arg(long, hide = true)]
    pub empty_programs: bool,
    /// Also attach net:net_dev_start_xmit, splitting each device's transmit queue from what
    /// follows (always on with --attach-only, where real NICs have qdiscs).
    #[arg(long)]
    pub split_tx_queue: bool,
    /// Per-skb state slots, a power of two (tests shrink it to force collisions).
    #[arg(long, hide = true, default_value_t = 0)]
    pub state_slots: u32,
    /// Enable the kernel's BPF run-time statistics while tracing and report each program's
    /// mean run time (the program body only: trampolines and probe entry are not counted).
    #[arg(long)]
    pub bpf_stats: bool,
    /// Inject a known delay on a bridge port, the underlay and a container veth, trace, and
    /// check that each lands in the layer holding its hook and nowhere else.
    #[arg(long)]
    pub self_check: bool,
}

#[derive(Serialize)]
pub struct TraceReport {
    pub mode: Option<Mode>,
    pub lab: Option<String>,
    pub test: Option<Test>,
    pub seconds: f64,
    pub attached: Vec<crate::attach::Attached>,
    pub net: NetReport,
    pub softirq: Option<crate::probes::softirq::SoftirqReport>,
    pub workload: Option<workload::Report>,
    /// How the tracer sampled and what it cost (per program: ns per run, under bpf_stats).
    pub tracer: super::budget::Cost,
    /// Peak resident memory of this process, KiB.
    pub peak_rss_kib: u64,
    /// Workload mean round trip minus the two mean one-way times: application, syscalls and
    /// the stack before the first hook (TCP/IP output) and after the last.
    pub rtt_unattributed_ns: Option<f64>,
    /// (both one-way p50s without the tracer's own cost, the workload's round-trip p50), ns:
    /// the check of the correction against the round trip the workload measured.
    pub rtt_without_tracer_ns: Option<(f64, f64)>,
    /// Per-skb state slots still tagged at the end (followed packets in flight or cut).
    pub state_in_use: Option<u64>,
}

/// The sampling policy the arguments ask for.
fn policy(args: &TraceArgs) -> Result<Policy> {
    if args.empty_programs {
        return Ok(Policy::Fixed { every: 1 });
    }
    if let Some(every) = args.follow_every {
        return Ok(Policy::Fixed { every });
    }
    let pct = args.overhead.unwrap_or(1.0);
    if !(pct > 0.0 && pct <= 100.0) {
        bail!(
            "--overhead must be a percentage of one CPU above 0 and at most 100, e.g. --overhead 1"
        );
    }
    Ok(Policy::Budget { share: pct / 100.0 })
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn inode(ns: &str) -> Result<u32> {
    Ok(std::fs::metadata(netns::path(ns))
        .with_context(|| format!("no network namespace {ns}"))?
        .ino() as u32)
}

/// Checks the workload arguments before anything is built.
fn validate(args: &TraceArgs) -> Result<()> {
    let _: Test = args.test.parse()?;
    workload::parse_rr(&args.rr)?;
    length(args)?;
    policy(args)?;
    if let Some(i) = args.interval
        && !(i > 0.0 && i.is_finite())
    {
        bail!("--interval must be a positive number of seconds, e.g. --interval 1");
    }
    Ok(())
}

pub fn run(args: &TraceArgs) -> Result<TraceReport> {
    crate::kernel::require_root("profiler trace")?;
    validate(args)?;
    lab::reap_stale();
    cleanup::set_interruptible();
    if args.attach_only {
        return attach_only(args, length(args)?);
    }
    let mode = args.mode.unwrap_or(Mode::Overlay);
    let (desc, _owned) = lab::existing_or_new(args.lab.as_deref(), mode)?;
    trace_in(&desc, desc.connect, args)
}

fn length(args: &TraceArgs) -> Result<Duration> {
    if !(args.length > 0.0 && args.length < 86_400.0) {
        bail!("-l must be a positive number of seconds, e.g. -l 5");
    }
    Ok(Duration::from_secs_f64(args.length))
}

/// Attaches, runs the workload from the client to `connect`, reports.
fn trace_in(
    desc: &lab::Description,
    connect: std::net::IpAddr,
    args: &TraceArgs,
) -> Result<TraceReport> {
    let test: Test = args.test.parse()?;
    let (rq, rs) = workload::parse_rr(&args.rr)?;
    let filter = Filter {
        ports: args.port.map_or(desc.ports, |p| (p, p)),
        client_netns: inode(&desc.client.netns)?,
        print_every: args.print_every.unwrap_or(0),
        host: args.host.map_or(0, |h| u32::from_ne_bytes(h.octets())),
        empty_programs: args.empty_programs,
        state_slots: args.state_slots,
        xmit_hook: args.split_tx_queue,
        ..Filter::default()
    };
    let _stats = if args.bpf_stats {
        Some(aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling BPF statistics")?)
    } else {
        None
    };
    let mut tracer = NetTracer::start(&filter)?;
    let endpoints = Endpoints {
        connect,
        ..Endpoints::in_lab(desc)
    };
    let mut opts = Options::new(test);
    opts.duration = length(args)?;
    opts.request = rq;
    opts.response = rs;
    opts.validate()?;
    eprintln!(
        "profiler: tracing {} in lab {} ({}) for {:.1} s",
        test.name(),
        desc.id,
        desc.mode,
        args.length
    );
    let worker = std::thread::spawn(move || workload::run(&endpoints, &opts));
    let cost = watch(&mut tracer, args, _stats.is_some(), || worker.is_finished())?;
    let workload = if worker.is_finished() {
        Some(
            worker
                .join()
                .map_err(|_| anyhow!("the workload panicked"))??,
        )
    } else {
        None // interrupted: report what the tracer has
    };
    let mut net = report::build(&tracer.snapshot()?, &tracer.table.names);
    if let Some(c) = cost.followed_ns_per_run {
        report::without_tracer(&mut net, c);
    }
    let rtt_without_tracer_ns = workload.as_ref().and_then(|w| {
        let ow: Vec<f64> = net
            .directions
            .iter()
            .filter_map(|d| d.one_way.as_ref().and_then(|r| r.p50_without_tracer_ns))
            .collect();
        (test.is_rr() && ow.len() == 2).then(|| (ow.iter().sum::<f64>(), w.latency.p50_us * 1e3))
    });
    let rtt_unattributed_ns = workload.as_ref().and_then(|w| {
        let ow: Vec<f64> = net
            .directions
            .iter()
            .filter_map(|d| d.one_way.as_ref().map(|r| r.summary.mean))
            .collect();
        (test.is_rr() && ow.len() == 2).then(|| w.histogram.mean() - ow.iter().sum::<f64>())
    });
    Ok(TraceReport {
        mode: Some(desc.mode),
        lab: Some(desc.id.clone()),
        test: Some(test),
        seconds: args.length,
        attached: tracer.attached.clone(),
        net,
        softirq: crate::probes::softirq::read(tracer.ebpf()).ok(),
        workload,
        tracer: cost,
        state_in_use: tracer.state_in_use().ok(),
        peak_rss_kib: peak_rss_kib(),
        rtt_unattributed_ns,
        rtt_without_tracer_ns,
    })
}

/// One mode's line of `--compare`.
#[derive(Serialize)]
pub struct CompareRow {
    pub mode: Mode,
    pub throughput: f64,
    pub unit: &'static str,
    pub mean_us: f64,
    pub p99_us: f64,
    /// Throughput relative to host, and latency relative to host (the research's ratios).
    pub throughput_ratio: Option<f64>,
    pub latency_ratio: Option<f64>,
    /// Median one-way time of requests, ns.
    pub one_way_p50_ns: Option<u64>,
    /// The network layer (socket delivery aside) with the largest share of the request
    /// one-way time.
    pub top_layer: Option<(String, f64)>,
    pub report: TraceReport,
}

/// `--compare host,bridge,nat,overlay`: the same workload in each mode, one table.
pub fn compare(args: &TraceArgs, modes: &[Mode]) -> Result<Vec<CompareRow>> {
    crate::kernel::require_root("profiler trace --compare")?;
    validate(args)?;
    lab::reap_stale();
    cleanup::set_interruptible();
    let mut rows: Vec<CompareRow> = vec![];
    for &mode in modes {
        if cleanup::stop_requested() {
            break;
        }
        let (desc, _owned) = lab::existing_or_new(None, mode)?;
        let report = trace_in(&desc, desc.connect, args)?;
        let Some(w) = &report.workload else { break };
        let rr = w.test.is_rr();
        let req = report.net.directions.first();
        let one_way_p50_ns = req.and_then(|d| d.one_way.as_ref().map(|o| o.summary.p50));
        let top_layer = req.and_then(|d| {
            d.layers
                .iter()
                .filter(|l| !l.layer.contains("socket queue"))
                .max_by(|a, b| a.share.total_cmp(&b.share))
                .map(|l| (l.layer.to_string(), l.share))
        });
        rows.push(CompareRow {
            mode,
            throughput: if rr {
                w.transactions_per_sec
            } else {
                w.throughput_mbps
            },
            unit: if rr { "trans/s" } else { "Mbit/s" },
            mean_us: w.latency.mean_us,
            p99_us: w.latency.p99_us,
            throughput_ratio: None,
            latency_ratio: None,
            one_way_p50_ns,
            top_layer,
            report,
        });
    }
    if let Some(host) = rows
        .iter()
        .find(|r| r.mode == Mode::Host)
        .map(|r| (r.throughput, r.mean_us))
    {
        for r in &mut rows {
            r.throughput_ratio = (host.0 > 0.0).then(|| r.throughput / host.0);
            r.latency_ratio = (host.1 > 0.0).then(|| r.mean_us / host.1);
        }
    }
    Ok(rows)
}

pub fn print_compare(rows: &[CompareRow]) {
    println!(
        "  {:<9} {:>20} {:>10} {:>10} {:>9} {:>9} {:>11}  largest network layer (requests)",
        "mode", "throughput", "mean", "p99", "vs host", "latency", "one-way p50"
    );
    for r in rows {
        println!(
            "  {:<9} {:>12.0} {:<7} {:>8.1}µs {:>8.1}µs {:>9} {:>9} {:>11}  {}",
            r.mode.name(),
            r.throughput,
            r.unit,
            r.mean_us,
            r.p99_us,
            r.throughput_ratio
                .map_or("-".into(), |x| format!("{x:.2}x")),
            r.latency_ratio.map_or("-".into(), |x| format!("{x:.2}x")),
            r.one_way_p50_ns
                .map_or("-".into(), |n| crate::hist::fmt_ns(n as f64)),
            r.top_layer
                .as_ref()
                .map_or(String::new(), |(n, s)| format!("{n} ({:.0}%)", s * 100.0))
        );
    }
}

/// `--ablation` in a nat lab: the same workload with NAT, without NAT (direct to the server,
/// conntrack still on), and with conntrack off (NOTRACK in the raw table). Where function
/// probes cannot isolate conntrack and NAT, the differences of the forwarding segment can.
#[derive(Serialize)]
pub struct Ablation {
    pub variants: Vec<(String, TraceReport)>,
    /// p50 of the host's "ip forward + netfilter" segment per variant (requests).
    pub forward_p50_ns: Vec<(String, u64)>,
    pub nat_cost_ns: Option<i64>,
    pub conntrack_cost_ns: Option<i64>,
}

pub fn ablation(args: &TraceArgs) -> Result<Ablation> {
    crate::kernel::require_root("profiler trace --ablation")?;
    validate(args)?;
    lab::reap_stale();
    cleanup::set_interruptible();
    let (desc, _owned) = lab::existing_or_new(args.lab.as_deref(), Mode::Nat)?;
    if desc.mode != Mode::Nat {
        bail!(
            "--ablation needs a nat lab (lab {} is {})",
            desc.id,
            desc.mode
        );
    }
    let host_ns = desc
        .namespaces
        .iter()
        .find(|n| n.ends_with("-h"))
        .ok_or_else(|| anyhow!("lab {} has no host namespace", desc.id))?
        .clone();
    let mut variants = vec![];
    variants.push(("nat".to_string(), trace_in(&desc, desc.connect, args)?));
    variants.push((
        "no nat (conntrack on)".to_string(),
        trace_in(&desc, desc.server.addr, args)?,
    ));
    let notrack = [
        ["-t", "raw", "-I", "PREROUTING", "-j", "NOTRACK"],
        ["-t", "raw", "-I", "OUTPUT", "-j", "NOTRACK"],
    ];
    for rule in &notrack {
        lab::iptables_in(&host_ns, rule)?;
    }
    let r = trace_in(&desc, desc.server.addr, args);
    for rule in &notrack {
        let mut del = rule.to_vec();
        del[2] = "-D";
        lab::iptables_in(&host_ns, &del)?;
    }
    variants.push(("no conntrack (NOTRACK)".to_string(), r?));
    let forward = |r: &TraceReport| {
        r.net.directions.first().and_then(|d| {
            d.layers
                .iter()
                .find(|l| l.layer == "ip forward + netfilter")
                .map(|l| l.summary.p50)
        })
    };
    let forward_p50_ns: Vec<(String, u64)> = variants
        .iter()
        .filter_map(|(n, r)| forward(r).map(|p| (n.clone(), p)))
        .collect();
    let get = |i: usize| forward(&variants[i].1).map(|v| v as i64);
    let nat_cost_ns = get(0).zip(get(1)).map(|(a, b)| a - b);
    let conntrack_cost_ns = get(1).zip(get(2)).map(|(a, b)| a - b);
    Ok(Ablation {
        variants,
        forward_p50_ns,
        nat_cost_ns,
        conntrack_cost_ns,
    })
}

pub fn print_ablation(a: &Ablation) {
    println!(
        "  netfilter ablation (p50 of the host's 'ip forward + netfilter' segment, requests):"
    );
    for (n, p) in &a.forward_p50_ns {
        println!("    {:<28} {}", n, crate::hist::fmt_ns(*p as f64));
    }
    if let Some(c) = a.nat_cost_ns {
        println!(
            "    NAT (DNAT rule + translation) costs       {}",
            crate::hist::fmt_ns(c as f64)
        );
    }
    if let Some(c) = a.conntrack_cost_ns {
        println!(
            "    conntrack (lookup/insert per packet) costs {}",
            crate::hist::fmt_ns(c as f64)
        );
    }
    for (n, r) in &a.variants {
        if let Some(w) = &r.workload {
            println!(
                "    {:<28} {:.0} trans/s, mean RTT {:.1} µs",
                n, w.transactions_per_sec, w.latency.mean_us
            );
        }
    }
}

fn attach_only(args: &TraceArgs, length: Duration) -> Result<TraceReport> {
    let port = args.port.ok_or_else(|| {
        anyhow!("--attach-only needs --port PORT (and optionally --host, --netns, --ifindex)")
    })?;
    let filter = Filter {
        ports: (port, port),
        netns: match &args.netns {
            Some(n) => inode(n)?,
            None => 0,
        },
        client_netns: match &args.netns {
            Some(n) => inode(n)?,
            None => 0,
        },
        ifindex: args.ifindex.unwrap_or(0),
        host: args.host.map_or(0, |h| u32::from_ne_bytes(h.octets())),
        print_every: args.print_every.unwrap_or(0),
        empty_programs: args.empty_programs,
        state_slots: args.state_slots,
        xmit_hook: true,
    };
    let _stats = if args.bpf_stats {
        Some(aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling BPF statistics")?)
    } else {
        None
    };
    let mut tracer = NetTracer::start(&filter)?;
    let deadline = Instant::now() + length;
    let cost = watch(&mut tracer, args, _stats.is_some(), || {
        Instant::now() >= deadline
    })?;
    Ok(TraceReport {
        mode: None,
        lab: None,
        test: None,
        seconds: args.length,
        attached: tracer.attached.clone(),
        net: report::build(&tracer.snapshot()?, &tracer.table.names),
        softirq: crate::probes::softirq::read(tracer.ebpf()).ok(),
        workload: None,
        tracer: cost,
        state_in_use: tracer.state_in_use().ok(),
        peak_rss_kib: peak_rss_kib(),
        rtt_unattributed_ns: None,
        rtt_without_tracer_ns: None,
    })
}

/// Follows packets by the policy until `done` or a signal, printing interval tables and
/// samples; returns what the tracer cost.
fn watch(
    tracer: &mut NetTracer,
    args: &TraceArgs,
    stats_on: bool,
    done: impl Fn() -> bool,
) -> Result<super::budget::Cost> {
    // Namespaces named by the container that owns them, where Docker runs.
    let names =
        if args.print_every.is_some() && std::path::Path::new(crate::docker::SOCKET).exists() {
            crate::docker::netns_names()
        } else {
            Default::default()
        };
    let started = Instant::now();
    let mut last_print = started;
    let mut last_ts = std::collections::HashMap::new();
    let mut header = true;
    let mut sampler = Sampler::start(tracer, policy(args)?, stats_on)?;
    while !done() && !cleanup::stop_requested() {
        std::thread::sleep(Duration::from_millis(5));
        sampler.tick(tracer)?;
        if args.print_every.is_some() {
            print_samples(tracer, &mut last_ts, &mut header, &names)?;
        }
        if let Some(i) = args.interval
            && last_print.elapsed().as_secs_f64() >= i
        {
            last_print = Instant::now();
            println!("--- after {:.1} s", started.elapsed().as_secs_f64());
            report::print(&report::build(&tracer.snapshot()?, &tracer.table.names));
        }
    }
    let cost = sampler.finish(tracer);
    if tracer.is_attached() {
        tracer.detach()?;
    }
    if args.print_every.is_some() {
        print_samples(tracer, &mut last_ts, &mut header, &names)?;
    }
    if cleanup::stop_requested() {
        eprintln!("profiler: interrupted: reporting what was traced so far");
    }
    Ok(cost)
}

fn print_samples(
    tracer: &mut NetTracer,
    last: &mut std::collections::HashMap<u64, u64>,
    header: &mut bool,
    netns_names: &std::collections::HashMap<u64, String>,
) -> Result<()> {
    use profiler_common::net::Event;
    let names = tracer.table.names.clone();
    let mut rb = tracer.events()?;
    let mut out = std::io::stdout().lock();
    while let Some(item) = rb.next() {
        if item.len() < std::mem::size_of::<Event>() {
            continue;
        }
        // SAFETY: the kernel wrote one Event; read_unaligned copes with the ring's alignment.
        let e: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        if *header {
            writeln!(
                out,
                "{:<18} {:>3} {:<4} {:<20} {:>10} {:>4} {:<10} {:>5} {:>10}  layer",
                "SKB", "CPU", "DIR", "HOOK", "NETNS", "IF", "DEV", "LEN", "+DELTA"
            )?;
            *header = false;
        }
        let birth = e.slot == profiler_common::net::SLOT_BIRTH;
        let prev = last.insert(e.skb, e.ts);
        let delta = if birth {
            None
        } else {
            prev.map(|p| e.ts.saturating_sub(p))
        };
        let name_end = e.name.iter().position(|&b| b == 0).unwrap_or(16);
        let hook = super::layers::hook_name(e.hook);
        writeln!(
            out,
            "{:#018x} {:>3} {:<4} {:<20} {:>10} {:>4} {:<10} {:>5} {:>10}  {}",
            e.skb,
            e.cpu,
            if e.dir == 0 { "req" } else { "resp" },
            hook,
            netns_names
                .get(&(e.netns as u64))
                .cloned()
                .unwrap_or_else(|| e.netns.to_string()),
            e.ifindex,
            String::from_utf8_lossy(&e.name[..name_end]),
            e.len,
            delta.map_or("".into(), |d| crate::hist::fmt_ns(d as f64)),
            if delta.is_some() {
                names[e.slot as usize]
            } else {
                "(first hook)"
            }
        )?;
    }
    Ok(())
}

/// Prints the whole report to the terminal.
pub fn print(r: &TraceReport) {
    match (&r.mode, &r.test) {
        (Some(m), Some(t)) => println!(
            "profiler trace — {} lab {}, {} for {:.1} s",
            m,
            r.lab.as_deref().unwrap_or("?"),
            t.name(),
            r.seconds
        ),
        _ => println!(
            "profiler trace — attached to existing traffic for {:.1} s",
            r.seconds
        ),
    }
    let how: Vec<String> = r
        .attached
        .iter()
        .map(|a| format!("{}: {}", a.event, a.how))
        .collect();
    println!("  hooks: {}", how.join(", "));
    report::print(&r.net);
    super::budget::print(&r.tracer);
    if !r.tracer.programs.is_empty() {
        let per: Vec<String> = r
            .tracer
            .programs
            .iter()
            .map(|p| format!("{} {:.0} ns x {}", p.program, p.ns_per_run, p.runs))
            .collect();
        println!(
            "  BPF run time per invocation (bpf_stats, program body only): {}",
            per.join(", ")
        );
    }
    if let Some(s) = &r.softirq {
        crate::probes::softirq::print(s);
    }
    if let Some(w) = &r.workload {
        println!();
        let l = &w.latency;
        if w.test.is_rr() {
            println!(
                "  workload {}: {:.0} transactions/s; round trip p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, max {:.1} µs, mean {:.1} µs",
                w.test.name(),
                w.transactions_per_sec,
                l.p50_us,
                l.p90_us,
                l.p99_us,
                l.p99_9_us,
                l.max_us,
                l.mean_us
            );
        } else {
            println!(
                "  workload {}: {:.0} Mbit/s",
                w.test.name(),
                w.throughput_mbps
            );
        }
        if let Some((ow, rtt)) = r.rtt_without_tracer_ns {
            println!(
                "  without the tracer's own cost the two one-way p50s add up to {} of the workload's round-trip p50 {} (the rest: application, syscalls, TCP/IP output before the first hook)",
                crate::hist::fmt_ns(ow),
                crate::hist::fmt_ns(rtt)
            );
        }
        if let Some(u) = r.rtt_unattributed_ns {
            println!(
                "  unattributed round-trip time: {} per transaction (mean RTT minus both mean one-way times: application, syscalls, TCP/IP output before the first hook)",
                crate::hist::fmt_ns(u)
            );
        }
    }
}

/// One injection of the self-check.
#[derive(Serialize)]
pub struct Case {
    pub mode: Mode,
    pub device: String,
    pub hook: &'static str,
    pub expected_layer: &'static str,
    /// Request-direction layers: (name, baseline p50, injected p50), ns.
    pub layers: Vec<(String, u64, u64)>,
    pub delay_ns: u64,
    pub landed_ns: i64,
    /// Largest |shift| of any other layer.
    pub elsewhere_ns: i64,
    pub passed: bool,
}

#[derive(Serialize)]
pub struct SelfCheck {
    pub cases: Vec<Case>,
    pub passed: bool,
}

/// A lab of the self-check, kept up across its cases, with its baseline request p50s.
type SelfCheckLab = (Mode, lab::Description, Option<Lab>, Vec<(String, u64)>);

/// Median shift tolerance: 5% of the injected delay.
const TOLERANCE: f64 = 0.05;
const SELF_CHECK_DELAY: Duration = Duration::from_millis(1);

fn request_p50s(r: &TraceReport) -> Vec<(String, u64)> {
    r.net
        .directions
        .first()
        .map(|d| {
            d.layers
                .iter()
                .filter(|l| l.crossings >= 1)
                .map(|l| (l.layer.to_string(), l.summary.p50))
                .collect()
        })
        .unwrap_or_default()
}

pub fn self_check(args: &TraceArgs) -> Result<SelfCheck> {
    crate::kernel::require_root("profiler trace --self-check")?;
    validate(args)?;
    lab::reap_stale();
    cleanup::set_interruptible();
    // Requests go client -> server: the client's bridge port (host end), the server host's
    // underlay, the server container's end. (mode, role, device name, namespace suffix, layer)
    let plan: [(Mode, lab::Role, &str, &str, &'static str); 3] = [
        (Mode::Bridge, lab::Role::HostEnd, "veth-c", "-h", "bridge"),
        (
            Mode::Overlay,
            lab::Role::Underlay,
            "uy",
            "-hy",
            "vxlan decap + ip/udp receive + netfilter in",
        ),
        (
            Mode::Overlay,
            lab::Role::ContainerEnd,
            "eth0",
            "-s",
            "ip/transport receive + socket queue",
        ),
    ];
    let mut cases = vec![];
    let mut labs: Vec<SelfCheckLab> = vec![];
    for (mode, role, name, ns_suffix, expected) in plan {
        if !labs.iter().any(|(m, ..)| *m == mode) {
            let (desc, owned) = lab::existing_or_new(None, mode)?;
            let base = request_p50s(&trace_in(&desc, desc.connect, args)?);
            labs.push((mode, desc, owned, base));
        }
        let (_, desc, _, base) = labs.iter().find(|(m, ..)| *m == mode).unwrap();
        let dev = desc
            .device(role)
            .find(|d| d.name == name && d.netns.ends_with(ns_suffix))
            .ok_or_else(|| anyhow!("lab {} has no {name} ({role:?})", desc.id))?
            .clone();
        let injector = crate::probes::inject::Injector::attach(
            &dev.netns,
            &dev.name,
            true,
            SELF_CHECK_DELAY,
            // All packets: on the underlay they are VXLAN (UDP 4789), not the workload's port.
            None,
        )?;
        let traced = request_p50s(&trace_in(desc, desc.connect, args)?);
        drop(injector);
        let delay = SELF_CHECK_DELAY.as_nanos() as u64;
        let mut layers = vec![];
        let (mut landed, mut elsewhere) = (0i64, 0i64);
        for (name, b) in base {
            let t = traced.iter().find(|(n, _)| n == name).map_or(0, |x| x.1);
            let shift = t as i64 - *b as i64;
            if name == expected {
                landed = shift;
            } else {
                elsewhere = elsewhere.max(shift.abs());
            }
            layers.push((name.clone(), *b, t));
        }
        let tol = (delay as f64 * TOLERANCE) as i64;
        cases.push(Case {
            mode,
            device: format!("{} in {}", dev.name, dev.netns),
            hook: "tc ingress",
            expected_layer: expected,
            layers,
            delay_ns: delay,
            landed_ns: landed,
            elsewhere_ns: elsewhere,
            passed: (landed - delay as i64).abs() <= tol && elsewhere <= tol,
        });
    }
    let passed = cases.iter().all(|c| c.passed);
    Ok(SelfCheck { cases, passed })
}

pub fn print_self_check(c: &SelfCheck) {
    use crate::hist::fmt_ns;
    println!(
        "  self-check: {} injected on TC ingress, tolerance {:.0}%",
        fmt_ns(SELF_CHECK_DELAY.as_nanos() as f64),
        TOLERANCE * 100.0
    );
    for case in &c.cases {
        println!(
            "  {:<4} {:<8} {:<28} expected in '{}': landed {} (other layers at most {})",
            if case.passed { "ok" } else { "FAIL" },
            case.mode,
            case.device,
            case.expected_layer,
            fmt_ns(case.landed_ns as f64),
            fmt_ns(case.elsewhere_ns as f64)
        );
    }
}
