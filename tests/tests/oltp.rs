//! `sysbench oltp_*` on a real MariaDB (Debian's mariadb-server; never skipped: without it
//! the tests fail and say how to install it): a server of the tool's own on the host and in a
//! native container, prepare/run/cleanup on a held server (`profiler mariadb`) with Debian's
//! sysbench on the same server within a loose bound (the 5% goal is `cargo xtask
//! bench-sysbench`'s), SIGINT of a run and of the holder, and bad input. kill -9 is in
//! kill9.rs.

use std::{
    io::BufRead as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use profiler::mariadb::{DATA_ROOT, servers_in};
use profiler_tests::{assert_refused_in_one_line, profiler, require_root, run_ok, signal};

fn require_mariadb() {
    require_root();
    assert!(
        Path::new("/usr/sbin/mariadbd").exists(),
        "Debian's mariadb-server is not installed: run `cargo xtask setup`"
    );
}

/// Data directories whose owner is gone, and any server still running in one.
fn dead_owners_leftovers() -> Vec<String> {
    let mut left = vec![];
    for e in std::fs::read_dir(DATA_ROOT).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let dead = profiler::cleanup::owner::of_name(&name).is_none_or(|o| !o.alive());
        if dead {
            left.push(format!("data dir {}", e.path().display()));
            left.extend(
                servers_in(&e.path())
                    .into_iter()
                    .map(|p| format!("mariadbd {p}")),
            );
        }
    }
    left
}

/// The run's own server is gone: no directory, no process.
fn assert_gone(dir: &Path) {
    let t = Instant::now();
    while (dir.exists() || !servers_in(dir).is_empty()) && t.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(
        servers_in(dir).is_empty(),
        "a mariadbd of {} still runs",
        dir.display()
    );
}

/// A run's report: transactions, the sysbench mix per transaction, a histogram of them all.
fn check_run(run: &serde_json::Value, reads: u64, writes: u64) -> u64 {
    let q = &run["oltp"];
    let tx = q["transactions"].as_u64().expect("transactions");
    assert!(tx > 10, "{run}");
    assert_eq!(run["total_events"].as_u64(), Some(tx));
    let hist: u64 = run["histogram_ns"]
        .as_array()
        .expect("histogram")
        .iter()
        .map(|b| b[1].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(hist, tx, "the histogram counts every transaction");
    // A retried (deadlocked) transaction adds its partial queries: at least the mix, and
    // close to it.
    let per = |k: &str| q[k].as_u64().expect(k) as f64 / tx as f64;
    let (r, w, o) = (
        per("queries_read"),
        per("queries_write"),
        per("queries_other"),
    );
    let errors = q["ignored_errors"].as_u64().unwrap_or(0) as f64 / tx as f64;
    assert!(
        r >= reads as f64 && r <= reads as f64 * (1.0 + errors) + 0.01,
        "reads per transaction {r}, expected {reads}: {q}"
    );
    assert!(
        w >= writes as f64 && w <= writes as f64 * (1.0 + errors) + 0.01,
        "writes per transaction {w}, expected {writes}: {q}"
    );
    assert!(
        (2.0..=2.0 + 2.0 * errors + 0.01).contains(&o),
        "other {o}: {q}"
    );
    let l = &run["latency_ms"];
    assert!(l["min"].as_f64() <= l["p95"].as_f64() && l["p95"].as_f64() <= l["max"].as_f64());
    tx
}

#[test]
fn own_server_on_the_host_and_in_a_native_container() {
    require_mariadb();
    let out = run_ok(profiler().args([
        "sysbench",
        "oltp_read_write",
        "--threads",
        "2",
        "--time",
        "2",
        "--table-size",
        "2000",
        "--json",
    ]));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    check_run(&r["run"], 14, 4);
    assert_eq!(r["oltp"]["server"], "own");
    let sock = PathBuf::from(r["oltp"]["endpoint"]["socket"].as_str().expect("socket"));
    assert_gone(sock.parent().expect("the server's directory"));

    // In a native container: its own server in the container's network namespace.
    let out = run_ok(profiler().args([
        "run",
        "--env",
        "native",
        "sysbench",
        "oltp_read_only",
        "--time",
        "2",
        "--table-size",
        "2000",
    ]));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let run = &r["report"]["run"];
    check_run(run, 14, 0);
    let sock = PathBuf::from(
        r["report"]["oltp"]["endpoint"]["socket"]
            .as_str()
            .expect("socket"),
    );
    assert_gone(sock.parent().expect("the server's directory"));
    assert!(
        dead_owners_leftovers().is_empty(),
        "{:?}",
        dead_owners_leftovers()
    );
}

#[test]
fn own_server_in_a_docker_container() {
    require_mariadb();
    assert!(
        std::os::unix::net::UnixStream::connect("/var/run/docker.sock").is_ok(),
        "no Docker daemon answers on /var/run/docker.sock"
    );
    let out = run_ok(profiler().args([
        "run",
        "--env",
        "docker",
        "sysbench",
        "oltp_write_only",
        "--time",
        "2",
        "--table-size",
        "2000",
    ]));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    check_run(&r["report"]["run"], 0, 4);
    assert_eq!(r["report"]["oltp"]["server"], "own");
}

/// `profiler mariadb`: its JSON line, and the child to signal.
fn hold() -> (std::process::Child, serde_json::Value) {
    let mut child = profiler()
        .arg("mariadb")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning profiler mariadb");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("reading the server's line");
    let v: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("profiler mariadb printed {line:?}: {e}"));
    (child, v)
}

fn sysbench_tps(sock: &str, secs: u32) -> f64 {
    let out = Command::new("sysbench")
        .args([
            "oltp_read_write",
            &format!("--mysql-socket={sock}"),
            "--mysql-user=sbtest",
            "--mysql-db=sbtest",
            "--table-size=2000",
            "--threads=2",
            &format!("--time={secs}"),
            "run",
        ])
        .output()
        .expect("sysbench (apt-get install sysbench)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "sysbench failed: {text}");
    text.lines()
        .find_map(|l| {
            let l = l.trim().strip_prefix("transactions:")?;
            l.split('(').nth(1)?.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no transactions line in sysbench's output:\n{text}"))
}

#[test]
fn prepare_run_cleanup_on_a_held_server_beside_debian_sysbench_then_sigint() {
    require_mariadb();
    let (child, v) = hold();
    let sock = v["socket"].as_str().expect("socket").to_string();
    let dir = PathBuf::from(v["dir"].as_str().expect("dir"));
    let ours = |cmd: &str| {
        let out = run_ok(profiler().args([
            "sysbench",
            "oltp_read_write",
            cmd,
            "--mysql-socket",
            &sock,
            "--table-size",
            "2000",
            "--threads",
            "2",
            "--time",
            "2",
            "--json",
        ]));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON report")
    };
    let p = ours("prepare");
    assert_eq!(p["oltp"]["server"], "given");
    assert!(p["oltp"]["prepare_s"].as_f64().is_some_and(|s| s > 0.0));
    // Interleaved: ours, Debian's, ours, Debian's.
    let mut pairs = vec![];
    for _ in 0..2 {
        let r = ours("run");
        let tx = check_run(&r["run"], 14, 4);
        let tps = r["run"]["oltp"]["transactions_per_sec"]
            .as_f64()
            .expect("tps");
        assert!(tps > 0.0 && tx > 0);
        pairs.push((tps, sysbench_tps(&sock, 2)));
    }
    eprintln!("transactions/s, ours vs Debian's sysbench: {pairs:?}");
    let ratio: f64 = pairs.iter().map(|(a, b)| a / b).sum::<f64>() / pairs.len() as f64;
    assert!(
        (0.5..2.0).contains(&ratio),
        "ours / Debian's sysbench {ratio:.2} (pairs {pairs:?}): not even within 2x"
    );
    ours("cleanup");
    // The tables are gone: Debian's sysbench cannot run on them.
    let out = Command::new("sysbench")
        .args([
            "oltp_read_only",
            &format!("--mysql-socket={sock}"),
            "--mysql-user=sbtest",
            "--time=1",
            "run",
        ])
        .output()
        .expect("sysbench");
    assert!(!out.status.success(), "sbtest1 survived cleanup");

    signal(child.id(), libc::SIGINT);
    let t = Instant::now();
    let out = child.wait_with_output().expect("waiting for the holder");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    assert_gone(&dir);
}

#[test]
fn sigint_during_a_run_removes_the_server() {
    require_mariadb();
    let mut child = profiler()
        .args(["sysbench", "oltp_write_only", "--time", "60", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning profiler");
    // Running: its server answers and the run has begun (after install, start, prepare).
    let marker = format!("profiler-{}-", child.id());
    let t = Instant::now();
    let dir = loop {
        let found = std::fs::read_dir(DATA_ROOT)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().contains(&marker) && !servers_in(p).is_empty());
        if let Some(d) = found {
            break d;
        }
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "the run ended early"
        );
        assert!(t.elapsed() < Duration::from_secs(60), "no server came up");
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_secs(3));
    signal(child.id(), libc::SIGINT);
    let t = Instant::now();
    let out = child.wait_with_output().expect("waiting");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_gone(&dir);
}

#[test]
fn bad_input_is_refused_in_one_line() {
    require_mariadb();
    for (args, needle) in [
        (
            &["sysbench", "oltp_read_write", "--tables", "0"][..],
            "bad --tables 0",
        ),
        (
            &["sysbench", "oltp_read_only", "--table-size", "0"],
            "bad --table-size 0",
        ),
        (
            &["sysbench", "oltp_read_write", "prepare"],
            "needs a server that outlives this command",
        ),
        (
            &["sysbench", "oltp_write_only", "--mysql-port", "0"],
            "bad --mysql-port 0",
        ),
        (
            &["sysbench", "oltp_read_write", "--tables", "x"],
            "'--tables <N>'",
        ),
    ] {
        assert_refused_in_one_line(args, needle);
    }
    // A server that is not there: one line naming where it looked.
    assert_refused_in_one_line(
        &[
            "sysbench",
            "oltp_read_write",
            "--mysql-socket",
            "/nonexistent/mysqld.sock",
        ],
        "connecting to MySQL at /nonexistent/mysqld.sock",
    );
}

/// A VM has no MariaDB and no network to one: `run`, `density` and a stock kernel's guest
/// refuse OLTP there in one line, before a guest boots.
#[test]
fn oltp_in_a_vm_is_refused_in_one_line_saying_why() {
    require_root();
    for args in [
        &["run", "--env", "vm", "sysbench", "oltp_read_write"][..],
        &[
            "density",
            "--env",
            "vm",
            "--workload",
            "oltp_read_only",
            "--instances",
            "1",
        ],
        &[
            "run",
            "--env",
            "vm",
            "--kernel",
            "debian-6.1",
            "sysbench",
            "oltp_write_only",
        ],
    ] {
        let err = assert_refused_in_one_line(args, "sysbench oltp_* needs a MariaDB server");
        assert!(
            err.contains("no mariadbd") && err.contains("-net none"),
            "{err}"
        );
    }
}
