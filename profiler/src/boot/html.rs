//! `boot --html FILE`: one self-contained page, a phase timeline per instance (each VM's
//! phases stacked on one time axis) and the phase table, drawn from the report's numbers.

use std::fmt::Write as _;

use super::BootReport;
use crate::export::html::{esc, fmt_ns, page, timeline};

pub fn boot(r: &BootReport) -> String {
    let mut body = format!(
        r#"<p>{} x {}, accelerator {} ({})</p>"#,
        r.count,
        format!("{:?}", r.vm).to_lowercase(),
        esc(&r.accelerator),
        esc(&r.accelerator_reason)
    );
    let rows: Vec<(String, Vec<(String, u64)>)> = r
        .boots
        .iter()
        .map(|b| {
            let phases = b.phases.iter().map(|p| (p.name.clone(), p.ns)).collect();
            (format!("instance {}", b.index), phases)
        })
        .collect();
    body.push_str("<h2>Phases per instance</h2>");
    body.push_str(&timeline("timeline", &rows));
    body.push_str(
        "<table id=\"phases\"><tr><th>phase</th><th>count</th><th>min</th><th>p50</th>\
         <th>p90</th><th>max</th><th>what</th></tr>",
    );
    for s in &r.summary {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&s.name),
            s.count,
            fmt_ns(s.min_ns as f64),
            fmt_ns(s.p50_ns as f64),
            fmt_ns(s.p90_ns as f64),
            fmt_ns(s.max_ns as f64),
            esc(&s.what)
        );
    }
    let _ = write!(
        body,
        "</table><p class=\"note\">whole run {} (setup {}, instances {})</p>",
        fmt_ns(r.wall.wall_ns as f64),
        fmt_ns(r.wall.setup_ns() as f64),
        fmt_ns(r.wall.instances_wall_ns as f64)
    );
    page(
        &format!("profiler boot --vm {:?}", r.vm).to_lowercase(),
        &body,
    )
}

/// Each phase's times over the instances (and `total`) as HDR histograms, tagged
/// `phase/<name>`, values in ns.
pub fn tagged(r: &BootReport) -> Vec<(String, hdrhistogram::Histogram<u64>)> {
    let mut out: Vec<(String, hdrhistogram::Histogram<u64>)> = vec![];
    let mut add = |name: &str, ns: u64| {
        let tag = crate::export::hdr_log::tag(&format!("phase/{name}"));
        let i = match out.iter().position(|(t, _)| *t == tag) {
            Some(i) => i,
            None => {
                // Up to an hour at 3 digits: a slow TCG boot is past the tracer's range.
                let h = hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
                    .expect("constant bounds are valid");
                out.push((tag, h));
                out.len() - 1
            }
        };
        let _ = out[i].1.record(ns.max(1));
    };
    for b in &r.boots {
        for p in b.phases.iter().filter(|p| p.complete) {
            add(&p.name, p.ns);
        }
        if b.error.is_none() {
            add("total", b.total_ns);
        }
    }
    out
}
