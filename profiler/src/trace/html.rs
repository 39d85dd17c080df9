//! `--html FILE`: the trace report as one page: a waterfall per direction (each layer's p50 x
//! crossings, in path order, against the one-way p50) and latency CDFs per layer.

use std::fmt::Write as _;

use super::{compare::CompareRow, report::Direction, run::TraceReport};
use crate::export::html::{cdfs, esc, fmt_ns, page, waterfall};

fn direction(d: &Direction, id: &str, out: &mut String) {
    let total = d.one_way.as_ref().map_or(0.0, |o| o.summary.p50 as f64);
    let mut segs = vec![];
    let mut at = 0.0;
    for l in d.layers.iter().filter(|l| l.crossings > 0) {
        let w = l.summary.p50 as f64 * l.crossings as f64;
        let note = format!(
            "{}{} ({:.0}%)",
            fmt_ns(l.summary.p50 as f64),
            if l.crossings > 1 {
                format!(" x {}", l.crossings)
            } else {
                String::new()
            },
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
        "<h2>{}: one-way p50 {}</h2>",
        esc(d.name),
        fmt_ns(total)
    );
    out.push_str(&waterfall(&format!("waterfall-{id}"), &segs, total.max(at)));
    out.push_str("<table><tr><th>layer</th><th>p50</th><th>p90</th><th>p99</th><th>crossings</th><th>share</th></tr>");
    for l in &d.layers {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}%</td></tr>",
            esc(l.layer),
            fmt_ns(l.summary.p50 as f64),
            fmt_ns(l.summary.p90 as f64),
            fmt_ns(l.summary.p99 as f64),
            l.crossings,
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

pub fn compare(rows: &[CompareRow]) -> String {
    let mut b = String::from(
        "<table><tr><th>mode</th><th>throughput</th><th>vs host</th><th>mean</th><th>latency vs host</th><th>p99</th><th>one-way p50</th></tr>",
    );
    for r in rows {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{:.0} {}</td><td>{}</td><td>{:.1} µs</td><td>{}</td><td>{:.1} µs</td><td>{}</td></tr>",
            r.mode.name(),
            r.throughput,
            r.unit,
            r.throughput_ratio
                .map_or("-".into(), |x| format!("{x:.2}x")),
            r.mean_us,
            r.latency_ratio.map_or("-".into(), |x| format!("{x:.2}x")),
            r.p99_us,
            r.one_way_p50_ns.map_or("-".into(), |n| fmt_ns(n as f64))
        );
    }
    b.push_str("</table>");
    for (i, r) in rows.iter().enumerate() {
        let _ = write!(b, "<h2>{}</h2>", r.mode.name());
        b.push_str(&body(&r.report, &format!("m{i}-")));
    }
    let modes: Vec<&str> = rows.iter().map(|r| r.mode.name()).collect();
    page(&format!("profiler trace --compare {}", modes.join(",")), &b)
}
