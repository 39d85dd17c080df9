//! The migration cut into consecutive phases, from QMP's events (QEMU's own timestamps) and the
//! `query-migrate` samples polled between them: setup, each pre-copy round (a round ends where
//! `dirty-sync-count` moves: QEMU re-reads the dirty bitmap), stop-and-copy and resume on the
//! destination. Pure functions, so every boundary rule is tested without a QEMU.

use serde_json::Value;

use super::guest::Tick;
use super::vm::Side;

/// One `query-migrate` answer (source), stamped halfway between its request and its reply.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Sample {
    pub at_us: i64,
    pub status: String,
    /// `ram.dirty-sync-count`: how often the dirty bitmap has been synced.
    pub sync: u64,
    /// Bytes put on the stream so far.
    pub transferred: u64,
    /// Bytes still dirty in the current bitmap.
    pub remaining: u64,
    /// Pages sent whole / sent as zero pages.
    pub normal: u64,
    pub duplicate: u64,
    /// QEMU's own dirty rate of the last sync period, pages/s.
    pub dirty_pages_rate: u64,
    pub page_size: u64,
    /// Bytes sent before the stop / while stopped (QEMU 7.0+; 0 before).
    pub precopy_bytes: u64,
    pub downtime_bytes: u64,
}

impl Sample {
    pub fn from_query(v: &Value, at_us: i64) -> Sample {
        let ram = v.get("ram").cloned().unwrap_or(Value::Null);
        let n = |k: &str| ram.get(k).and_then(Value::as_u64).unwrap_or(0);
        Sample {
            at_us,
            status: v
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            sync: n("dirty-sync-count"),
            transferred: n("transferred"),
            remaining: n("remaining"),
            normal: n("normal"),
            duplicate: n("duplicate"),
            dirty_pages_rate: n("dirty-pages-rate"),
            page_size: n("page-size").max(1),
            precopy_bytes: n("precopy-bytes"),
            downtime_bytes: n("downtime-bytes"),
        }
    }

    fn pages(&self) -> i64 {
        (self.normal + self.duplicate) as i64
    }
}

/// The events that cut the migration (CLOCK_REALTIME µs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Marks {
    /// Just before `migrate` was sent.
    pub command_us: i64,
    /// Source: MIGRATION active (setup done).
    pub active_us: i64,
    /// Source: STOP (the vCPUs are paused for the last copy).
    pub stop_us: i64,
    /// Source: MIGRATION completed (everything sent).
    pub completed_us: i64,
    /// Destination: RESUME (the guest runs there).
    pub resume_us: i64,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Phase {
    pub name: String,
    pub ns: u64,
    /// Offset of its start from the `migrate` command.
    pub start_ns: u64,
    pub what: String,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Round {
    /// The round's number: round k starts at dirty-bitmap sync k (round 1 at MIGRATION
    /// active, after the setup's sync 1). Without MIGRATION_PASS events a number may be
    /// missing: two syncs fell between two samples.
    pub name: String,
    pub start_ns: u64,
    pub ns: u64,
    pub sent_bytes: u64,
    /// Pages sent whole, and as zero pages.
    pub sent_pages: u64,
    pub zero_pages: u64,
    /// Pages the sync at the round's end found newly dirty (the next round's work); None when
    /// no sample fell inside the round (it is then counted with the round before).
    pub dirtied_pages: Option<u64>,
    pub send_mib_per_s: f64,
    /// The dirtied pages over the time they were dirtied in: this round (with the rounds
    /// after it that had no sample), the last to STOP; None under 1 ms.
    pub dirty_mib_per_s: Option<f64>,
    /// QEMU's `dirty-pages-rate` (pages/s) in the last sample of the round.
    pub qemu_dirty_pages_rate: u64,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct StopCopy {
    pub sent_bytes: u64,
    pub sent_pages: u64,
    pub zero_pages: u64,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Cut {
    pub phases: Vec<Phase>,
    pub rounds: Vec<Round>,
    pub stop_copy: StopCopy,
    pub total_ns: u64,
}

pub const SETUP: (&str, &str) = (
    "setup",
    "`migrate` sent to the source's MIGRATION active: connection, RAM block list, first dirty-bitmap sync",
);
pub const ROUND: &str = "pre-copy: pages sent while the guest runs, up to the next dirty-bitmap sync (MIGRATION_PASS), the last to STOP";
pub const STOP_COPY: (&str, &str) = (
    "stop_and_copy",
    "the source's STOP to its MIGRATION completed: last dirty pages and device state, vCPUs paused",
);
pub const RESUME: (&str, &str) = (
    "resume",
    "source completed to the destination's RESUME: the destination loads the tail of the stream and starts the vCPUs",
);

fn ns(us: i64) -> u64 {
    (us.max(0) as u64) * 1000
}

fn mib_per_s(bytes: f64, ns: u64) -> f64 {
    if ns == 0 {
        0.0
    } else {
        bytes / (1u64 << 20) as f64 / (ns as f64 / 1e9)
    }
}

/// The dirty-bitmap syncs (QEMU's MIGRATION_PASS events: pass number, µs), or where the
/// samples' `dirty-sync-count` moved when QEMU sent none (halfway between two samples).
pub fn passes(events: &[(u64, i64)], samples: &[Sample]) -> Vec<(u64, i64)> {
    if !events.is_empty() {
        return events.to_vec();
    }
    let active: Vec<&Sample> = samples.iter().filter(|s| s.status == "active").collect();
    active
        .windows(2)
        .filter(|w| w[1].sync > w[0].sync)
        .map(|w| (w[1].sync, (w[0].at_us + w[1].at_us) / 2))
        .collect()
}

/// Cuts a migration: `passes` the dirty-bitmap syncs (pass number, µs), `samples` polled from
/// the source (in time order), `last` its answer after completion. Round k runs from sync k
/// (from MIGRATION active, for round 1) to sync k+1, the last one to STOP. Boundaries are
/// clamped to be in order, so the phases always add up to `resume_us - command_us`.
pub fn cut(m: &Marks, passes: &[(u64, i64)], samples: &[Sample], last: &Sample) -> Cut {
    let page = last.page_size.max(1) as i64;
    let active = m.active_us.max(m.command_us);
    let stop = m.stop_us.max(active);
    let resume = m.resume_us.max(stop);
    // A destination may start before the source reports completion: then resume is 0.
    let completed = m.completed_us.clamp(stop, resume);
    let pre: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.status == "active" && s.at_us < stop)
        .collect();
    // Round boundaries: every sync after the setup's, before the stop.
    let mut bounds: Vec<(u64, i64)> = passes
        .iter()
        .filter(|(n, at)| *n >= 2 && *at > active && *at < stop)
        .copied()
        .collect();
    bounds.sort_by_key(|b| b.1);
    let zero = Sample::default();
    // The last sample before `t`: what had been sent by then.
    let before = |t: i64| {
        pre.iter()
            .rev()
            .find(|s| s.at_us < t)
            .copied()
            .unwrap_or(&zero)
    };
    // Pages still dirty plus pages sent only grows, at a sync, by what it found newly dirty.
    let level = |s: &Sample| s.remaining as i64 / page + s.pages();

    let mut rounds: Vec<Round> = Vec::new();
    let mut start = active;
    let mut number = 1u64;
    // (round index, level, the round's start) of the last round with a sample in it.
    let mut seen: Option<(usize, i64, i64)> = None;
    let mut dirty_us: Vec<i64> = Vec::new();
    let mut ends: Vec<(u64, i64)> = bounds.clone();
    ends.push((0, stop));
    for (next, end) in ends {
        let (from, to) = (before(start), before(end));
        let mut r = round(
            number.to_string(),
            start - m.command_us,
            end - start,
            from,
            to,
        );
        // A sample of this round has this round's sync count (one taken just before the sync
        // may be stamped just after it).
        let inside = pre.iter().rev().find(|s| s.sync == number);
        dirty_us.push(0);
        if let Some(s) = inside {
            if let Some((i, l, t)) = seen {
                rounds[i].dirtied_pages = Some((level(s) - l).max(0) as u64);
                dirty_us[i] = start - t;
            }
            seen = Some((rounds.len(), level(s), start));
        }
        r.qemu_dirty_pages_rate = to.dirty_pages_rate;
        rounds.push(r);
        start = end;
        number = if next > 0 { next } else { number + 1 };
    }
    // The final sync, with the vCPUs stopped, found what the last rounds dirtied.
    if let Some((i, l, t)) = seen {
        rounds[i].dirtied_pages = Some((last.pages() - l).max(0) as u64);
        dirty_us[i] = stop - t;
    }
    let end = before(stop);
    // The stream's own split (QEMU 7.0+): what went out before the stop beyond the last
    // sample is spread over the rounds after that sample, by time (the stream runs at its
    // rate limit), so the rounds add up to QEMU's precopy-bytes.
    let tail = last.precopy_bytes.saturating_sub(end.transferred);
    let from = if end.at_us > active {
        end.at_us
    } else {
        active
    };
    if last.precopy_bytes > 0 && tail > 0 && stop > from {
        let span = (stop - from) as f64;
        let mut given = 0u64;
        let n = rounds.len();
        for (i, r) in rounds.iter_mut().enumerate() {
            let (a, b) = (
                m.command_us + (r.start_ns / 1000) as i64,
                m.command_us + ((r.start_ns + r.ns) / 1000) as i64,
            );
            let overlap = (b.min(stop) - a.max(from)).max(0) as f64;
            let share = if i + 1 == n {
                tail - given
            } else {
                ((tail as f64) * overlap / span) as u64
            };
            given += share;
            r.sent_bytes += share;
        }
    }
    // A dirty count is what the syncs from round i's end to round j's start found: dirtied
    // between syncs i and j, so its rate is over the rounds from i's start to j's.
    for (r, us) in rounds.iter_mut().zip(dirty_us) {
        r.send_mib_per_s = mib_per_s(r.sent_bytes as f64, r.ns);
        // Over less than a millisecond a count is not a rate (a sync's stragglers).
        r.dirty_mib_per_s = r
            .dirtied_pages
            .filter(|_| us >= 1000)
            .map(|d| mib_per_s((d as i64 * page) as f64, ns(us)));
    }
    let stop_copy = StopCopy {
        sent_bytes: if last.downtime_bytes > 0 {
            last.downtime_bytes
        } else {
            last.transferred.saturating_sub(end.transferred)
        },
        sent_pages: last.normal.saturating_sub(end.normal),
        zero_pages: last.duplicate.saturating_sub(end.duplicate),
    };

    let mut phases = vec![Phase {
        name: SETUP.0.into(),
        ns: ns(active - m.command_us),
        start_ns: 0,
        what: SETUP.1.into(),
    }];
    for r in &rounds {
        phases.push(Phase {
            name: format!("round {}", r.name),
            ns: r.ns,
            start_ns: r.start_ns,
            what: ROUND.into(),
        });
    }
    phases.push(Phase {
        name: STOP_COPY.0.into(),
        ns: ns(completed - stop),
        start_ns: ns(stop - m.command_us),
        what: STOP_COPY.1.into(),
    });
    phases.push(Phase {
        name: RESUME.0.into(),
        ns: ns(resume - completed),
        start_ns: ns(completed - m.command_us),
        what: RESUME.1.into(),
    });
    Cut {
        phases,
        rounds,
        stop_copy,
        total_ns: ns(resume - m.command_us),
    }
}

fn round(name: String, start_us: i64, len_us: i64, from: &Sample, to: &Sample) -> Round {
    let sent_bytes = to.transferred.saturating_sub(from.transferred);
    Round {
        name,
        start_ns: ns(start_us),
        ns: ns(len_us),
        sent_bytes,
        sent_pages: to.normal.saturating_sub(from.normal),
        zero_pages: to.duplicate.saturating_sub(from.duplicate),
        ..Default::default()
    }
}

/// The freeze as the guest's own ticker shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GuestSide {
    /// The ticker's period (the resolution of the figures below).
    pub tick_ns: u64,
    pub ticks_source: u64,
    pub ticks_destination: u64,
    /// The last tick printed by the source and the first by the destination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_source_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_destination_seq: Option<u64>,
    /// Between those two ticks: on the guest's CLOCK_MONOTONIC, and between their arrivals on
    /// the host (what an observer of the guest's output sees).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub across_guest_clock_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub across_console_ns: Option<u64>,
    /// The largest gap between consecutive ticks over the whole migration, on each clock.
    pub largest_guest_clock_gap_ns: u64,
    pub largest_console_gap_ns: u64,
    /// Where the largest console gap began (its tick's arrival, from the `migrate` command),
    /// to find its phase.
    pub largest_console_gap_at_ns: i64,
    /// The last ticks from the source and the first from the destination.
    pub around_switch: Vec<TickSeen>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TickSeen {
    pub side: &'static str,
    pub seq: u64,
    /// Its arrival on the host, from the `migrate` command.
    pub at_ns: i64,
    /// The guest's CLOCK_MONOTONIC in it.
    pub guest_ns: u64,
}

/// Ticks as read from both consoles: (side, arrival µs, tick). Only ticks from `from_us`
/// to `to_us` (arrival) count; a tick read twice (the UART's FIFO migrates) counts once.
pub fn guest_side(
    ticks: &[(Side, i64, Tick)],
    tick_ns: u64,
    from_us: i64,
    to_us: i64,
) -> GuestSide {
    let mut t: Vec<&(Side, i64, Tick)> = ticks
        .iter()
        .filter(|(_, at, _)| *at >= from_us && *at <= to_us)
        .collect();
    t.sort_by_key(|(_, at, tick)| (tick.seq, *at));
    t.dedup_by_key(|(_, _, tick)| tick.seq);
    let mut g = GuestSide {
        tick_ns,
        ticks_source: t.iter().filter(|x| x.0 == Side::Source).count() as u64,
        ticks_destination: t.iter().filter(|x| x.0 == Side::Destination).count() as u64,
        ..Default::default()
    };
    for w in t.windows(2) {
        let gap = w[1].2.guest_ns.saturating_sub(w[0].2.guest_ns);
        g.largest_guest_clock_gap_ns = g.largest_guest_clock_gap_ns.max(gap);
        if ns(w[1].1 - w[0].1) > g.largest_console_gap_ns {
            g.largest_console_gap_ns = ns(w[1].1 - w[0].1);
            g.largest_console_gap_at_ns = (w[0].1 - from_us) * 1000;
        }
        if w[0].0 == Side::Source && w[1].0 == Side::Destination && g.last_source_seq.is_none() {
            let i = t.iter().position(|x| std::ptr::eq(*x, w[1])).unwrap_or(0);
            g.around_switch = t[i.saturating_sub(3)..(i + 3).min(t.len())]
                .iter()
                .map(|(side, at, tick)| TickSeen {
                    side: side.name(),
                    seq: tick.seq,
                    at_ns: (at - from_us) * 1000,
                    guest_ns: tick.guest_ns,
                })
                .collect();
            g.last_source_seq = Some(w[0].2.seq);
            g.first_destination_seq = Some(w[1].2.seq);
            g.across_guest_clock_ns = Some(gap);
            g.across_console_ns = Some(ns(w[1].1 - w[0].1));
        }
    }
    g
}

/// MiB/s between the first and the last of `(pages, guest ns)` reports.
pub fn dirty_rate(reports: &[(u64, u64)]) -> Option<f64> {
    let (a, b) = (reports.first()?, reports.last()?);
    if b.1 <= a.1 {
        return None;
    }
    Some(mib_per_s(
        (b.0.saturating_sub(a.0) * super::guest::PAGE) as f64,
        b.1 - a.1,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(at_us: i64, sync: u64, transferred: u64, remaining_pages: u64, normal: u64) -> Sample {
        Sample {
            at_us,
            status: "active".into(),
            sync,
            transferred,
            remaining: remaining_pages * 4096,
            normal,
            duplicate: 0,
            page_size: 4096,
            ..Default::default()
        }
    }

    const M: Marks = Marks {
        command_us: 1_000,
        active_us: 2_000,
        stop_us: 100_000,
        completed_us: 118_000,
        resume_us: 121_000,
    };

    #[test]
    fn phases_add_up_and_rounds_cut_at_each_sync() {
        let samples = [
            s(10_000, 1, 4096 * 100, 900, 100),
            s(50_000, 1, 4096 * 900, 10, 900),
            // Sync 2 between 50 and 60 ms: 300 pages newly dirty (remaining 10 -> 250 while 60 sent).
            s(60_000, 2, 4096 * 960, 250, 960),
            s(90_000, 2, 4096 * 1200, 10, 1200),
        ];
        let mut last = s(120_000, 3, 4096 * 1300, 0, 1300);
        last.status = "completed".into();
        let p = passes(&[], &samples);
        assert_eq!(p, [(2, 55_000)]);
        let c = cut(&M, &p, &samples, &last);
        let names: Vec<&str> = c.phases.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["setup", "round 1", "round 2", "stop_and_copy", "resume"]
        );
        let sum: u64 = c.phases.iter().map(|p| p.ns).sum();
        assert_eq!(sum, c.total_ns);
        assert_eq!(c.total_ns, 120_000_000);
        let ms: Vec<u64> = c.phases.iter().map(|p| p.ns / 1_000_000).collect();
        assert_eq!(ms, [1, 53, 45, 18, 3]);
        assert_eq!(c.rounds[0].dirtied_pages, Some(300));
        assert_eq!(c.rounds[0].sent_pages, 900);
        // Round 2 ends at STOP: 100 pages sent stopped, 10 of them were left over.
        assert_eq!(c.rounds[1].sent_pages, 300);
        assert_eq!(c.rounds[1].dirtied_pages, Some(90));
        // Dirtied over the round they were dirtied in: 300 pages in 53 ms, 90 in 45 ms.
        let mib = |pages: f64, ms: f64| pages * 4096.0 / (1u64 << 20) as f64 / (ms / 1e3);
        let rate = |i: usize| c.rounds[i].dirty_mib_per_s.unwrap();
        assert!((rate(0) - mib(300.0, 53.0)).abs() < 1e-9, "{}", rate(0));
        assert!((rate(1) - mib(90.0, 45.0)).abs() < 1e-9, "{}", rate(1));
        assert_eq!(c.stop_copy.sent_pages, 100);
        assert_eq!(c.stop_copy.sent_bytes, 4096 * 100);
        let starts: Vec<u64> = c.phases.iter().map(|p| p.start_ns / 1_000_000).collect();
        assert_eq!(starts, [0, 1, 54, 99, 117]);
    }

    #[test]
    fn qemus_pass_events_cut_the_rounds_and_a_round_without_samples_has_no_dirty_count() {
        let samples = [
            s(10_000, 1, 4096 * 100, 900, 100),
            s(50_000, 1, 4096 * 900, 100, 900),
        ];
        let mut last = s(120_000, 3, 4096 * 1100, 0, 1100);
        last.status = "completed".into();
        // 100 pages went out after the last sample, before the stop (QEMU's precopy-bytes).
        last.precopy_bytes = 4096 * 1000;
        // Sync 1 in setup, 2 just before the stop, 3 with the vCPUs stopped.
        let p = [(1, 1_900), (2, 99_850), (3, 100_200)];
        let c = cut(&M, &p, &samples, &last);
        // Spread by time over 50..100 ms: round 1 has 49.85 ms of it, round 2 the rest.
        assert_eq!(c.rounds[0].sent_bytes, 4096 * 900 + 408_371);
        assert_eq!(c.rounds[1].sent_bytes, 1_229);
        let names: Vec<&str> = c.rounds.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["1", "2"]);
        assert_eq!((c.rounds[0].ns, c.rounds[1].ns), (97_850_000, 150_000));
        // Round 2 had no sample: rounds 1's count covers both syncs (1100 - (100 + 900)).
        assert_eq!(c.rounds[0].dirtied_pages, Some(100));
        assert_eq!(c.rounds[1].dirtied_pages, None);
        assert_eq!(c.phases.iter().map(|p| p.ns).sum::<u64>(), c.total_ns);
    }

    #[test]
    fn two_syncs_between_samples_and_late_samples() {
        let mut late = s(110_000, 4, 1000, 0, 1000);
        late.status = "completed".into();
        let samples = [
            s(10_000, 1, 100, 900, 100),
            s(50_000, 3, 900, 10, 900),
            // During stop-and-copy QMP waits: this answer comes after it, completed.
            late,
        ];
        let mut last = s(120_000, 4, 1100, 0, 1100);
        last.status = "completed".into();
        let p = passes(&[], &samples);
        assert_eq!(p, [(3, 30_000)]);
        let c = cut(&M, &p, &samples, &last);
        let names: Vec<&str> = c.rounds.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["1", "3"]);
        assert_eq!(c.phases.iter().map(|p| p.ns).sum::<u64>(), c.total_ns);
    }

    #[test]
    fn without_samples_one_round_takes_qemus_precopy_bytes() {
        let mut last = s(120_000, 3, 5000, 0, 1000);
        last.precopy_bytes = 4000;
        last.downtime_bytes = 1000;
        let c = cut(&M, &[], &[], &last);
        assert_eq!(c.rounds.len(), 1);
        assert_eq!(c.rounds[0].name, "1");
        assert_eq!(c.rounds[0].sent_bytes, 4000);
        assert_eq!(c.stop_copy.sent_bytes, 1000);
        assert_eq!(c.phases.iter().map(|p| p.ns).sum::<u64>(), c.total_ns);
    }

    #[test]
    fn a_destination_resumed_before_the_source_reported_completion() {
        let m = Marks {
            completed_us: 125_000,
            ..M
        };
        let mut last = s(130_000, 3, 1, 0, 1);
        last.status = "completed".into();
        let c = cut(&m, &[], &[], &last);
        let stop = &c.phases[c.phases.len() - 2];
        let resume = &c.phases[c.phases.len() - 1];
        assert_eq!((stop.ns, resume.ns), (21_000_000, 0));
        assert_eq!(c.phases.iter().map(|p| p.ns).sum::<u64>(), c.total_ns);
    }

    #[test]
    fn guest_side_gap_across_the_switch() {
        let t = |seq, guest_ms: u64| Tick {
            seq,
            guest_ns: guest_ms * 1_000_000,
        };
        let ticks = [
            (Side::Source, 1_000, t(0, 10)),
            (Side::Source, 3_000, t(1, 12)),
            (Side::Source, 5_000, t(2, 14)),
            // The guest's clock stood still while stopped; the console shows 40 ms of silence.
            (Side::Destination, 45_000, t(3, 16)),
            (Side::Destination, 45_100, t(3, 16)),
            (Side::Destination, 47_000, t(4, 18)),
            (Side::Destination, 900_000, t(5, 900)),
        ];
        let g = guest_side(&ticks, 2_000_000, 0, 50_000);
        assert_eq!((g.ticks_source, g.ticks_destination), (3, 2));
        assert_eq!(
            (g.last_source_seq, g.first_destination_seq),
            (Some(2), Some(3))
        );
        assert_eq!(g.across_guest_clock_ns, Some(2_000_000));
        assert_eq!(g.across_console_ns, Some(40_000_000));
        assert_eq!(g.largest_guest_clock_gap_ns, 2_000_000);
        assert_eq!(g.largest_console_gap_ns, 40_000_000);
        assert_eq!(g.largest_console_gap_at_ns, 5_000_000);
        let seqs: Vec<(&str, u64)> = g.around_switch.iter().map(|t| (t.side, t.seq)).collect();
        assert_eq!(
            seqs,
            [
                ("source", 0),
                ("source", 1),
                ("source", 2),
                ("destination", 3),
                ("destination", 4)
            ]
        );
        assert_eq!(g.around_switch[3].at_ns, 45_000_000);
    }

    #[test]
    fn dirty_rate_from_reports() {
        // 256 pages of 4 KiB in 0.5 s: 2 MiB/s.
        let r = dirty_rate(&[(1000, 1_000_000_000), (1256, 1_500_000_000)]).unwrap();
        assert!((r - 2.0).abs() < 1e-9, "{r}");
        assert_eq!(dirty_rate(&[(1, 5)]), None);
    }
}
