//! `profiler trace`'s arguments, their checks, and the dispatch to its modes: one run
//! (`run`), `--compare`, `--ablation`, `--self-check`.

use std::{path::PathBuf, time::Duration};

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
    /// The report (with full histograms) as JSON: on stdout instead of the table (no FILE, or
    /// -) or into FILE.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    pub json: Option<PathBuf>,
    /// Write the report as one self-contained HTML page (waterfall and CDFs per direction).
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Write each layer's histogram as an HdrHistogram interval log (one interval per
    /// --interval, else one for the run; one Tag per direction and layer).
    #[arg(long)]
    pub hdr_log: Option<PathBuf>,
    /// Print every hook of one followed packet in N, pwru-style (N >= 1).
    #[arg(long, alias = "sample", value_parser = clap::value_parser!(u64).range(1..))]
    pub print_every: Option<u64>,
    /// Trace in this existing lab and leave it up.
    #[arg(long)]
    pub lab: Option<String>,
    /// Trace existing traffic on this host; no lab, no workload.
    #[arg(long)]
    pub attach_only: bool,
    #[command(flatten)]
    pub filter: crate::opts::FilterArgs,
    /// -r REQ,RESP for the rr workloads.
    #[arg(short = 'r', default_value = "1,1")]
    pub rr: String,
    /// The built-in server spends this long (spinning) between each request and its
    /// response, e.g. 200us: a known application time, found in the round trip's server part.
    #[arg(long, value_name = "TIME", value_parser = crate::workload::parse_think)]
    pub think: Option<std::time::Duration>,
    /// Run the same workload across these modes, untraced and traced in alternating rounds:
    /// throughput ratios from the untraced runs, and each mode's difference from the
    /// baseline explained layer by layer.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub compare: Option<Vec<Mode>>,
    /// The mode --compare explains the others against (default host).
    #[arg(long, value_enum, requires = "compare")]
    pub baseline: Option<Mode>,
    /// In a nat lab: trace with NAT, without NAT, and without conntrack, in interleaved
    /// rounds (--repeat, default 6), and report each cost's median with a 95% interval.
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
    /// Tracepoints only: no function probes (fentry/kprobe on ip_local_out, ip_forward, nf_conntrack_in,
    /// nf_nat_inet_fn) even where the kernel has them; `--ablation` runs so, as its
    /// forwarding segment is the one they split.
    #[arg(long)]
    pub no_function_probes: bool,
    /// Where the kernel has function probes: also cut a tunnel's route lookup from its
    /// encapsulation (a kprobe on the tunnel's transmit, an fexit on the lookup's return). Off
    /// by default: two more programs on every tunnel packet, whose own cost lands in the two
    /// rows they make (in a Debian 6.1 guest under TCG: 5.3 us of encap + route became 9.5 us).
    #[arg(long, conflicts_with = "no_function_probes")]
    pub split_route: bool,
    /// Per-skb state slots, a power of two (tests shrink it to force collisions).
    #[arg(long, hide = true, default_value_t = 0)]
    pub state_slots: u32,
    /// Enable the kernel's BPF run-time statistics while tracing and report each program's
    /// mean run time (the program body only: trampolines and probe entry are not counted).
    #[arg(long)]
    pub bpf_stats: bool,
    /// Print the kernel side's messages on rare conditions (an offset that does not read, a
    /// full map or ring buffer, a hook order no layer names) on stderr as `bpf warn: ...`.
    #[arg(long)]
    pub debug_bpf: bool,
    /// Inject a known delay on a bridge port, the underlay and a container veth, trace, and
    /// check that each lands in the layer holding its hook and nowhere else.
    #[arg(long)]
    pub self_check: bool,
    /// Trace N runs one after another and report all N (`{"repeat": N, "runs": [...]}` in
    /// --json), so `profiler check` can tell a regression from run-to-run spread. With
    /// --compare: N rounds (default 3); with --ablation: N rounds of the three variants
    /// (default 6, the fewest that give a 95% interval).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: Option<u32>,
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
    if crate::export::json::to_stdout(args.json.as_deref())
        && (args.interval.is_some() || args.print_every.is_some())
    {
        bail!("--interval and --print-every print on stdout: give --json a FILE");
    }
    if args.ablation && args.compare.is_some() {
        bail!("--ablation and --compare are two runs: give one of them");
    }
    if args.ablation
        && let Some(n) = args.repeat
        && (n as usize) < ablation::MIN_ROUNDS
    {
        bail!(
            "--ablation --repeat {n}: a 95% interval needs at least {} rounds, e.g. --repeat {}",
            ablation::MIN_ROUNDS,
            ablation::MIN_ROUNDS
        );
    }
    if args.html.is_some() && (args.ablation || args.self_check) {
        bail!("--html draws one run or --compare: drop --ablation or --self-check");
    }
    if args.think.is_some() && args.attach_only {
        bail!("--think is the built-in server's: --attach-only runs no workload");
    }
    if let Some(p) = &args.hdr_log {
        if args.compare.is_some() || args.ablation || args.self_check {
            bail!("--hdr-log records one run: drop --compare, --ablation or --self-check");
        }
        crate::export::hdr_log::HdrLog::create(p)?;
    }
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
    use crate::export::json::emit;
    let json = args.json.as_ref();
    let repeat = args.repeat.unwrap_or(1);
    if args.repeat.is_some() && args.self_check {
        bail!("--repeat works with a single traced run, --compare or --ablation, not --self-check");
    }
    if args.self_check {
        let c = self_check::self_check(args)?;
        emit(json, &c, self_check::print)?;
        if !c.passed {
            bail!("self-check failed: an injected delay did not land in its layer");
        }
        Ok(())
    } else if let Some(modes) = &args.compare {
        let c = compare::compare(args, modes)?;
        html(args, || super::html::compare(&c))?;
        emit(json, &c, compare::print)
    } else if args.ablation {
        emit(json, &ablation::ablation(args)?, ablation::print)
    } else if repeat > 1 {
        let mut runs = vec![];
        for i in 0..repeat {
            if cleanup::stop_requested() {
                break;
            }
            eprintln!("profiler: trace run {}/{}", i + 1, repeat);
            runs.push(run::run(args)?);
        }
        let all = Repeated { repeat, runs };
        emit(json, &all, |all| all.runs.iter().for_each(run::print))
    } else {
        let r = run::run(args)?;
        html(args, || super::html::trace(&r))?;
        emit(json, &r, run::print)
    }
}

/// `--repeat N`: the runs, interleaved in time, as one report (`profiler check` reads it).
#[derive(serde::Serialize)]
struct Repeated {
    repeat: u32,
    runs: Vec<run::TraceReport>,
}

fn html(args: &TraceArgs, page: impl FnOnce() -> String) -> Result<()> {
    if let Some(p) = &args.html {
        std::fs::write(p, page()).map_err(|e| anyhow::anyhow!("writing {}: {e}", p.display()))?;
    }
    Ok(())
}
