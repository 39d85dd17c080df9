//! `--html FILE`: the trace report as one page: a waterfall per direction (each layer's mean per
//! packet, in path order, against the one-way mean: means add up, medians do not) and latency
//! CDFs per layer.

use std::fmt::Write as _;

use super::{
    compare::Compare,
    delta::{ModeDelta, On},
    report::Direction,
    run::TraceReport,
};
use crate::export::html::{cdfs, esc, fmt_ns, page, waterfall};
use crate::hist::repeats::Spread;

/// " x 2" for a layer crossed twice, " x 0.41" for a branch, nothing for once.
fn per_packet(n: f64) -> String {
    if (n - n.round()).abs() < 0.05 {
        match n.round() as u64 {
            1 => String::new(),
            k => format!(" x {k}"),
        }
    } else {
        format!(" x {n:.2}")
    }
}

fn direction(d: &Direction, id: &str, out: &mut String) {
    let total = d.one_way.as_ref().map_or(0.0, |o| o.summary.mean);
    let mut segs = vec![];
    let mut at = 0.0;
    // The one-way time only: the round trip's send, return and application rows lie outside.
    // A branch some packets take (a reader not asleep has no wake-up) is drawn at its mean
    // per packet: leaving it out would show its time as unattributed.
    for l in d
        .layers
        .iter()
        .filter(|l| l.in_one_way && l.per_packet >= 0.05)
    {
        let w = l.summary.mean * l.per_packet;
        let note = format!(
            "{}{} ({:.0}%)",
            fmt_ns(l.summary.mean),
            per_packet(l.per_packet),
            l.share * 100.0
        );
        segs.push((l.layer.to_string(), at, w, note));
        at += w;
    }
    if total > at {
        segs.push((
            "unattributed (hooks do not see it)".to_string(),
            at,
            total - at,
            fmt_ns(total - at),
        ));
    }
    let _ = write!(
        out,
        "<h2>{}: one-way mean {}</h2>",
        esc(d.name),
        fmt_ns(total)
    );
    out.push_str(&waterfall(&format!("waterfall-{id}"), &segs, total.max(at)));
    out.push_str("<table><tr><th>layer</th><th>p50</th><th>p90</th><th>p99</th><th>mean</th><th>per packet</th><th>share</th></tr>");
    for l in &d.layers {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{:.1}%</td></tr>",
            esc(l.layer),
            fmt_ns(l.summary.p50 as f64),
            fmt_ns(l.summary.p90 as f64),
            fmt_ns(l.summary.p99 as f64),
            fmt_ns(l.summary.mean),
            l.per_packet,
            l.share * 100.0
        );
    }
    out.push_str("</table>");
    let series: Vec<(String, Vec<(u64, u64)>)> = d
        .layers
        .iter()
        .filter(|l| l.crossings > 0)
        .map(|l| (l.layer.to_string(), l.histogram.clone()))
        .collect();
    out.push_str(&cdfs(&format!("cdf-{id}"), &series));
}

fn title(r: &TraceReport) -> String {
    match (&r.mode, &r.test) {
        (Some(m), Some(t)) => format!(
            "profiler trace: {m} lab, {} for {:.1} s",
            t.name(),
            r.seconds
        ),
        _ => format!("profiler trace: existing traffic for {:.1} s", r.seconds),
    }
}

fn body(r: &TraceReport, prefix: &str) -> String {
    let mut b = String::new();
    if let Some(w) = &r.workload {
        let rate = if w.test.is_rr() {
            format!("{:.0} transactions/s", w.transactions_per_sec)
        } else {
            format!("{:.0} Mbit/s", w.throughput_mbps)
        };
        let _ = write!(
            b,
            "<p>workload {}: {rate}; latency p50 {:.1} µs, p99 {:.1} µs</p>",
            w.test.name(),
            w.latency.p50_us,
            w.latency.p99_us
        );
    }
    let c = &r.tracer;
    let _ = write!(
        b,
        "<p class=\"note\">tracer: followed one packet in {:.0}, hooks attached {:.0}% of the time, measured cost {} of one CPU</p>",
        c.follow_every,
        c.duty_cycle * 100.0,
        c.measured_share
            .map_or("not measured".into(), |s| format!("{:.2}%", s * 100.0))
    );
    for (i, d) in r.net.directions.iter().enumerate() {
        direction(d, &format!("{prefix}{i}"), &mut b);
    }
    b
}

pub fn trace(r: &TraceReport) -> String {
    page(&title(r), &body(r, "d"))
}

/// One mode's difference from the baseline: a table per direction and for the round trip,
/// each layer's p50 and mean difference in path order, then the rest.
fn deltas(mode: &str, base: &str, d: &ModeDelta, out: &mut String) {
    let signed = |v: f64| {
        if v >= 0.0 {
            format!("+{}", fmt_ns(v))
        } else {
            format!("-{}", fmt_ns(-v))
        }
    };
    for x in d.directions.iter().chain(&d.round_trip) {
        let _ = write!(
            out,
            "<h3>{} - {}, {}: p50 {}, mean {}{}</h3>",
            esc(mode),
            esc(base),
            esc(&x.name),
            signed(x.p50.total_ns),
            signed(x.mean.total_ns),
            if x.corrected {
                " (without the tracer's cost)"
            } else {
                ""
            }
        );
        out.push_str("<table><tr><th>layer</th><th>crossings</th><th>p50 difference</th><th>mean difference</th><th>p50 difference, to scale</th></tr>");
        let widest = x
            .layers
            .iter()
            .map(|l| l.p50_delta_ns.abs())
            .chain([x.p50.rest_ns.abs()])
            .fold(1.0, f64::max);
        // A bar either side of a middle line: longer than the baseline to the right.
        let bar = |v: f64| {
            let w = v.abs() / widest * 100.0;
            let (at, fill) = if v >= 0.0 {
                (100.0, "#c0504d")
            } else {
                (100.0 - w, "#4f81bd")
            };
            format!(
                "<svg width=\"200\" height=\"10\"><rect x=\"{at:.1}\" y=\"0\" width=\"{w:.1}\" height=\"10\" fill=\"{fill}\"/><line x1=\"100\" x2=\"100\" y1=\"0\" y2=\"10\" stroke=\"#000\"/></svg>"
            )
        };
        for l in &x.layers {
            let only = match l.on {
                On::Both => "",
                On::Mode => " (only here)",
                On::Baseline => " (only in the baseline)",
            };
            let _ = write!(
                out,
                "<tr><td>{}{only}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(l.layer),
                l.crossings,
                signed(l.p50_delta_ns),
                signed(l.mean_delta_ns),
                bar(l.p50_delta_ns)
            );
        }
        let _ = write!(
            out,
            "<tr><td>the rest</td><td></td><td>{}</td><td>{}</td><td>{}</td></tr></table>",
            signed(x.p50.rest_ns),
            signed(x.mean.rest_ns),
            bar(x.p50.rest_ns)
        );
    }
}

pub fn compare(c: &Compare) -> String {
    let spread = |s: &Option<Spread>, f: &dyn Fn(f64) -> String| {
        s.as_ref().map_or("-".into(), |s| {
            format!("{} [{}-{}]", f(s.median), f(s.min), f(s.max))
        })
    };
    let mut b = format!(
        "<p>{}, {} round(s) of {:.1} s per mode, each an untraced and a traced run (ABAB); throughput and ratios from the untraced runs, median [min-max]</p>",
        c.test.name(),
        c.rounds,
        c.seconds
    );
    let _ = write!(
        b,
        "<table><tr><th>mode</th><th>throughput</th><th>vs {0}</th><th>mean round trip</th><th>latency vs {0}</th><th>one-way p50 (traced)</th></tr>",
        c.baseline.name()
    );
    for r in &c.rows {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{} {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            r.mode.name(),
            spread(&r.throughput, &|v| format!("{v:.0}")),
            r.unit,
            spread(&r.throughput_ratio, &|x| format!("{x:.2}x")),
            spread(&r.mean_us, &|v| format!("{v:.1} µs")),
            spread(&r.latency_ratio, &|x| format!("{x:.2}x")),
            r.one_way_p50_ns.map_or("-".into(), |n| fmt_ns(n as f64))
        );
    }
    b.push_str("</table>");
    for r in &c.rows {
        if let Some(d) = &r.delta {
            let _ = write!(b, "<h2>{} - {}</h2>", r.mode.name(), c.baseline.name());
            for w in &r.warnings {
                let _ = write!(b, "<p class=\"note\">note: {}</p>", esc(w));
            }
            deltas(r.mode.name(), c.baseline.name(), d, &mut b);
        }
    }
    for (i, r) in c.rows.iter().enumerate() {
        let shown = r.delta_round.unwrap_or(0);
        if let Some(rep) = r.reports.get(shown) {
            let _ = write!(b, "<h2>{} (traced round {})</h2>", r.mode.name(), shown + 1);
            b.push_str(&body(rep, &format!("m{i}-")));
        }
    }
    let modes: Vec<&str> = c.rows.iter().map(|r| r.mode.name()).collect();
    page(&format!("profiler trace --compare {}", modes.join(",")), &b)
}
