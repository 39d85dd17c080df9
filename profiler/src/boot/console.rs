//! What a qemu and a libvirt boot share: the serial console's marks and its tail, and when
//! a VM is killed (a signal, or its time limit).

use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, Instant},
};

use super::serial;

/// Marks closing phases 0..=6 (the last phase ends at the process's exit); DONE only in a
/// workload guest.
pub const FIRST_BYTE: usize = 0;
pub const FIRMWARE_DONE: usize = 1;
pub const KERNEL_ENTRY: usize = 2;
pub const FIRST_PRINTK: usize = 3;
pub const INIT: usize = 4;
pub const READY: usize = 5;
pub const DONE: usize = 6;

/// Marker times of one boot, fed line by line.
#[derive(Default)]
pub struct Marks {
    pub at: [Option<Instant>; 7],
    pub guest: BTreeMap<String, f64>,
}

impl Marks {
    fn set(&mut self, i: usize, t: Instant) {
        // Only in order: a mark after a later one is noise.
        if self.at[i].is_none() && self.at[i + 1..].iter().all(Option::is_none) {
            self.at[i] = Some(t);
        }
    }

    /// Classifies one console line.
    pub fn note(&mut self, t: Instant, line: &str) {
        let printk = serial::printk_time(line);
        let mark = serial::marker(line);
        let firmware_done = serial::is_firmware_done(line);
        if let (Some((secs, rest)), None) = (printk, mark)
            && rest.starts_with("reboot: Power down")
        {
            self.guest.insert("power_down".into(), secs);
        }
        if firmware_done {
            self.set(FIRMWARE_DONE, t);
        } else if printk.is_none() && mark.is_none() {
            if self.at[FIRMWARE_DONE].is_some() {
                self.set(KERNEL_ENTRY, t);
            } else {
                self.set(FIRST_BYTE, t);
            }
        }
        match (mark, printk) {
            (None, Some((secs, _))) => {
                if self.at[FIRST_PRINTK].is_none() && self.at[INIT].is_none() {
                    self.guest.insert("first_printk".into(), secs);
                }
                self.set(FIRST_PRINTK, t);
            }
            (Some(name @ ("init" | "ready" | "done")), p) => {
                let i = match name {
                    "init" => INIT,
                    "ready" => READY,
                    _ => DONE,
                };
                if self.at[i].is_none()
                    && let Some((secs, _)) = p
                {
                    self.guest.insert(name.into(), secs);
                }
                self.set(i, t);
            }
            _ => {}
        }
    }
}

/// Lines of a failed boot's console in its report.
const TAIL: usize = 8;

/// One boot's console: its marks, its last lines and, for a workload guest, every line.
pub struct Console {
    pub marks: Marks,
    tail: VecDeque<String>,
    keep: bool,
    /// Every line, when kept (a workload guest prints its result there).
    pub lines: Vec<String>,
}

impl Console {
    pub fn new(keep: bool) -> Self {
        Self {
            marks: Marks::default(),
            tail: VecDeque::new(),
            keep,
            lines: Vec::new(),
        }
    }

    /// One line, stamped when it arrived.
    pub fn line(&mut self, t: Instant, l: String) {
        self.marks.note(t, &l);
        if self.keep {
            self.lines.push(l.clone());
        }
        if self.tail.len() == TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(l);
    }

    /// The guest printed its ready mark.
    pub fn ready(&self) -> bool {
        self.marks.at[READY].is_some()
    }

    /// The first `n` marks as offsets from `t0`.
    pub fn offsets(&self, t0: Instant, n: usize) -> impl Iterator<Item = Option<Duration>> + '_ {
        self.marks.at[..n]
            .iter()
            .map(move |m| m.map(|t| t.saturating_duration_since(t0)))
    }

    /// The last lines, for a boot that did not get ready (none for one that did).
    pub fn tail(&self, ready: bool) -> Vec<String> {
        if ready {
            Vec::new()
        } else {
            self.tail.iter().cloned().collect()
        }
    }
}

/// Why a VM is to be killed now, if it is: a signal (`timed_out` false), or its time limit
/// `limit` since its start (`elapsed`), said by how far it got; `vmm` names its process.
pub fn kill_reason(
    elapsed: Duration,
    limit: Duration,
    marks: &Marks,
    workload: bool,
    vmm: &str,
) -> Option<(String, bool)> {
    if crate::cleanup::stop_requested() {
        return Some((crate::cleanup::interrupted(), false));
    }
    if elapsed < limit {
        return None;
    }
    let secs = limit.as_secs_f64();
    let why = match marks.at[READY] {
        None => format!("not ready within {secs:.1} s (raise --timeout)"),
        Some(_) if workload && marks.at[DONE].is_none() => {
            format!("the workload did not finish within {secs:.1} s")
        }
        Some(_) => format!("ready, but {vmm} still running after {secs:.1} s"),
    };
    Some((why, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_the_last_lines() {
        let t = Instant::now();
        let mut c = Console::new(false);
        for i in 0..20 {
            c.line(t, format!("line {i}"));
        }
        let tail = c.tail(false);
        assert_eq!(tail.len(), TAIL);
        assert_eq!(tail[0], "line 12");
        assert!(c.tail(true).is_empty());
        assert!(c.lines.is_empty());
        let mut kept = Console::new(true);
        kept.line(t, "[    1.0] PROFILER_MARK ready".into());
        assert!(kept.ready());
        assert_eq!(kept.lines.len(), 1);
    }

    #[test]
    fn killed_at_the_limit_says_how_far_it_got() {
        let mut m = Marks::default();
        let (s, limit) = (Duration::from_secs, Duration::from_secs(10));
        assert_eq!(kill_reason(s(9), limit, &m, false, "qemu"), None);
        let (why, timed_out) = kill_reason(s(10), limit, &m, false, "qemu").unwrap();
        assert!(timed_out);
        assert_eq!(why, "not ready within 10.0 s (raise --timeout)");
        m.at[READY] = Some(Instant::now());
        let (why, _) = kill_reason(s(11), limit, &m, true, "qemu").unwrap();
        assert_eq!(why, "the workload did not finish within 10.0 s");
        let (why, _) = kill_reason(s(11), limit, &m, false, "qemu").unwrap();
        assert_eq!(why, "ready, but qemu still running after 10.0 s");
    }
}
