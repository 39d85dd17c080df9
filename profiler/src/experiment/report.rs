//! The experiment's report: each table in the paper's layout (the paper's figure, ours, the
//! paper's ratio against the baseline and ours), and per mode the layers that explain its
//! difference from host.

use serde::Serialize;

use super::{
    run::{Results, describe, median},
    spec::{Spec, higher_is_better},
};
use crate::{
    hist::fmt_ns,
    lab::Mode,
    trace::{
        delta::{self, Decomposition},
        run::TraceReport,
    },
};

#[derive(Debug, Serialize)]
pub struct ExperimentReport {
    /// Always "experiment": what `profiler check` recognises the file by.
    pub kind: &'static str,
    pub paper: String,
    pub file: String,
    pub quick: bool,
    pub repetitions: u32,
    pub length_s: f64,
    pub tables: Vec<TableReport>,
    pub explanations: Vec<Explanation>,
}

#[derive(Debug, Serialize)]
pub struct TableReport {
    pub id: String,
    pub title: String,
    pub metric: String,
    pub unit: String,
    pub baseline: String,
    pub higher_is_better: bool,
    pub rows: Vec<RowReport>,
}

#[derive(Debug, Serialize)]
pub struct RowReport {
    pub setup: String,
    /// What ran (None: not run).
    pub run: Option<String>,
    pub paper: Option<f64>,
    pub paper_ratio: Option<f64>,
    /// Median over the repetitions.
    pub ours: Option<f64>,
    /// Every repetition's value (the spread).
    pub values: Vec<f64>,
    pub ours_ratio: Option<f64>,
    /// Why there is no figure of ours (unsupported here, left out by --quick, or the error).
    pub why: Option<String>,
    pub notes: Vec<String>,
}

/// A mode's difference from host, layer by layer, from one traced tcp_rr in each
/// (`trace::delta`, as `trace --compare` explains it).
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub mode: Mode,
    /// Why there is none (the lab or the trace failed).
    pub error: Option<String>,
    pub round_trip_p50_us: Option<f64>,
    pub host_round_trip_p50_us: Option<f64>,
    /// Each direction's one-way difference, then the round trip's; layers in path order.
    pub directions: Vec<Decomposition>,
}

fn rtt(r: &TraceReport) -> Option<f64> {
    r.workload.as_ref().map(|w| w.latency.p50_us)
}

pub fn build(spec: &Spec, file: &str, quick: bool, res: &Results) -> ExperimentReport {
    let mut tables = vec![];
    for t in &spec.tables {
        let mut rows: Vec<RowReport> = t
            .rows
            .iter()
            .map(|r| {
                let mut row = RowReport {
                    setup: r.setup.clone(),
                    run: None,
                    paper: r.paper,
                    paper_ratio: r.paper_ratio,
                    ours: None,
                    values: vec![],
                    ours_ratio: None,
                    why: r.unsupported.clone(),
                    notes: vec![],
                };
                if r.unsupported.is_some() {
                    return row;
                }
                match t.run_of(r, spec, quick) {
                    Ok(Some(run)) => {
                        row.run = Some(describe(&run));
                        if let Some(m) = res.get(&run) {
                            row.notes = m.notes.clone();
                            row.values = m.values.get(&t.metric).cloned().unwrap_or_default();
                            if !row.values.is_empty() {
                                row.ours = Some(median(&row.values));
                            } else {
                                row.why = Some(m.error.clone().unwrap_or_else(|| {
                                    format!("this run does not measure {}", t.metric)
                                }));
                            }
                        }
                    }
                    Ok(None) => row.why = Some("left out by --quick (more instances)".into()),
                    Err(e) => row.why = Some(format!("{e:#}")),
                }
                row
            })
            .collect();
        let base = rows.iter().find(|r| r.setup == t.baseline);
        let (bp, bo) = (base.and_then(|b| b.paper), base.and_then(|b| b.ours));
        for r in &mut rows {
            if r.paper_ratio.is_none() {
                r.paper_ratio = r
                    .paper
                    .zip(bp)
                    .filter(|(_, b)| *b > 0.0)
                    .map(|(p, b)| p / b);
            }
            r.ours_ratio = r.ours.zip(bo).filter(|(_, b)| *b > 0.0).map(|(o, b)| o / b);
        }
        tables.push(TableReport {
            id: t.id.clone(),
            title: t.title.clone(),
            metric: t.metric.clone(),
            unit: t.unit.clone(),
            baseline: t.baseline.clone(),
            higher_is_better: higher_is_better(&t.metric),
            rows,
        });
    }
    let host = res
        .traces
        .iter()
        .find(|(m, _)| *m == Mode::Host)
        .and_then(|(_, t)| t.as_ref().ok());
    let explanations = res
        .traces
        .iter()
        .filter(|(m, _)| *m != Mode::Host)
        .map(|(mode, t)| match (t, host) {
            (Ok(t), Some(h)) => {
                let d = delta::between(t, h);
                Explanation {
                    mode: *mode,
                    error: None,
                    round_trip_p50_us: rtt(t),
                    host_round_trip_p50_us: rtt(h),
                    directions: d.directions.into_iter().chain(d.round_trip).collect(),
                }
            }
            (Err(e), _) => Explanation {
                mode: *mode,
                error: Some(e.clone()),
                round_trip_p50_us: None,
                host_round_trip_p50_us: None,
                directions: vec![],
            },
            (Ok(_), None) => Explanation {
                mode: *mode,
                error: Some("the host trace failed, so there is nothing to compare with".into()),
                round_trip_p50_us: None,
                host_round_trip_p50_us: None,
                directions: vec![],
            },
        })
        .collect();
    ExperimentReport {
        kind: "experiment",
        paper: spec.paper.clone(),
        file: file.to_string(),
        quick,
        repetitions: spec.repetitions(quick),
        length_s: spec.length_s(quick),
        tables,
        explanations,
    }
}

fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), num)
}

fn ratio(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.2}x"))
}

/// The tables and the explanation, as the terminal shows them.
pub fn print(r: &ExperimentReport) {
    write(&mut std::io::stdout().lock(), r);
}

pub fn write(o: &mut dyn std::io::Write, r: &ExperimentReport) {
    let _ = writeln!(
        o,
        "profiler experiment — {}{} ({} repetition(s), {} s per network run)",
        r.paper,
        if r.quick { " (--quick)" } else { "" },
        r.repetitions,
        r.length_s
    );
    for t in &r.tables {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{} — {}, ratios against {} ({} is better)",
            t.title,
            t.unit,
            t.baseline,
            if t.higher_is_better {
                "higher"
            } else {
                "lower"
            }
        );
        let _ = writeln!(
            o,
            "  {:<16} {:>10} {:>10} {:>17} {:>12} {:>12}",
            "setup", "paper", "ours", "ours (min-max)", "paper ratio", "our ratio"
        );
        for row in &t.rows {
            let spread = match row.values.len() {
                0 | 1 => String::new(),
                _ => {
                    let lo = row.values.iter().copied().fold(f64::INFINITY, f64::min);
                    let hi = row.values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    format!("{}-{}", num(lo), num(hi))
                }
            };
            let _ = writeln!(
                o,
                "  {:<16} {:>10} {:>10} {:>17} {:>12} {:>12}",
                row.setup,
                opt(row.paper),
                opt(row.ours),
                spread,
                ratio(row.paper_ratio),
                ratio(row.ours_ratio)
            );
            if let Some(why) = &row.why {
                let _ = writeln!(o, "  {:<16} not run here: {why}", "");
            }
            for n in &row.notes {
                let _ = writeln!(o, "  {:<16} {n}", "");
            }
        }
    }
    if r.explanations.is_empty() {
        return;
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "Why each mode differs from host: one traced tcp_rr per mode, each layer's p50 x its \
         crossings (without the tracer's own cost where measured), the largest differences \
         from host (`trace --compare` shows them all, in path order)"
    );
    for e in &r.explanations {
        let _ = writeln!(o);
        if let Some(err) = &e.error {
            let _ = writeln!(o, "  {}: no trace: {err}", e.mode);
            continue;
        }
        let _ = writeln!(
            o,
            "  {}: round trip p50 {} against host {}",
            e.mode,
            e.round_trip_p50_us
                .map_or("-".into(), |v| format!("{v:.1} µs")),
            e.host_round_trip_p50_us
                .map_or("-".into(), |v| format!("{v:.1} µs"))
        );
        for d in &e.directions {
            let _ = writeln!(
                o,
                "    {}: p50 {} against host {}{}",
                d.name,
                fmt_ns(d.p50.mode_ns),
                fmt_ns(d.p50.base_ns),
                if d.base_name != d.name {
                    format!(
                        " (host's {}: on loopback it traces both ways as one)",
                        d.base_name
                    )
                } else {
                    String::new()
                }
            );
            let mut largest: Vec<&delta::LayerDelta> = d.layers.iter().collect();
            largest.sort_by(|a, b| b.p50_delta_ns.abs().total_cmp(&a.p50_delta_ns.abs()));
            for l in largest.into_iter().take(4) {
                let _ = writeln!(
                    o,
                    "      {:<46} {:>10} against {:>10} on host: {}{}",
                    format!("{} (x{})", l.layer, l.crossings),
                    fmt_ns(l.p50_ns),
                    fmt_ns(l.base_p50_ns),
                    if l.p50_delta_ns >= 0.0 { "+" } else { "-" },
                    fmt_ns(l.p50_delta_ns.abs())
                );
            }
            let _ = writeln!(
                o,
                "      {:<46} {:>10} {:>10}          {}{}",
                "the rest (no layer holds it)",
                "",
                "",
                if d.p50.rest_ns >= 0.0 { "+" } else { "-" },
                fmt_ns(d.p50.rest_ns.abs())
            );
        }
    }
}
