//! `profiler trace --compare host,bridge,overlay [--baseline MODE]`: the same workload in each
//! mode, in rounds; each round runs every mode untraced and traced, the order alternating
//! (ABAB...), so the throughput ratios come from untraced runs next to each other in time, and
//! the difference from the baseline is explained layer by layer from the traced ones.

use anyhow::Result;
use serde::Serialize;

use super::{
    cli::{TraceArgs, prelude},
    delta::{self, ModeDelta, Stat},
    run::{TraceReport, trace_in, untraced_in},
};
use crate::{
    cleanup,
    hist::{fmt_ns, repeats::Spread},
    lab::{self, Mode},
    workload::{self, Test},
};

/// Rounds when `--repeat` is not given: enough for a median and a range, short enough for CI.
pub const DEFAULT_ROUNDS: u32 = 3;

#[derive(Serialize)]
pub struct Compare {
    /// Always "compare".
    pub kind: &'static str,
    pub test: Test,
    pub baseline: Mode,
    /// Rounds: each mode runs once untraced and once traced per round.
    pub rounds: u32,
    pub seconds: f64,
    pub rows: Vec<CompareRow>,
}

/// One mode's line of `--compare`.
#[derive(Serialize)]
pub struct CompareRow {
    pub mode: Mode,
    pub unit: &'static str,
    /// Untraced runs, one per round: transactions/s (rr) or Mbit/s (streams).
    pub throughput: Option<Spread>,
    /// Untraced runs' mean and p99 round trip, µs (rr tests).
    pub mean_us: Option<Spread>,
    pub p99_us: Option<Spread>,
    /// Each round's untraced run over the baseline's untraced run of the same round.
    pub throughput_ratio: Option<Spread>,
    pub latency_ratio: Option<Spread>,
    /// The traced runs' throughput (the tracer's cost is in it), for reference.
    pub traced_throughput: Option<Spread>,
    /// Median one-way time of requests in the traced run of `delta_round`, ns.
    pub one_way_p50_ns: Option<u64>,
    /// Each round's requests one-way p50 difference from the baseline (traced), ns.
    pub one_way_delta_ns: Option<Spread>,
    /// Each round's round-trip mean difference from the baseline (traced, rr tests), ns.
    pub round_trip_delta_ns: Option<Spread>,
    /// The round whose decomposition `delta` shows: the median of the rounds' requests
    /// one-way p50 differences (the lower one of the two middle rounds when even).
    pub delta_round: Option<usize>,
    /// The difference from the baseline, layer by layer (none for the baseline itself).
    pub delta: Option<ModeDelta>,
    /// What makes a figure doubtful, said once (e.g. other traffic in the responses).
    pub warnings: Vec<String>,
    /// The traced runs, one per round.
    pub reports: Vec<TraceReport>,
}

/// In an rr test every request has its response: a direction holding far more packets than
/// the other holds other traffic. Every lab serves on the same ports and a lab's tracer
/// follows them in any namespace, so labs running at the same time (other tests, other
/// sessions) land in the direction not born in the client's namespace.
fn foreign_traffic(r: &TraceReport) -> Option<String> {
    if !r.test.is_some_and(|t| t.is_rr()) {
        return None;
    }
    let n: Vec<u64> = r
        .net
        .directions
        .iter()
        .map(|d| d.one_way.as_ref().map_or(0, |o| o.summary.count))
        .collect();
    let (lo, hi) = (*n.iter().min()?, *n.iter().max()?);
    (n.len() == 2 && hi as f64 > 1.5 * lo.max(1) as f64).then(|| {
        format!(
            "the traced {} run delivered {} requests and {} responses: one direction holds other traffic on the lab's ports (another lab running at the same time), so its decomposition and the round trip's are not this workload's alone",
            r.mode.map_or("?", |m| m.name()),
            n[0],
            n[1]
        )
    })
}

/// Where a mode's runs go.
struct Runs {
    mode: Mode,
    untraced: Vec<workload::Report>,
    traced: Vec<TraceReport>,
}

pub fn compare(args: &TraceArgs, modes: &[Mode]) -> Result<Compare> {
    prelude(args, "profiler trace --compare")?;
    let test: Test = args.test.parse()?;
    let baseline = args.baseline.unwrap_or(Mode::Host);
    let rounds = args.repeat.unwrap_or(DEFAULT_ROUNDS);
    let mut order: Vec<Mode> = vec![];
    if !modes.contains(&baseline) {
        eprintln!("profiler: adding the baseline {baseline} to --compare");
        order.push(baseline);
    }
    for m in modes {
        if !order.contains(m) {
            order.push(*m);
        }
    }
    // Every lab up first, so the rounds follow each other closely; all torn down at the end.
    let mut labs = vec![];
    for &mode in &order {
        if cleanup::stop_requested() {
            break;
        }
        labs.push(lab::existing_or_new(None, mode)?);
    }
    let mut runs: Vec<Runs> = order
        .iter()
        .map(|&mode| Runs {
            mode,
            untraced: vec![],
            traced: vec![],
        })
        .collect();
    'rounds: for round in 0..rounds as usize {
        for (i, ((desc, _), r)) in labs.iter().zip(runs.iter_mut()).enumerate() {
            // ABAB: the untraced run first in one round, the traced one first in the next.
            for traced in [(round + i) % 2 == 1, (round + i) % 2 == 0] {
                if cleanup::stop_requested() {
                    break 'rounds;
                }
                eprintln!(
                    "profiler: round {}/{rounds}: {} {}",
                    round + 1,
                    r.mode,
                    if traced { "traced" } else { "untraced" }
                );
                if traced {
                    r.traced.push(trace_in(desc, desc.connect, args)?);
                } else {
                    match untraced_in(desc, desc.connect, args)? {
                        Some(w) => r.untraced.push(w),
                        None => break 'rounds,
                    }
                }
            }
        }
    }
    Ok(Compare {
        kind: "compare",
        test,
        baseline,
        rounds,
        seconds: args.length,
        rows: rows(test, baseline, runs),
    })
}

fn rows(test: Test, baseline: Mode, runs: Vec<Runs>) -> Vec<CompareRow> {
    let rr = test.is_rr();
    let rate = |w: &workload::Report| {
        if rr {
            w.transactions_per_sec
        } else {
            w.throughput_mbps
        }
    };
    let base = runs.iter().find(|r| r.mode == baseline);
    // Untraced pairs of the same round only: a round cut short pairs nothing.
    let ratio = |mine: &[workload::Report], f: &dyn Fn(&workload::Report) -> f64| {
        let theirs = base.map_or(&[][..], |b| &b.untraced[..]);
        let v: Vec<f64> = mine
            .iter()
            .zip(theirs)
            .filter(|(_, b)| f(b) > 0.0)
            .map(|(m, b)| f(m) / f(b))
            .collect();
        Spread::of(&v)
    };
    let mut out = vec![];
    for r in &runs {
        let spread = |f: &dyn Fn(&workload::Report) -> f64| {
            Spread::of(&r.untraced.iter().map(f).collect::<Vec<_>>())
        };
        let traced_rate: Vec<f64> = r
            .traced
            .iter()
            .filter_map(|t| t.workload.as_ref().map(rate))
            .collect();
        // Each round's decomposition against the baseline's traced run of the same round.
        let deltas: Vec<ModeDelta> = match base.filter(|b| b.mode != r.mode) {
            Some(b) => r
                .traced
                .iter()
                .zip(&b.traced)
                .map(|(m, b)| delta::between(m, b))
                .collect(),
            None => vec![],
        };
        let req_total = |d: &ModeDelta| d.directions.first().map(|x| x.p50.total_ns);
        let totals: Vec<(usize, f64)> = deltas
            .iter()
            .enumerate()
            .filter_map(|(i, d)| req_total(d).map(|t| (i, t)))
            .collect();
        let delta_round = {
            let mut s = totals.clone();
            s.sort_by(|a, b| a.1.total_cmp(&b.1));
            s.get(s.len().saturating_sub(1) / 2).map(|(i, _)| *i)
        };
        let rt: Vec<f64> = deltas
            .iter()
            .filter_map(|d| d.round_trip.as_ref().map(|x| x.mean.total_ns))
            .collect();
        let shown = delta_round.or((!r.traced.is_empty()).then_some(0));
        let mut warnings: Vec<String> = shown
            .and_then(|i| r.traced.get(i))
            .and_then(foreign_traffic)
            .into_iter()
            .collect();
        if let (Some(i), Some(b)) = (delta_round, base.filter(|b| b.mode != r.mode)) {
            warnings.extend(b.traced.get(i).and_then(foreign_traffic));
        }
        out.push(CompareRow {
            mode: r.mode,
            unit: if rr { "trans/s" } else { "Mbit/s" },
            throughput: spread(&rate),
            mean_us: rr.then(|| spread(&|w| w.latency.mean_us)).flatten(),
            p99_us: rr.then(|| spread(&|w| w.latency.p99_us)).flatten(),
            throughput_ratio: ratio(&r.untraced, &rate),
            latency_ratio: rr
                .then(|| ratio(&r.untraced, &|w| w.latency.mean_us))
                .flatten(),
            traced_throughput: Spread::of(&traced_rate),
            one_way_p50_ns: shown
                .and_then(|i| r.traced.get(i))
                .and_then(|t| t.net.directions.first())
                .and_then(|d| d.one_way.as_ref().map(|o| o.summary.p50)),
            one_way_delta_ns: Spread::of(&totals.iter().map(|t| t.1).collect::<Vec<_>>()),
            round_trip_delta_ns: Spread::of(&rt),
            delta_round,
            delta: delta_round.and_then(|i| deltas.into_iter().nth(i)),
            warnings,
            reports: vec![],
        });
    }
    for (row, r) in out.iter_mut().zip(runs) {
        row.reports = r.traced;
    }
    out
}

fn fmt_spread(s: &Option<Spread>, f: impl Fn(f64) -> String) -> String {
    match s {
        None => "-".into(),
        Some(s) if s.values.len() < 2 => f(s.median),
        Some(s) => format!("{} [{}-{}]", f(s.median), f(s.min), f(s.max)),
    }
}

pub fn print(c: &Compare) {
    println!(
        "profiler trace --compare — {}, {} round(s) of {:.1} s per mode, each an untraced and a traced run (ABAB), baseline {}",
        c.test.name(),
        c.rounds,
        c.seconds,
        c.baseline
    );
    println!(
        "  {:<9} {:>32} {:>22} {:>26} {:>22} {:>11}",
        "mode",
        "throughput (untraced)",
        format!("vs {}", c.baseline),
        "mean round trip",
        "latency",
        "one-way p50"
    );
    for r in &c.rows {
        println!(
            "  {:<9} {:>32} {:>22} {:>26} {:>22} {:>11}",
            r.mode.name(),
            format!(
                "{} {}",
                fmt_spread(&r.throughput, |v| format!("{v:.0}")),
                r.unit
            ),
            fmt_spread(&r.throughput_ratio, |x| format!("{x:.2}x")),
            fmt_spread(&r.mean_us, |v| format!("{v:.1}µs")),
            fmt_spread(&r.latency_ratio, |x| format!("{x:.2}x")),
            r.one_way_p50_ns.map_or("-".into(), |n| fmt_ns(n as f64)),
        );
    }
    println!(
        "  medians [min-max] over the rounds; ratios pair each round's untraced run with the {}'s of the same round; one-way p50 from the traced run shown below",
        c.baseline
    );
    for r in &c.rows {
        let Some(d) = &r.delta else { continue };
        println!();
        println!(
            "  {} - {} (traced round {}; the rounds' requests one-way p50 differences: {}{})",
            r.mode,
            c.baseline,
            r.delta_round.map_or(0, |i| i + 1),
            fmt_spread(&r.one_way_delta_ns, fmt_ns),
            r.round_trip_delta_ns
                .as_ref()
                .map_or(String::new(), |_| format!(
                    "; round-trip mean differences: {}",
                    fmt_spread(&r.round_trip_delta_ns, fmt_ns)
                ))
        );
        for w in &r.warnings {
            println!("    note: {w}");
        }
        let (m, b) = (r.mode.name(), c.baseline.name());
        for x in d.directions.iter().chain(&d.round_trip) {
            if x.base_name != x.name {
                println!(
                    "    ({}'s {} stands for both ways: on loopback the tracer sees them as one)",
                    b, x.base_name
                );
            }
            println!("    {}", delta::line(m, b, x, Stat::P50));
            println!("    {}", delta::line(m, b, x, Stat::Mean));
        }
    }
}
