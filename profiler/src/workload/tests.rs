//! Runs over 127.0.0.1 in the current namespace; short runs, plausibility only.

use std::{
    net::{Ipv4Addr, TcpListener, UdpSocket},
    sync::{Arc, Mutex, atomic::AtomicBool},
    thread,
    time::{Duration, Instant},
};

use clap::Parser;

use super::*;

fn quick(test: Test) -> Options {
    Options {
        duration: Duration::from_millis(300),
        ..Options::new(test)
    }
}

/// `run` with the other runs kept out, then a look for threads it left behind.
fn run_alone(o: &Options) -> Report {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let r = run(&Endpoints::loopback(0), o).unwrap();
    let leftovers = || -> Vec<String> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|c| c.starts_with("workload-"))
            .collect()
    };
    // A joined thread can linger in /proc for a moment while the kernel reaps it.
    let t = Instant::now();
    while !leftovers().is_empty() && t.elapsed() < Duration::from_millis(500) {
        thread::sleep(Duration::from_millis(10));
    }
    assert!(
        leftovers().is_empty(),
        "threads left running: {:?}",
        leftovers()
    );
    r
}

fn check(r: &Report) {
    let l = &r.latency;
    assert!(l.samples > 0, "{r:?}");
    assert!(
        l.p50_us <= l.p99_us && l.p99_us <= l.max_us,
        "percentiles out of order: {l:?}"
    );
    assert!(r.duration_secs > 0.25 && r.duration_secs < 1.0, "{r:?}");
    assert!(r.client_cpu_secs > 0.0 && r.server_cpu_secs > 0.0, "{r:?}");
    assert!(r.bytes > 0 && r.throughput_mbps > 0.0, "{r:?}");
    let json = serde_json::to_value(r).unwrap();
    assert_eq!(json["test"], r.test.name());
    assert!(json.get("histogram").is_none());
    assert!(report::render(r).contains(&r.test.name().to_uppercase()));
}

fn check_rr(r: &Report) {
    check(r);
    assert!(r.transactions > 0);
    assert!(r.transactions_per_sec > 0.0);
    assert_eq!(r.latency.samples, r.transactions);
    assert!(r.service_demand_us_per_tran.unwrap() > 0.0);
}

#[test]
fn tcp_stream() {
    let r = run_alone(&quick(Test::TcpStream));
    check(&r);
    assert!(r.service_demand_us_per_kb.unwrap() > 0.0);
}

#[test]
fn tcp_maerts() {
    let r = run_alone(&quick(Test::TcpMaerts));
    check(&r);
}

#[test]
fn tcp_rr() {
    check_rr(&run_alone(&quick(Test::TcpRr)));
}

#[test]
fn tcp_rr_burst_and_big_messages() {
    let o = Options {
        request: 100,
        response: 200_000,
        burst: 4,
        ..quick(Test::TcpRr)
    };
    let r = run_alone(&o);
    check_rr(&r);
    assert_eq!(r.bytes, r.transactions * 200_100);
}

#[test]
fn tcp_crr() {
    check_rr(&run_alone(&quick(Test::TcpCrr)));
}

#[test]
fn udp_stream() {
    let r = run_alone(&quick(Test::UdpStream));
    check(&r);
    let u = r.udp.unwrap();
    assert!(
        u.server_received > 0 && u.server_received <= u.client_sent,
        "{u:?}"
    );
    assert_eq!(u.lost, u.client_sent - u.server_received);
}

#[test]
fn udp_rr() {
    let o = Options {
        burst: 3,
        request: 32,
        response: 64,
        ..quick(Test::UdpRr)
    };
    let r = run_alone(&o);
    check_rr(&r);
    let u = r.udp.unwrap();
    assert!(u.client_received <= u.server_sent && u.server_received <= u.client_sent);
}

/// A UDP echo that drops every 5th request and answers every 7th twice (once late).
#[test]
fn udp_rr_counts_losses_and_ignores_late_answers() {
    let srv = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    srv.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let to = srv.local_addr().unwrap();
    let echo = thread::spawn(move || {
        let mut b = [0u8; 64];
        let mut late: Option<Vec<u8>> = None;
        for i in 0u64.. {
            let Ok((k, from)) = srv.recv_from(&mut b) else {
                break;
            };
            if let Some(l) = late.take() {
                let _ = srv.send_to(&l, from);
            }
            if i % 5 == 4 {
                continue;
            }
            let _ = srv.send_to(&b[..k], from);
            if i % 7 == 6 {
                late = Some(b[..k].to_vec());
            }
        }
    });
    let u = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    u.connect(to).unwrap();
    let o = Options {
        udp_timeout: Duration::from_millis(2),
        ..quick(Test::UdpRr)
    };
    let m = client::udp_rr(&u, &o).unwrap();
    drop(u);
    echo.join().unwrap();
    assert!(m.transactions > 0);
    assert!(m.lost > 0, "every 5th request is dropped");
    assert!(m.stale > 0, "late duplicates are discarded");
    // One sample per transaction; losses are not latency samples.
    assert_eq!(m.hist.len(), m.transactions);
    assert!(
        m.msgs_tx - (m.transactions + m.lost) <= 1,
        "sent = done + lost + in flight"
    );
}

#[test]
fn serve_says_busy_and_keeps_serving() {
    let srv = server::Server::bind(Ipv4Addr::LOCALHOST.into(), 0).unwrap();
    let port = srv.port();
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let stop = stop.clone();
        thread::spawn(move || srv.serve(&stop, None, false))
    };
    let host = Ipv4Addr::LOCALHOST.into();
    let long = thread::spawn(move || {
        let o = Options {
            duration: Duration::from_millis(600),
            ..Options::new(Test::TcpRr)
        };
        run_remote(host, port, &o)
    });
    thread::sleep(Duration::from_millis(200));
    let e = run_remote(host, port, &quick(Test::UdpRr)).unwrap_err();
    assert!(format!("{e:#}").contains("busy"), "{e:#}");
    check_rr(&long.join().unwrap().unwrap());
    // Free again for the next client.
    check(&run_remote(host, port, &quick(Test::TcpMaerts)).unwrap());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    server.join().unwrap().unwrap();
}

#[test]
fn silent_or_absent_server_is_an_error_not_a_hang() {
    // Listens but never answers: the client gives up after STALL.
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    let t = Instant::now();
    let e = run_remote(Ipv4Addr::LOCALHOST.into(), port, &quick(Test::TcpRr)).unwrap_err();
    assert!(format!("{e:#}").contains("no answer"), "{e:#}");
    assert!(t.elapsed() < client::STALL * 3);
    drop(l);
    let e = run_remote(Ipv4Addr::LOCALHOST.into(), port, &quick(Test::TcpRr)).unwrap_err();
    assert!(format!("{e:#}").contains("connecting"), "{e:#}");
}

#[test]
fn server_refuses_bad_sizes() {
    let srv = server::Server::bind(Ipv4Addr::LOCALHOST.into(), 0).unwrap();
    let port = srv.port();
    let server = thread::spawn(move || srv.serve(&AtomicBool::new(false), Some(1), false));
    // Skip the client's own check to reach the server's.
    let o = Options {
        request: UDP_MAX + 1,
        ..quick(Test::UdpRr)
    };
    let e = client::run(Ipv4Addr::LOCALHOST.into(), port, &o).unwrap_err();
    assert!(format!("{e:#}").contains("refused"), "{e:#}");
    server.join().unwrap().unwrap();
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

fn bench(args: &[&str]) -> Result<Options> {
    let cli = Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))?;
    cli.bench.options()
}

#[test]
fn bench_args() {
    let o = bench(&["tcp_rr"]).unwrap();
    assert_eq!((o.request, o.response, o.burst), (1, 1, 1));
    assert_eq!(o.duration, Duration::from_secs(10));
    let o = bench(&["TCP_STREAM", "-l", "2.5", "-m", "64K"]).unwrap();
    assert_eq!(o.test, Test::TcpStream);
    assert_eq!(o.duration, Duration::from_millis(2500));
    assert_eq!(o.send_size, 65536);
    assert_eq!(bench(&["udp_stream"]).unwrap().send_size, UDP_SEND_SIZE);
    let o = bench(&["udp_rr", "-r", "64,1k", "--burst", "8", "-l", "300ms"]).unwrap();
    assert_eq!((o.request, o.response, o.burst), (64, 1024, 8));
    assert_eq!(o.duration, Duration::from_millis(300));

    let err = |args: &[&str]| bench(args).unwrap_err().to_string();
    assert_eq!(
        err(&["tcp_rr", "-r", "1,x"]),
        "bad -r value '1,x': expected REQ,RESP in bytes, e.g. -r 1,1"
    );
    assert!(err(&["tcp_rr", "-r", "0,1"]).contains("at least 1 byte"));
    assert!(err(&["tcp_rr", "-l", "0"]).starts_with("bad -l value '0'"));
    assert!(err(&["tcp_rr", "-l", "ten"]).starts_with("bad -l value 'ten'"));
    assert!(err(&["tcp_stream", "-m", "big"]).starts_with("bad -m value 'big'"));
    assert!(err(&["udp_stream", "-m", "70000"]).contains("out of range"));
    assert!(err(&["tcp_rr", "--burst", "0"]).contains("burst"));
    assert!(err(&["tcp_foo"]).contains("tcp_stream"));

    let cli = Cli::try_parse_from(["bench", "tcp_rr", "-H", "127.0.0.1", "-p", "1"]).unwrap();
    assert_eq!(
        cli.bench.remote().unwrap(),
        Some(Ipv4Addr::LOCALHOST.into())
    );
    assert_eq!(cli.bench.port, 1);
}

#[test]
fn test_names() {
    for t in Test::ALL {
        assert_eq!(t.name().parse::<Test>().unwrap(), t);
        assert_eq!(Test::from_code(t.code()), Some(t));
        assert_eq!(
            <Test as clap::ValueEnum>::to_possible_value(&t)
                .unwrap()
                .get_name(),
            t.name()
        );
    }
    let e = "tcp".parse::<Test>().unwrap_err().to_string();
    assert_eq!(
        e,
        "unknown test 'tcp': expected one of tcp_stream, tcp_maerts, tcp_rr, tcp_crr, udp_stream, udp_rr"
    );
}
