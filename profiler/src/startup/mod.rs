//! The start-up model every `boot` kind, `run --env` and `density` share: consecutive phases
//! per instance, setup and teardown laps around the instances, and one statistics routine over
//! the instances (on `hist`).
//!
//! A report accounts for the whole run: `setup` laps + the instances' span + `teardown` laps
//! = `wall_ns`, because every lap starts where the previous one ended.

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use serde::Serialize;

pub fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// When the kernel started this process (estimated) and when `main` began.
#[derive(Clone, Copy, Debug)]
pub struct ProcessStart {
    pub forked: Option<Instant>,
    pub main: Instant,
}

static PROCESS_START: OnceLock<ProcessStart> = OnceLock::new();

/// Called first thing in `main`: a command's report then counts the process's own start
/// (exec and loading, argument parsing, the stale reaper) in its setup.
pub fn mark_process_start() {
    let main = Instant::now();
    let forked = since_fork().and_then(|d| main.checked_sub(d));
    let _ = PROCESS_START.set(ProcessStart { forked, main });
}

/// When `main` began, if it marked it.
pub fn process_start() -> Option<ProcessStart> {
    PROCESS_START.get().copied()
}

/// How long ago the kernel created this process: its start time in /proc/self/stat (clock
/// ticks since boot) against CLOCK_BOOTTIME, with half a tick added for the tick's truncation.
fn since_fork() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which may hold spaces: starttime is field 22.
    let rest = &stat[stat.rfind(')')? + 2..];
    let ticks: u64 = rest.split(' ').nth(19)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    let started = Duration::from_nanos(ticks.checked_mul(1_000_000_000)? / hz.max(1))
        + Duration::from_nanos(500_000_000 / hz.max(1));
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return None;
    }
    let now = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
    // More than a minute: not a fresh process (or a bad reading); count nothing.
    now.checked_sub(started)
        .filter(|d| *d < Duration::from_secs(60))
}

/// One phase of one instance (or one lap around the instances).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Phase {
    /// Phase name; merged phases (a marker was never seen) are joined with `+`.
    pub name: String,
    pub ns: u64,
    /// False for the phase an instance was in when it was killed or exited early.
    pub complete: bool,
    /// The same span on the guest kernel's own clock (printk timestamps), where both ends have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_ns: Option<u64>,
}

impl Phase {
    pub fn new(name: impl Into<String>, ns: u64) -> Self {
        Self {
            name: name.into(),
            ns,
            complete: true,
            guest_ns: None,
        }
    }
}

/// Consecutive phases: `marks[i]` (offset from the start) ends phase `names[i]`; the last
/// phase ends at `end`. A missing mark merges its phase into the next. When the instance did
/// not finish (`finished` false), the phase after the last mark is cut at `end` and incomplete.
/// The durations always add up to `end`.
pub fn phases(
    names: &[&str],
    marks: &[Option<Duration>],
    end: Duration,
    finished: bool,
) -> Vec<Phase> {
    debug_assert_eq!(names.len(), marks.len() + 1);
    let mut out = Vec::new();
    let mut prev = Duration::ZERO;
    let mut pending: Vec<&str> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        pending.push(name);
        let at = match marks.get(i) {
            Some(m) => *m,
            None if finished => Some(end),
            None => None,
        };
        // Out of order or past the end (a late reader): treat as missing.
        let Some(at) = at.filter(|&t| t >= prev && t <= end) else {
            continue;
        };
        out.push(Phase::new(pending.join("+"), ns(at - prev)));
        pending.clear();
        prev = at;
    }
    if !pending.is_empty() {
        out.push(Phase {
            complete: false,
            ..Phase::new(pending[0], ns(end - prev))
        });
    }
    out
}

/// The run's clock: setup laps, then the instances' span, then teardown laps; each starts
/// where the previous one ended, so together they are the wall clock.
pub struct Laps {
    start: Instant,
    mark: Instant,
    setup: Vec<Phase>,
    instances: Option<u64>,
    teardown: Vec<Phase>,
}

impl Laps {
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            mark: start,
            setup: Vec::new(),
            instances: None,
            teardown: Vec::new(),
        }
    }

    /// From the process's start when `main` marked it (laps `exec to main`, the kernel's
    /// start time of the process to `main`, within 5 ms; and `main to command`), else from now.
    pub fn since_process_start() -> Self {
        let Some(p) = process_start() else {
            return Self::new(Instant::now());
        };
        let mut l = Self::new(p.forked.unwrap_or(p.main));
        if p.forked.is_some() {
            l.setup
                .push(Phase::new("exec to main", ns(p.main - l.start)));
            l.mark = p.main;
        }
        l.lap("main to command");
        l
    }

    /// Ends a lap: a setup lap before [`Laps::instances`], a teardown lap after it.
    pub fn lap(&mut self, name: &str) {
        let now = Instant::now();
        let p = Phase::new(name, ns(now - self.mark));
        self.mark = now;
        match self.instances {
            None => self.setup.push(p),
            Some(_) => self.teardown.push(p),
        }
    }

    /// The instances ran from the last setup lap's end to now.
    pub fn instances(&mut self) {
        let now = Instant::now();
        self.instances = Some(ns(now - self.mark));
        self.mark = now;
    }

    /// The setup laps so far (e.g. for a report built before the end).
    pub fn setup(&self) -> &[Phase] {
        &self.setup
    }

    /// Ends the run at the last lap's end (what follows is the report's own making).
    pub fn finish(mut self) -> Wall {
        if self.instances.is_none() {
            self.instances();
        }
        Wall {
            setup: self.setup,
            instances_wall_ns: self.instances.unwrap_or(0),
            teardown: self.teardown,
            wall_ns: ns(self.mark - self.start),
        }
    }
}

/// Where a run's wall clock went: setup laps + the instances' span + teardown laps = `wall_ns`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Wall {
    /// Before the instances: the process's start, artefacts, tracers, a lab, a KVM probe.
    pub setup: Vec<Phase>,
    /// From the first instance's start to the last one's end, all of them together.
    pub instances_wall_ns: u64,
    /// After the instances: removing what they ran in, closing tracers.
    pub teardown: Vec<Phase>,
    /// The whole run.
    pub wall_ns: u64,
}

impl Wall {
    pub fn setup_ns(&self) -> u64 {
        self.setup.iter().map(|p| p.ns).sum()
    }

    pub fn teardown_ns(&self) -> u64 {
        self.teardown.iter().map(|p| p.ns).sum()
    }
}

/// One instance's start-up, as the statistics read it.
pub trait Instance {
    /// The phases it completed, in order: (name, ns).
    fn complete_phases(&self) -> Vec<(&str, u64)>;
    /// Its total, when it got ready (a failed instance has no total).
    fn ready_total_ns(&self) -> Option<u64>;
}

impl Instance for [Phase] {
    fn complete_phases(&self) -> Vec<(&str, u64)> {
        self.iter()
            .filter(|p| p.complete)
            .map(|p| (p.name.as_str(), p.ns))
            .collect()
    }

    fn ready_total_ns(&self) -> Option<u64> {
        self.iter()
            .all(|p| p.complete)
            .then(|| self.iter().map(|p| p.ns).sum())
    }
}

/// One phase over the instances that completed it (`total`: over those that got ready).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PhaseStats {
    pub name: String,
    pub what: String,
    pub count: u64,
    pub min_ns: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub max_ns: u64,
    pub mean_ns: u64,
}

impl PhaseStats {
    pub fn of(name: &str, what: &str, values: &[u64]) -> Self {
        let s = crate::hist::Summary::of_samples(values);
        Self {
            name: name.into(),
            what: what.into(),
            count: s.count,
            min_ns: s.min,
            p50_ns: s.p50,
            p90_ns: s.p90,
            max_ns: s.max,
            mean_ns: s.mean.round() as u64,
        }
    }
}

/// Per phase (in first-seen order) over the instances' complete phases, then `total`.
pub fn summary<'a, I: Instance + ?Sized + 'a>(
    instances: impl IntoIterator<Item = &'a I>,
    what: impl Fn(&str) -> String,
) -> Vec<PhaseStats> {
    let mut order: Vec<(String, Vec<u64>)> = Vec::new();
    let mut totals = Vec::new();
    for i in instances {
        for (name, ns) in i.complete_phases() {
            match order.iter_mut().find(|(n, _)| n == name) {
                Some((_, v)) => v.push(ns),
                None => order.push((name.to_string(), vec![ns])),
            }
        }
        totals.extend(i.ready_total_ns());
    }
    if !totals.is_empty() {
        order.push(("total".into(), totals));
    }
    order
        .into_iter()
        .map(|(name, v)| PhaseStats::of(&name, &what(&name), &v))
        .collect()
}

/// One line per lap, for the human tables.
pub fn print_laps(what: &str, laps: &[Phase]) {
    for s in laps {
        println!(
            "  {what}: {:<18} {:>9}",
            s.name,
            crate::hist::fmt_ns(s.ns as f64)
        );
    }
}

#[cfg(test)]
mod tests {
    use std::thread::sleep;

    use super::*;

    const N: [&str; 4] = ["a", "b", "c", "d"];

    fn ms(v: u64) -> Option<Duration> {
        Some(Duration::from_millis(v))
    }

    fn sum(p: &[Phase]) -> u64 {
        p.iter().map(|p| p.ns).sum()
    }

    #[test]
    fn phases_are_consecutive_and_add_up() {
        let p = phases(
            &N,
            &[ms(10), ms(30), ms(60)],
            Duration::from_millis(100),
            true,
        );
        let got: Vec<(&str, u64)> = p
            .iter()
            .map(|p| (p.name.as_str(), p.ns / 1_000_000))
            .collect();
        assert_eq!(got, [("a", 10), ("b", 20), ("c", 30), ("d", 40)]);
        assert!(p.iter().all(|p| p.complete));
        assert_eq!(sum(&p), 100_000_000);
    }

    #[test]
    fn a_missing_mark_merges_phases() {
        let p = phases(
            &N,
            &[ms(10), None, ms(60)],
            Duration::from_millis(100),
            true,
        );
        let names: Vec<&str> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "b+c", "d"]);
        assert_eq!(p[1].ns, 50_000_000);
        assert_eq!(sum(&p), 100_000_000);
    }

    #[test]
    fn a_killed_instance_ends_in_an_incomplete_phase() {
        let p = phases(
            &N,
            &[ms(10), ms(30), None],
            Duration::from_millis(5000),
            false,
        );
        let last = p.last().unwrap();
        assert_eq!((last.name.as_str(), last.complete), ("c", false));
        assert_eq!(last.ns, 4_970_000_000);
        assert_eq!(sum(&p), 5_000_000_000);
        // Killed before any mark: one incomplete phase, the first.
        let p = phases(&N, &[None, None, None], Duration::from_millis(7), false);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].name.as_str(), p[0].ns), ("a", 7_000_000));
    }

    #[test]
    fn out_of_order_or_late_marks_are_dropped() {
        let p = phases(
            &N,
            &[ms(30), ms(10), ms(200)],
            Duration::from_millis(100),
            true,
        );
        let names: Vec<&str> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "b+c+d"]);
        assert_eq!(sum(&p), 100_000_000);
    }

    #[test]
    fn laps_add_up_to_the_wall_clock() {
        let mut l = Laps::new(Instant::now());
        sleep(Duration::from_millis(5));
        l.lap("one");
        sleep(Duration::from_millis(5));
        l.instances();
        sleep(Duration::from_millis(5));
        l.lap("down");
        let w = l.finish();
        assert_eq!(w.setup.len(), 1);
        assert!(w.instances_wall_ns >= 5_000_000);
        let names: Vec<&str> = w.teardown.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["down"]);
        assert_eq!(
            w.setup_ns() + w.instances_wall_ns + w.teardown_ns(),
            w.wall_ns
        );
        assert!(w.wall_ns >= 15_000_000);
    }

    #[test]
    fn summary_has_percentiles_per_phase_and_total() {
        let run =
            |a: u64, b: u64| phases(&["x", "y"], &[ms(a)], Duration::from_millis(a + b), true);
        let mut runs = vec![run(10, 100), run(20, 100), run(30, 100), run(40, 100)];
        // Killed in y: its x counts, its y and total do not.
        runs.push(phases(
            &["x", "y"],
            &[ms(50)],
            Duration::from_millis(60),
            false,
        ));
        let s = summary(runs.iter().map(Vec::as_slice), |n| format!("<{n}>"));
        let names: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["x", "y", "total"]);
        assert_eq!(s[0].what, "<x>");
        assert_eq!(
            (s[0].min_ns, s[0].max_ns, s[0].count),
            (10_000_000, 50_000_000, 5)
        );
        assert_eq!((s[1].count, s[2].count), (4, 4));
        let close = |v: u64, want: u64| v.abs_diff(want) <= want / 500;
        assert!(close(s[0].p50_ns, 30_000_000), "{}", s[0].p50_ns);
        assert!(close(s[0].p90_ns, 50_000_000), "{}", s[0].p90_ns);
        assert!(close(s[2].p50_ns, 120_000_000));
        assert_eq!(s[2].mean_ns, 125_000_000);
        assert!(summary(std::iter::empty::<&[Phase]>(), |_| String::new()).is_empty());
    }
}
