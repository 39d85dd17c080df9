//! `profiler trace`: build (or reuse) a lab, start the workload, attach, report, tear down.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use serde::Serialize;

use super::{
    budget::Sampler,
    cli::{TraceArgs, length, policy, prelude},
    report::{self, NetReport},
    samples::print_samples,
};
use crate::export::hdr_log::{self, HdrLog};
use crate::probes::net::{Filter, NetTracer};
use crate::{
    cleanup,
    lab::{self, Mode},
    workload::{self, Endpoints, Options, Test},
};

#[derive(Serialize)]
pub struct RttCheck {
    pub one_way_p50s_ns: f64,
    pub workload_rtt_p50_ns: f64,
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
    /// Both one-way p50s without the tracer's own cost against the workload's round-trip
    /// p50: the check of the correction against the round trip the workload measured.
    pub rtt_without_tracer_ns: Option<RttCheck>,
    /// Per-skb state slots still tagged at the end (followed packets in flight or cut).
    pub state_in_use: Option<u64>,
    /// The whole round trip, named, against the workload's mean (request-response runs).
    pub round_trip: Option<super::round_trip::RoundTrip>,
    /// Application time per process (receive return to next send), named by Docker container
    /// where there is one: who the application segments belong to under --attach-only.
    pub applications: Vec<super::round_trip::Application>,
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

pub fn run(args: &TraceArgs) -> Result<TraceReport> {
    prelude(args, "profiler trace")?;
    if args.attach_only {
        return attach_only(args, length(args)?);
    }
    let mode = args.mode.unwrap_or(Mode::Overlay);
    let (desc, _owned) = lab::existing_or_new(args.lab.as_deref(), mode)?;
    trace_in(&desc, desc.connect, args)
}

/// Attaches, runs the workload from the client to `connect`, reports.
pub(super) fn trace_in(
    desc: &lab::Description,
    connect: std::net::IpAddr,
    args: &TraceArgs,
) -> Result<TraceReport> {
    let (endpoints, opts) = workload_in(desc, connect, args)?;
    let test = opts.test;
    let client_netns = crate::opts::netns_inode(&desc.client.netns)?;
    let filter = Filter {
        ports: args.filter.port.map_or(desc.ports, |p| (p, p)),
        // Every lab serves on the same ports: where both ends share one namespace (host),
        // packets born elsewhere are other labs' traffic, not responses.
        netns: if desc.client.netns == desc.server.netns {
            client_netns
        } else {
            0
        },
        client_netns,
        server_netns: crate::opts::netns_inode(&desc.server.netns)?,
        print_every: args.print_every.unwrap_or(0),
        host: args.filter.host_be(),
        empty_programs: args.empty_programs,
        state_slots: args.state_slots,
        xmit_hook: args.split_tx_queue,
        no_functions: args.no_function_probes || args.ablation,
        split_route: args.split_route,
        debug_bpf: args.debug_bpf,
        ..Filter::default()
    };
    let _stats = if args.bpf_stats {
        Some(aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling BPF statistics")?)
    } else {
        None
    };
    let mut tracer = NetTracer::start(&filter)?;
    eprintln!(
        "profiler: tracing {} in lab {} ({}) for {:.1} s",
        test.name(),
        desc.id,
        desc.mode,
        args.length
    );
    workload::CONTROL_PORT.store(0, std::sync::atomic::Ordering::Relaxed);
    let worker = std::thread::spawn(move || workload::run(&endpoints, &opts));
    let mut hdr = args.hdr_log.as_deref().map(HdrLog::create).transpose()?;
    let clock = crate::progress::Clock::start("tracing", length(args)?);
    // The control connection is not a transaction: left out once its port is known.
    let skip = std::cell::Cell::new(0u16);
    let cost = watch(&mut tracer, args, _stats.is_some(), &mut hdr, |t| {
        let p = workload::CONTROL_PORT.load(std::sync::atomic::Ordering::Relaxed);
        if p != skip.get() && t.skip_port(p).is_ok() {
            skip.set(p);
        }
        worker.is_finished()
    })?;
    drop(clock);
    let workload = if worker.is_finished() {
        Some(
            worker
                .join()
                .map_err(|_| anyhow!("the workload panicked"))??,
        )
    } else {
        None // interrupted: report what the tracer has
    };
    finish(&tracer, cost, args, Some((desc, test)), workload, hdr)
}

/// The workload `trace_in` runs: from the lab's client to `connect`, as the arguments ask.
fn workload_in(
    desc: &lab::Description,
    connect: std::net::IpAddr,
    args: &TraceArgs,
) -> Result<(Endpoints, Options)> {
    let test: Test = args.test.parse()?;
    let (rq, rs) = workload::parse_rr(&args.rr)?;
    let endpoints = Endpoints {
        connect,
        ..Endpoints::in_lab(desc)
    };
    let mut opts = Options::new(test);
    opts.duration = length(args)?;
    opts.request = rq;
    opts.response = rs;
    opts.think = args.think.unwrap_or_default();
    opts.validate()?;
    Ok((endpoints, opts))
}

/// The same workload as `trace_in`, with nothing attached: the figures the tracer's cost is
/// not in (`--compare`'s throughput ratios). None when a signal came first (the workload's
/// threads are left to end with the process, as `trace_in` leaves them).
pub(super) fn untraced_in(
    desc: &lab::Description,
    connect: std::net::IpAddr,
    args: &TraceArgs,
) -> Result<Option<workload::Report>> {
    let (endpoints, opts) = workload_in(desc, connect, args)?;
    let worker = std::thread::spawn(move || workload::run(&endpoints, &opts));
    while !worker.is_finished() {
        if cleanup::stop_requested() {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(Some(
        worker
            .join()
            .map_err(|_| anyhow!("the workload panicked"))??,
    ))
}

fn attach_only(args: &TraceArgs, length: Duration) -> Result<TraceReport> {
    let port = args.filter.port.ok_or_else(|| {
        anyhow!("--attach-only needs --port PORT (and optionally --host, --netns, --ifindex)")
    })?;
    let filter = Filter {
        print_every: args.print_every.unwrap_or(0),
        empty_programs: args.empty_programs,
        state_slots: args.state_slots,
        debug_bpf: args.debug_bpf,
        ..args.filter.existing_traffic((port, port))?
    };
    let _stats = if args.bpf_stats {
        Some(aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling BPF statistics")?)
    } else {
        None
    };
    let mut tracer = NetTracer::start(&filter)?;
    let deadline = Instant::now() + length;
    let mut hdr = args.hdr_log.as_deref().map(HdrLog::create).transpose()?;
    let clock = crate::progress::Clock::start("tracing", length);
    let cost = watch(&mut tracer, args, _stats.is_some(), &mut hdr, |_| {
        Instant::now() >= deadline
    })?;
    drop(clock);
    finish(&tracer, cost, args, None, None, hdr)
}

/// The report of one traced run: in a lab, with its test and the workload's result (none if
/// interrupted), or attached to existing traffic.
fn finish(
    tracer: &NetTracer,
    cost: super::budget::Cost,
    args: &TraceArgs,
    lab: Option<(&lab::Description, Test)>,
    workload: Option<workload::Report>,
    hdr: Option<HdrLog>,
) -> Result<TraceReport> {
    let mut net = report::build(&tracer.snapshot()?, &tracer.table.names);
    if let Some((d, _)) = lab {
        for row in net.directions.iter_mut().flat_map(|d| d.layers.iter_mut()) {
            row.layer = super::layers::in_mode(row.layer, d.mode);
        }
    }
    if let Some(mut log) = hdr {
        log.mark(tagged(&net))?;
        log.finish()?;
    }
    if let Some(c) = cost.followed_ns_per_run {
        report::without_tracer(&mut net, c);
    }
    // Both one-way times, summed, where both directions have one.
    let both_ways = |f: &dyn Fn(&report::Row) -> Option<f64>| -> Option<f64> {
        let ow: Vec<f64> = net
            .directions
            .iter()
            .filter_map(|d| d.one_way.as_ref().and_then(f))
            .collect();
        (ow.len() == 2).then(|| ow.iter().sum())
    };
    let rr = workload.as_ref().filter(|w| w.test.is_rr());
    let rtt_without_tracer_ns = rr.and_then(|w| {
        both_ways(&|r| r.p50_without_tracer_ns).map(|ow| RttCheck {
            one_way_p50s_ns: ow,
            workload_rtt_p50_ns: w.latency.p50_us * 1e3,
        })
    });
    let rtt_unattributed_ns =
        rr.and_then(|w| both_ways(&|r| Some(r.summary.mean)).map(|ow| w.histogram.mean() - ow));
    let applications = if lab.is_none() {
        let containers = if std::path::Path::new(crate::docker::SOCKET).exists() {
            crate::docker::netns_names()
        } else {
            Default::default()
        };
        super::round_trip::applications(&tracer.apps().unwrap_or_default(), &containers)
    } else {
        vec![]
    };
    let round_trip = if lab.is_none() || rr.is_some() {
        super::round_trip::build(&net, rr.map(|w| w.histogram.mean()), cost.duty_cycle)
    } else {
        None
    };
    Ok(TraceReport {
        mode: lab.map(|(d, _)| d.mode),
        lab: lab.map(|(d, _)| d.id.clone()),
        test: lab.map(|(_, t)| t),
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
        round_trip,
        applications,
    })
}

/// Each direction's layers and one-way total as HDR histograms, tagged `<direction>/<layer>`.
fn tagged(r: &NetReport) -> Vec<(String, hdrhistogram::Histogram<u64>)> {
    let mut out = vec![];
    for d in &r.directions {
        let dir = d.name.split_whitespace().next().unwrap_or(d.name);
        for row in d.layers.iter().chain(&d.one_way) {
            let mut h = crate::hist::empty();
            for &(v, n) in &row.histogram {
                let _ = h.record_n(v, n);
            }
            out.push((hdr_log::tag(&format!("{dir}/{}", row.layer)), h));
        }
    }
    out
}

/// Follows packets by the policy until `done` or a signal, printing interval tables and
/// samples; returns what the tracer cost.
fn watch(
    tracer: &mut NetTracer,
    args: &TraceArgs,
    stats_on: bool,
    hdr: &mut Option<HdrLog>,
    done: impl Fn(&mut NetTracer) -> bool,
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
    while !done(tracer) && !cleanup::stop_requested() {
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
            let r = report::build(&tracer.snapshot()?, &tracer.table.names);
            report::print(&r);
            if let Some(log) = hdr {
                log.mark(tagged(&r))?;
            }
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
    if let Some(rt) = &r.round_trip {
        super::round_trip::print(rt);
    }
    super::round_trip::print_applications(&r.applications);
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
        if let Some(RttCheck {
            one_way_p50s_ns: ow,
            workload_rtt_p50_ns: rtt,
        }) = r.rtt_without_tracer_ns
        {
            println!(
                "  without the tracer's own cost the two one-way p50s add up to {} of the workload's round-trip p50 {} (the rest: application, syscalls, TCP/IP output before the first hook)",
                crate::hist::fmt_ns(ow),
                crate::hist::fmt_ns(rtt)
            );
        }
        if let Some(u) = r.rtt_unattributed_ns.filter(|_| r.round_trip.is_none()) {
            println!(
                "  unattributed round-trip time: {} per transaction (mean RTT minus both mean one-way times: application, syscalls, TCP/IP output before the first hook)",
                crate::hist::fmt_ns(u)
            );
        }
    }
}
