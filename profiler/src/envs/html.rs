//! `density --html FILE`: one self-contained page, the slowdown curve over the instance
//! counts (1.0 = one instance on the host) and the table, drawn from the report's numbers.

use std::fmt::Write as _;

use super::Density;
use crate::export::html::{curve, esc, fmt_ns, page};

pub fn density(d: &Density) -> String {
    let mut body = format!(
        "<p>{} instances of <code>{}</code>; one on the host: {:.1} events/s</p>",
        esc(&format!("{:?}", d.env).to_lowercase()),
        esc(&d.workload.join(" ")),
        d.baseline_events_per_sec
    );
    let points: Vec<(f64, f64)> = d
        .rows
        .iter()
        .map(|r| (r.instances as f64, r.slowdown))
        .collect();
    body.push_str("<h2>Slowdown against one instance on the host</h2>");
    body.push_str(&curve(
        "slowdown",
        &points,
        "instances at once",
        "slowdown (host / mean instance)",
        Some(1.0),
    ));
    body.push_str(
        "<table id=\"rows\"><tr><th>instances</th><th>mean events/s</th><th>slowdown</th>\
         <th>start-up p50</th></tr>",
    );
    for r in &d.rows {
        let startup = r
            .startup
            .iter()
            .find(|s| s.name == "total")
            .map_or("-".to_string(), |s| fmt_ns(s.p50_ns as f64));
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{:.1}</td><td>{:.2}</td><td>{}</td></tr>",
            r.instances, r.mean, r.slowdown, startup
        );
    }
    body.push_str("</table>");
    page(
        &format!("profiler density --env {:?}", d.env).to_lowercase(),
        &body,
    )
}
