//! `profiler sysbench TEST [COMMAND]`: sysbench 1.0's option names, `--opt=value` syntax,
//! size suffixes and `[=on|off]` flags.

use std::{ffi::OsStr, marker::PhantomData, path::PathBuf, time::Duration};

use anyhow::{Result, anyhow, bail};
use clap::{
    ValueEnum,
    builder::{PossibleValue, TypedValueParser},
    error::ErrorKind,
};

use super::{
    AccessMode, Command, ConnOpts, ExtraFlag, FileTestMode, FsyncMode, MemoryOper, MemoryScope,
    OltpOpts, Spec, Test,
};

/// sysbench-style workloads (cpu, memory, fileio, threads, mutex, and oltp_read_write,
/// oltp_read_only, oltp_write_only on MariaDB) with sysbench's options and defaults.
#[derive(Debug, Clone, clap::Args)]
pub struct SysbenchArgs {
    /// The test, sysbench's names.
    #[arg(value_parser = OneOf::<Test>::new())]
    pub test: Test,
    /// prepare and cleanup only mean something to fileio and oltp_* (on a server named by
    /// --mysql-*: `run` on a server of its own prepares and cleans up itself).
    #[arg(value_parser = OneOf::<Command>::new(), default_value_t = Command::Run)]
    pub command: Command,
    /// Number of threads to use.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = crate::opts::at_least::<usize, 1>)]
    pub threads: usize,
    /// Time limit in seconds, 0 for none; fractions work. Both this and --events at 0 only
    /// for tests that end by themselves (memory, mutex).
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = parse_seconds)]
    pub time: Duration,
    /// Limit for the total number of events, 0 for none.
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = crate::opts::at_least::<u64, 0>)]
    pub events: u64,

    /// cpu: upper limit for the primes generator.
    #[arg(long, default_value_t = 10000, value_name = "N", value_parser = crate::opts::at_least::<u64, 1>)]
    pub cpu_max_prime: u64,

    /// memory: size of a block, one event.
    #[arg(long, default_value = "1K", value_name = "SIZE", value_parser = parse_size)]
    pub memory_block_size: u64,
    /// memory: total size of data to transfer.
    #[arg(long, default_value = "100G", value_name = "SIZE", value_parser = parse_size)]
    pub memory_total_size: u64,
    /// memory: one buffer for all threads, or one each.
    #[arg(long, default_value_t, value_parser = OneOf::<MemoryScope>::new())]
    pub memory_scope: MemoryScope,
    /// memory: type of memory operations.
    #[arg(long, default_value_t, value_parser = OneOf::<MemoryOper>::new())]
    pub memory_oper: MemoryOper,
    /// memory: memory access mode.
    #[arg(long, default_value_t, value_parser = OneOf::<AccessMode>::new())]
    pub memory_access_mode: AccessMode,

    /// fileio: number of files to create.
    #[arg(long, default_value_t = 128, value_name = "N", value_parser = crate::opts::at_least::<u32, 1>)]
    pub file_num: u32,
    /// fileio: total size of the files.
    #[arg(long, default_value = "2G", value_name = "SIZE", value_parser = parse_size)]
    pub file_total_size: u64,
    /// fileio: test mode (needed by run).
    #[arg(long, value_parser = OneOf::<FileTestMode>::new())]
    pub file_test_mode: Option<FileTestMode>,
    /// fileio: block size of every I/O operation.
    #[arg(long, default_value = "16384", value_name = "SIZE", value_parser = parse_size)]
    pub file_block_size: u64,
    /// fileio: fsync every file after this many requests (0: never).
    #[arg(long, default_value_t = 100, value_name = "N", value_parser = crate::opts::at_least::<u64, 0>)]
    pub file_fsync_freq: u64,
    /// fileio: fsync after each write.
    #[arg(long, value_name = "on|off", default_value = "off", default_missing_value = "on",
          num_args = 0..=1, require_equals = true, value_parser = parse_on_off)]
    pub file_fsync_all: bool,
    /// fileio: fsync every file at the end of the test.
    #[arg(long, value_name = "on|off", default_value = "on", default_missing_value = "on",
          num_args = 0..=1, require_equals = true, value_parser = parse_on_off)]
    pub file_fsync_end: bool,
    /// fileio: which call synchronizes.
    #[arg(long, default_value_t, value_parser = OneOf::<FsyncMode>::new())]
    pub file_fsync_mode: FsyncMode,
    /// fileio: extra flags to open the files with, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "LIST",
          value_parser = OneOf::<ExtraFlag>::new())]
    pub file_extra_flags: Vec<ExtraFlag>,
    /// fileio: reads/writes ratio of rndrw.
    #[arg(long, default_value_t = 1.5, value_name = "R")]
    pub file_rw_ratio: f64,
    /// fileio: directory of the test files (sysbench uses the current one).
    #[arg(long, default_value = ".", value_name = "DIR")]
    pub file_dir: PathBuf,

    /// threads: yields per event.
    #[arg(long, default_value_t = 1000, value_name = "N", value_parser = crate::opts::at_least::<u32, 0>)]
    pub thread_yields: u32,
    /// threads: number of locks shared by the threads.
    #[arg(long, default_value_t = 8, value_name = "N", value_parser = crate::opts::at_least::<u32, 1>)]
    pub thread_locks: u32,

    /// mutex: size of the mutex array.
    #[arg(long, default_value_t = 4096, value_name = "N", value_parser = crate::opts::at_least::<u32, 1>)]
    pub mutex_num: u32,
    /// mutex: mutex locks per thread.
    #[arg(long, default_value_t = 50000, value_name = "N", value_parser = crate::opts::at_least::<u32, 1>)]
    pub mutex_locks: u32,
    /// mutex: empty loops before each lock.
    #[arg(long, default_value_t = 10000, value_name = "N", value_parser = crate::opts::at_least::<u32, 0>)]
    pub mutex_loops: u32,

    /// oltp_*: number of tables.
    #[arg(long, alias = "tables", default_value_t = 1, value_name = "N", value_parser = crate::opts::at_least::<u32, 0>)]
    pub tables: u32,
    /// oltp_*: rows per table.
    #[arg(long, alias = "table_size", default_value_t = 10000, value_name = "N", value_parser = crate::opts::at_least::<u32, 0>)]
    pub table_size: u32,
    /// oltp_*: ids per range SELECT.
    #[arg(long, alias = "range_size", default_value_t = 100, value_name = "N", value_parser = crate::opts::at_least::<u32, 0>)]
    pub range_size: u32,
    /// oltp_*: point SELECTs per transaction.
    #[arg(long, alias = "point_selects", default_value_t = 10, value_name = "N", value_parser = crate::opts::at_least::<u32, 0>)]
    pub point_selects: u32,
    /// oltp_*: simple range SELECTs per transaction.
    #[arg(long, alias = "simple_ranges", default_value_t = 1, value_name = "N", value_parser = crate::opts::at_least::<u32, 0>)]
    pub simple_ranges: u32,
    /// oltp_*: SELECT SUM() queries per transaction.
    #[arg(long, alias = "sum_ranges", default_value_t = 1, value_name = "N", value_parser = crate::opts::at_least::<u32, 0>)]
    pub sum_ranges: u32,
    /// oltp_*: SELECT ORDER BY queries per transaction.
    #[arg(long, alias = "order_ranges", default_value_t = 1, value_name = "N", value_parser = crate::opts::at_least::<u32, 0>)]
    pub order_ranges: u32,
    /// oltp_*: SELECT DISTINCT queries per transaction.
    #[arg(long, alias = "distinct_ranges", default_value_t = 1, value_name = "N", value_parser = crate::opts::at_least::<u32, 0>)]
    pub distinct_ranges: u32,
    /// oltp_*: UPDATEs of the indexed column per transaction.
    #[arg(long, alias = "index_updates", default_value_t = 1, value_name = "N", value_parser = crate::opts::at_least::<u32, 0>)]
    pub index_updates: u32,
    /// oltp_*: UPDATEs of a non-indexed column per transaction.
    #[arg(long, alias = "non_index_updates", default_value_t = 1, value_name = "N", value_parser = crate::opts::at_least::<u32, 0>)]
    pub non_index_updates: u32,
    /// oltp_*: DELETE/INSERT pairs per transaction.
    #[arg(long, alias = "delete_inserts", default_value_t = 1, value_name = "N", value_parser = crate::opts::at_least::<u32, 0>)]
    pub delete_inserts: u32,
    /// oltp_*: the four range SELECT kinds on or off.
    #[arg(long, alias = "range_selects", value_name = "on|off", default_value = "on", default_missing_value = "on",
          num_args = 0..=1, require_equals = true, value_parser = parse_on_off)]
    pub range_selects: bool,
    /// oltp_*: no BEGIN/COMMIT, every query in autocommit.
    #[arg(long, alias = "skip_trx", value_name = "on|off", default_value = "off", default_missing_value = "on",
          num_args = 0..=1, require_equals = true, value_parser = parse_on_off)]
    pub skip_trx: bool,
    /// oltp_*: an existing server's unix socket. Without --mysql-socket, --mysql-host and
    /// --mysql-port, `run` starts a MariaDB of its own and removes it at the end.
    #[arg(long, value_name = "PATH")]
    pub mysql_socket: Option<String>,
    /// oltp_*: an existing server's address (TCP).
    #[arg(long, value_name = "HOST")]
    pub mysql_host: Option<String>,
    /// oltp_*: an existing server's TCP port [default: 3306].
    #[arg(long, value_name = "PORT")]
    pub mysql_port: Option<u16>,
    /// oltp_*: user on an existing server.
    #[arg(long, default_value = "sbtest", value_name = "NAME")]
    pub mysql_user: String,
    /// oltp_*: password on an existing server.
    #[arg(
        long,
        default_value = "",
        value_name = "PASSWORD",
        hide_default_value = true
    )]
    pub mysql_password: String,
    /// oltp_*: database on an existing server.
    #[arg(long, default_value = "sbtest", value_name = "NAME")]
    pub mysql_db: String,

    /// The report as JSON: on stdout (no FILE, or -) or into FILE.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    pub json: Option<std::path::PathBuf>,
    /// Run even when --threads or the memory test's buffers do not fit this machine.
    #[arg(long)]
    pub force: bool,
}

/// The threads and bytes of memory a `sysbench ...` workload's arguments ask for; None when
/// they are not a sysbench workload that parses (its own run then says what is wrong).
pub fn footprint(argv: &[String]) -> Option<(u64, u64, String)> {
    Some(parsed(argv)?.spec().footprint())
}

/// A `sysbench ...` workload's values checked as its run will check them (e.g. `--time 0`
/// with no `--events`), before an environment is started for it; other workloads pass.
pub fn validate_workload(argv: &[String]) -> Result<()> {
    match parsed(argv) {
        Some(args) => args
            .spec()
            .validate()
            .map_err(|e| anyhow!("the workload's arguments: {e}")),
        None => Ok(()),
    }
}

/// `sysbench ...` arguments as the workload parses them; None for another workload.
fn parsed(argv: &[String]) -> Option<SysbenchArgs> {
    #[derive(clap::Parser)]
    #[command(no_binary_name = true)]
    struct Workload {
        #[command(flatten)]
        args: SysbenchArgs,
    }
    let rest = argv.strip_prefix(&["sysbench".to_string()])?;
    Some(<Workload as clap::Parser>::try_parse_from(rest).ok()?.args)
}

impl SysbenchArgs {
    /// The run's parameters (checked by [`super::execute`]).
    pub fn spec(&self) -> Spec {
        let mut s = Spec::new(self.test);
        s.threads = self.threads;
        s.time = self.time;
        s.events = self.events;
        s.cpu.max_prime = self.cpu_max_prime;
        s.memory.block_size = self.memory_block_size;
        s.memory.total_size = self.memory_total_size;
        s.memory.scope = self.memory_scope;
        s.memory.oper = self.memory_oper;
        s.memory.access_mode = self.memory_access_mode;
        let f = &mut s.fileio;
        f.num = self.file_num;
        f.total_size = self.file_total_size;
        f.test_mode = self.file_test_mode;
        f.block_size = self.file_block_size;
        f.fsync_freq = self.file_fsync_freq;
        f.fsync_all = self.file_fsync_all;
        f.fsync_end = self.file_fsync_end;
        f.fsync_mode = self.file_fsync_mode;
        f.extra_flags = self.file_extra_flags.clone();
        f.rw_ratio = self.file_rw_ratio;
        f.dir = self.file_dir.clone();
        s.thread.yields = self.thread_yields;
        s.thread.locks = self.thread_locks;
        s.mutex.num = self.mutex_num;
        s.mutex.locks = self.mutex_locks;
        s.mutex.loops = self.mutex_loops;
        let named =
            self.mysql_socket.is_some() || self.mysql_host.is_some() || self.mysql_port.is_some();
        s.oltp = OltpOpts {
            tables: self.tables,
            table_size: self.table_size,
            range_size: self.range_size,
            point_selects: self.point_selects,
            simple_ranges: self.simple_ranges,
            sum_ranges: self.sum_ranges,
            order_ranges: self.order_ranges,
            distinct_ranges: self.distinct_ranges,
            index_updates: self.index_updates,
            non_index_updates: self.non_index_updates,
            delete_inserts: self.delete_inserts,
            range_selects: self.range_selects,
            skip_trx: self.skip_trx,
            conn: named.then(|| ConnOpts {
                socket: self.mysql_socket.clone(),
                host: self
                    .mysql_host
                    .clone()
                    .unwrap_or_else(|| "127.0.0.1".into()),
                port: self.mysql_port.unwrap_or(3306),
                user: self.mysql_user.clone(),
                password: self.mysql_password.clone(),
                db: self.mysql_db.clone(),
            }),
        };
        s
    }
}

/// sysbench's sizes: bytes with an optional K, M, G, T or P suffix (powers of 1024; a
/// trailing B or iB is accepted, any case).
pub fn parse_size(s: &str) -> Result<u64> {
    let bad = || {
        anyhow!("bad size '{s}': expected bytes with an optional K, M, G, T or P suffix, e.g. 16K")
    };
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift).ok_or_else(bad)
}

fn parse_seconds(s: &str) -> Result<Duration> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| anyhow!("bad time '{s}': expected seconds, e.g. 10 or 0.5"))?;
    if !(v.is_finite() && (0.0..=1e9).contains(&v)) {
        bail!("bad time '{s}': expected seconds between 0 and 1e9");
    }
    Ok(Duration::from_secs_f64(v))
}

fn parse_on_off(s: &str) -> Result<bool> {
    match s.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => bail!("bad flag value '{s}': expected on or off"),
    }
}

/// A `ValueEnum` parser whose error is one line naming every valid value (clap's own puts
/// them on a second line).
#[derive(Clone)]
struct OneOf<E>(PhantomData<E>);

impl<E> OneOf<E> {
    fn new() -> Self {
        Self(PhantomData)
    }
}

impl<E: ValueEnum + Clone + Send + Sync + 'static> TypedValueParser for OneOf<E> {
    type Value = E;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> std::result::Result<E, clap::Error> {
        let v = value.to_string_lossy();
        E::from_str(&v, true).map_err(|_| {
            let names: Vec<String> = E::value_variants()
                .iter()
                .filter_map(|x| x.to_possible_value())
                .map(|p| p.get_name().to_string())
                .collect();
            let arg = arg.map_or_else(|| "value".to_string(), |a| a.to_string());
            clap::Error::raw(
                ErrorKind::InvalidValue,
                format!(
                    "invalid value '{v}' for '{arg}': expected one of {}\n",
                    names.join(", ")
                ),
            )
            .with_cmd(cmd)
        })
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(
            E::value_variants()
                .iter()
                .filter_map(|v| v.to_possible_value()),
        ))
    }
}
