//! `oltp_read_write`, `oltp_read_only`, `oltp_write_only`: sysbench 1.0's oltp_common.lua
//! against a MySQL/MariaDB server, one connection per thread, server-side prepared statements
//! (sysbench's `--db-ps-mode=auto` on MySQL), one event = one transaction:
//!
//! - `BEGIN` (other), unless `--skip_trx`;
//! - reads: `point_selects` `SELECT c ... WHERE id=?`, then (unless `--range_selects=off`)
//!   `simple_ranges`, `sum_ranges`, `order_ranges` and `distinct_ranges` over `range_size` ids;
//! - writes: `index_updates` (`k=k+1`), `non_index_updates` (`c=?`), `delete_inserts`
//!   (a DELETE and an INSERT of the same id);
//! - `COMMIT` (other).
//!
//! Each group draws its table uniformly; ids come from sysbench's default `special`
//! distribution (`--rand-spec-pct=1`, `--rand-spec-res=75`, `--rand-spec-iter=12`): 75% of
//! draws fall in the middle 1% of the ids, the rest are a 12-sum near-gaussian. Deadlocks and
//! lock waits (1213, 1020, 1205: sysbench's `--mysql-ignore-errors` default) roll the
//! transaction back, count as ignored errors and restart it.
//!
//! Without a server named (`--mysql-socket`/`--mysql-host`/`--mysql-port`), `run` starts one
//! of its own ([`crate::mariadb::Server`]), prepares the tables, runs, and removes it all.

use std::{thread, time::Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use mysql::prelude::Queryable as _;
use serde::Serialize;

use super::{Command, Counters, Rng, RunStats, Spec, Test, Worker, drive, report};

/// sysbench's per-transaction query counts and switches (oltp_common.lua's options).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OltpOpts {
    pub tables: u32,
    pub table_size: u32,
    pub range_size: u32,
    pub point_selects: u32,
    pub simple_ranges: u32,
    pub sum_ranges: u32,
    pub order_ranges: u32,
    pub distinct_ranges: u32,
    pub index_updates: u32,
    pub non_index_updates: u32,
    pub delete_inserts: u32,
    pub range_selects: bool,
    pub skip_trx: bool,
    /// None: a server of the tool's own.
    pub conn: Option<ConnOpts>,
}

impl Default for OltpOpts {
    fn default() -> Self {
        Self {
            tables: 1,
            table_size: 10000,
            range_size: 100,
            point_selects: 10,
            simple_ranges: 1,
            sum_ranges: 1,
            order_ranges: 1,
            distinct_ranges: 1,
            index_updates: 1,
            non_index_updates: 1,
            delete_inserts: 1,
            range_selects: true,
            skip_trx: false,
            conn: None,
        }
    }
}

/// sysbench's mysql driver options for an existing server.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnOpts {
    /// A unix socket; when set, host and port are not used (libmysqlclient's `localhost`).
    pub socket: Option<String>,
    pub host: String,
    pub port: u16,
    pub user: String,
    #[serde(skip)]
    pub password: String,
    pub db: String,
}

/// Where the run's server was and what setting it up cost.
#[derive(Debug, Clone, Serialize)]
pub struct OltpSetup {
    /// "own": started by this run; "given": named by the options.
    pub server: &'static str,
    pub endpoint: ConnOpts,
    /// mariadb-install-db and the server's start (own server only), the tables' prepare and
    /// cleanup, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub install_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prepare_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cleanup_s: Option<f64>,
    pub tables: u32,
    pub rows_per_table: u32,
}

/// sysbench's "SQL statistics".
#[derive(Debug, Clone, Copy, Serialize)]
pub struct OltpStats {
    pub transactions: u64,
    pub transactions_per_sec: f64,
    pub queries_read: u64,
    pub queries_write: u64,
    pub queries_other: u64,
    pub queries_total: u64,
    pub queries_per_sec: f64,
    pub reads_per_sec: f64,
    pub writes_per_sec: f64,
    pub ignored_errors: u64,
    pub ignored_errors_per_sec: f64,
}

impl Test {
    pub fn is_oltp(self) -> bool {
        matches!(
            self,
            Test::OltpReadWrite | Test::OltpReadOnly | Test::OltpWriteOnly
        )
    }
}

/// Checks the values oltp_common.lua would choke on; one line naming the option.
pub(super) fn validate(o: &OltpOpts) -> Result<()> {
    if o.tables == 0 {
        bail!("bad --tables 0: expected at least one table");
    }
    if o.table_size == 0 {
        bail!("bad --table-size 0: expected at least one row per table");
    }
    if o.range_size == 0 {
        bail!("bad --range-size 0: expected at least one id per range");
    }
    if let Some(c) = &o.conn {
        if c.socket.is_none() && c.port == 0 {
            bail!("bad --mysql-port 0: expected the server's TCP port, 1..=65535");
        }
        if c.user.is_empty() || c.db.is_empty() {
            bail!("bad --mysql-user or --mysql-db: expected a name, not an empty string");
        }
    }
    Ok(())
}

fn opts(c: &ConnOpts) -> mysql::Opts {
    let b = mysql::OptsBuilder::new()
        .user(Some(&c.user))
        .pass((!c.password.is_empty()).then_some(&c.password))
        .db_name(Some(&c.db))
        .prefer_socket(false)
        .tcp_nodelay(true);
    match &c.socket {
        Some(s) => b.socket(Some(s)),
        None => b.ip_or_hostname(Some(&c.host)).tcp_port(c.port),
    }
    .into()
}

fn connect(c: &ConnOpts) -> Result<mysql::Conn> {
    let at = match &c.socket {
        Some(s) => s.clone(),
        None => format!("{}:{}", c.host, c.port),
    };
    mysql::Conn::new(opts(c)).map_err(|e| anyhow!("connecting to MySQL at {at} as {}: {e}", c.user))
}

/// One command against the server the options name, or `run` on a server of our own.
pub(super) fn execute(spec: &Spec, command: Command) -> Result<(Option<RunStats>, OltpSetup)> {
    let o = &spec.oltp;
    match &o.conn {
        Some(c) => {
            let mut setup = OltpSetup {
                server: "given",
                endpoint: c.clone(),
                install_s: None,
                start_s: None,
                prepare_s: None,
                cleanup_s: None,
                tables: o.tables,
                rows_per_table: o.table_size,
            };
            let run = match command {
                Command::Prepare => {
                    setup.prepare_s = Some(prepare(spec, c)?);
                    None
                }
                Command::Cleanup => {
                    setup.cleanup_s = Some(cleanup(o, c)?);
                    None
                }
                Command::Run => Some(run(spec, c)?),
            };
            Ok((run, setup))
        }
        None => {
            if command != Command::Run {
                bail!(
                    "'{}' {command} needs a server that outlives this command: pass --mysql-socket or --mysql-host/--mysql-port (e.g. of `profiler mariadb`); without them `run` prepares, runs and cleans up on a server of its own",
                    spec.test
                );
            }
            let server = crate::mariadb::Server::start()?;
            let e = &server.endpoint;
            let c = ConnOpts {
                socket: Some(e.socket.to_string_lossy().into_owned()),
                host: e.host.clone(),
                port: e.port,
                user: e.user.clone(),
                password: String::new(),
                db: e.db.clone(),
            };
            let prepare_s = prepare(spec, &c)?;
            if crate::cleanup::stop_requested() {
                bail!("{}", crate::cleanup::interrupted());
            }
            let stats = run(spec, &c)?;
            let cleanup_s = cleanup(o, &c)?;
            let setup = OltpSetup {
                server: "own",
                endpoint: c,
                install_s: Some(server.install_s),
                start_s: Some(server.start_s),
                prepare_s: Some(prepare_s),
                cleanup_s: Some(cleanup_s),
                tables: o.tables,
                rows_per_table: o.table_size,
            };
            drop(server);
            Ok((Some(stats), setup))
        }
    }
}

/// sysbench's `#`-templates: 11-digit groups joined by dashes.
fn digits(rng: &mut Rng, groups: usize, out: &mut String) {
    out.clear();
    for g in 0..groups {
        if g > 0 {
            out.push('-');
        }
        for _ in 0..11 {
            out.push((b'0' + (rng.uniform() * 10.0) as u8) as char);
        }
    }
}

/// sysbench.rand.uniform(a, b).
fn uniform(rng: &mut Rng, a: u32, b: u32) -> u32 {
    a + (rng.uniform() * f64::from(b - a + 1)) as u32
}

/// sysbench's default distribution, `special` with its default parameters (sb_rand.c).
fn special(rng: &mut Rng, a: u32, b: u32) -> u32 {
    const ITER: u32 = 12;
    const PCT: f64 = 1.0;
    const RES: f64 = 75.0;
    let t = f64::from(b - a);
    let rnd = rng.uniform();
    // A uniform draw over t * 100/(100-res): the first t of it picks the gaussian part.
    if rnd * t * (100.0 / (100.0 - RES)) < t {
        let sum: f64 = (0..ITER).map(|_| rng.uniform()).sum();
        return a + (sum * t / f64::from(ITER)) as u32;
    }
    // The rest: uniform over pct% of the range, centred.
    let d = t * PCT / 100.0;
    a + (rnd * (d + 1.0) + t / 2.0 - t * PCT / 200.0) as u32
}

fn prepare(spec: &Spec, c: &ConnOpts) -> Result<f64> {
    let o = &spec.oltp;
    let t0 = Instant::now();
    let workers = spec.threads.min(o.tables as usize).max(1);
    thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                s.spawn(move || -> Result<()> {
                    let mut conn = connect(c)?;
                    let mut rng = Rng::new(w as u64 + 1000);
                    for t in (w as u32 + 1..=o.tables).step_by(workers) {
                        create_table(&mut conn, &mut rng, o, t)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a prepare thread panicked")))
            })
            .collect::<Result<Vec<()>>>()
    })?;
    Ok(t0.elapsed().as_secs_f64())
}

/// oltp_common.lua's create_table: the table, its rows in multi-row INSERTs, then the
/// secondary index on k.
fn create_table(conn: &mut mysql::Conn, rng: &mut Rng, o: &OltpOpts, t: u32) -> Result<()> {
    conn.query_drop(format!(
        "CREATE TABLE sbtest{t}(\n  id INTEGER NOT NULL AUTO_INCREMENT,\n  \
         k INTEGER DEFAULT '0' NOT NULL,\n  c CHAR(120) DEFAULT '' NOT NULL,\n  \
         pad CHAR(60) DEFAULT '' NOT NULL,\n  PRIMARY KEY (id)\n) /*! ENGINE = innodb */"
    ))
    .with_context(|| format!("creating table sbtest{t}"))?;
    let (mut cv, mut pv) = (String::new(), String::new());
    let mut done = 0;
    while done < o.table_size {
        if crate::cleanup::stop_requested() {
            bail!("{}", crate::cleanup::interrupted());
        }
        let n = (o.table_size - done).min(1000);
        let mut q = format!("INSERT INTO sbtest{t}(k, c, pad) VALUES");
        for i in 0..n {
            digits(rng, 10, &mut cv);
            digits(rng, 5, &mut pv);
            let k = special(rng, 1, o.table_size);
            q.push_str(&format!(
                "{}({k}, '{cv}', '{pv}')",
                if i > 0 { "," } else { "" }
            ));
        }
        conn.query_drop(q)
            .with_context(|| format!("inserting rows into sbtest{t}"))?;
        done += n;
    }
    conn.query_drop(format!("CREATE INDEX k_{t} ON sbtest{t}(k)"))
        .with_context(|| format!("indexing sbtest{t}"))?;
    Ok(())
}

fn cleanup(o: &OltpOpts, c: &ConnOpts) -> Result<f64> {
    let t0 = Instant::now();
    let mut conn = connect(c)?;
    for t in 1..=o.tables {
        conn.query_drop(format!("DROP TABLE IF EXISTS sbtest{t}"))
            .with_context(|| format!("dropping sbtest{t}"))?;
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// Which statement groups a test runs.
#[derive(Clone, Copy)]
struct Mix {
    reads: bool,
    writes: bool,
}

fn mix(test: Test) -> Mix {
    match test {
        Test::OltpReadOnly => Mix {
            reads: true,
            writes: false,
        },
        Test::OltpWriteOnly => Mix {
            reads: false,
            writes: true,
        },
        _ => Mix {
            reads: true,
            writes: true,
        },
    }
}

/// One table's prepared statements.
struct Stmts {
    point: Option<mysql::Statement>,
    ranges: Vec<mysql::Statement>,
    index_update: Option<mysql::Statement>,
    non_index_update: Option<mysql::Statement>,
    delete: Option<mysql::Statement>,
    insert: Option<mysql::Statement>,
}

struct Client<'a> {
    conn: mysql::Conn,
    tables: Vec<Stmts>,
    o: &'a OltpOpts,
    mix: Mix,
    rng: Rng,
    counters: Counters,
    buf: String,
}

/// sysbench's `--mysql-ignore-errors` default: deadlock, record changed, lock wait timeout.
fn ignorable(e: &mysql::Error) -> bool {
    matches!(e, mysql::Error::MySqlError(m) if matches!(m.code, 1213 | 1020 | 1205))
}

impl<'a> Client<'a> {
    fn new(c: &ConnOpts, o: &'a OltpOpts, test: Test, i: usize) -> Result<Self> {
        let mut conn = connect(c)?;
        let mix = mix(test);
        let mut tables = Vec::new();
        for t in 1..=o.tables {
            let mut prep = |q: String| -> Result<mysql::Statement> {
                conn.prep(&q).with_context(|| format!("preparing {q}"))
            };
            let ranges = if mix.reads && o.range_selects {
                vec![
                    prep(format!("SELECT c FROM sbtest{t} WHERE id BETWEEN ? AND ?"))?,
                    prep(format!(
                        "SELECT SUM(k) FROM sbtest{t} WHERE id BETWEEN ? AND ?"
                    ))?,
                    prep(format!(
                        "SELECT c FROM sbtest{t} WHERE id BETWEEN ? AND ? ORDER BY c"
                    ))?,
                    prep(format!(
                        "SELECT DISTINCT c FROM sbtest{t} WHERE id BETWEEN ? AND ? ORDER BY c"
                    ))?,
                ]
            } else {
                vec![]
            };
            let w = mix.writes;
            tables.push(Stmts {
                point: if mix.reads {
                    Some(prep(format!("SELECT c FROM sbtest{t} WHERE id=?"))?)
                } else {
                    None
                },
                ranges,
                index_update: w
                    .then(|| prep(format!("UPDATE sbtest{t} SET k=k+1 WHERE id=?")))
                    .transpose()?,
                non_index_update: w
                    .then(|| prep(format!("UPDATE sbtest{t} SET c=? WHERE id=?")))
                    .transpose()?,
                delete: w
                    .then(|| prep(format!("DELETE FROM sbtest{t} WHERE id=?")))
                    .transpose()?,
                insert: w
                    .then(|| {
                        prep(format!(
                            "INSERT INTO sbtest{t} (id, k, c, pad) VALUES (?, ?, ?, ?)"
                        ))
                    })
                    .transpose()?,
            });
        }
        Ok(Self {
            conn,
            tables,
            o,
            mix,
            rng: Rng::new(i as u64),
            counters: Counters::default(),
            buf: String::with_capacity(120),
        })
    }

    fn table(&mut self) -> usize {
        uniform(&mut self.rng, 1, self.o.tables) as usize - 1
    }

    fn id(&mut self) -> u32 {
        special(&mut self.rng, 1, self.o.table_size)
    }

    fn transaction(&mut self) -> std::result::Result<(), mysql::Error> {
        let o = self.o;
        if !o.skip_trx {
            self.conn.query_drop("BEGIN")?;
            self.counters.other += 1;
        }
        if self.mix.reads {
            let t = self.table();
            for _ in 0..o.point_selects {
                let id = self.id();
                let s = self.tables[t].point.as_ref().expect("prepared for reads");
                self.conn.exec_drop(s, (id,))?;
                self.counters.reads += 1;
            }
            if o.range_selects {
                let counts = [
                    o.simple_ranges,
                    o.sum_ranges,
                    o.order_ranges,
                    o.distinct_ranges,
                ];
                for (k, n) in counts.into_iter().enumerate() {
                    let t = self.table();
                    for _ in 0..n {
                        let id = self.id();
                        let s = &self.tables[t].ranges[k];
                        self.conn.exec_drop(s, (id, id + o.range_size - 1))?;
                        self.counters.reads += 1;
                    }
                }
            }
        }
        if self.mix.writes {
            let t = self.table();
            for _ in 0..o.index_updates {
                let id = self.id();
                let s = self.tables[t].index_update.as_ref().expect("prepared");
                self.conn.exec_drop(s, (id,))?;
                self.counters.writes += 1;
            }
            let t = self.table();
            for _ in 0..o.non_index_updates {
                digits(&mut self.rng, 10, &mut self.buf);
                let id = self.id();
                let s = self.tables[t].non_index_update.as_ref().expect("prepared");
                self.conn.exec_drop(s, (self.buf.as_str(), id))?;
                self.counters.writes += 1;
            }
            let t = self.table();
            for _ in 0..o.delete_inserts {
                let id = self.id();
                let k = self.id();
                let s = self.tables[t].delete.as_ref().expect("prepared");
                self.conn.exec_drop(s, (id,))?;
                self.counters.writes += 1;
                digits(&mut self.rng, 10, &mut self.buf);
                let mut pad = String::with_capacity(60);
                digits(&mut self.rng, 5, &mut pad);
                let s = self.tables[t].insert.as_ref().expect("prepared");
                self.conn
                    .exec_drop(s, (id, k, self.buf.as_str(), pad.as_str()))?;
                self.counters.writes += 1;
            }
        }
        if !o.skip_trx {
            self.conn.query_drop("COMMIT")?;
            self.counters.other += 1;
        }
        Ok(())
    }
}

impl Worker for Client<'_> {
    fn event(&mut self) -> Result<bool> {
        loop {
            match self.transaction() {
                Ok(()) => return Ok(true),
                Err(e) if ignorable(&e) => {
                    self.counters.errors += 1;
                    let _ = self.conn.query_drop("ROLLBACK");
                    if crate::cleanup::stop_requested() {
                        return Ok(false);
                    }
                }
                Err(e) => return Err(anyhow!("{}: {e}", "a transaction failed")),
            }
        }
    }

    fn counters(&self) -> Counters {
        self.counters
    }
}

fn run(spec: &Spec, c: &ConnOpts) -> Result<RunStats> {
    let o = &spec.oltp;
    let out = drive(spec, |i| Client::new(c, o, spec.test, i))?;
    let secs = out.elapsed.as_secs_f64();
    let k = out.counters;
    let mut st = report::stats(out, None, None);
    let total = k.reads + k.writes + k.other;
    st.oltp = Some(OltpStats {
        transactions: st.total_events,
        transactions_per_sec: st.events_per_sec,
        queries_read: k.reads,
        queries_write: k.writes,
        queries_other: k.other,
        queries_total: total,
        queries_per_sec: total as f64 / secs,
        reads_per_sec: k.reads as f64 / secs,
        writes_per_sec: k.writes as f64 / secs,
        ignored_errors: k.errors,
        ignored_errors_per_sec: k.errors as f64 / secs,
    });
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_puts_three_quarters_in_the_middle_percent() {
        let mut rng = Rng::new(7);
        let (a, b) = (1, 10000);
        let n = 200_000;
        let mut mid = 0;
        for _ in 0..n {
            let v = special(&mut rng, a, b);
            assert!((a..=b).contains(&v), "{v}");
            if (4950..=5051).contains(&v) {
                mid += 1;
            }
        }
        // 75% special draws plus the gaussian part's share of the middle 1% (~3%).
        let share = mid as f64 / n as f64;
        assert!((0.74..0.82).contains(&share), "{share}");
    }

    #[test]
    fn templates_are_sysbench_lengths() {
        let mut rng = Rng::new(1);
        let mut s = String::new();
        digits(&mut rng, 10, &mut s);
        assert_eq!(s.len(), 119);
        assert_eq!(s.matches('-').count(), 9);
        digits(&mut rng, 5, &mut s);
        assert_eq!(s.len(), 59);
        for _ in 0..1000 {
            let t = uniform(&mut rng, 1, 3);
            assert!((1..=3).contains(&t));
        }
    }
}
