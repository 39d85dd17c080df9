//! `profiler web`: real nginx (Debian's) under real wrk, on the host and in a native container
//! on a bridge lab; the server's files, cgroup and processes gone after a run and after
//! SIGINT; bad input refused in one line before anything starts.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use profiler_tests::*;
use serde_json::Value;

/// Work directories and cgroups a run of `pid` made (by its owner-carrying names).
fn leftovers(pid: u32) -> Vec<String> {
    let mut left = vec![];
    for e in std::fs::read_dir("/tmp").unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&format!("profiler-srv-nginx-{pid}-")) {
            left.push(format!("dir {n}"));
        }
    }
    left.extend(
        profiler_cgroups()
            .into_iter()
            .filter(|c| c.starts_with(&format!("profiler-run-{pid}-")))
            .map(|c| format!("cgroup {c}")),
    );
    left
}

#[test]
fn host_and_native_serve_with_a_histogram_cpu_and_layers() {
    require_root();
    let child = profiler()
        .args([
            "web",
            "--env",
            "host,native",
            "--connections",
            "1,16",
            "-l",
            "1",
            "--trace-length",
            "1",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        r["server"].as_str().unwrap().starts_with("nginx/1."),
        "{}",
        r["server"]
    );
    let envs = r["envs"].as_array().unwrap();
    assert_eq!(envs.len(), 2);
    for e in envs {
        let env = e["env"].as_str().unwrap();
        let runs = e["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 2, "{env}");
        for run in runs {
            let c = run["connections"].as_u64().unwrap();
            let rps = run["requests_per_sec"].as_f64().unwrap();
            assert!(rps > 100.0, "{env} {c}: {rps} requests/s");
            let errors: u64 = ["connect", "read", "write", "status", "timeout"]
                .iter()
                .map(|k| run["errors"][k].as_u64().unwrap())
                .sum();
            assert_eq!(errors, 0, "{env} {c}: {}", run["errors"]);
            // wrk records every response's time, then adds what its coordinated-omission
            // correction infers (responses slower than twice the mean interval): at least one
            // sample per response.
            let requests = run["requests"].as_u64().unwrap();
            let l = &run["latency"];
            let count = l["count"].as_u64().unwrap();
            assert!(
                count + c >= requests,
                "{env} {c}: {count} response times for {requests} requests"
            );
            let q = |k: &str| l[k].as_u64().unwrap();
            assert!(q("p50") > 0 && q("p50") <= q("p90") && q("p90") <= q("p99"));
            assert!(q("p99") <= q("max"), "{env} {c}: {l}");
            // Percentiles always, non-decreasing; the exact record when wrk could hand it over
            // cheaply, and then it holds every sample.
            let pct: Vec<u64> = run["percentiles"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p[1].as_u64().unwrap())
                .collect();
            assert!(pct.len() >= 200, "{env} {c}: {} percentiles", pct.len());
            assert!(pct.windows(2).all(|w| w[0] <= w[1]), "{env} {c}: {pct:?}");
            let hist = run["histogram"].as_array().unwrap();
            if !hist.is_empty() {
                let n: u64 = hist.iter().map(|b| b[1].as_u64().unwrap()).sum();
                assert_eq!(n, count, "{env} {c}: the record's samples");
            }
            let cpu = run["server_cpu_s"].as_f64().unwrap();
            assert!(cpu > 0.0, "{env} {c}: the server used no CPU");
            let pct = run["server_cpu_pct"].as_f64().unwrap();
            let cpus = r["cpus"].as_f64().unwrap();
            assert!(pct > 0.0 && pct <= cpus * 100.0 * 1.05, "{env} {c}: {pct}%");
        }
        // The traced run saw both directions, through the environment's devices.
        let t = &e["traced"];
        assert!(t.is_object(), "{env}: no traced run: {}", e["trace_error"]);
        let dirs = t["directions"].as_array().unwrap();
        assert_eq!(dirs.len(), 2, "{env}");
        let layers: Vec<&str> = dirs
            .iter()
            .flat_map(|d| d["layers"].as_array().unwrap())
            .map(|l| l["layer"].as_str().unwrap())
            .collect();
        for d in dirs {
            assert!(
                d["packets"].as_u64().unwrap_or(0) > 0,
                "{env}: {} followed no packet",
                d["direction"]
            );
        }
        let want = if env == "host" { "loopback" } else { "bridge" };
        assert!(
            layers.iter().any(|l| l.contains(want)),
            "{env}: no {want} layer in {layers:?}"
        );
    }
    assert!(leftovers(pid).is_empty(), "left: {:?}", leftovers(pid));
}

#[test]
fn docker_serves_with_cpu_from_its_cgroup() {
    require_root();
    let child = profiler()
        .args([
            "web",
            "--env",
            "docker",
            "--connections",
            "4",
            "-l",
            "1",
            "--no-trace",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let e = &r["envs"][0];
    assert_eq!(e["env"], "docker");
    let run = &e["runs"][0];
    assert!(run["requests_per_sec"].as_f64().unwrap() > 100.0, "{run}");
    assert!(run["latency"]["count"].as_u64().unwrap() > 0);
    assert!(run["server_cpu_s"].as_f64().unwrap() > 0.0, "{run}");
    // The server's own cgroup, not a root that counts every process.
    let cg = e["cgroup"].as_str().unwrap();
    assert!(cg.contains("docker"), "{cg}");
    assert!(leftovers(pid).is_empty(), "left: {:?}", leftovers(pid));
    let owner = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("name=profiler-{pid}-")])
        .output()
        .unwrap();
    assert!(owner.stdout.is_empty(), "its container is still there");
}

#[test]
fn sigint_stops_nginx_and_removes_its_files() {
    require_root();
    become_subreaper();
    let mut child = profiler()
        .args(["web", "--env", "native", "--connections", "8", "-l", "30"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Until nginx serves and wrk runs: a work directory, and wrk below the profiler.
    let t = Instant::now();
    while live_children(&[pid], "wrk").is_empty() {
        assert!(t.elapsed() < Duration::from_secs(30), "wrk never started");
        assert!(child.try_wait().unwrap().is_none(), "web ended by itself");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !leftovers(pid).is_empty(),
        "no work directory or cgroup while running"
    );
    signal(pid, libc::SIGINT);
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "still running 10 s after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130), "exit status after SIGINT");
    reap_orphans();
    let t = Instant::now();
    loop {
        reap_orphans();
        let mut left = leftovers(pid);
        left.extend(
            live_children(&[pid, std::process::id()], "nginx")
                .into_iter()
                .map(|(p, c)| format!("process {p}: {c}")),
        );
        if left.is_empty() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "left after SIGINT: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn bad_input_is_refused_in_one_line() {
    for (args, needle) in [
        (&["web", "--connections", "0"][..], "--connections"),
        (&["web", "--connections", "1,x"][..], "--connections"),
        (&["web", "--env", "vm"][..], "web has no VM environment"),
        (&["web", "--env", "host,vm"][..], "-net none"),
        (&["web", "-l", "0"][..], "-l"),
        (
            &["web", "--json", "/nonexistent/dir/w.json"][..],
            "does not exist",
        ),
        (&["web", "--connections", "100000000"][..], "open files"),
    ] {
        let err = assert_refused_in_one_line(args, needle);
        // What the parser refuses exits 2, as every command's bad options do.
        if ![
            "does not exist",
            "open files",
            "web has no VM environment",
            "-net none",
        ]
        .contains(&needle)
        {
            let code = profiler().args(args).output().unwrap().status.code();
            assert_eq!(code, Some(2), "{args:?}: {err}");
        }
    }
}
