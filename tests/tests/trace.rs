//! The tracer's attribution is true: each mode shows exactly its layers, the layers add up to
//! the one-way time, an injected delay lands in the layer holding its hook, and Ctrl-C still
//! reports and cleans up.

use std::{
    io::Read as _,
    process::Stdio,
    thread::sleep,
    time::{Duration, Instant},
};

use profiler_tests::*;
use serde_json::Value;

fn trace(args: &[&str]) -> Value {
    let file = format!("/tmp/profiler-test-trace-{}.json", std::process::id());
    run_ok(profiler().arg("trace").args(args).args(["--json", &file]));
    let v = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let _ = std::fs::remove_file(&file);
    v
}

/// Layers every delivered request crosses (crossings >= 1), by name.
fn request_layers(r: &Value) -> Vec<String> {
    r["net"]["directions"][0]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["crossings"].as_u64().unwrap() >= 1)
        .map(|l| l["layer"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn each_mode_shows_exactly_its_layers() {
    require_root();
    let before = namespaces();
    for (mode, must, must_not) in [
        (
            "overlay",
            &[
                "vxlan encap + route + netfilter out",
                "vxlan decap + ip/udp receive + netfilter in",
                "underlay link (veth)",
                "bridge",
            ][..],
            &["ip forward + netfilter"][..],
        ),
        (
            "bridge",
            &["bridge", "veth (container to host)"][..],
            &[
                "vxlan encap + route + netfilter out",
                "ip forward + netfilter",
            ][..],
        ),
        (
            "nat",
            &["ip forward + netfilter", "bridge (host stack to port)"][..],
            &["vxlan encap + route + netfilter out"][..],
        ),
        (
            "routed",
            &["ip forward + netfilter"][..],
            &["bridge", "vxlan encap + route + netfilter out"][..],
        ),
        (
            "host",
            &["loopback"][..],
            &["bridge", "veth (container to host)"][..],
        ),
    ] {
        let r = trace(&["--mode", mode, "-l", "1"]);
        let layers = request_layers(&r);
        for l in must {
            assert!(
                layers.iter().any(|x| x == l),
                "{mode}: no '{l}' in {layers:?}"
            );
        }
        for l in must_not {
            assert!(
                !layers.iter().any(|x| x == l),
                "{mode}: unexpected '{l}' in {layers:?}"
            );
        }
        // The layers tile the path: their medians add up to the one-way median within the
        // unattributed share the report states, and that share is small.
        for d in r["net"]["directions"].as_array().unwrap() {
            let ow = d["one_way"]["p50"].as_f64().unwrap();
            let un = d["unattributed_ns"].as_f64().unwrap();
            assert!(ow > 0.0, "{mode}: no one-way time");
            assert!(
                un.abs() <= 0.15 * ow,
                "{mode}: unattributed {un} ns of {ow} ns"
            );
        }
        let c = &r["net"]["counts"];
        assert!(c["delivered"].as_u64().unwrap() > 100, "{mode}: {c}");
        assert!(r["workload"]["transactions"].as_u64().unwrap() > 100);
        assert_eq!(
            namespaces(),
            before,
            "{mode}: the trace left its lab behind"
        );
    }
}

#[test]
fn injected_delays_land_in_their_layers() {
    require_root();
    let file = "/tmp/profiler-test-selfcheck.json";
    // This 2-core VM's noise can shift an untouched layer past 5% in one run (seen once in
    // about ten CI runs): one more run before the same checks decide.
    let run = || {
        profiler()
            .args(["trace", "--self-check", "-l", "2", "--json", file])
            .output()
            .unwrap()
    };
    let mut out = run();
    if !out.status.success() {
        eprintln!(
            "self-check failed once, running it again:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        out = run();
    }
    let c: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    assert!(
        out.status.success(),
        "self-check failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let cases = c["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let (landed, delay) = (
            case["landed_ns"].as_f64().unwrap(),
            case["delay_ns"].as_f64().unwrap(),
        );
        assert!((landed - delay).abs() <= 0.05 * delay, "{case}");
        assert!(
            case["elsewhere_ns"].as_f64().unwrap() <= 0.05 * delay,
            "{case}"
        );
    }
}

#[test]
fn ctrl_c_reports_and_tears_down() {
    require_root();
    let before = namespaces();
    let mut child = profiler()
        .args(["trace", "--mode", "bridge", "-l", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = String::new();
    while !seen.contains("tracing") && Instant::now() < deadline {
        let mut buf = [0u8; 256];
        let n = stderr.read(&mut buf).unwrap();
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    sleep(Duration::from_secs(1));
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("requests (client -> server)"), "{stdout}");
    assert_eq!(namespaces(), before, "Ctrl-C left the lab behind");
}

#[test]
fn attach_only_follows_existing_traffic() {
    require_root();
    let _g = LabGuard("ao".into());
    run_ok(profiler().args(["lab", "up", "--mode", "bridge", "--id", "ao"]));
    let mut bench = profiler()
        .args(["bench", "tcp_rr", "--lab", "ao", "-l", "4"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    sleep(Duration::from_millis(500));
    let r = trace(&["--attach-only", "--port", "20000", "-l", "2"]);
    bench.wait().unwrap();
    assert!(
        r["net"]["counts"]["delivered"].as_u64().unwrap() > 100,
        "{}",
        r["net"]["counts"]
    );
    assert!(request_layers(&r).iter().any(|l| l == "bridge"));
}

#[test]
fn bad_trace_input_is_one_line() {
    require_root();
    for (args, needle) in [
        (&["trace", "--mode", "warp"][..], "invalid value"),
        (&["trace", "-t", "tcp_bogus", "-l", "1"][..], "unknown test"),
        (&["trace", "--attach-only"][..], "needs --port"),
        (&["trace", "--lab", "nosuch"][..], "no lab nosuch"),
        (
            &["trace", "--overhead", "0", "-l", "1"][..],
            "--overhead must be",
        ),
        (
            &["trace", "--interval", "0", "-l", "1"][..],
            "--interval must be",
        ),
        (
            &["trace", "--follow-every", "0", "-l", "1"][..],
            "follow-every",
        ),
        (
            &["trace", "--print-every", "0", "-l", "1"][..],
            "print-every",
        ),
    ] {
        assert_refused(args, needle);
    }
}

#[test]
fn compare_prints_one_row_per_mode_with_host_ratios() {
    require_root();
    // Every packet over the whole second: with the default budget a 1 s run holds one or two
    // 50 ms windows, and host mode's one-way time is bimodal with the threads' CPU placement.
    let rows = trace(&[
        "--compare",
        "host,overlay",
        "-l",
        "1",
        "--follow-every",
        "1",
    ]);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["mode"], "host");
    assert_eq!(rows[0]["throughput_ratio"], 1.0);
    let overlay = &rows[1];
    assert!(
        overlay["latency_ratio"].as_f64().unwrap() > 1.0,
        "{overlay}"
    );
    assert!(
        overlay["one_way_p50_ns"].as_u64().unwrap() > rows[0]["one_way_p50_ns"].as_u64().unwrap()
    );
}

/// Where no function probe reaches conntrack and NAT, the ablation isolates them.
#[test]
fn ablation_runs_the_three_variants() {
    require_root();
    let before = namespaces();
    let a = trace(&["--ablation", "-l", "1"]);
    let v: Vec<&str> = a["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        v,
        ["nat", "no nat (conntrack on)", "no conntrack (NOTRACK)"]
    );
    let fwd = a["forward_p50_ns"].as_array().unwrap();
    assert_eq!(fwd.len(), 3, "{fwd:?}");
    assert!(fwd.iter().all(|f| f["p50_ns"].as_u64().unwrap() > 0));
    assert!(a["nat_cost_ns"].is_i64() && a["conntrack_cost_ns"].is_i64());
    assert_eq!(namespaces(), before);
}

fn count(r: &Value, k: &str) -> u64 {
    r["net"]["counts"][k]
        .as_u64()
        .unwrap_or_else(|| panic!("no count {k}: {}", r["net"]["counts"]))
}

/// A packet that isn't followed leaves no state: with a port no packet uses, every packet is
/// drawn and none followed, and no state slot is tagged at the end. Followed packets free
/// their slot at delivery.
#[test]
fn unfollowed_packets_cost_no_state() {
    require_root();
    let r = trace(&[
        "--mode",
        "bridge",
        "-l",
        "1",
        "--follow-every",
        "1",
        "--port",
        "1",
    ]);
    assert!(count(&r, "drawn") > 1000, "{}", r["net"]["counts"]);
    assert_eq!(count(&r, "followed"), 0);
    assert_eq!(count(&r, "followed_hooks"), 0);
    assert_eq!(r["state_in_use"].as_u64(), Some(0));
    let r = trace(&["--mode", "bridge", "-l", "1", "--follow-every", "1"]);
    let followed = count(&r, "followed");
    assert!(followed > 1000, "{}", r["net"]["counts"]);
    let left = r["state_in_use"].as_u64().unwrap();
    let lost = r["net"]["counts"]["lost"].as_i64().unwrap().max(0) as u64;
    assert!(
        left <= lost + 16,
        "{left} slots left: {}",
        r["net"]["counts"]
    );
}

/// With one state slot, packets drawn while another is in flight collide: each is counted,
/// and the one in flight keeps its slot.
#[test]
fn collisions_are_counted() {
    require_root();
    let r = trace(&[
        "--mode",
        "bridge",
        "-t",
        "tcp_stream",
        "-l",
        "1",
        "--follow-every",
        "1",
        "--state-slots",
        "1",
    ]);
    let (drawn, followed, collisions) = (
        count(&r, "drawn"),
        count(&r, "followed"),
        count(&r, "collisions"),
    );
    assert!(collisions > 100, "{}", r["net"]["counts"]);
    assert!(followed > 10, "{}", r["net"]["counts"]);
    assert!(drawn >= followed + collisions, "{}", r["net"]["counts"]);
    assert!(r["state_in_use"].as_u64().unwrap() <= 1);
}

/// `--debug-bpf` prints the kernel side's message when a state slot is taken (one slot forces
/// collisions), counted as the report counts them; without the flag the kernel says nothing.
#[test]
fn debug_bpf_prints_the_kernels_collision_messages() {
    require_root();
    let args = [
        "trace",
        "--mode",
        "bridge",
        "-t",
        "tcp_stream",
        "-l",
        "1",
        "--follow-every",
        "1",
        "--state-slots",
        "1",
    ];
    let file = format!("/tmp/profiler-test-debug-bpf-{}.json", std::process::id());
    let on = run_ok(profiler().args(args).args(["--debug-bpf", "--json", &file]));
    let r: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let _ = std::fs::remove_file(&file);
    let stderr = String::from_utf8_lossy(&on.stderr);
    let said: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("bpf warn: net: state slot collision"))
        .collect();
    assert!(!said.is_empty(), "no kernel message on stderr:\n{stderr}");
    // Thinned to each CPU's powers of two: the largest count said is at most the total.
    let largest = said
        .iter()
        .filter_map(|l| l.split(", ").last()?.split(' ').next()?.parse::<u64>().ok())
        .max()
        .unwrap();
    assert!(
        largest <= count(&r, "collisions"),
        "{largest} against {}",
        r["net"]["counts"]
    );
    let off = run_ok(profiler().args(args));
    let stderr = String::from_utf8_lossy(&off.stderr);
    assert!(
        !stderr.contains("bpf "),
        "kernel messages without --debug-bpf:\n{stderr}"
    );
}

/// The overhead controller follows a smaller share of packets on a smaller budget, states
/// what it did, and its measured cost tracks the budget.
#[test]
fn overhead_budget_sets_the_follow_rate() {
    require_root();
    let share = |r: &Value| {
        let t = &r["tracer"];
        t["duty_cycle"].as_f64().unwrap() / t["follow_every"].as_f64().unwrap()
    };
    let tight = trace(&["--mode", "bridge", "-l", "2", "--overhead", "0.2"]);
    let loose = trace(&["--mode", "bridge", "-l", "2", "--overhead", "20"]);
    assert_eq!(tight["tracer"]["policy"], "budget");
    assert!(
        share(&tight) < share(&loose),
        "tight {} loose {}",
        tight["tracer"],
        loose["tracer"]
    );
    assert!(tight["tracer"]["windows"].as_u64().unwrap() >= 1);
    let measured = tight["tracer"]["measured_share"].as_f64().unwrap();
    // The first window follows everything before the controller has a measure: allow it.
    assert!(measured < 0.02, "{}", tight["tracer"]);
    assert!(tight["tracer"]["followed_ns_per_run"].as_f64().unwrap() > 0.0);
    assert!(count(&tight, "delivered") > 10);
    // Layers carry their figures without the tracer's own cost.
    let l = &tight["net"]["directions"][0]["layers"][0];
    assert!(l["p50_without_tracer_ns"].as_f64().unwrap() <= l["p50"].as_f64().unwrap());
}

/// `--hdr-log`: HdrHistogram's own decoder (the Python `hdrhistogram` package, installed by
/// setup) reads the log, and each tag's counts and percentiles match the JSON report.
#[test]
fn hdr_log_decodes_with_hdrhistogram_and_matches_the_report() {
    require_root();
    let dir = std::env::temp_dir();
    let (log, json) = (
        dir.join(format!("profiler-test-{}.hlog", std::process::id())),
        dir.join(format!("profiler-test-hlog-{}.json", std::process::id())),
    );
    run_ok(
        profiler()
            .args(["trace", "--mode", "bridge", "-l", "2", "--interval", "1"])
            .args([
                "--follow-every".as_ref(),
                "1".as_ref(),
                "--hdr-log".as_ref(),
                log.as_os_str(),
                "--json".as_ref(),
                json.as_os_str(),
            ]),
    );
    let script = r#"
import json, sys
from hdrh.log import HistogramLogReader
from hdrh.histogram import HdrHistogram
new = lambda: HdrHistogram(1, 1 << 35, 2)
reader = HistogramLogReader(sys.argv[1], new())
total, intervals = {}, 0
while True:
    h = reader.get_next_interval_histogram()
    if h is None:
        break
    intervals += 1
    total.setdefault(h.get_tag(), new()).add(h)
out = {t: [h.get_total_count(), h.get_value_at_percentile(50), h.get_value_at_percentile(99)]
       for t, h in total.items()}
print(json.dumps({"intervals": intervals, "tags": out}))
"#;
    let out = run_ok(
        std::process::Command::new("python3")
            .args(["-c", script])
            .arg(&log),
    );
    let decoded: Value = serde_json::from_slice(&out.stdout).unwrap();
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = (std::fs::remove_file(&log), std::fs::remove_file(&json));
    assert!(decoded["intervals"].as_u64().unwrap() >= 2 * 2, "{decoded}");
    let mut checked = 0;
    for d in report["net"]["directions"].as_array().unwrap() {
        let dir = d["name"].as_str().unwrap().split(' ').next().unwrap();
        for row in d["layers"]
            .as_array()
            .unwrap()
            .iter()
            .chain([&d["one_way"]])
        {
            let tag = format!("{dir}/{}", row["layer"].as_str().unwrap()).replace([' ', ','], "_");
            let t = &decoded["tags"][&tag];
            assert_eq!(t[0], row["count"], "{tag}: count");
            for (i, p) in [(1, "p50"), (2, "p99")] {
                let (ours, theirs) = (row[p].as_f64().unwrap(), t[i].as_f64().unwrap());
                // Two significant figures: buckets at most 1% wide. The two libraries round a
                // percentile's rank differently (seen: p99 one bucket apart, 1.08%), so
                // within two buckets.
                assert!(
                    (ours - theirs).abs() <= 0.02 * ours + 1.0,
                    "{tag} {p}: report {ours}, hdrhistogram {theirs}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "{checked} tags");
}

/// `--html`: one self-contained page, rendered by headless Chromium (Debian's, installed by
/// setup): the rendered DOM has the waterfall of each direction with every layer named.
#[test]
fn html_report_renders_a_waterfall_with_every_layer() {
    require_root();
    let dir = std::env::temp_dir();
    let (html, json) = (
        dir.join(format!("profiler-test-{}.html", std::process::id())),
        dir.join(format!("profiler-test-html-{}.json", std::process::id())),
    );
    run_ok(
        profiler()
            .args(["trace", "--mode", "overlay", "-l", "1"])
            .args([
                "--html".as_ref(),
                html.as_os_str(),
                "--json".as_ref(),
                json.as_os_str(),
            ]),
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(!page.contains("<script") && !page.contains("http://") && !page.contains("https://"));
    let dom = run_ok(
        std::process::Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"])
            .arg(format!("file://{}", html.display())),
    );
    let dom = String::from_utf8_lossy(&dom.stdout);
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = (std::fs::remove_file(&html), std::fs::remove_file(&json));
    for (i, d) in report["net"]["directions"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let start = dom
            .find(&format!("id=\"waterfall-d{i}\""))
            .unwrap_or_else(|| panic!("no waterfall for direction {i}"));
        let svg = &dom[start..start + dom[start..].find("</svg>").unwrap()];
        for l in d["layers"].as_array().unwrap() {
            if l["crossings"].as_u64().unwrap() == 0 {
                continue;
            }
            let name = l["layer"].as_str().unwrap().replace('&', "&amp;");
            assert!(
                svg.contains(&format!(">{name}<")),
                "{name} missing from the waterfall"
            );
        }
    }
}
