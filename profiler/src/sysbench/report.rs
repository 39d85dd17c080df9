//! The report: sysbench's sections and numbers, plus the full latency histogram.

use std::{fmt::Write as _, path::PathBuf, time::Duration};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::{Command, FileOpts, MemoryOper, OltpSetup, OltpStats, Outcome, Spec, Test};

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub test: Test,
    pub command: Command,
    pub spec: Spec,
    /// `run`'s measurements.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<RunStats>,
    /// `prepare`'s and `cleanup`'s work.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesReport>,
    /// oltp_*: the server and the setup around the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oltp: Option<OltpSetup>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunStats {
    pub total_time_s: f64,
    pub total_events: u64,
    pub events_per_sec: f64,
    pub latency_ms: Latency,
    pub fairness: Fairness,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fileio: Option<FileStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oltp: Option<OltpStats>,
    /// Every HDR bucket with a count: `[highest equivalent value in ns, count]`.
    pub histogram_ns: Vec<[u64; 2]>,
    /// The merged per-event latencies in ns (3 significant digits), to merge across runs.
    #[serde(skip)]
    pub hdr: Histogram<u64>,
}

/// Per-event latency in ms, as sysbench prints it (plus p50 and p99).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub min: f64,
    pub avg: f64,
    pub max: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub sum: f64,
}

/// sysbench's "Threads fairness": events and busy time per thread, mean and stddev.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Fairness {
    pub events_avg: f64,
    pub events_stddev: f64,
    pub exec_time_avg_s: f64,
    pub exec_time_stddev_s: f64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct MemoryStats {
    pub operations: u64,
    pub ops_per_sec: f64,
    pub mib_transferred: f64,
    pub mib_per_sec: f64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct FileStats {
    pub reads: u64,
    pub writes: u64,
    /// Periodic, per-write and final fsyncs.
    pub fsyncs: u64,
    pub reads_per_sec: f64,
    pub writes_per_sec: f64,
    pub fsyncs_per_sec: f64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub read_mib_per_sec: f64,
    pub written_mib_per_sec: f64,
}

/// `fileio prepare` and `cleanup`.
#[derive(Debug, Clone, Serialize)]
pub struct FilesReport {
    pub dir: PathBuf,
    pub files: u32,
    pub file_size: u64,
    pub bytes_written: u64,
    pub files_removed: u32,
    pub seconds: f64,
}

impl FilesReport {
    pub(super) fn new(o: &FileOpts, written: u64, removed: u32, took: Duration) -> Self {
        Self {
            dir: o.dir.clone(),
            files: o.num,
            file_size: o.total_size / u64::from(o.num),
            bytes_written: written,
            files_removed: removed,
            seconds: took.as_secs_f64(),
        }
    }
}

fn mean_stddev(xs: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let n = xs.clone().count().max(1) as f64;
    let mean = xs.clone().sum::<f64>() / n;
    let var = xs.map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

pub(super) fn stats(
    out: Outcome,
    memory: Option<MemoryStats>,
    fileio: Option<FileStats>,
) -> RunStats {
    let h = &out.hist;
    let events = h.len();
    let secs = out.elapsed.as_secs_f64();
    let ms = |ns: u64| ns as f64 / 1e6;
    let sum_ns: u64 = out.per_thread.iter().map(|t| t.1).sum();
    let (q, empty) = (|p| ms(h.value_at_quantile(p)), events == 0);
    let latency_ms = Latency {
        min: if empty { 0.0 } else { ms(h.min()) },
        avg: if empty {
            0.0
        } else {
            ms(sum_ns) / events as f64
        },
        max: ms(h.max()),
        p50: q(0.50),
        p95: q(0.95),
        p99: q(0.99),
        sum: ms(sum_ns),
    };
    let (events_avg, events_stddev) = mean_stddev(out.per_thread.iter().map(|t| t.0 as f64));
    let (exec_time_avg_s, exec_time_stddev_s) =
        mean_stddev(out.per_thread.iter().map(|t| t.1 as f64 / 1e9));
    RunStats {
        total_time_s: secs,
        total_events: events,
        events_per_sec: events as f64 / secs,
        latency_ms,
        fairness: Fairness {
            events_avg,
            events_stddev,
            exec_time_avg_s,
            exec_time_stddev_s,
        },
        memory,
        fileio,
        oltp: None,
        histogram_ns: h
            .iter_recorded()
            .map(|v| [v.value_iterated_to(), v.count_at_value()])
            .collect(),
        hdr: out.hist,
    }
}

pub fn print(r: &Report) {
    print!("{}", render(r));
}

/// The text report: sysbench's layout, then the histogram.
pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let s = &r.spec;
    if let Some(f) = &r.files {
        let _ = match r.command {
            Command::Prepare if f.bytes_written > 0 || f.files_removed == 0 => writeln!(
                o,
                "fileio prepare: {} files of {} bytes in {}: {} bytes written in {:.2} s ({:.2} MiB/s)",
                f.files,
                f.file_size,
                f.dir.display(),
                f.bytes_written,
                f.seconds,
                f.bytes_written as f64 / 1048576.0 / f.seconds.max(1e-9)
            ),
            _ => writeln!(
                o,
                "fileio {}: {} of {} files removed from {}",
                r.command,
                f.files_removed,
                f.files,
                f.dir.display()
            ),
        };
        return o;
    }
    let Some(st) = &r.run else {
        // oltp_* prepare and cleanup.
        if let Some(x) = &r.oltp {
            let secs = x.prepare_s.or(x.cleanup_s).unwrap_or(0.0);
            let _ = writeln!(
                o,
                "sysbench {} {}: {} table(s) of {} rows in {:.2} s, {}",
                r.test,
                r.command,
                x.tables,
                x.rows_per_table,
                secs,
                server_line(x)
            );
        }
        return o;
    };
    let limits = match (s.time.is_zero(), s.events) {
        (false, 0) => format!("time limit {} s", s.time.as_secs_f64()),
        (true, e) => format!("event limit {e}"),
        (false, e) => format!("time limit {} s, event limit {e}", s.time.as_secs_f64()),
    };
    let what = match r.test {
        Test::Cpu => format!("prime numbers limit {}", s.cpu.max_prime),
        Test::Memory => format!(
            "block size {} B, total size {} MiB, operation {}, scope {}, access {}",
            s.memory.block_size,
            s.memory.total_size >> 20,
            s.memory.oper,
            s.memory.scope,
            s.memory.access_mode
        ),
        Test::Fileio => {
            let f = &s.fileio;
            let flags: Vec<String> = f.extra_flags.iter().map(|x| x.to_string()).collect();
            format!(
                "{} files of {} B in {}, block {} B, mode {}, fsync every {} requests{}{}, \
                 r/w ratio {}, extra flags {}",
                f.num,
                f.total_size / u64::from(f.num),
                f.dir.display(),
                f.block_size,
                f.test_mode.map_or("-".into(), |m| m.to_string()),
                f.fsync_freq,
                if f.fsync_all {
                    ", after each write"
                } else {
                    ""
                },
                if f.fsync_end { ", at the end" } else { "" },
                f.rw_ratio,
                if flags.is_empty() {
                    "(none)".into()
                } else {
                    flags.join(",")
                }
            )
        }
        Test::Threads => format!(
            "thread yields per event {}, locks {}",
            s.thread.yields, s.thread.locks
        ),
        Test::Mutex => format!(
            "mutexes {}, locks per thread {}, loops {}",
            s.mutex.num, s.mutex.locks, s.mutex.loops
        ),
        _ => {
            let o = &s.oltp;
            format!(
                "{} table(s) of {} rows, {}",
                o.tables,
                o.table_size,
                r.oltp.as_ref().map_or(String::new(), server_line)
            )
        }
    };
    let _ = writeln!(
        o,
        "sysbench {} run: {} thread(s), {limits}; {what}\n",
        r.test, s.threads
    );
    match (&st.memory, &st.fileio) {
        (Some(m), _) => {
            let _ = writeln!(
                o,
                "Total operations: {} ({:.2} per second)\n",
                m.operations, m.ops_per_sec
            );
            if s.memory.oper != MemoryOper::None {
                let _ = writeln!(
                    o,
                    "{:.2} MiB transferred ({:.2} MiB/sec)\n",
                    m.mib_transferred, m.mib_per_sec
                );
            }
        }
        (_, Some(f)) => {
            let _ = writeln!(
                o,
                "File operations:\n    reads/s:                      {:.2}\n    \
                 writes/s:                     {:.2}\n    fsyncs/s:                     {:.2}\n\n\
                 Throughput:\n    read, MiB/s:                  {:.2}\n    \
                 written, MiB/s:               {:.2}\n",
                f.reads_per_sec,
                f.writes_per_sec,
                f.fsyncs_per_sec,
                f.read_mib_per_sec,
                f.written_mib_per_sec
            );
        }
        _ => {}
    }
    if let Some(q) = &st.oltp {
        let _ = writeln!(
            o,
            "SQL statistics:\n    queries performed:\n        read:                            {}\n        \
             write:                           {}\n        other:                           {}\n        \
             total:                           {}\n    transactions:                        {:<8} ({:.2} per sec.)\n    \
             queries:                             {:<8} ({:.2} per sec.)\n    \
             ignored errors:                      {:<8} ({:.2} per sec.)\n",
            q.queries_read,
            q.queries_write,
            q.queries_other,
            q.queries_total,
            q.transactions,
            q.transactions_per_sec,
            q.queries_total,
            q.queries_per_sec,
            q.ignored_errors,
            q.ignored_errors_per_sec
        );
    }
    let l = &st.latency_ms;
    let fa = &st.fairness;
    let _ = writeln!(
        o,
        "General statistics:\n    events per second:           {:>14.2}\n    \
         total time:                  {:>13.4}s\n    total number of events:      {:>14}\n\n\
         Latency (ms):\n         min:                    {:>14.4}\n         \
         avg:                    {:>14.4}\n         max:                    {:>14.4}\n         \
         95th percentile:        {:>14.4}\n         sum:                    {:>14.2}\n\n\
         Threads fairness:\n    events (avg/stddev):           {:.4}/{:.2}\n    \
         execution time (avg/stddev):   {:.4}/{:.2}\n",
        st.events_per_sec,
        st.total_time_s,
        st.total_events,
        l.min,
        l.avg,
        l.max,
        l.p95,
        l.sum,
        fa.events_avg,
        fa.events_stddev,
        fa.exec_time_avg_s,
        fa.exec_time_stddev_s
    );
    histogram(&mut o, &st.hdr);
    o
}

/// Where the server was: its socket or address, and what setting it up took.
fn server_line(x: &OltpSetup) -> String {
    let at = match &x.endpoint.socket {
        Some(sock) => sock.clone(),
        None => format!("{}:{}", x.endpoint.host, x.endpoint.port),
    };
    match (x.server, x.install_s, x.start_s, x.prepare_s) {
        ("own", Some(i), Some(st), Some(p)) => format!(
            "server of our own at {at} (install {i:.2} s, start {st:.2} s, prepare {p:.2} s)"
        ),
        _ => format!("server at {at}"),
    }
}

/// Human units for a latency in ns.
pub(super) fn fmt_ns(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => format!("{:.3} µs", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.3} ms", ns as f64 / 1e6),
        _ => format!("{:.3} s", ns as f64 / 1e9),
    }
}

/// The HDR histogram folded into power-of-two buckets: one line each from the lowest to the
/// highest non-empty one, with the cumulative share and a bar.
fn histogram(o: &mut String, h: &Histogram<u64>) {
    if h.is_empty() {
        return;
    }
    let bucket = |v: u64| 64 - v.max(1).saturating_sub(1).leading_zeros();
    let mut counts = [0u64; 65];
    for v in h.iter_recorded() {
        counts[bucket(v.value_iterated_to()) as usize] += v.count_since_last_iteration();
    }
    let lo = bucket(h.min()) as usize;
    let hi = bucket(h.max()) as usize;
    let peak = counts[lo..=hi].iter().copied().max().unwrap_or(1).max(1);
    let total = h.len() as f64;
    let _ = writeln!(
        o,
        "Latency histogram (HDR, 3 significant digits; p50 {}, p99 {}, p99.9 {}):",
        fmt_ns(h.value_at_quantile(0.5)),
        fmt_ns(h.value_at_quantile(0.99)),
        fmt_ns(h.value_at_quantile(0.999))
    );
    let mut cum = 0;
    for (b, &c) in counts.iter().enumerate().take(hi + 1).skip(lo) {
        cum += c;
        let bar = "#".repeat(((c as f64 / peak as f64) * 40.0).ceil() as usize);
        let _ = writeln!(
            o,
            "  <= {:>11} {:>12} {:>8.3}% {bar}",
            fmt_ns(1u64 << b),
            c,
            cum as f64 * 100.0 / total
        );
    }
}
