//! `profiler trace --ablation`: conntrack and NAT costed by difference, where no function
//! probe can isolate them. The three variants run in interleaved rounds (ABCABC...), each cost
//! is the median of the rounds' paired differences with a 95% interval from order statistics,
//! and a cost whose interval spans 0 is said to be not measurable here.

use anyhow::{Result, anyhow, bail};
use serde::Serialize;

use super::{
    cli::{TraceArgs, prelude},
    layers,
    run::{TraceReport, trace_in},
};
use crate::{
    cleanup,
    hist::{
        fmt_ns,
        repeats::{MedianInterval, Spread, median_interval},
    },
    lab::{self, Mode},
};

pub const CONFIDENCE: f64 = 0.95;
/// The fewest rounds with a 95% order-statistics interval for a median (the default):
/// with 5 the whole range covers only 93.75%.
pub const MIN_ROUNDS: usize = 6;

/// How the interval is made, said once in the report.
pub const METHOD: &str = "distribution-free interval for the median of the rounds' paired differences, from order statistics (binomial coverage >= 95%)";

#[derive(Serialize)]
pub struct Ablation {
    pub rounds: usize,
    pub interval_method: &'static str,
    pub variants: Vec<Variant>,
    pub costs: Vec<Cost>,
}

#[derive(Serialize)]
pub struct Variant {
    pub name: &'static str,
    /// p50 of the host's "ip forward + netfilter" segment (requests), one per round, ns.
    pub forward_p50_ns: Option<Spread>,
    pub transactions_per_sec: Option<Spread>,
    /// The traced runs, one per round.
    pub reports: Vec<TraceReport>,
}

#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The interval lies above 0: a cost.
    Measured,
    /// The interval spans 0.
    NotMeasurable,
    /// The interval lies below 0: the variant without the feature was slower in this run's
    /// rounds, which is noise or drift, not a negative cost.
    BelowZero,
}

#[derive(Serialize, Debug)]
pub struct Cost {
    pub name: &'static str,
    /// The variants whose difference it is: with the feature, and without.
    pub with: &'static str,
    pub without: &'static str,
    /// Each round's paired difference of the forward p50s, ns.
    pub differences_ns: Vec<f64>,
    /// None: fewer complete rounds than a 95% interval needs (interrupted).
    pub interval: Option<MedianInterval>,
    pub verdict: Option<Verdict>,
}

const NAT: &str = "nat";
const NO_NAT: &str = "no nat (conntrack on)";
const NOTRACK: &str = "no conntrack (NOTRACK)";

/// The variants in their order within a round: (name, NAT on, conntrack on).
const VARIANTS: [(&str, bool, bool); 3] = [
    (NAT, true, true),
    (NO_NAT, false, true),
    (NOTRACK, false, false),
];

pub fn ablation(args: &TraceArgs) -> Result<Ablation> {
    prelude(args, "profiler trace --ablation")?;
    let rounds = args.repeat.map_or(MIN_ROUNDS, |n| n as usize);
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
    let mut runs: [Vec<TraceReport>; 3] = Default::default();
    'rounds: for round in 0..rounds {
        for (i, &(name, nat, conntrack)) in VARIANTS.iter().enumerate() {
            if cleanup::stop_requested() {
                break 'rounds;
            }
            eprintln!("profiler: ablation round {}/{rounds}: {name}", round + 1);
            let connect = if nat { desc.connect } else { desc.server.addr };
            let r = if conntrack {
                trace_in(&desc, connect, args)?
            } else {
                without_conntrack(&host_ns, || trace_in(&desc, connect, args))?
            };
            runs[i].push(r);
        }
    }
    let forward: Vec<Vec<Option<f64>>> = runs
        .iter()
        .map(|rs| rs.iter().map(forward_p50).collect())
        .collect();
    let cost = |name, a: usize, b: usize| {
        // Paired within a round; a round cut short or without the segment pairs nothing.
        let differences_ns: Vec<f64> = forward[a]
            .iter()
            .zip(&forward[b])
            .filter_map(|(x, y)| Some((*x)? - (*y)?))
            .collect();
        let interval = median_interval(&differences_ns, CONFIDENCE);
        Cost {
            verdict: interval.as_ref().map(verdict),
            name,
            with: VARIANTS[a].0,
            without: VARIANTS[b].0,
            differences_ns,
            interval,
        }
    };
    let costs = vec![
        cost("NAT (DNAT rule + translation)", 0, 1),
        cost("conntrack (lookup/insert per packet)", 1, 2),
    ];
    let variants = VARIANTS
        .iter()
        .zip(runs)
        .zip(&forward)
        .map(|((&(name, _, _), reports), fwd)| Variant {
            name,
            forward_p50_ns: Spread::of(&fwd.iter().flatten().copied().collect::<Vec<_>>()),
            transactions_per_sec: Spread::of(
                &reports
                    .iter()
                    .filter_map(|r| r.workload.as_ref().map(|w| w.transactions_per_sec))
                    .collect::<Vec<_>>(),
            ),
            reports,
        })
        .collect();
    Ok(Ablation {
        rounds,
        interval_method: METHOD,
        variants,
        costs,
    })
}

fn verdict(i: &MedianInterval) -> Verdict {
    if i.lo > 0.0 {
        Verdict::Measured
    } else if i.hi < 0.0 {
        Verdict::BelowZero
    } else {
        Verdict::NotMeasurable
    }
}

/// Runs `f` with conntrack off in the lab's host namespace (NOTRACK in the raw table); the
/// rules go again whatever `f` returns.
fn without_conntrack<T>(host_ns: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let notrack = [
        ["-t", "raw", "-I", "PREROUTING", "-j", "NOTRACK"],
        ["-t", "raw", "-I", "OUTPUT", "-j", "NOTRACK"],
    ];
    for rule in &notrack {
        lab::iptables_in(host_ns, rule)?;
    }
    let r = f();
    for rule in &notrack {
        let mut del = rule.to_vec();
        del[2] = "-D";
        lab::iptables_in(host_ns, &del)?;
    }
    r
}

/// p50 of the forwarding segment of requests, ns.
fn forward_p50(r: &TraceReport) -> Option<f64> {
    r.net.directions.first().and_then(|d| {
        d.layers
            .iter()
            .find(|l| l.layer == layers::IP_FORWARD)
            .map(|l| l.summary.p50 as f64)
    })
}

fn signed(ns: f64) -> String {
    if ns >= 0.0 {
        format!("+{}", fmt_ns(ns))
    } else {
        format!("-{}", fmt_ns(-ns))
    }
}

/// One cost, never a bare negative figure.
pub fn describe(c: &Cost) -> String {
    let Some(i) = &c.interval else {
        return format!(
            "not measured: {} complete round(s), a 95% interval needs {MIN_ROUNDS}",
            c.differences_ns.len()
        );
    };
    let interval = format!(
        "median {}, 95% interval [{}, {}] over {} rounds",
        signed(i.median),
        signed(i.lo),
        signed(i.hi),
        c.differences_ns.len()
    );
    match c.verdict {
        Some(Verdict::Measured) => format!("costs {} per packet ({interval})", fmt_ns(i.median)),
        Some(Verdict::BelowZero) => format!(
            "not measurable here: {} was faster than {} in this run ({interval}), which no cost explains: drift or noise larger than the cost",
            c.with, c.without
        ),
        _ => format!("not measurable here (interval spans 0): {interval}"),
    }
}

pub fn print(a: &Ablation) {
    println!(
        "  netfilter ablation: {} rounds of nat, no nat and NOTRACK, interleaved (ABCABC...)",
        a.rounds
    );
    println!(
        "  p50 of the host's '{}' segment (requests), median [min-max] over the rounds:",
        layers::IP_FORWARD
    );
    for v in &a.variants {
        let f = |s: &Option<Spread>, fmt: &dyn Fn(f64) -> String| {
            s.as_ref().map_or("-".into(), |s| {
                format!("{} [{}-{}]", fmt(s.median), fmt(s.min), fmt(s.max))
            })
        };
        println!(
            "    {:<28} {:>28}   {} trans/s",
            v.name,
            f(&v.forward_p50_ns, &fmt_ns),
            f(&v.transactions_per_sec, &|x| format!("{x:.0}"))
        );
    }
    for c in &a.costs {
        println!("    {:<37} {}", c.name, describe(c));
    }
    println!("  the interval: {}", a.interval_method);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_rounds_is_the_fewest_with_a_95_percent_interval() {
        assert_eq!(MIN_ROUNDS, crate::hist::repeats::repeats_for(CONFIDENCE));
    }

    fn cost(d: &[f64]) -> Cost {
        let interval = median_interval(d, CONFIDENCE);
        let verdict = interval.as_ref().map(verdict);
        Cost {
            name: "NAT",
            with: NAT,
            without: NO_NAT,
            differences_ns: d.to_vec(),
            interval,
            verdict,
        }
    }

    #[test]
    fn a_cost_is_measured_spans_zero_or_is_explained_never_bare_negative() {
        let m = describe(&cost(&[100.0, 120.0, 90.0, 130.0, 110.0, 105.0]));
        assert!(m.starts_with("costs 108 ns per packet"), "{m}");
        let z = describe(&cost(&[-944.0, 120.0, 90.0, -30.0, 110.0, 105.0]));
        assert!(
            z.starts_with("not measurable here (interval spans 0)"),
            "{z}"
        );
        let n = describe(&cost(&[-944.0, -120.0, -90.0, -30.0, -110.0, -105.0]));
        assert!(n.starts_with("not measurable here: nat was faster"), "{n}");
        assert!(!n.contains("costs"), "{n}");
        let few = describe(&cost(&[1.0, 2.0]));
        assert!(few.starts_with("not measured"), "{few}");
    }
}
