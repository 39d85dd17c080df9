//! The migration seen from the host's kernel (probes::migrate's record): the stream's bytes per
//! phase and over time, and the vCPU threads' last run on the source and first on the
//! destination. Pure functions over the record, tested on made-up data.

use profiler_common::migrate::{
    COUNT_DST_BYTES, COUNT_DST_CALLS, COUNT_LATE, COUNT_SRC_BYTES, COUNT_SRC_CALLS, RUNS, SOURCE,
};

use super::phases::{Phase, Round, StopCopy};
use crate::probes::migrate::Raw;

/// The timeline has at most this many steps.
const STEPS: u64 = 100;

/// Exits per phase need kvm:kvm_exit, which this host's KVM never fires and TCG has not.
pub const EXITS_NOTE: &str = "exits per phase: not measured; the guests run under TCG here (no KVM exits), and this host's KVM (the PVM backend) fires no kvm:kvm_exit (real SVM exits exist only in a nested-SVM guest, issue 15)";

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct KernelSide {
    pub stream: Stream,
    pub vcpus: Vcpus,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Stream {
    /// The migration's TCP port on loopback.
    pub port: u16,
    /// Bytes the source QEMU's sends returned on the connection (sock:sock_send_length), and
    /// how many sends.
    pub source_sent_bytes: u64,
    pub source_sends: u64,
    /// Bytes the destination's receives returned (sock:sock_recv_length).
    pub destination_received_bytes: u64,
    pub destination_receives: u64,
    /// source_sent_bytes over QEMU's `ram.transferred` (the stream also carries its headers
    /// and the device state).
    pub sent_over_qemu_transferred: f64,
    /// Bytes after the last time bucket (counted in the totals, not in a phase).
    pub late_bytes: u64,
    pub bucket_ns: u64,
    pub phases: Vec<PhaseBytes>,
    /// Sent before `migrate` or after the destination's RESUME (0 unless something is off).
    pub outside_phases_sent_bytes: u64,
    /// The source's sends over time from `migrate`: `timeline_step_ns` each.
    pub timeline_step_ns: u64,
    pub timeline_sent_bytes: Vec<u64>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PhaseBytes {
    pub phase: String,
    /// From the time buckets, a boundary bucket split by time.
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub sent_mib_per_s: f64,
    /// QEMU's figure for the phase (a round's or stop-and-copy's sent bytes), where it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qemu_sent_bytes: Option<u64>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Vcpu {
    pub cpu_index: u32,
    pub thread_id: u32,
    /// Switch-ins counted while watched.
    pub runs: u64,
    /// Source: the end of its last run begun before the STOP (from `migrate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_run_end_ns: Option<i64>,
    /// Source: runs begun after the STOP (QEMU's work items; the guest was stopped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runs_after_stop: Option<u64>,
    /// Destination: its first switch-in after `migrate`, and its first at or after the
    /// RESUME (from `migrate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_run_ns: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_run_after_resume_ns: Option<i64>,
    /// Destination: runs before the RESUME (QEMU's work items while it loads the state).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runs_before_resume: Option<u64>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Vcpus {
    pub source: Vec<Vcpu>,
    pub destination: Vec<Vcpu>,
    /// The latest end of a source vCPU's last run begun before the STOP, and the earliest
    /// run of a destination vCPU begun at or after the RESUME (from `migrate`, host clock).
    pub source_last_run_ns: Option<i64>,
    pub destination_first_run_ns: Option<i64>,
    /// From the one to the other: how long no vCPU thread ran the guest on the host.
    pub freeze_ns: Option<u64>,
}

/// Where the record's clock (CLOCK_MONOTONIC) meets QMP's (CLOCK_REALTIME): `offset_ns` is
/// realtime minus monotonic, `command_us` the `migrate` command's realtime.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub offset_ns: i64,
    pub command_us: i64,
}

impl Clock {
    /// A kernel time (ktime) as ns from `migrate`.
    pub fn rel(&self, ktime: u64) -> i64 {
        ktime as i64 + self.offset_ns - self.command_us * 1000
    }
    /// ns from `migrate` as kernel time.
    pub fn ktime(&self, rel_ns: i64) -> i64 {
        rel_ns + self.command_us * 1000 - self.offset_ns
    }
}

/// Bytes of `series` in [a, b) (ktime); a bucket across a boundary split by time.
fn bytes_in(raw: &Raw, series: &[u64], a: i64, b: i64) -> f64 {
    let w = raw.bucket_ns as i64;
    let mut sum = 0.0;
    for (i, &v) in series.iter().enumerate() {
        if v == 0 {
            continue;
        }
        let lo = raw.start_ns as i64 + (raw.first as i64 + i as i64) * w;
        let overlap = ((lo + w).min(b) - lo.max(a)).max(0);
        sum += v as f64 * overlap as f64 / w as f64;
    }
    sum
}

/// The stream per phase and over time. `phases` tile the migration from `migrate`.
pub fn stream(
    raw: &Raw,
    clock: Clock,
    port: u16,
    phases: &[Phase],
    rounds: &[Round],
    stop_copy: &StopCopy,
    qemu_transferred: u64,
) -> Stream {
    let c = &raw.counters;
    let mut s = Stream {
        port,
        source_sent_bytes: c[COUNT_SRC_BYTES as usize],
        source_sends: c[COUNT_SRC_CALLS as usize],
        destination_received_bytes: c[COUNT_DST_BYTES as usize],
        destination_receives: c[COUNT_DST_CALLS as usize],
        sent_over_qemu_transferred: if qemu_transferred == 0 {
            0.0
        } else {
            c[COUNT_SRC_BYTES as usize] as f64 / qemu_transferred as f64
        },
        late_bytes: c[COUNT_LATE as usize],
        bucket_ns: raw.bucket_ns,
        ..Default::default()
    };
    let mut rounds = rounds.iter();
    let mut inside = 0.0;
    for p in phases {
        let a = clock.ktime(p.start_ns as i64);
        let b = a + p.ns as i64;
        let sent = bytes_in(raw, &raw.sent, a, b);
        inside += sent;
        let qemu = if p.name.starts_with("round ") {
            rounds.next().map(|r| r.sent_bytes)
        } else if p.name == super::phases::STOP_COPY.0 {
            Some(stop_copy.sent_bytes)
        } else {
            None
        };
        s.phases.push(PhaseBytes {
            phase: p.name.clone(),
            sent_bytes: sent.round() as u64,
            received_bytes: bytes_in(raw, &raw.received, a, b).round() as u64,
            sent_mib_per_s: if p.ns == 0 {
                0.0
            } else {
                sent / (1u64 << 20) as f64 / (p.ns as f64 / 1e9)
            },
            qemu_sent_bytes: qemu,
        });
    }
    let in_buckets: u64 = raw.sent.iter().sum();
    s.outside_phases_sent_bytes = (in_buckets as f64 - inside).max(0.0).round() as u64;
    let total: u64 = phases.iter().map(|p| p.ns).sum();
    let step = (total / STEPS)
        .max(raw.bucket_ns)
        .next_multiple_of(raw.bucket_ns);
    s.timeline_step_ns = step;
    let a0 = clock.ktime(0);
    let mut t = 0;
    while t < total {
        let a = a0 + t as i64;
        s.timeline_sent_bytes
            .push(bytes_in(raw, &raw.sent, a, a + step as i64).round() as u64);
        t += step;
    }
    s
}

/// The vCPU threads' runs around the switch-over. `cpus` maps a thread id to its vCPU index;
/// `stop_us` is the source's STOP and `resume_us` the destination's RESUME (QMP's clock).
/// A vCPU thread also wakes for QEMU's work items while the guest is stopped, so the source's
/// last run is the last begun before the STOP, the destination's first the first begun at or
/// after the RESUME; the runs in between are counted.
pub fn vcpus(raw: &Raw, clock: Clock, cpus: &[(u32, u32)], stop_us: i64, resume_us: i64) -> Vcpus {
    let at = |us: i64| clock.ktime((us - clock.command_us) * 1000);
    let (stop, resume) = (at(stop_us), at(resume_us));
    let index = |tid: u32| cpus.iter().find(|c| c.0 == tid).map_or(0, |c| c.1);
    let mut v = Vcpus::default();
    for (tid, r) in &raw.vcpus {
        let mut cpu = Vcpu {
            cpu_index: index(*tid),
            thread_id: *tid,
            runs: r.runs,
            ..Default::default()
        };
        if r.side == SOURCE {
            // The ring's runs, latest first.
            let runs: Vec<(u64, u64)> = (0..(r.runs as usize).min(RUNS))
                .map(|k| {
                    let i = ((r.runs as usize) - 1 - k) % RUNS;
                    (r.start[i], r.end[i])
                })
                .collect();
            let after = runs.iter().filter(|(s, _)| (*s as i64) >= stop).count();
            cpu.runs_after_stop = Some(after as u64);
            cpu.last_run_end_ns = runs
                .iter()
                .find(|(s, e)| (*s as i64) < stop && *e != 0)
                .map(|(_, e)| clock.rel(*e));
            v.source.push(cpu);
        } else {
            // The first runs after the arm, in order.
            let runs: Vec<u64> = r.start[..(r.armed_runs as usize).min(RUNS)].to_vec();
            cpu.first_run_ns = runs.first().map(|s| clock.rel(*s));
            cpu.first_run_after_resume_ns = runs
                .iter()
                .find(|s| (**s as i64) >= resume)
                .map(|s| clock.rel(*s));
            cpu.runs_before_resume =
                Some(runs.iter().filter(|s| (**s as i64) < resume).count() as u64);
            v.destination.push(cpu);
        }
    }
    v.source.sort_by_key(|c| c.cpu_index);
    v.destination.sort_by_key(|c| c.cpu_index);
    v.source_last_run_ns = v.source.iter().filter_map(|c| c.last_run_end_ns).max();
    v.destination_first_run_ns = v
        .destination
        .iter()
        .filter_map(|c| c.first_run_after_resume_ns)
        .min();
    if let (Some(a), Some(b)) = (v.source_last_run_ns, v.destination_first_run_ns) {
        v.freeze_ns = Some((b - a).max(0) as u64);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use profiler_common::migrate::{DESTINATION, VcpuRuns};

    const MS: u64 = 1_000_000;

    fn raw() -> Raw {
        Raw {
            start_ns: 1_000 * MS,
            bucket_ns: MS,
            first: 0,
            sent: vec![100; 10],
            received: vec![100; 10],
            counters: [1000, 10, 1000, 10, 0],
            vcpus: vec![],
        }
    }

    // `migrate` at ktime 1000 ms: offset 0 and command 1 s (in µs).
    const CLOCK: Clock = Clock {
        offset_ns: 0,
        command_us: 1_000_000,
    };

    fn phase(name: &str, start_ms: u64, ms: u64) -> Phase {
        Phase {
            name: name.into(),
            ns: ms * MS,
            start_ns: start_ms * MS,
            what: String::new(),
        }
    }

    #[test]
    fn phases_split_buckets_by_time_and_add_up() {
        let phases = [
            phase("setup", 0, 1),
            phase("round 1", 1, 5),
            phase("stop_and_copy", 6, 3),
            phase("resume", 9, 1),
        ];
        let r = Round {
            sent_bytes: 500,
            ..Default::default()
        };
        let s = stream(
            &raw(),
            CLOCK,
            4444,
            &phases,
            &[r],
            &StopCopy {
                sent_bytes: 300,
                ..Default::default()
            },
            800,
        );
        let sent: Vec<u64> = s.phases.iter().map(|p| p.sent_bytes).collect();
        assert_eq!(sent, vec![100, 500, 300, 100]);
        assert_eq!(s.phases[1].qemu_sent_bytes, Some(500));
        assert_eq!(s.phases[2].qemu_sent_bytes, Some(300));
        assert_eq!(s.phases[0].qemu_sent_bytes, None);
        assert_eq!(s.outside_phases_sent_bytes, 0);
        assert!((s.sent_over_qemu_transferred - 1.25).abs() < 1e-9);
        // A half bucket is half its bytes.
        let half = stream(
            &raw(),
            CLOCK,
            4444,
            &[Phase {
                ns: MS / 2,
                ..phase("setup", 0, 0)
            }],
            &[],
            &StopCopy::default(),
            0,
        );
        assert_eq!(half.phases[0].sent_bytes, 50);
        assert_eq!(half.outside_phases_sent_bytes, 950);
        assert_eq!(s.timeline_sent_bytes.iter().sum::<u64>(), 1000);
    }

    fn runs(side: u32, list: &[(u64, u64)], arm: u64) -> VcpuRuns {
        let mut r = VcpuRuns {
            side,
            ..Default::default()
        };
        for &(s, e) in list {
            r.runs += 1;
            if side == DESTINATION {
                if s < arm {
                    continue;
                }
                r.armed_runs += 1;
                let i = r.armed_runs as usize - 1;
                if i < RUNS {
                    r.start[i] = s;
                    r.end[i] = e;
                }
            } else {
                let i = (r.runs as usize - 1) % RUNS;
                r.start[i] = s;
                r.end[i] = e;
            }
        }
        r
    }

    #[test]
    fn freeze_is_last_source_run_to_first_destination_run() {
        let k = |ms: u64| 1_000 * MS + ms * MS;
        let mut r = raw();
        // STOP at 20 ms, RESUME at 40 ms. The source's vCPU 0 last ran to 19 ms, then woke
        // once at 25 ms; the destination's vCPU 0 ran before the arm (its start), at 30 ms
        // (a work item) and from 41 ms.
        r.vcpus = vec![
            (
                11,
                runs(SOURCE, &[(k(10), k(15)), (k(18), k(19)), (k(25), k(26))], 0),
            ),
            (12, runs(SOURCE, &[(k(5), k(17))], 0)),
            (
                21,
                runs(
                    DESTINATION,
                    &[(k(0), k(1)), (k(30), k(30)), (k(41), k(42))],
                    k(2),
                ),
            ),
            (22, runs(DESTINATION, &[(k(0), k(1))], k(2))),
        ];
        let v = vcpus(
            &r,
            CLOCK,
            &[(11, 0), (12, 1), (21, 0), (22, 1)],
            1_020_000,
            1_040_000,
        );
        assert_eq!(v.source_last_run_ns, Some((19 * MS) as i64));
        assert_eq!(v.source[0].runs_after_stop, Some(1));
        assert_eq!(v.destination[0].first_run_ns, Some((30 * MS) as i64));
        assert_eq!(v.destination[0].runs_before_resume, Some(1));
        assert_eq!(v.destination_first_run_ns, Some((41 * MS) as i64));
        assert_eq!(v.freeze_ns, Some(22 * MS));
        assert_eq!(v.destination[1].first_run_ns, None);
    }

    #[test]
    fn a_ring_that_wrapped_keeps_the_latest_runs() {
        let k = |ms: u64| 1_000 * MS + ms * MS;
        let list: Vec<(u64, u64)> = (0..80).map(|i| (k(i), k(i) + MS / 2)).collect();
        let mut r = raw();
        r.vcpus = vec![(11, runs(SOURCE, &list, 0))];
        let v = vcpus(&r, CLOCK, &[(11, 0)], 1_070_000, 1_090_000);
        // The ring holds runs 48..80; the last begun before 70 ms is at 69 ms, ending 69.5.
        assert_eq!(v.source_last_run_ns, Some((69 * MS + MS / 2) as i64));
        assert_eq!(v.source[0].runs_after_stop, Some(10));
    }
}
