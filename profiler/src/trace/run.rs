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
    net::{Filter, NetTracer},
    report::{self, NetReport},
};
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
    /// Print every hook of one packet in N, pwru-style.
    #[arg(long)]
    pub sample: Option<u64>,
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
}

#[derive(Serialize)]
pub struct TraceReport {
    pub mode: Option<Mode>,
    pub lab: Option<String>,
    pub test: Option<Test>,
    pub seconds: f64,
    pub attached: Vec<(String, String)>,
    pub net: NetReport,
    pub workload: Option<workload::Report>,
    /// Workload mean round trip minus the two mean one-way times: application, syscalls and
    /// the stack before the first hook (TCP/IP output) and after the last.
    pub rtt_unattributed_ns: Option<f64>,
}

fn inode(ns: &str) -> Result<u32> {
    Ok(std::fs::metadata(netns::path(ns))
        .with_context(|| format!("no network namespace {ns}"))?
        .ino() as u32)
}

pub fn run(args: &TraceArgs) -> Result<TraceReport> {
    crate::kernel::require_root("profiler trace")?;
    lab::reap_stale();
    let test: Test = args.test.parse()?;
    if !(args.length > 0.0) {
        bail!("-l must be a positive number of seconds, e.g. -l 5");
    }
    let length = Duration::from_secs_f64(args.length);
    let (rq, rs) = workload::parse_rr(&args.rr)?;
    cleanup::set_interruptible();

    if args.attach_only {
        return attach_only(args, length);
    }
    let mut _owned: Option<Lab> = None;
    let desc = match &args.lab {
        Some(id) => lab::find(id)?,
        None => {
            let mode = args.mode.unwrap_or(Mode::Overlay);
            eprintln!("profiler: building a {mode} lab...");
            let l = Lab::up(mode, None)?;
            let d = l.desc.clone();
            _owned = Some(l);
            d
        }
    };
    let filter = Filter {
        ports: args.port.map_or(desc.ports, |p| (p, p)),
        client_netns: inode(&desc.client.netns)?,
        sample_every: args.sample.unwrap_or(0),
        host: args.host.map_or(0, |h| u32::from_ne_bytes(h.octets())),
        ..Filter::default()
    };
    let mut tracer = NetTracer::start(&filter)?;
    let endpoints = Endpoints {
        client_netns: Some(desc.client.netns.clone()),
        server_netns: Some(desc.server.netns.clone()),
        server_bind: desc.server.addr,
        connect: desc.connect,
        port: desc.ports.0,
    };
    let mut opts = Options::new(test);
    opts.duration = length;
    opts.request = rq;
    opts.response = rs;
    eprintln!(
        "profiler: tracing {} in lab {} ({}) for {:.1} s",
        test.name(),
        desc.id,
        desc.mode,
        args.args_len()
    );
    let worker = std::thread::spawn(move || workload::run(&endpoints, &opts));
    watch(&mut tracer, args, || worker.is_finished())?;
    let workload = if worker.is_finished() {
        Some(
            worker
                .join()
                .map_err(|_| anyhow!("the workload panicked"))??,
        )
    } else {
        None // interrupted: report what the tracer has
    };
    let net = report::build(&tracer.snapshot()?, &tracer.table.names);
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
        workload,
        rtt_unattributed_ns,
    })
}

impl TraceArgs {
    fn args_len(&self) -> f64 {
        self.length
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
        sample_every: args.sample.unwrap_or(0),
    };
    let mut tracer = NetTracer::start(&filter)?;
    let deadline = Instant::now() + length;
    watch(&mut tracer, args, || Instant::now() >= deadline)?;
    Ok(TraceReport {
        mode: None,
        lab: None,
        test: None,
        seconds: args.length,
        attached: tracer.attached.clone(),
        net: report::build(&tracer.snapshot()?, &tracer.table.names),
        workload: None,
        rtt_unattributed_ns: None,
    })
}

/// Waits until `done`, printing interval tables and samples, or until a signal asks to stop.
fn watch(tracer: &mut NetTracer, args: &TraceArgs, done: impl Fn() -> bool) -> Result<()> {
    let mut last_print = Instant::now();
    let mut last_ts = std::collections::HashMap::new();
    let mut header = true;
    while !done() && !cleanup::stop_requested() {
        std::thread::sleep(Duration::from_millis(50));
        if args.sample.is_some() {
            print_samples(tracer, &mut last_ts, &mut header)?;
        }
        if let Some(i) = args.interval
            && last_print.elapsed().as_secs_f64() >= i
        {
            last_print = Instant::now();
            println!("--- after {:.1} s", last_print.elapsed().as_secs_f64());
            report::print(&report::build(&tracer.snapshot()?, &tracer.table.names));
        }
    }
    if args.sample.is_some() {
        print_samples(tracer, &mut last_ts, &mut header)?;
    }
    if cleanup::stop_requested() {
        eprintln!("profiler: interrupted: reporting what was traced so far");
    }
    Ok(())
}

fn print_samples(
    tracer: &mut NetTracer,
    last: &mut std::collections::HashMap<u64, u64>,
    header: &mut bool,
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
        let delta = last.insert(e.skb, e.ts).map(|p| e.ts.saturating_sub(p));
        let name_end = e.name.iter().position(|&b| b == 0).unwrap_or(16);
        let hook = super::layers::hook_name(e.hook);
        writeln!(
            out,
            "{:#018x} {:>3} {:<4} {:<20} {:>10} {:>4} {:<10} {:>5} {:>10}  {}",
            e.skb,
            e.cpu,
            if e.dir == 0 { "req" } else { "resp" },
            hook,
            e.netns,
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
        .map(|(tp, how)| format!("{tp}: {how}"))
        .collect();
    println!("  hooks: {}", how.join(", "));
    report::print(&r.net);
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
        if let Some(u) = r.rtt_unattributed_ns {
            println!(
                "  unattributed round-trip time: {} per transaction (mean RTT minus both mean one-way times: application, syscalls, TCP/IP output before the first hook)",
                crate::hist::fmt_ns(u)
            );
        }
    }
}
