//! `profiler trace --compare host,bridge,nat,overlay`: the same workload in each mode.

use anyhow::Result;
use serde::Serialize;

use super::{
    cli::{TraceArgs, prelude},
    layers,
    run::{TraceReport, trace_in},
};
use crate::{
    cleanup,
    lab::{self, Mode},
};

/// One mode's line of `--compare`.
#[derive(Serialize)]
pub struct CompareRow {
    pub mode: Mode,
    pub throughput: f64,
    pub unit: &'static str,
    pub mean_us: f64,
    pub p99_us: f64,
    /// Throughput relative to host, and latency relative to host (the research's ratios).
    pub throughput_ratio: Option<f64>,
    pub latency_ratio: Option<f64>,
    /// Median one-way time of requests, ns.
    pub one_way_p50_ns: Option<u64>,
    /// The network layer (socket delivery aside) with the largest share of the request
    /// one-way time.
    pub top_layer: Option<TopLayer>,
    pub report: TraceReport,
}

#[derive(Serialize)]
pub struct TopLayer {
    pub layer: String,
    /// Its share of the request one-way p50.
    pub share: f64,
}

/// `--compare host,bridge,nat,overlay`: the same workload in each mode, one table.
pub fn compare(args: &TraceArgs, modes: &[Mode]) -> Result<Vec<CompareRow>> {
    prelude(args, "profiler trace --compare")?;
    let mut rows: Vec<CompareRow> = vec![];
    for &mode in modes {
        if cleanup::stop_requested() {
            break;
        }
        let (desc, _owned) = lab::existing_or_new(None, mode)?;
        let report = trace_in(&desc, desc.connect, args)?;
        let Some(w) = &report.workload else { break };
        let rr = w.test.is_rr();
        let req = report.net.directions.first();
        let one_way_p50_ns = req.and_then(|d| d.one_way.as_ref().map(|o| o.summary.p50));
        let top_layer = req.and_then(|d| {
            d.layers
                .iter()
                .filter(|l| layers::is_network(l.layer))
                .max_by(|a, b| a.share.total_cmp(&b.share))
                .map(|l| TopLayer {
                    layer: l.layer.to_string(),
                    share: l.share,
                })
        });
        rows.push(CompareRow {
            mode,
            throughput: if rr {
                w.transactions_per_sec
            } else {
                w.throughput_mbps
            },
            unit: if rr { "trans/s" } else { "Mbit/s" },
            mean_us: w.latency.mean_us,
            p99_us: w.latency.p99_us,
            throughput_ratio: None,
            latency_ratio: None,
            one_way_p50_ns,
            top_layer,
            report,
        });
    }
    if let Some(host) = rows
        .iter()
        .find(|r| r.mode == Mode::Host)
        .map(|r| (r.throughput, r.mean_us))
    {
        for r in &mut rows {
            r.throughput_ratio = (host.0 > 0.0).then(|| r.throughput / host.0);
            r.latency_ratio = (host.1 > 0.0).then(|| r.mean_us / host.1);
        }
    }
    Ok(rows)
}

pub fn print(rows: &[CompareRow]) {
    println!(
        "  {:<9} {:>20} {:>10} {:>10} {:>9} {:>9} {:>11}  largest network layer (requests)",
        "mode", "throughput", "mean", "p99", "vs host", "latency", "one-way p50"
    );
    for r in rows {
        println!(
            "  {:<9} {:>12.0} {:<7} {:>8.1}µs {:>8.1}µs {:>9} {:>9} {:>11}  {}",
            r.mode.name(),
            r.throughput,
            r.unit,
            r.mean_us,
            r.p99_us,
            r.throughput_ratio
                .map_or("-".into(), |x| format!("{x:.2}x")),
            r.latency_ratio.map_or("-".into(), |x| format!("{x:.2}x")),
            r.one_way_p50_ns
                .map_or("-".into(), |n| crate::hist::fmt_ns(n as f64)),
            r.top_layer.as_ref().map_or(String::new(), |t| format!(
                "{} ({:.0}%)",
                t.layer,
                t.share * 100.0
            ))
        );
    }
}
