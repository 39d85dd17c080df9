//! netperf-style workloads across every lab mode this kernel supports, and the lab's teardown
//! when the process owning it is stopped (SIGTERM) or killed (-9).

use std::{
    process::{Child, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use profiler_tests::*;
use serde_json::Value;

fn bench_json(args: &[&str]) -> Value {
    let out = run_ok(profiler().arg("bench").args(args).arg("--json"));
    serde_json::from_slice(&out.stdout).expect("bench --json")
}

#[test]
fn tcp_rr_runs_in_every_mode_and_leaves_nothing() {
    require_root();
    let before = namespaces();
    for mode in [
        "host", "bridge", "nat", "overlay", "macvlan", "routed", "nested",
    ] {
        let r = bench_json(&["tcp_rr", "--mode", mode, "-l", "1"]);
        let tps = r["transactions_per_sec"].as_f64().unwrap();
        assert!(tps > 500.0, "{mode}: {tps} transactions/s");
        let l = &r["latency"];
        assert!(l["p50_us"].as_f64() <= l["p99_us"].as_f64(), "{mode}: {l}");
        assert_eq!(namespaces(), before, "{mode} left namespaces behind");
    }
}

#[test]
fn stream_and_udp_tests_run_in_the_overlay() {
    require_root();
    for test in [
        "tcp_stream",
        "tcp_maerts",
        "udp_rr",
        "udp_stream",
        "tcp_crr",
    ] {
        let r = bench_json(&[test, "--mode", "overlay", "-l", "1"]);
        if test.ends_with("rr") {
            assert!(r["transactions"].as_u64().unwrap() > 100, "{test}: {r}");
        } else {
            assert!(r["throughput_mbps"].as_f64().unwrap() > 1.0, "{test}: {r}");
        }
    }
}

/// `bench --lab` runs in an existing lab and leaves it up; the traffic crosses the lab's VXLAN
/// device in overlay mode and no VXLAN device exists in bridge mode.
#[test]
fn bench_in_existing_lab_crosses_its_devices() {
    require_root();
    let _g = (LabGuard("bo".into()), LabGuard("bb".into()));
    let lab: Value = serde_json::from_slice(
        &run_ok(profiler().args(["lab", "up", "--mode", "overlay", "--id", "bo", "--json"])).stdout,
    )
    .unwrap();
    let vx = lab["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["role"] == "vxlan")
        .unwrap()
        .clone();
    let (ns, dev) = (vx["netns"].as_str().unwrap(), vx["name"].as_str().unwrap());
    let (tx0, _) = packets(ns, dev);
    let r = bench_json(&["tcp_rr", "--lab", "bo", "-l", "1"]);
    let trans = r["transactions"].as_u64().unwrap();
    let (tx1, _) = packets(ns, dev);
    assert!(
        tx1 - tx0 >= trans,
        "vxlan0 sent {} packets for {trans} transactions",
        tx1 - tx0
    );
    assert_eq!(
        lab_namespaces("bo").len(),
        4,
        "bench --lab must leave the lab up"
    );

    let bridge: Value = serde_json::from_slice(
        &run_ok(profiler().args(["lab", "up", "--mode", "bridge", "--id", "bb", "--json"])).stdout,
    )
    .unwrap();
    assert!(
        !bridge["devices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["kind"] == "vxlan"),
        "a bridge lab has no vxlan device"
    );
    let br = bench_json(&["tcp_rr", "--lab", "bb", "-l", "1"]);
    assert!(br["transactions"].as_u64().unwrap() > 100);
    let (tx2, _) = packets(ns, dev);
    assert!(tx2 - tx1 < 10, "overlay vxlan0 carried bridge-lab traffic");
}

fn spawn_bench(mode: &str) -> Child {
    profiler()
        .args(["bench", "tcp_rr", "--mode", mode, "-l", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The id of the lab the child process owns, once it is built.
fn owned_lab(pid: u32) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let out = run_ok(profiler().args(["lab", "list", "--json"]));
        let labs: Value = serde_json::from_slice(&out.stdout).unwrap();
        if let Some(l) =
            labs.as_array().unwrap().iter().find(|l| {
                l["owner"]["pid"] == pid && l["namespaces"].as_array().unwrap().len() == 4
            })
        {
            return l["id"].as_str().unwrap().to_string();
        }
        sleep(Duration::from_millis(100));
    }
    panic!("process {pid} never built its lab");
}

#[test]
fn sigterm_tears_the_lab_down() {
    require_root();
    let mut child = spawn_bench("overlay");
    let id = owned_lab(child.id());
    sleep(Duration::from_millis(500));
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert_gone(&id);
}

#[test]
fn next_start_reaps_what_kill_9_left() {
    require_root();
    let mut child = spawn_bench("overlay");
    let id = owned_lab(child.id());
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(lab_namespaces(&id).len(), 4, "kill -9 cannot clean up");
    let out = run_ok(profiler().args(["lab", "list"]));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("stale lab {id}")),
        "the next start should say it reaped lab {id}"
    );
    assert_gone(&id);
}

#[test]
fn bad_bench_input_is_one_line() {
    require_root();
    for (args, needle) in [
        (
            &["bench", "tcp_rr", "--mode", "warp"][..],
            "unknown mode 'warp'",
        ),
        (
            &["bench", "tcp_rr", "--mode", "host", "-r", "1,x"][..],
            "bad -r value",
        ),
        (&["bench", "nope"][..], "invalid value"),
    ] {
        assert_refused(args, needle);
    }
}

/// `bench -H` measures against `profiler serve` on another host; here the other host is a
/// second process on loopback.
#[test]
fn bench_against_a_remote_serve() {
    require_root();
    let mut server = profiler()
        .args(["serve", "--bind", "127.0.0.1", "-p", "12977"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    sleep(Duration::from_millis(300));
    let r = bench_json(&["tcp_rr", "-H", "127.0.0.1", "-p", "12977", "-l", "1"]);
    let s = bench_json(&["tcp_stream", "-H", "127.0.0.1", "-p", "12977", "-l", "1"]);
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(r["transactions"].as_u64().unwrap() > 1000, "{r}");
    assert!(s["throughput_mbps"].as_f64().unwrap() > 100.0, "{s}");
    assert!(
        r["server_cpu_secs"].as_f64().unwrap() > 0.0,
        "server CPU comes back over the wire"
    );
}

#[test]
fn bad_bench_counts_and_durations_are_one_line_naming_the_option() {
    require_root();
    for (args, needle) in [
        (&["bench", "tcp_rr", "-l", "0"][..], "bad -l value '0'"),
        (&["bench", "tcp_rr", "-l", "-1"][..], "bad -l value '-1'"),
        (
            &["bench", "tcp_rr", "--burst", "0"][..],
            "'--burst <N>': expected a whole number of at least 1",
        ),
        (
            &["bench", "tcp_rr", "--burst", "-2"][..],
            "'--burst <N>': expected a whole number of at least 1",
        ),
        (
            &["bench", "tcp_stream", "-m", "0"][..],
            "send size 0 out of range",
        ),
        (&["bench", "tcp_rr", "-r", "0,1"][..], "bad -r value '0,1'"),
        (&["bench", "tcp_rr", "-p", "-1"][..], "'--port <PORT>'"),
    ] {
        assert_refused_in_one_line(args, needle);
    }
}
