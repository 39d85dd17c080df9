//! The whole round trip, named: on a real overlay lab the named parts add up to the mean round
//! trip the workload measured, the receive row is split at the socket and the reader's
//! wake-up, and a known delay in the server lands in the server's part and nowhere else.

use profiler_tests::*;
use serde_json::Value;

fn trace(args: &[&str]) -> Value {
    let file = format!("/tmp/profiler-test-rtt-{}.json", std::process::id());
    run_ok(profiler().arg("trace").args(args).args(["--json", &file]));
    let v = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let _ = std::fs::remove_file(&file);
    v
}

fn parts(r: &Value) -> &Vec<Value> {
    r["round_trip"]["parts"]
        .as_array()
        .unwrap_or_else(|| panic!("no round_trip in {}", r["round_trip"]))
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or_else(|| panic!("no {k} in {v}"))
}

#[test]
fn overlay_round_trip_adds_up_and_the_receive_row_is_split() {
    require_root();
    let args = ["--mode", "overlay", "-l", "3", "--follow-every", "1"];
    let mut r = trace(&args);
    // What each part adds and the longest segments: one stall outside the workload's timed
    // transactions would show here.
    let detail = |r: &Value| {
        let parts: Vec<String> = parts(r)
            .iter()
            .map(|p| {
                format!(
                    "{} {}: {:.0} ns/txn",
                    p["side"].as_str().unwrap_or(""),
                    p["part"].as_str().unwrap_or(""),
                    f(p, "ns_per_transaction")
                )
            })
            .collect();
        let longest: Vec<String> = r["net"]["directions"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|d| d["layers"].as_array().unwrap().iter())
            .filter(|l| l["summary"]["max"].as_f64().unwrap_or(0.0) > 1e6)
            .map(|l| format!("{} max {} ns", l["layer"], l["summary"]["max"]))
            .collect();
        format!("{}\nlongest: {}", parts.join("\n"), longest.join(", "))
    };
    let unattributed = |r: &Value| f(&r["round_trip"], "unattributed_share");
    // Once in CI (on a quiet machine, 2026-12-04) the parts came to 7.6% over the workload's
    // mean, and five reruns gave 0.0%: a second run decides, and the first one's parts are
    // printed for the next person to read.
    if unattributed(&r).abs() > 0.05 {
        eprintln!(
            "first run: {:.1}% unattributed\n{}",
            unattributed(&r) * 100.0,
            detail(&r)
        );
        r = trace(&args);
    }
    let rt = &r["round_trip"];
    let share = unattributed(&r);
    assert!(
        share.abs() <= 0.05,
        "named parts {} ns against the workload's mean {} ns: {:.1}% unattributed\n{}",
        f(rt, "named_ns"),
        f(rt, "workload_mean_rtt_ns"),
        share * 100.0,
        detail(&r)
    );
    // The receive row of both directions, split into named parts with their own histograms.
    for d in r["net"]["directions"].as_array().unwrap() {
        let layers = d["layers"].as_array().unwrap();
        let delivered = f(&d["one_way"], "count");
        let with_hist = |name: &str| {
            layers
                .iter()
                .find(|l| l["layer"] == name)
                .filter(|l| !l["histogram"].as_array().unwrap().is_empty())
                .map(|l| f(l, "count"))
                .unwrap_or(0.0)
        };
        let split = [
            "ip/tcp receive up to data-ready",
            "wake-up (data-ready to sched_wakeup)",
            "run-queue wait (wakeup to switch-in)",
            "reader: switch-in to the copy",
            "data-ready to the copy (reader not asleep)",
        ];
        let seen: Vec<&str> = split
            .iter()
            .copied()
            .filter(|n| with_hist(n) > 0.0)
            .collect();
        assert!(seen.len() >= 3, "{}: only {seen:?}", d["name"]);
        // Every delivered packet reached its data-ready; the merged row is what is left.
        assert!(
            with_hist(split[0]) >= 0.95 * delivered,
            "{}: {} of {delivered} packets split at data-ready",
            d["name"],
            with_hist(split[0])
        );
        assert!(with_hist("ip/transport receive + socket queue") <= 0.05 * delivered);
    }
    // Path order: the client's send first, its receive's return last, the server between.
    let p = parts(&r);
    assert_eq!(p[1]["part"], "send syscall + TCP/IP output", "{p:?}");
    assert_eq!(p.last().unwrap()["part"], "copy to user + receive return");
    assert!(p.iter().any(|x| x["side"] == "server"));
}

#[test]
fn think_time_lands_in_the_server_part_and_nowhere_else() {
    require_root();
    const THINK_NS: f64 = 200_000.0;
    let r = trace(&[
        "--mode",
        "overlay",
        "-l",
        "3",
        "--follow-every",
        "1",
        "--think",
        "200us",
    ]);
    let p = parts(&r);
    let server = p
        .iter()
        .find(|x| x["side"] == "server" && x["part"] == "application (receive return to next send)")
        .unwrap_or_else(|| panic!("no server application part in {p:?}"));
    // p50: the server spins on a shared two-core VM, where a preemption stretches a spin (the
    // mean carries those).
    let got = f(server, "p50_ns");
    assert!(
        (THINK_NS * 0.98..=THINK_NS * 1.05).contains(&got),
        "server application p50 {got} ns for a 200 µs think"
    );
    // Parts a transaction takes (a branch a few packets in a thousand took is not one).
    for x in p
        .iter()
        .filter(|x| !std::ptr::eq(*x, server) && f(x, "per_transaction") >= 0.05)
    {
        // Half the think time: 200 µs landing anywhere else fails it, while an idle CPU's
        // wake-up on this VM alone is ~22 µs p50 when the machine is quiet (seen in CI).
        assert!(
            f(x, "p50_ns") < THINK_NS * 0.5,
            "the think time also shows in {} {}: p50 {} ns",
            x["side"],
            x["part"],
            f(x, "p50_ns")
        );
    }
}
