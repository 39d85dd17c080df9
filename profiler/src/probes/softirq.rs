//! NET_RX / NET_TX softirq timing per CPU (user side of profiler-ebpf/src/softirq.rs).

use anyhow::{Result, anyhow};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
};
use profiler_common::{hist::Hist, softirq::slot};
use serde::Serialize;

use crate::hist::{Summary, fmt_ns, to_histogram};

use crate::attach::Point;
use profiler_common::names::{map, program as prog};

/// The softirq points; they attach with the packet tracer's points, in its
/// windows.
pub const POINTS: &[Point] = &[
    crate::point!(RawTracepoint, "irq", "softirq_raise", prog::SOFTIRQ_RAISE),
    crate::point!(RawTracepoint, "irq", "softirq_entry", prog::SOFTIRQ_ENTRY),
    crate::point!(RawTracepoint, "irq", "softirq_exit", prog::SOFTIRQ_EXIT),
    crate::point!(RawTracepoint, "napi", "napi_poll", prog::SOFTIRQ_NAPI_POLL),
];

#[derive(Debug, Serialize)]
pub struct Vector {
    /// raise to entry
    pub delay: Summary,
    pub run_time: Summary,
    pub total_run_ns: u64,
}

#[derive(Debug, Serialize)]
pub struct Cpu {
    pub cpu: usize,
    pub net_rx: Vector,
    pub net_tx: Vector,
    /// packets taken per NET_RX run (the sum of its napi_poll work)
    pub packets_per_run: Summary,
}

#[derive(Debug, Serialize)]
pub struct SoftirqReport {
    pub cpus: Vec<Cpu>,
    /// The CPU that ran at least 90% of all NET_RX time, if one did: the flow's receive work is
    /// serialised on it (the overlay pattern Falcon describes).
    pub net_rx_serialised_on: Option<usize>,
}

fn total(h: &hdrhistogram::Histogram<u64>) -> u64 {
    h.iter_recorded()
        .map(|v| v.value_iterated_to() * v.count_at_value())
        .sum()
}

pub fn read(ebpf: &Ebpf) -> Result<SoftirqReport> {
    let map: PerCpuArray<&MapData, Hist> = PerCpuArray::try_from(
        ebpf.map(map::SOFTIRQ_HIST)
            .ok_or_else(|| anyhow!("SOFTIRQ_HIST missing"))?,
    )?;
    let per = |s: u32| -> Result<Vec<hdrhistogram::Histogram<u64>>> {
        Ok(map.get(&s, 0)?.iter().map(to_histogram).collect())
    };
    let (tx_d, tx_r) = (per(slot(0, 0))?, per(slot(0, 1))?);
    let (rx_d, rx_r, rx_p) = (per(slot(1, 0))?, per(slot(1, 1))?, per(slot(1, 2))?);
    let vector = |d: &hdrhistogram::Histogram<u64>, r: &hdrhistogram::Histogram<u64>| Vector {
        delay: Summary::of(d),
        run_time: Summary::of(r),
        total_run_ns: total(r),
    };
    let cpus: Vec<Cpu> = (0..rx_r.len())
        .map(|cpu| Cpu {
            cpu,
            net_rx: vector(&rx_d[cpu], &rx_r[cpu]),
            net_tx: vector(&tx_d[cpu], &tx_r[cpu]),
            packets_per_run: Summary::of(&rx_p[cpu]),
        })
        .collect();
    let all: u64 = cpus.iter().map(|c| c.net_rx.total_run_ns).sum();
    let net_rx_serialised_on = (cpus.len() > 1 && all > 0)
        .then(|| {
            cpus.iter()
                .find(|c| c.net_rx.total_run_ns as f64 >= 0.9 * all as f64)
                .map(|c| c.cpu)
        })
        .flatten();
    Ok(SoftirqReport {
        cpus,
        net_rx_serialised_on,
    })
}

pub fn print(r: &SoftirqReport) {
    println!();
    println!(
        "  {:<6} {:<7} {:>9} {:>11} {:>11} {:>11} {:>11} {:>10} {:>9}",
        "cpu",
        "softirq",
        "runs",
        "wait p50",
        "wait p99",
        "run p50",
        "run p99",
        "run total",
        "pkts/run"
    );
    for c in &r.cpus {
        for (name, v) in [("NET_RX", &c.net_rx), ("NET_TX", &c.net_tx)] {
            if v.run_time.count == 0 {
                continue;
            }
            println!(
                "  {:<6} {:<7} {:>9} {:>11} {:>11} {:>11} {:>11} {:>10} {:>9}",
                c.cpu,
                name,
                v.run_time.count,
                fmt_ns(v.delay.p50 as f64),
                fmt_ns(v.delay.p99 as f64),
                fmt_ns(v.run_time.p50 as f64),
                fmt_ns(v.run_time.p99 as f64),
                fmt_ns(v.total_run_ns as f64),
                if name == "NET_RX" {
                    format!("{:.1}", c.packets_per_run.mean)
                } else {
                    String::new()
                }
            );
        }
    }
    if let Some(cpu) = r.net_rx_serialised_on {
        println!(
            "  NET_RX work is serialised on CPU {cpu} (at least 90% of all NET_RX time): the flow's receive path does not spread across CPUs"
        );
    }
}
