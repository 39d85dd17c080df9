use std::{path::PathBuf, time::Duration};

use clap::Parser;

use super::*;

fn short(test: Test, threads: usize) -> Spec {
    let mut s = Spec::new(test);
    s.threads = threads;
    s.time = Duration::from_millis(200);
    s
}

fn check(r: &Report) -> &RunStats {
    let st = r.run.as_ref().expect("run stats");
    assert!(st.total_events > 0, "{st:?}");
    let l = &st.latency_ms;
    assert!(l.min <= l.p95 && l.p95 <= l.max, "{l:?}");
    assert!(st.events_per_sec > 0.0 && st.total_time_s > 0.0, "{st:?}");
    assert_eq!(st.hdr.len(), st.total_events);
    assert_eq!(
        st.histogram_ns.iter().map(|b| b[1]).sum::<u64>(),
        st.total_events
    );
    st
}

#[test]
fn primes_match_a_sieve() {
    let n = 5000;
    let mut composite = vec![false; n];
    for i in 2..n {
        for j in (i * i..n).step_by(i) {
            composite[j] = true;
        }
    }
    for max in [0, 3, 4, 5, 10, 100, 1000, 4999] {
        let want = (3..max as usize).filter(|&c| !composite[c]).count() as u64;
        assert_eq!(count_primes(max), want, "max {max}");
        assert_eq!(cpu::count_primes_portable(max), want, "max {max}");
    }
    // pi(10^4) = 1229 and pi(2*10^4) = 2262, less the prime 2.
    assert_eq!(count_primes(10000), 1228);
    assert_eq!(count_primes(20000), 2261);
}

#[test]
fn sizes_parse_like_sysbench() {
    for (s, v) in [
        ("16384", 16384),
        ("1K", 1024),
        ("1k", 1024),
        ("4KiB", 4096),
        ("2M", 2 << 20),
        ("1MB", 1 << 20),
        ("2G", 2 << 30),
        ("100G", 100 << 30),
        ("1T", 1 << 40),
        ("0", 0),
    ] {
        assert_eq!(parse_size(s).unwrap(), v, "{s}");
    }
    for s in ["", "K", "1X", "-1", "1.5K", "99999999P"] {
        let e = parse_size(s).unwrap_err().to_string();
        assert!(e.contains("K, M, G"), "{s}: {e}");
    }
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: SysbenchArgs,
}

fn parse(argv: &[&str]) -> Result<SysbenchArgs, clap::Error> {
    Cli::try_parse_from(std::iter::once("sysbench").chain(argv.iter().copied())).map(|c| c.args)
}

#[test]
fn command_line_takes_sysbench_syntax() {
    let a = parse(&[
        "fileio",
        "--file-total-size=256M",
        "--file-fsync-all",
        "prepare",
    ])
    .unwrap();
    let s = a.spec();
    assert_eq!((a.test, a.command), (Test::Fileio, Command::Prepare));
    assert_eq!(s.fileio.total_size, 256 << 20);
    assert!(s.fileio.fsync_all && s.fileio.fsync_end);
    let a = parse(&[
        "fileio",
        "run",
        "--file-test-mode=rndrw",
        "--file-fsync-end=off",
        "--file-extra-flags=direct,dsync",
        "--threads=2",
        "--time=0.5",
    ])
    .unwrap();
    let s = a.spec();
    assert_eq!(s.fileio.test_mode, Some(FileTestMode::Rndrw));
    assert!(!s.fileio.fsync_end);
    assert_eq!(
        s.fileio.extra_flags,
        vec![ExtraFlag::Direct, ExtraFlag::Dsync]
    );
    assert_eq!((s.threads, s.time), (2, Duration::from_millis(500)));
    // Defaults are sysbench's.
    assert_eq!(parse(&["memory"]).unwrap().spec(), Spec::new(Test::Memory));
    let s = parse(&["memory", "--memory-block-size=4K", "--memory-oper=read"])
        .unwrap()
        .spec();
    assert_eq!(
        (s.memory.block_size, s.memory.oper),
        (4096, MemoryOper::Read)
    );
}

#[test]
fn bad_input_is_one_line_with_the_valid_values() {
    let first_line = |e: clap::Error| e.to_string().lines().next().unwrap_or("").to_string();
    let e = first_line(parse(&["disk"]).unwrap_err());
    assert!(e.contains("cpu, memory, fileio, threads, mutex"), "{e}");
    let e = first_line(parse(&["memory", "--memory-oper=copy"]).unwrap_err());
    assert!(e.contains("read, write, none"), "{e}");
    let e = first_line(parse(&["fileio", "--file-test-mode=rnd"]).unwrap_err());
    assert!(
        e.contains("seqwr, seqrewr, seqrd, rndrd, rndwr, rndrw"),
        "{e}"
    );
    let e = first_line(parse(&["memory", "--memory-block-size=1Q"]).unwrap_err());
    assert!(e.contains("K, M, G"), "{e}");

    let mut s = Spec::new(Test::Memory);
    s.memory.block_size = 6;
    let e = run_workload(&s).unwrap_err().to_string();
    assert!(
        e.contains("--memory-block-size") && !e.contains('\n'),
        "{e}"
    );
    let e = execute(&Spec::new(Test::Cpu), Command::Prepare)
        .unwrap_err()
        .to_string();
    assert!(e.contains("only fileio"), "{e}");
    let mut s = Spec::new(Test::Fileio);
    s.fileio.dir = temp_dir("nomode");
    let e = run_workload(&s).unwrap_err().to_string();
    assert!(e.contains("rndrw") && !e.contains('\n'), "{e}");
}

#[test]
fn cpu_runs() {
    let r = run_workload(&short(Test::Cpu, 2)).unwrap();
    let st = check(&r);
    assert_eq!(st.fairness.events_avg * 2.0, st.total_events as f64);
    assert!(
        serde_json::to_string(&r)
            .unwrap()
            .contains("\"events_per_sec\"")
    );
    assert!(render(&r).contains("95th percentile"));
}

#[test]
fn event_limit_is_exact() {
    let mut s = Spec::new(Test::Cpu);
    (s.threads, s.time, s.events, s.cpu.max_prime) = (2, Duration::ZERO, 37, 1000);
    let r = run_workload(&s).unwrap();
    assert_eq!(check(&r).total_events, 37);
}

#[test]
fn memory_runs() {
    check(&run_workload(&short(Test::Memory, 1)).unwrap());
    let mut s = short(Test::Memory, 2);
    (s.memory.oper, s.memory.access_mode, s.memory.scope) =
        (MemoryOper::Read, AccessMode::Rnd, MemoryScope::Local);
    let r = run_workload(&s).unwrap();
    let m = check(&r).memory.unwrap();
    assert!(m.mib_per_sec > 0.0, "{m:?}");
}

#[test]
fn memory_stops_at_total_size() {
    let mut s = Spec::new(Test::Memory);
    (s.threads, s.time, s.memory.total_size) = (2, Duration::ZERO, 1 << 20);
    let r = run_workload(&s).unwrap();
    let st = check(&r);
    assert_eq!(st.total_events, 1024);
    assert_eq!(st.memory.unwrap().mib_transferred, 1.0);
}

#[test]
fn threads_runs() {
    let mut s = short(Test::Threads, 2);
    s.thread.yields = 100;
    check(&run_workload(&s).unwrap());
}

#[test]
fn mutex_runs_one_event_per_thread() {
    let mut s = short(Test::Mutex, 2);
    (s.mutex.locks, s.mutex.loops) = (2000, 1000);
    assert_eq!(check(&run_workload(&s).unwrap()).total_events, 2);
}

fn temp_dir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("sysbench-{tag}-{}-{n}", std::process::id()))
}

#[test]
fn fileio_prepare_run_cleanup_leaves_nothing() {
    let dir = temp_dir("fileio");
    std::fs::create_dir_all(&dir).unwrap();
    let mut s = short(Test::Fileio, 2);
    (s.fileio.dir, s.fileio.num, s.fileio.total_size) = (dir.clone(), 4, 4 << 20);

    // Without prepare: one line saying so.
    s.fileio.test_mode = Some(FileTestMode::Rndrd);
    let e = run_workload(&s).unwrap_err().to_string();
    assert!(e.contains("prepare") && !e.contains('\n'), "{e}");

    let p = execute(&s, Command::Prepare).unwrap();
    assert_eq!(p.files.unwrap().bytes_written, 4 << 20);
    for i in 0..4 {
        assert_eq!(
            dir.join(format!("test_file.{i}")).metadata().unwrap().len(),
            1 << 20
        );
    }
    for mode in [
        FileTestMode::Rndrw,
        FileTestMode::Seqrd,
        FileTestMode::Seqrewr,
    ] {
        s.fileio.test_mode = Some(mode);
        s.time = Duration::from_millis(100);
        let r = run_workload(&s).unwrap();
        let f = check(&r).fileio.unwrap();
        match mode {
            FileTestMode::Seqrd => assert!(f.reads > 0 && f.writes == 0, "{f:?}"),
            FileTestMode::Seqrewr => assert!(f.writes > 0 && f.reads == 0, "{f:?}"),
            _ => assert!(f.reads > 0 && f.writes > 0 && f.fsyncs > 0, "{mode}: {f:?}"),
        }
    }
    // Too small for the asked size: told to prepare again.
    s.fileio.total_size = 8 << 20;
    let e = run_workload(&s).unwrap_err().to_string();
    assert!(e.contains("prepare"), "{e}");
    s.fileio.total_size = 4 << 20;

    let c = execute(&s, Command::Cleanup).unwrap();
    assert_eq!(c.files.unwrap().files_removed, 4);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    std::fs::remove_dir(&dir).unwrap();
}

#[test]
fn fileio_seqwr_creates_its_files() {
    let dir = temp_dir("seqwr");
    std::fs::create_dir_all(&dir).unwrap();
    let mut s = short(Test::Fileio, 1);
    (s.fileio.dir, s.fileio.num, s.fileio.total_size) = (dir.clone(), 2, 1 << 20);
    s.fileio.test_mode = Some(FileTestMode::Seqwr);
    execute(&s, Command::Prepare).unwrap();
    s.time = Duration::from_millis(100);
    let f = check(&run_workload(&s).unwrap()).fileio.unwrap();
    assert!(f.writes > 0, "{f:?}");
    execute(&s, Command::Cleanup).unwrap();
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    std::fs::remove_dir(&dir).unwrap();
}

#[test]
fn oltp_options_take_sysbench_names_and_name_a_server() {
    let a = parse(&[
        "oltp_read_write",
        "prepare",
        "--tables=4",
        "--table_size=500",
        "--range-selects=off",
        "--mysql-socket=/tmp/s.sock",
    ])
    .unwrap();
    assert_eq!(a.test, Test::OltpReadWrite);
    assert_eq!(a.command, Command::Prepare);
    let s = a.spec();
    assert_eq!((s.oltp.tables, s.oltp.table_size), (4, 500));
    assert!(!s.oltp.range_selects);
    let c = s.oltp.conn.expect("a named server");
    assert_eq!(c.socket.as_deref(), Some("/tmp/s.sock"));
    assert_eq!((c.user.as_str(), c.db.as_str()), ("sbtest", "sbtest"));
    // No --mysql-*: a server of its own.
    let s = parse(&["oltp_read_only"]).unwrap().spec();
    assert!(s.oltp.conn.is_none());
    assert_eq!(s.test.to_string(), "oltp_read_only");
    // TCP: the port alone names 127.0.0.1.
    let s = parse(&["oltp_write_only", "--mysql-port", "3307"])
        .unwrap()
        .spec();
    let c = s.oltp.conn.expect("a named server");
    assert_eq!(
        (c.host.as_str(), c.port, c.socket),
        ("127.0.0.1", 3307, None)
    );
    let mut bad = Spec::new(Test::OltpReadWrite);
    bad.oltp.tables = 0;
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("--tables 0")
    );
}
