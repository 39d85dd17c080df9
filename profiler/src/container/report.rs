//! The boot report: per phase the distribution over containers, and each container's phases.

use serde::Serialize;

use super::{Clock, Host, NetMode, Phase, PhaseTime};
use crate::{
    hist::fmt_ns,
    startup::{Instance, PhaseStats, Wall, summary},
};

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
    /// SIGKILL of the payload (its PID namespace's init) to reaped, with its cgroup, namespace
    /// and DNAT rule removed: after ready, in the run's teardown, not part of `total_ns`.
    pub shutdown_ns: Option<u64>,
}

impl Startup {
    pub fn sum_ns(&self) -> u64 {
        self.phases.iter().map(|p| p.ns).sum()
    }

    pub fn phase(&self, p: Phase) -> Option<u64> {
        self.phases.iter().find(|x| x.phase == p).map(|x| x.ns)
    }
}

impl Instance for Startup {
    fn complete_phases(&self) -> Vec<(&str, u64)> {
        self.phases.iter().map(|p| (p.name, p.ns)).collect()
    }

    fn ready_total_ns(&self) -> Option<u64> {
        Some(self.total_ns)
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
    /// setup (the process's start, the lab, cgroups), the containers, teardown: the whole run.
    #[serde(flatten)]
    pub wall: Wall,
    /// Per phase (in phase order) over the containers, then `total` (spawn to ready).
    pub summary: Vec<PhaseStats>,
    /// Over the containers' `shutdown_ns` (inside the teardown lap "containers removed").
    pub shutdown: Option<PhaseStats>,
    pub containers: Vec<Startup>,
}

const SHUTDOWN: &str = "SIGKILL to reaped, cgroup, netns and DNAT rule removed (after ready)";

pub const CLOCKS: &str = "phase ends are the parent's Instant (CLOCK_MONOTONIC), except the end \
    of exec: the payload's own CLOCK_MONOTONIC at main() entry";

/// What the report says of the host, read before it is torn down.
pub(super) struct HostInfo {
    pub net: NetMode,
    pub lab: String,
    pub cgroup_root: String,
    pub payload: Vec<String>,
}

impl HostInfo {
    pub(super) fn of(host: &Host) -> Self {
        Self {
            net: host.net(),
            lab: host.lab_id().to_string(),
            cgroup_root: host.cgroup_root().display().to_string(),
            payload: host.payload().to_vec(),
        }
    }
}

impl ContainerBootReport {
    pub(super) fn new(host: HostInfo, containers: Vec<Startup>, wall: Wall) -> Self {
        ContainerBootReport {
            runtime: "native",
            net: host.net,
            count: containers.len(),
            lab: host.lab,
            cgroup_root: host.cgroup_root,
            payload: host.payload,
            clocks: CLOCKS,
            wall,
            summary: summary(&containers, what),
            shutdown: {
                let downs: Vec<u64> = containers.iter().filter_map(|c| c.shutdown_ns).collect();
                (!downs.is_empty()).then(|| PhaseStats::of("shutdown", SHUTDOWN, &downs))
            },
            containers,
        }
    }

    /// The per-phase rows, without `total`.
    pub fn phases(&self) -> &[PhaseStats] {
        let n = self.summary.len();
        &self.summary[..n.saturating_sub(1)]
    }

    pub fn total(&self) -> Option<&PhaseStats> {
        self.summary.last().filter(|s| s.name == "total")
    }
}

/// What a phase (or `total`) stands for.
fn what(name: &str) -> String {
    match Phase::ALL.iter().find(|p| p.name() == name) {
        Some(p) => p.what().to_string(),
        None => "spawn to ready".to_string(),
    }
}

fn clock_of(name: &str) -> &'static str {
    match Phase::ALL
        .iter()
        .find(|p| p.name() == name)
        .map(|p| p.clock())
    {
        Some(Clock::Parent) => "parent",
        Some(Clock::Payload) => "payload",
        None => "",
    }
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
    let row = |s: &PhaseStats, clock: &str| {
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
    };
    for s in &r.summary {
        row(s, clock_of(&s.name));
    }
    if let Some(s) = &r.shutdown {
        row(s, "parent");
    }
    println!("  ({})", r.clocks);
    println!();
    let names: Vec<&str> = r.phases().iter().map(|p| p.name.as_str()).collect();
    print!("  {:<10}", "container");
    for n in &names {
        print!("{n:>11}");
    }
    println!("{:>11}", "total");
    for c in &r.containers {
        print!("  {:<10}", format!("k{}", c.index));
        for p in r.phases() {
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
    crate::startup::print_laps("setup", &r.wall.setup);
    println!(
        "  {} containers together (first spawn to last ready): {}",
        r.count,
        f(r.wall.instances_wall_ns)
    );
    crate::startup::print_laps("teardown", &r.wall.teardown);
    println!(
        "  whole run (setup + containers + teardown): {}",
        f(r.wall.wall_ns)
    );
}
