//! `profiler agent`: the packet-path tracer running continuously within its overhead budget,
//! served as Prometheus/OpenMetrics on `/metrics` (and the trace report on `/report.json`).
//! One agent per host, scraped: the fleet's engine is Prometheus, not ours.

pub mod http;
pub mod metrics;

use std::{
    net::{SocketAddr, TcpListener},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cleanup,
    probes::{
        kvm::KvmTracer,
        net::{Filter, NetTracer},
    },
    trace::{
        budget::{Policy, Sampler},
        report,
    },
};

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// Address to serve /metrics on.
    #[arg(long, default_value = "127.0.0.1:9435")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub filter: crate::opts::FilterArgs,
    /// The tracer's budget, in percent of one CPU (default 1).
    #[arg(long, default_value_t = 1.0)]
    pub overhead: f64,
    /// Also count KVM exits of every VM on this host.
    #[arg(long)]
    pub kvm: bool,
    /// Print the kernel side's messages on rare conditions on stderr (`bpf warn: ...`).
    #[arg(long)]
    pub debug_bpf: bool,
    /// Stop after SECS (default: run until a signal).
    #[arg(long)]
    pub duration: Option<f64>,
}

fn hostname() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.nodename().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

pub fn run(args: &AgentArgs) -> Result<()> {
    crate::kernel::require_root("profiler agent")?;
    if !(args.overhead > 0.0 && args.overhead <= 100.0) {
        bail!(
            "--overhead must be a percentage of one CPU above 0 and at most 100, e.g. --overhead 1"
        );
    }
    if let Some(d) = args.duration
        && !(d > 0.0 && d.is_finite())
    {
        bail!("--duration must be a positive number of seconds, e.g. --duration 60");
    }
    args.filter.check()?;
    let filter = Filter {
        debug_bpf: args.debug_bpf,
        ..args
            .filter
            .existing_traffic(args.filter.port.map_or((0, u16::MAX), |p| (p, p)))?
    };
    let listener = TcpListener::bind(args.listen)
        .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
    cleanup::set_interruptible();
    let mut tracer = NetTracer::start(&filter)?;
    let kvm = if args.kvm {
        Some(KvmTracer::start(crate::probes::kvm::Filter {
            debug_bpf: args.debug_bpf,
            ..Default::default()
        })?)
    } else {
        None
    };
    let mut sampler = Sampler::start(
        &mut tracer,
        Policy::Budget {
            share: args.overhead / 100.0,
        },
        false,
    )?;
    let (tx, rx) = mpsc::channel::<http::Request>();
    std::thread::Builder::new()
        .name("agent-listen".into())
        .spawn(move || http::serve(listener, tx))
        .map_err(|e| cleanup::thread_error("agent-listen", &e))?;
    eprintln!(
        "profiler agent: serving http://{}/metrics (budget {}% of one CPU)",
        args.listen, args.overhead
    );
    let host = hostname();
    let deadline = args
        .duration
        .map(|d| Instant::now() + Duration::from_secs_f64(d));
    while !cleanup::stop_requested() && deadline.is_none_or(|d| Instant::now() < d) {
        sampler.tick(&mut tracer)?;
        match rx.recv_timeout(Duration::from_millis(5)) {
            Ok((ask, reply)) => {
                let net = report::build(&tracer.snapshot()?, &tracer.table.names);
                let body = match ask {
                    http::Ask::Report => {
                        ("application/json".to_string(), serde_json::to_string(&net)?)
                    }
                    http::Ask::Metrics(format) => {
                        let softirq = crate::probes::softirq::read(tracer.ebpf()).ok();
                        let exits = kvm
                            .as_ref()
                            .and_then(|k| k.read().ok())
                            .map(|raw| crate::kvm::report::exit_counts(&raw));
                        let cost = sampler.cost(&tracer);
                        let text = metrics::render(
                            &metrics::Scrape {
                                host: &host,
                                netns: args.filter.netns.as_deref(),
                                net: &net,
                                softirq: softirq.as_ref(),
                                kvm_exits: exits.as_ref(),
                                cost: &cost,
                            },
                            format,
                        );
                        (format.content_type().to_string(), text)
                    }
                };
                let _ = reply.send(body);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the agent's listener stopped"),
        }
    }
    let cost = sampler.finish(&mut tracer);
    if tracer.is_attached() {
        tracer.detach()?;
    }
    eprintln!(
        "profiler agent: stopped; the tracer cost {:.2}% of one CPU",
        cost.measured_share.unwrap_or(0.0) * 100.0
    );
    Ok(())
}
