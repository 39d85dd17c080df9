//! The boot report: per phase the distribution over containers, and each container's phases.

use hdrhistogram::Histogram;
use serde::Serialize;

use super::{Clock, Host, NetMode, Phase, PhaseTime};
use crate::hist::fmt_ns;

/// One container's start-up.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Startup {
    pub index: usize,
    pub pid: u32,
    pub addr: Option<String>,
    pub cgroup: Option<String>,
    /// In order; consecutive, so they sum to `total_ns`.
    pub phases: Vec<PhaseTime>,
    /// Spawn to ready, on the parent's clock.
    pub total_ns: u64,
}

impl Startup {
    pub fn sum_ns(&self) -> u64 {
        self.phases.iter().map(|p| p.ns).sum()
    }

    pub fn phase(&self, p: Phase) -> Option<u64> {
        self.phases.iter().find(|x| x.phase == p).map(|x| x.ns)
    }
}

/// One phase's distribution over the containers (`total`: spawn to ready).
#[derive(Clone, Debug, Serialize)]
pub struct PhaseStats {
    pub name: String,
    pub what: String,
    pub clock: Option<Clock>,
    pub count: u64,
    pub min_ns: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub max_ns: u64,
    pub mean_ns: u64,
}

impl PhaseStats {
    /// min and max exact; p50 and p90 from an HDR histogram (3 significant digits).
    pub fn of(name: &str, what: &str, clock: Option<Clock>, values: &[u64]) -> PhaseStats {
        // Up to an hour; longer start-ups saturate (min and max stay exact).
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3)
            .expect("constant bounds are valid");
        for &v in values {
            h.saturating_record(v);
        }
        let (min, max) = (
            values.iter().copied().min().unwrap_or(0),
            values.iter().copied().max().unwrap_or(0),
        );
        // Kept within the exact extremes, which a bucket's midpoint can overshoot.
        let q = |q: f64| {
            if h.is_empty() {
                0
            } else {
                h.median_equivalent(h.value_at_quantile(q)).clamp(min, max)
            }
        };
        let mean = match values.len() {
            0 => 0,
            n => (values.iter().map(|&v| v as u128).sum::<u128>() / n as u128) as u64,
        };
        PhaseStats {
            name: name.to_string(),
            what: what.to_string(),
            clock,
            count: values.len() as u64,
            min_ns: min,
            p50_ns: q(0.5),
            p90_ns: q(0.9),
            max_ns: max,
            mean_ns: mean,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ContainerBootReport {
    pub runtime: &'static str,
    pub net: NetMode,
    pub count: usize,
    /// The lab the containers attach to (its id is in their namespaces' and cgroups' names).
    pub lab: String,
    pub cgroup_root: String,
    pub payload: Vec<String>,
    /// Which clock each phase boundary comes from.
    pub clocks: &'static str,
    pub phases: Vec<PhaseStats>,
    pub total: PhaseStats,
    pub containers: Vec<Startup>,
}

pub const CLOCKS: &str = "phase ends are the parent's Instant (CLOCK_MONOTONIC), except the end \
    of exec: the payload's own CLOCK_MONOTONIC at main() entry";

impl ContainerBootReport {
    pub(super) fn new(host: &Host, containers: Vec<Startup>) -> Self {
        let (phases, total) = distributions(&containers);
        ContainerBootReport {
            runtime: "native",
            net: host.net(),
            count: containers.len(),
            lab: host.lab_id().to_string(),
            cgroup_root: host.cgroup_root().display().to_string(),
            payload: host.payload().to_vec(),
            clocks: CLOCKS,
            phases,
            total,
            containers,
        }
    }
}

/// Per phase (in phase order, those any container has) and for the totals.
pub fn distributions(containers: &[Startup]) -> (Vec<PhaseStats>, PhaseStats) {
    let mut seen: Vec<Phase> = containers
        .iter()
        .flat_map(|c| c.phases.iter().map(|p| p.phase))
        .collect();
    seen.sort();
    seen.dedup();
    let phases = seen
        .into_iter()
        .map(|p| {
            let v: Vec<u64> = containers.iter().filter_map(|c| c.phase(p)).collect();
            PhaseStats::of(p.name(), p.what(), Some(p.clock()), &v)
        })
        .collect();
    let totals: Vec<u64> = containers.iter().map(|c| c.total_ns).collect();
    let total = PhaseStats::of("total", "spawn to ready", None, &totals);
    (phases, total)
}

pub fn print(r: &ContainerBootReport) {
    let f = |ns: u64| fmt_ns(ns as f64);
    println!(
        "native containers, net {}: {} started at once (lab {}, cgroups under {}, payload {})",
        r.net.name(),
        r.count,
        r.lab,
        r.cgroup_root,
        r.payload.join(" ")
    );
    println!(
        "  {:<11}{:>10}{:>10}{:>10}{:>10}  {:<8} what",
        "phase", "min", "p50", "p90", "max", "clock"
    );
    for s in r.phases.iter().chain(std::iter::once(&r.total)) {
        let clock = match s.clock {
            Some(Clock::Parent) => "parent",
            Some(Clock::Payload) => "payload",
            None => "",
        };
        println!(
            "  {:<11}{:>10}{:>10}{:>10}{:>10}  {:<8} {}",
            s.name,
            f(s.min_ns),
            f(s.p50_ns),
            f(s.p90_ns),
            f(s.max_ns),
            clock,
            s.what
        );
    }
    println!("  ({})", r.clocks);
    println!();
    let names: Vec<&str> = r.phases.iter().map(|p| p.name.as_str()).collect();
    print!("  {:<10}", "container");
    for n in &names {
        print!("{n:>11}");
    }
    println!("{:>11}", "total");
    for c in &r.containers {
        print!("  {:<10}", format!("k{}", c.index));
        for p in &r.phases {
            let v = c
                .phases
                .iter()
                .find(|x| x.name == p.name)
                .map(|x| f(x.ns))
                .unwrap_or_else(|| "-".into());
            print!("{v:>11}");
        }
        println!("{:>11}", f(c.total_ns));
    }
}
