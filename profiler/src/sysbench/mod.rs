//! Built-in sysbench-style workloads: `cpu`, `memory`, `fileio`, `threads` and `mutex`, with
//! sysbench 1.0's option names, defaults and event definitions, so events/s compare with
//! Debian's `sysbench` on the same machine.
//!
//! One event is what sysbench counts as one:
//! - `cpu`: the trial-division prime count over `3..cpu-max-prime` (sb_cpu.c);
//! - `memory`: one `memory-block-size` block read or written an `int` at a time, from one
//!   shared buffer (`--memory-scope=global`, the default) or one per thread (`local`);
//! - `fileio`: one `pread`/`pwrite` of `file-block-size`, or one `fsync` (sysbench queues an
//!   fsync of every file after each `file-fsync-freq` requests and counts each as an event);
//! - `threads`: `thread-yields` rounds of lock, `sched_yield`, unlock on one of `thread-locks`;
//! - `mutex`: one per thread: `mutex-locks` rounds of `mutex-loops` empty loops, then a lock.
//!
//! Each thread times each event with [`Instant`] into its own HDR histogram; the histograms
//! are merged at the end. A latency includes about one clock read (some 25 ns in a KVM guest
//! with the TSC clocksource), as sysbench's do.
//!
//! Per-event bookkeeping is lighter than sysbench's (no global mutex per memory block, two
//! clock reads instead of three), so tests whose events take well under a microsecond
//! (`memory`) show more events/s than sysbench for the same work per event.
//!
//! ```no_run
//! use profiler::sysbench::{self, Spec, Test};
//! let mut spec = Spec::new(Test::Cpu);
//! spec.time = std::time::Duration::from_secs(3);
//! spec.cpu.max_prime = 20000;
//! let report = sysbench::run_workload(&spec)?;
//! sysbench::print(&report);
//! # anyhow::Ok(())
//! ```

mod cli;
mod cpu;
mod fileio;
mod memory;
mod mutex;
mod oltp;
mod report;
#[cfg(test)]
mod tests;
mod threads;

use std::{
    fmt,
    path::PathBuf,
    sync::{
        Condvar, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow, bail};
use hdrhistogram::Histogram;
use serde::{Serialize, Serializer};

pub use cli::{SysbenchArgs, footprint, parse_size, validate_workload};
pub use cpu::count_primes;
pub use oltp::{ConnOpts, OltpOpts, OltpSetup, OltpStats};
pub use report::{
    Fairness, FileStats, FilesReport, Latency, MemoryStats, Report, RunStats, print, render,
};

/// A sysbench test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Test {
    Cpu,
    Memory,
    Fileio,
    Threads,
    Mutex,
    #[value(name = "oltp_read_write")]
    #[serde(rename = "oltp_read_write")]
    OltpReadWrite,
    #[value(name = "oltp_read_only")]
    #[serde(rename = "oltp_read_only")]
    OltpReadOnly,
    #[value(name = "oltp_write_only")]
    #[serde(rename = "oltp_write_only")]
    OltpWriteOnly,
}

/// A sysbench command; only `fileio` and `oltp_*` have anything to prepare or clean up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    Prepare,
    #[default]
    Run,
    Cleanup,
}

macro_rules! display_as_value_enum {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let v = clap::ValueEnum::to_possible_value(self).expect("no skipped variants");
                f.write_str(v.get_name())
            }
        }
    )*};
}
display_as_value_enum!(
    Test,
    Command,
    MemoryScope,
    MemoryOper,
    AccessMode,
    FileTestMode,
    FsyncMode,
    ExtraFlag
);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MemoryScope {
    #[default]
    Global,
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MemoryOper {
    Read,
    #[default]
    Write,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AccessMode {
    #[default]
    Seq,
    Rnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FileTestMode {
    Seqwr,
    Seqrewr,
    Seqrd,
    Rndrd,
    Rndwr,
    Rndrw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    #[default]
    Fsync,
    Fdatasync,
}

/// `--file-extra-flags`: open(2) flags for the test files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ExtraFlag {
    Sync,
    Dsync,
    Direct,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuOpts {
    /// Primes are counted below this (sysbench's `c < max_prime`).
    pub max_prime: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryOpts {
    pub block_size: u64,
    pub total_size: u64,
    pub scope: MemoryScope,
    pub oper: MemoryOper,
    pub access_mode: AccessMode,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileOpts {
    pub num: u32,
    pub total_size: u64,
    /// Required by `run`, ignored by `cleanup`; `seqwr` makes `prepare` remove the files.
    pub test_mode: Option<FileTestMode>,
    pub block_size: u64,
    /// fsync every file after this many requests; 0: never.
    pub fsync_freq: u64,
    /// fsync after each write; overrides `fsync_freq` and `fsync_end`.
    pub fsync_all: bool,
    pub fsync_end: bool,
    pub fsync_mode: FsyncMode,
    pub extra_flags: Vec<ExtraFlag>,
    pub rw_ratio: f64,
    /// Where the `test_file.N` files live (sysbench: the current directory).
    pub dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThreadsOpts {
    pub yields: u32,
    pub locks: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MutexOpts {
    pub num: u32,
    pub locks: u32,
    pub loops: u32,
}

/// Everything a run needs; [`Spec::new`] has sysbench's defaults.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Spec {
    pub test: Test,
    pub threads: usize,
    /// Time limit; zero: none.
    #[serde(rename = "time_s", serialize_with = "secs")]
    pub time: Duration,
    /// Event limit over all threads; 0: none.
    pub events: u64,
    pub cpu: CpuOpts,
    pub memory: MemoryOpts,
    pub fileio: FileOpts,
    /// The `threads` test's options (`threads` is the thread count).
    pub thread: ThreadsOpts,
    pub mutex: MutexOpts,
    pub oltp: OltpOpts,
}

fn secs<S: Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Spec {
    pub fn new(test: Test) -> Self {
        Self {
            test,
            threads: 1,
            time: Duration::from_secs(10),
            events: 0,
            cpu: CpuOpts { max_prime: 10000 },
            memory: MemoryOpts {
                block_size: 1 << 10,
                total_size: 100 << 30,
                scope: MemoryScope::Global,
                oper: MemoryOper::Write,
                access_mode: AccessMode::Seq,
            },
            fileio: FileOpts {
                num: 128,
                total_size: 2 << 30,
                test_mode: None,
                block_size: 16384,
                fsync_freq: 100,
                fsync_all: false,
                fsync_end: true,
                fsync_mode: FsyncMode::Fsync,
                extra_flags: Vec::new(),
                rw_ratio: 1.5,
                dir: PathBuf::from("."),
            },
            thread: ThreadsOpts {
                yields: 1000,
                locks: 8,
            },
            mutex: MutexOpts {
                num: 4096,
                locks: 50000,
                loops: 10000,
            },
            oltp: OltpOpts::default(),
        }
    }

    /// Threads, the bytes the memory test's buffers take (one shared, or one per thread),
    /// and the options that ask for them, for a refusal's message.
    pub fn footprint(&self) -> (u64, u64, String) {
        let threads = self.threads as u64;
        let memory = match (self.test, self.memory.scope) {
            (Test::Memory, MemoryScope::Global) => self.memory.block_size,
            (Test::Memory, MemoryScope::Local) => self.memory.block_size.saturating_mul(threads),
            _ => 0,
        };
        let asked = match self.test {
            Test::Memory => format!(
                "--threads {threads} --memory-block-size {} --memory-scope {}",
                crate::fit::size(self.memory.block_size),
                self.memory.scope
            ),
            _ => format!("--threads {threads}"),
        };
        (threads, memory, asked)
    }

    /// Checks the values sysbench checks; errors are one line naming the option.
    pub fn validate(&self) -> Result<()> {
        if self.threads == 0 || self.threads > 4096 {
            bail!("bad --threads {}: expected 1..=4096", self.threads);
        }
        // Both limits off ("0 for none") and a test that has no end of its own.
        if self.time.is_zero()
            && self.events == 0
            && matches!(self.test, Test::Cpu | Test::Fileio | Test::Threads)
        {
            bail!(
                "bad --time 0 with --events 0: the {} test would never end; pass --time SECS or --events N",
                self.test
            );
        }
        match self.test {
            Test::Cpu if self.cpu.max_prime == 0 => {
                bail!("bad --cpu-max-prime 0: expected a positive number")
            }
            Test::Memory => {
                let m = &self.memory;
                if m.block_size == 0 || !m.block_size.is_multiple_of(4) || m.block_size > 1 << 40 {
                    bail!(
                        "bad --memory-block-size {}: expected a positive multiple of 4 bytes",
                        m.block_size
                    );
                }
                if m.total_size == 0 {
                    bail!("bad --memory-total-size 0: expected a positive size");
                }
                if m.access_mode == AccessMode::Rnd && m.oper == MemoryOper::None {
                    bail!("bad --memory-oper none: --memory-access-mode=rnd takes read or write");
                }
            }
            Test::Fileio => {
                let f = &self.fileio;
                if f.num == 0 {
                    bail!("bad --file-num 0: expected a positive number");
                }
                if f.block_size == 0 || f.block_size > 1 << 30 {
                    bail!("bad --file-block-size {}: expected 1..=1G", f.block_size);
                }
                if f.total_size / u64::from(f.num) == 0 {
                    bail!(
                        "bad --file-total-size {}: less than one byte per file (--file-num {})",
                        f.total_size,
                        f.num
                    );
                }
                if !(f.rw_ratio.is_finite() && f.rw_ratio >= 0.0) {
                    bail!("bad --file-rw-ratio {}: expected a number >= 0", f.rw_ratio);
                }
            }
            Test::Threads if self.thread.locks == 0 => {
                bail!("bad --thread-locks 0: expected a positive number")
            }
            Test::Mutex if self.mutex.num == 0 => {
                bail!("bad --mutex-num 0: expected a positive number")
            }
            t if t.is_oltp() => oltp::validate(&self.oltp)?,
            _ => {}
        }
        Ok(())
    }
}

/// Runs `spec`'s test (the `run` command) and returns its report.
pub fn run_workload(spec: &Spec) -> Result<Report> {
    execute(spec, Command::Run)
}

/// Runs one command of `spec`'s test.
pub fn execute(spec: &Spec, command: Command) -> Result<Report> {
    spec.validate()?;
    let mut report = Report {
        test: spec.test,
        command,
        spec: spec.clone(),
        run: None,
        files: None,
        oltp: None,
    };
    match (spec.test, command) {
        (t, c) if t.is_oltp() => {
            let (run, setup) = oltp::execute(spec, c)?;
            report.run = run;
            report.oltp = Some(setup);
        }
        (Test::Fileio, Command::Prepare) => report.files = Some(fileio::prepare(spec)?),
        (Test::Fileio, Command::Cleanup) => report.files = Some(fileio::cleanup(spec)?),
        (t, Command::Prepare | Command::Cleanup) => {
            bail!(
                "the '{t}' test has no '{command}' command: only fileio and oltp_* have prepare and cleanup"
            )
        }
        (Test::Cpu, Command::Run) => report.run = Some(cpu::run(spec)?),
        (Test::Memory, Command::Run) => report.run = Some(memory::run(spec)?),
        (Test::Fileio, Command::Run) => report.run = Some(fileio::run(spec)?),
        (Test::Threads, Command::Run) => report.run = Some(threads::run(spec)?),
        (Test::Mutex, Command::Run) => report.run = Some(mutex::run(spec)?),
        (_, Command::Run) => unreachable!("oltp_* handled above"),
    }
    Ok(report)
}

/// `profiler sysbench`: the command line's test and command.
pub fn run(args: &SysbenchArgs) -> Result<Report> {
    let spec = args.spec();
    spec.validate()?;
    let (threads, memory, asked) = spec.footprint();
    let each = crate::fit::Each::workload(threads, memory, crate::fit::Each::NONE);
    crate::fit::require(args.force, &asked, 1, &each)?;
    execute(&spec, args.command)
}

/// One thread's share of a test. Generic so each test's event loop is compiled on its own.
pub(crate) trait Worker {
    /// One event; `Ok(false)`: this thread has no more events (memory's total size, mutex).
    fn event(&mut self) -> Result<bool>;
    /// After the last event, inside the timed run (fileio's fsync at the end).
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
    fn counters(&self) -> Counters {
        Counters::default()
    }
}

/// I/O counts (fileio); other tests leave them zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    pub reads: u64,
    pub writes: u64,
    pub fsyncs: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// oltp: queries that are neither reads nor writes (BEGIN, COMMIT), and ignored errors.
    pub other: u64,
    pub errors: u64,
}

impl std::ops::AddAssign for Counters {
    fn add_assign(&mut self, o: Self) {
        self.reads += o.reads;
        self.writes += o.writes;
        self.fsyncs += o.fsyncs;
        self.bytes_read += o.bytes_read;
        self.bytes_written += o.bytes_written;
        self.other += o.other;
        self.errors += o.errors;
    }
}

/// What the threads measured, merged.
pub(crate) struct Outcome {
    pub elapsed: Duration,
    pub hist: Histogram<u64>,
    /// Per thread: events and the sum of their latencies (sysbench's fairness lines).
    pub per_thread: Vec<(u64, u64)>,
    pub counters: Counters,
}

/// Highest latency the histograms track; longer events are clamped to it.
const MAX_LATENCY_NS: u64 = 3_600_000_000_000;

pub(crate) fn new_hist() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).map_err(|e| anyhow!("histogram: {e}"))
}

/// sysbench's event loop (sysbench.c `thread_run`): per thread, until the time or event
/// limit, or the worker says it is done; the clock starts when every thread is ready.
pub(crate) fn drive<W, F>(spec: &Spec, make: F) -> Result<Outcome>
where
    W: Worker,
    F: Fn(usize) -> Result<W> + Sync,
{
    let n = spec.threads;
    let gate = Gate::default();
    let stop = AtomicBool::new(false);
    let issued = AtomicU64::new(0);
    let limit = spec.events;
    let time = (!spec.time.is_zero()).then_some(spec.time);

    let worker = |i: usize| -> Result<(u64, u64, Histogram<u64>, Counters)> {
        let ready = make(i).and_then(|w| Ok((w, new_hist()?)));
        if ready.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        gate.arrive_and_wait();
        let (mut w, mut hist) = ready?;
        let deadline = time.map(|t| Instant::now() + t);
        let (mut events, mut busy) = (0u64, 0u64);
        let r = (|| -> Result<()> {
            loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if limit > 0 && issued.fetch_add(1, Ordering::Relaxed) >= limit {
                    break;
                }
                let t0 = Instant::now();
                if deadline.is_some_and(|d| t0 >= d) {
                    break;
                }
                if !w.event()? {
                    break;
                }
                let ns = t0.elapsed().as_nanos() as u64;
                hist.saturating_record(ns);
                busy += ns;
                events += 1;
            }
            w.finish()
        })();
        if r.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        r.map(|()| (events, busy, hist, w.counters()))
    };

    let (elapsed, results) = thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let worker = &worker;
                thread::Builder::new()
                    .name(format!("sysbench-{i}"))
                    .spawn_scoped(s, move || worker(i))
            })
            .collect();
        // A thread that failed to spawn never arrives: open the gate for the others anyway.
        let spawned = handles.iter().filter(|h| h.is_ok()).count();
        if spawned < n {
            stop.store(true, Ordering::Relaxed);
        }
        gate.open_when(spawned);
        let start = Instant::now();
        let results: Vec<Result<_>> = handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err(anyhow!("a sysbench thread panicked"))),
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    Err(anyhow!("spawning a sysbench thread: {e}"))
                }
            })
            .collect();
        (start.elapsed(), results)
    });

    let mut hist = new_hist()?;
    let mut per_thread = Vec::with_capacity(n);
    let mut counters = Counters::default();
    for r in results {
        let (events, busy, h, c) = r?;
        hist.add(&h)
            .map_err(|e| anyhow!("merging histograms: {e:?}"))?;
        per_thread.push((events, busy));
        counters += c;
    }
    Ok(Outcome {
        elapsed,
        hist,
        per_thread,
        counters,
    })
}

/// The start line: workers arrive when ready, the clock starts when the last one has.
#[derive(Default)]
struct Gate {
    state: Mutex<(usize, bool)>,
    cv: Condvar,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, (usize, bool)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn arrive_and_wait(&self) {
        let mut g = self.lock();
        g.0 += 1;
        self.cv.notify_all();
        while !g.1 {
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn open_when(&self, arrivals: usize) {
        let mut g = self.lock();
        while g.0 < arrivals {
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        g.1 = true;
        self.cv.notify_all();
    }
}

/// xoshiro256+, sysbench's uniform generator: cheap enough to call per `int` (memory rnd).
pub(crate) struct Rng([u64; 4]);

impl Rng {
    /// Seeded from the clock and `stream`, as sysbench seeds from time(NULL) per thread.
    pub fn new(stream: u64) -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut x = t ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut next = || {
            // splitmix64
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self([next(), next(), next(), next()])
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let r = s[0].wrapping_add(s[3]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        r
    }

    /// Uniform in [0, 1).
    #[inline]
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}
