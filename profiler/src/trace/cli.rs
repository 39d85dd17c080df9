//! `profiler trace`'s arguments, their checks, and the dispatch to its modes: one run
//! (`run`), `--compare`, `--ablation`, `--self-check`.

use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use anyhow::{Result, bail};

use super::{ablation, budget::Policy, compare, run, self_check};
use crate::{
    cleanup,
    lab::{self, Mode},
    workload::{self, Test},
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
    /// Trace N runs one after another and report all N (`{"repeat": N, "runs": [...]}` in
    /// --json), so `profiler check` can tell a regression from run-to-run spread.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
}

/// The sampling policy the arguments ask for.
pub(super) fn policy(args: &TraceArgs) -> Result<Policy> {
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

pub(super) fn length(args: &TraceArgs) -> Result<Duration> {
    if !(args.length > 0.0 && args.length < 86_400.0) {
        bail!("-l must be a positive number of seconds, e.g. -l 5");
    }
    Ok(Duration::from_secs_f64(args.length))
}

/// What every mode does first: root, the arguments, stale leftovers, signals.
pub(super) fn prelude(args: &TraceArgs, what: &str) -> Result<()> {
    crate::kernel::require_root(what)?;
    validate(args)?;
    lab::reap_stale();
    cleanup::set_interruptible();
    Ok(())
}

/// Runs the mode the arguments ask for, prints it, and writes `--json`.
pub fn main(args: &TraceArgs) -> Result<()> {
    if args.repeat > 1 && (args.self_check || args.compare.is_some() || args.ablation) {
        bail!(
            "--repeat works with a single traced run, not with --self-check, --compare or --ablation"
        );
    }
    let json = if args.self_check {
        let c = self_check::self_check(args)?;
        self_check::print(&c);
        write_json(args, &serde_json::to_vec_pretty(&c)?)?;
        if !c.passed {
            bail!("self-check failed: an injected delay did not land in its layer");
        }
        return Ok(());
    } else if let Some(modes) = &args.compare {
        let rows = compare::compare(args, modes)?;
        compare::print(&rows);
        serde_json::to_vec_pretty(&rows)?
    } else if args.ablation {
        let a = ablation::ablation(args)?;
        ablation::print(&a);
        serde_json::to_vec_pretty(&a)?
    } else if args.repeat > 1 {
        let mut runs = vec![];
        for i in 0..args.repeat {
            if cleanup::stop_requested() {
                break;
            }
            eprintln!("profiler: trace run {}/{}", i + 1, args.repeat);
            let r = run::run(args)?;
            run::print(&r);
            runs.push(r);
        }
        serde_json::to_vec_pretty(&serde_json::json!({ "repeat": args.repeat, "runs": runs }))?
    } else {
        let r = run::run(args)?;
        run::print(&r);
        serde_json::to_vec_pretty(&r)?
    };
    write_json(args, &json)
}

fn write_json(args: &TraceArgs, json: &[u8]) -> Result<()> {
    if let Some(path) = &args.json {
        std::fs::write(path, json)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}
