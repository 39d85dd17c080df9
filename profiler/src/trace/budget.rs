//! The tracer's overhead budget: which share of packets it follows (one in N, drawn at birth)
//! and which share of time its hooks are attached (windows), from its own measured cost.
//!
//! Each cycle is a window (hooks attached, following one in N), a drain (attached, following
//! no new packet, so those in flight finish and the cost of merely being attached shows
//! alone), then a gap with every hook detached. The kernel's BPF statistics run while
//! attached, so the cost is measured, not modelled: per second of wall time, the programs' run
//! time over 1e9 is the share of one CPU the tracer took. A single request-response flow is
//! serial, so that share bounds its slowdown; parallel workloads lose less. The round trip's
//! task and socket programs (sched_switch on every context switch, sys_enter on every
//! syscall) are points like the packet hooks: attached and detached with them, their runs in
//! the same bpf_stats totals and charged the same floor per run.

use std::{
    collections::BTreeMap,
    os::fd::OwnedFd,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use profiler_common::net::{counter, follow_below};
use serde::Serialize;

use crate::probes::net::{FLOOR, NetTracer, ProgStats};

/// Following every packet while attached.
const WINDOW: Duration = Duration::from_millis(50);
/// The longest the first window waits for a followed packet.
const FIRST_WINDOW_MAX: Duration = Duration::from_secs(1);
/// Attached, following nothing new.
const DRAIN: Duration = Duration::from_millis(10);

/// How the tracer decides what to follow.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "policy", rename_all = "snake_case")]
pub enum Policy {
    /// Stay within this share of one CPU (0.01 = 1%), adjusting N and the windows.
    Budget { share: f64 },
    /// Follow one packet in `every`, hooks always attached.
    Fixed { every: u64 },
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    Window,
    Drain,
    Gap,
}

/// One program's cost over the run (only while bpf_stats ran).
#[derive(Clone, Debug, Serialize)]
pub struct ProgramCost {
    pub program: String,
    pub runs: u64,
    pub ns_per_run: f64,
}

/// What the tracer cost, and how it sampled.
#[derive(Clone, Debug, Serialize)]
pub struct Cost {
    #[serde(flatten)]
    pub policy: Policy,
    /// The last one-in-N the controller chose (the fixed N otherwise).
    pub follow_every: f64,
    /// Share of the run's wall time the hooks were attached.
    pub duty_cycle: f64,
    pub windows: u64,
    /// BPF run time (bpf_stats) over wall time: the share of one CPU the tracer took. None when
    /// statistics did not run (fixed N without --bpf-stats).
    pub measured_share: Option<f64>,
    /// BPF run time, ns per second of wall time.
    pub bpf_ns_per_sec: Option<f64>,
    /// What the controller counted against the budget, over wall time: each run's bpf_stats
    /// time plus the floor's (a stand-in for the dispatch bpf_stats do not see).
    pub charged_share: Option<f64>,
    /// An empty program of the same type on the first hook's tracepoint, ns per run (what
    /// bpf_stats charge for running any program here), measured in the first window.
    pub floor_ns_per_run: Option<f64>,
    /// Mean cost of a hook on a packet that is not followed, ns per run.
    pub unfollowed_ns_per_run: Option<f64>,
    /// Mean cost of a hook on a followed packet, ns per run: what the tracer adds inside each
    /// segment it measures (the tail of one program plus the head of the next).
    pub followed_ns_per_run: Option<f64>,
    pub programs: Vec<ProgramCost>,
}

pub struct Sampler {
    policy: Policy,
    phase: Phase,
    phase_start: Instant,
    started: Instant,
    /// Share of drawn packets followed in the next window: 1/N.
    x: f64,
    gap: Duration,
    stats: Option<OwnedFd>,
    /// Program statistics at the last phase change.
    mark: BTreeMap<&'static str, ProgStats>,
    followed_mark: u64,
    attached: Duration,
    windows: u64,
    /// Estimates of the attached cost (share of one CPU) without following, and per unit x.
    a: Option<f64>,
    b: Option<f64>,
    window_cost: Option<(u64, u64, u64)>,
    last_window: Duration,
    /// What the controller counted against the budget so far, ns (see `learn`).
    charged: f64,
    /// Start of the current window (ktime): state from before it is stale.
    epoch: u64,
    /// Sums over windows: (unfollowed runs, their ns), (followed hooks, their ns).
    unfollowed: (u64, f64),
    followed: (u64, f64),
    floor: Option<f64>,
    totals: BTreeMap<&'static str, ProgStats>,
}

fn enable_stats() -> Result<OwnedFd> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling BPF statistics")
}

fn diff(
    now: &BTreeMap<&'static str, ProgStats>,
    then: &BTreeMap<&'static str, ProgStats>,
) -> BTreeMap<&'static str, ProgStats> {
    now.iter()
        .map(|(k, v)| {
            let p = then.get(k).copied().unwrap_or_default();
            (
                *k,
                ProgStats {
                    runs: v.runs.saturating_sub(p.runs),
                    ns: v.ns.saturating_sub(p.ns),
                },
            )
        })
        .collect()
}

fn total(d: &BTreeMap<&'static str, ProgStats>, with_floor: bool) -> (u64, u64) {
    d.iter()
        .filter(|(k, _)| with_floor || **k != FLOOR)
        .fold((0, 0), |(r, n), (_, s)| (r + s.runs, n + s.ns))
}

impl Sampler {
    /// Starts following: the first window (budget) or the whole run (fixed N). `stats_on`:
    /// the caller already holds BPF statistics for the whole run (--bpf-stats).
    pub fn start(tracer: &mut NetTracer, policy: Policy, stats_on: bool) -> Result<Sampler> {
        let now = Instant::now();
        let mut s = Sampler {
            policy,
            phase: Phase::Window,
            phase_start: now,
            started: now,
            x: 1.0,
            gap: Duration::ZERO,
            stats: None,
            mark: tracer.prog_stats(),
            followed_mark: followed_hooks(tracer),
            attached: Duration::ZERO,
            windows: 1,
            a: None,
            b: None,
            window_cost: None,
            last_window: WINDOW,
            charged: 0.0,
            epoch: 0,
            unfollowed: (0, 0.0),
            followed: (0, 0.0),
            floor: None,
            totals: BTreeMap::new(),
        };
        match policy {
            Policy::Fixed { every } => {
                s.x = 1.0 / every.max(1) as f64;
                if stats_on {
                    s.mark = tracer.prog_stats();
                }
                tracer.set_follow(follow_below(every), 0)?;
            }
            Policy::Budget { .. } => {
                if !stats_on {
                    s.stats = Some(enable_stats()?);
                }
                tracer.set_floor(true)?;
                s.mark = tracer.prog_stats();
                s.epoch = crate::kernel::monotonic_ns();
                tracer.set_follow(follow_below(1), s.epoch)?;
            }
        }
        Ok(s)
    }

    /// Advances the windows; call every few tens of ms.
    pub fn tick(&mut self, tracer: &mut NetTracer) -> Result<()> {
        let Policy::Budget { share } = self.policy else {
            return Ok(());
        };
        let now = Instant::now();
        let in_phase = now - self.phase_start;
        match self.phase {
            // The first window waits for traffic (a workload still connecting), up to a second.
            Phase::Window
                if in_phase >= WINDOW
                    && (self.windows > 1
                        || in_phase >= FIRST_WINDOW_MAX
                        || followed_hooks(tracer) > self.followed_mark) =>
            {
                // No new packet; those in flight finish (the window's epoch stays).
                tracer.set_follow(0, self.epoch)?;
                let stats = tracer.prog_stats();
                let d = diff(&stats, &self.mark);
                if let Some(f) = d.get(FLOOR).filter(|f| f.runs > 0) {
                    self.floor.get_or_insert(f.ns as f64 / f.runs as f64);
                }
                tracer.set_floor(false)?;
                let (runs, ns) = total(&d, false);
                let fh = followed_hooks(tracer);
                self.window_cost = Some((runs, ns, fh - self.followed_mark));
                self.last_window = in_phase;
                self.followed_mark = fh;
                self.add(&d);
                self.mark = stats;
                self.phase(Phase::Drain, now, in_phase);
            }
            Phase::Drain if in_phase >= DRAIN => {
                let stats = tracer.prog_stats();
                let d = diff(&stats, &self.mark);
                self.add(&d);
                self.mark = stats;
                let (runs, ns) = total(&d, false);
                self.learn(share, runs, ns, in_phase);
                if self.gap.is_zero() {
                    self.open_window(tracer, now, in_phase)?;
                } else {
                    tracer.detach()?;
                    self.stats = None;
                    self.phase(Phase::Gap, now, in_phase);
                }
            }
            Phase::Gap if in_phase >= self.gap => {
                if self.stats.is_none() {
                    self.stats = Some(enable_stats()?);
                }
                tracer.reattach()?;
                self.mark = tracer.prog_stats();
                self.followed_mark = followed_hooks(tracer);
                self.open_window(tracer, now, Duration::ZERO)?;
            }
            _ => {}
        }
        Ok(())
    }

    fn phase(&mut self, p: Phase, now: Instant, spent: Duration) {
        if !matches!(self.phase, Phase::Gap) {
            self.attached += spent;
        }
        self.phase = p;
        self.phase_start = now;
    }

    fn open_window(&mut self, tracer: &mut NetTracer, now: Instant, spent: Duration) -> Result<()> {
        self.epoch = crate::kernel::monotonic_ns();
        tracer.set_follow(follow_below((1.0 / self.x).round() as u64), self.epoch)?;
        self.windows += 1;
        self.phase(Phase::Window, now, spent);
        Ok(())
    }

    fn add(&mut self, d: &BTreeMap<&'static str, ProgStats>) {
        for (k, v) in d {
            let t = self.totals.entry(k).or_default();
            t.runs += v.runs;
            t.ns += v.ns;
        }
    }

    /// After a drain: the cost of being attached (a) and of following (b per unit x), smoothed,
    /// then the next window's x and the gap that keeps a whole cycle within the budget.
    fn learn(&mut self, share: f64, runs: u64, ns: u64, drain: Duration) {
        let Some((w_runs, w_ns, w_followed)) = self.window_cost.take() else {
            return;
        };
        // Every run is charged its bpf_stats time plus the floor's: bpf_stats see a program's
        // body, not the tracepoint's dispatch into it, which costs at least what an empty
        // program does (on the measured VM an always-attached empty program cost tcp_stream 8%).
        let floor = self.floor.unwrap_or(0.0);
        let charge = |runs: u64, ns: u64| ns as f64 + runs as f64 * floor;
        self.charged += charge(runs, ns) + charge(w_runs, w_ns);
        // The drain's hooks on packets still in flight are few; count them as unfollowed.
        let a = charge(runs, ns) / drain.as_nanos().max(1) as f64;
        let rate_w = charge(w_runs, w_ns) / self.last_window.as_nanos().max(1) as f64;
        let b = (rate_w - a).max(0.0) / self.x;
        let smooth = |old: Option<f64>, new: f64| Some(old.map_or(new, |o| 0.5 * o + 0.5 * new));
        self.a = smooth(self.a, a);
        self.b = smooth(self.b, b);
        let per_unfollowed = if runs > 0 {
            ns as f64 / runs as f64
        } else {
            0.0
        };
        self.unfollowed.0 += runs;
        self.unfollowed.1 += ns as f64;
        if w_followed > 0 {
            let others = w_runs.saturating_sub(w_followed) as f64 * per_unfollowed;
            self.followed.0 += w_followed;
            self.followed.1 += (w_ns as f64 - others).max(0.0);
        }
        let (a, b) = (self.a.unwrap_or(a), self.b.unwrap_or(b));
        (self.x, self.gap) = plan(a, b, share);
        // Whatever the run has spent beyond its share (the first window, a burst) is paid back
        // by a longer gap: over the run, charged time / wall time stays within the share.
        if !self.gap.is_zero() {
            let (w, d) = (WINDOW.as_secs_f64(), DRAIN.as_secs_f64());
            let next = w * (a + b) + d * a;
            let elapsed = self.started.elapsed().as_secs_f64();
            let owed = (self.charged / 1e9 + next) / share - elapsed - w - d;
            if owed > self.gap.as_secs_f64() {
                self.gap = Duration::from_secs_f64(owed.min(60.0));
            }
        }
    }

    /// Ends the run: detaches stats and reports what the tracer cost.
    pub fn finish(mut self, tracer: &mut NetTracer) -> Cost {
        let c = self.cost(tracer);
        self.stats = None;
        c
    }

    /// What the tracer has cost so far (a live agent reports this at every scrape).
    pub fn cost(&self, tracer: &NetTracer) -> Cost {
        let now = Instant::now();
        let in_phase = now - self.phase_start;
        let spent = match self.phase {
            Phase::Gap => Duration::ZERO,
            _ => in_phase,
        };
        let d = diff(&tracer.prog_stats(), &self.mark);
        let mut totals = self.totals.clone();
        for (k, v) in &d {
            let t = totals.entry(k).or_default();
            t.runs += v.runs;
            t.ns += v.ns;
        }
        let wall = (now - self.started).as_secs_f64().max(1e-9);
        let attached = (self.attached + spent).as_secs_f64();
        let counted =
            !matches!(self.policy, Policy::Fixed { .. }) || totals.values().any(|s| s.runs > 0);
        let (runs, ns) = total(&totals, true);
        let per = |(n, t): (u64, f64)| (n > 0).then(|| t / n as f64);
        let (unfollowed, followed) = match self.policy {
            Policy::Budget { .. } => (per(self.unfollowed), per(self.followed)),
            // Fixed N with --bpf-stats: one mean over both kinds of hook.
            Policy::Fixed { .. } => (None, (runs > 0).then(|| ns as f64 / runs as f64)),
        };
        Cost {
            policy: self.policy,
            follow_every: 1.0 / self.x,
            duty_cycle: (attached / wall).min(1.0),
            windows: self.windows,
            measured_share: counted.then(|| ns as f64 / 1e9 / wall),
            bpf_ns_per_sec: counted.then(|| ns as f64 / wall),
            charged_share: matches!(self.policy, Policy::Budget { .. })
                .then(|| self.charged / 1e9 / wall),
            floor_ns_per_run: self.floor,
            unfollowed_ns_per_run: unfollowed,
            followed_ns_per_run: followed,
            programs: totals
                .iter()
                .filter(|(_, s)| s.runs > 0)
                .map(|(k, s)| ProgramCost {
                    program: k.to_string(),
                    runs: s.runs,
                    ns_per_run: s.ns as f64 / s.runs as f64,
                })
                .collect(),
        }
    }
}

/// The next window's share of packets followed (1/N) and the gap after it, for an attached
/// cost of `a` plus `b` per unit followed (shares of one CPU). With windows, the packets
/// followed per second are `x * share * w / (w (a + b x) + d a)`, highest at x = 1; staying
/// attached at x < 1 follows `x * w / (w + d)` with x = (share - a) / b, which is never more
/// (the drain follows nothing either way). So the budget follows every packet in windows, and
/// N > 1 is `--follow-every`'s, for hooks attached all the time.
pub fn plan(a: f64, b: f64, share: f64) -> (f64, Duration) {
    let (w, d) = (WINDOW.as_secs_f64(), DRAIN.as_secs_f64());
    if a + b <= share {
        return (1.0, Duration::ZERO);
    }
    let cycle = (w * (a + b) + d * a) / share;
    (1.0, Duration::from_secs_f64((cycle - w - d).max(0.0)))
}

/// The share of packets a plan follows over time: x times the attached share of a cycle.
pub fn follow_share(x: f64, gap: Duration) -> f64 {
    let (w, d) = (WINDOW.as_secs_f64(), DRAIN.as_secs_f64());
    x * w / (w + d + gap.as_secs_f64())
}

fn followed_hooks(tracer: &NetTracer) -> u64 {
    tracer.counter(counter::FOLLOWED_HOOKS).unwrap_or(0)
}

pub fn print(c: &Cost) {
    use crate::hist::fmt_ns;
    let how = match c.policy {
        Policy::Budget { share } => format!(
            "budget {:.1}% of one CPU: followed one packet in {:.0} while attached, attached {:.1}% of the time in {} windows",
            share * 100.0,
            c.follow_every,
            c.duty_cycle * 100.0,
            c.windows
        ),
        Policy::Fixed { every } => {
            format!("followed one packet in {every}, hooks attached all the time")
        }
    };
    println!("  tracer: {how}");
    if let Some(s) = c.measured_share {
        println!(
            "  tracer's own cost (bpf_stats): {:.2}% of one CPU ({} of BPF per second{}); a hook on a followed packet {}, on another {}, an empty program here {}",
            s * 100.0,
            fmt_ns(c.bpf_ns_per_sec.unwrap_or(0.0)),
            c.charged_share.map_or(String::new(), |x| format!(
                "; {:.2}% charged to the budget with each run's dispatch",
                x * 100.0
            )),
            c.followed_ns_per_run.map_or("-".into(), fmt_ns),
            c.unfollowed_ns_per_run.map_or("-".into(), fmt_ns),
            c.floor_ns_per_run.map_or("-".into(), fmt_ns),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A whole cycle's cost over its length: what the budget bounds.
    fn cycle_share(a: f64, b: f64, x: f64, gap: Duration) -> f64 {
        let (w, d) = (WINDOW.as_secs_f64(), DRAIN.as_secs_f64());
        (w * (a + b * x) + d * a) / (w + d + gap.as_secs_f64())
    }

    #[test]
    fn cheap_load_follows_everything_attached() {
        assert_eq!(plan(0.001, 0.004, 0.01), (1.0, Duration::ZERO));
    }

    #[test]
    fn under_load_the_follow_rate_falls_and_the_budget_holds() {
        let share = 0.01;
        let mut last = f64::INFINITY;
        // The same workload at rising rates: both costs grow with the packet rate.
        for load in [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 64.0] {
            let (a, b) = (0.004 * load, 0.012 * load);
            let (x, gap) = plan(a, b, share);
            let f = follow_share(x, gap);
            assert!(f < last, "load {load}: follow share {f} not below {last}");
            last = f;
            let spent = cycle_share(a, b, x, gap);
            assert!(spent <= share * 1.0001, "load {load}: {spent} over {share}");
        }
    }

    #[test]
    fn windows_follow_more_than_staying_attached_at_one_in_n() {
        for (a, b) in [(0.001, 0.05), (0.005, 0.02), (0.009, 0.5), (0.05, 0.1)] {
            let share = 0.01;
            let (x, gap) = plan(a, b, share);
            assert_eq!(x, 1.0);
            if a < share {
                let attached = (share - a) / b;
                assert!(follow_share(x, gap) >= follow_share(attached, Duration::ZERO));
            }
            assert!(cycle_share(a, b, x, gap) <= share * 1.0001);
        }
    }
}
