//! `profiler experiment` runs the papers' files end to end (--quick), and `profiler check`
//! passes two normal runs, fails a run with 1 ms injected on a bridge port naming the layer,
//! and refuses a malformed baseline in one line with exit code 2.

use std::{path::PathBuf, process::Stdio, time::Duration};

use profiler_tests::*;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pf-exp-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// Runs `experiment FILE --quick --json OUT`; returns (stdout, the report).
fn experiment(file: &str) -> (String, Value) {
    let out = tmp(&format!("{file}.json"));
    let o = run_ok(profiler().args([
        "experiment",
        root().join("configs").join(file).to_str().unwrap(),
        "--quick",
        "--json",
        out.to_str().unwrap(),
    ]));
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    eprintln!("{stdout}");
    let r: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    (stdout, r)
}

fn row<'a>(r: &'a Value, table: &str, setup: &str) -> &'a Value {
    r["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == table)
        .unwrap_or_else(|| panic!("no table {table}"))["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["setup"] == setup)
        .unwrap_or_else(|| panic!("no row {setup} in {table}"))
}

/// Ours measured, with our ratio against the baseline, beside the paper's ratio.
fn both_ratios(r: &Value, table: &str, setup: &str) -> (f64, f64) {
    let x = row(r, table, setup);
    let ours = x["ours_ratio"]
        .as_f64()
        .unwrap_or_else(|| panic!("{table}/{setup}: no ratio of ours: {x}"));
    let paper = x["paper_ratio"]
        .as_f64()
        .unwrap_or_else(|| panic!("{table}/{setup}: no paper ratio: {x}"));
    assert!(ours > 0.0 && x["ours"].as_f64().unwrap() > 0.0, "{x}");
    (paper, ours)
}

#[test]
fn suo2018_quick_prints_the_papers_rows_with_both_ratios_and_the_layers() {
    require_root();
    let (stdout, r) = experiment("suo2018.toml");
    assert_eq!(r["kind"], "experiment");
    assert!(stdout.contains("paper ratio") && stdout.contains("our ratio"));
    let (p, o) = both_ratios(&r, "headline-throughput-up", "overlay");
    assert!((p - 0.172).abs() < 1e-9, "{p}");
    assert!(o < 1.0, "overlay faster than host? ratio {o}");
    both_ratios(&r, "headline-throughput-up", "bridge");
    both_ratios(&r, "table5-sd-client", "Docker overlay");
    both_ratios(&r, "table6-launch", "overlay");
    // The baseline row is 1.00 by definition, on both sides.
    assert_eq!(both_ratios(&r, "table5-cpu-client", "none"), (1.0, 1.0));
    // Rows this machine or tool cannot run keep the paper's figure and say why.
    let c = row(&r, "table6-launch", "container");
    assert_eq!(c["paper"], 239.4);
    assert!(c["ours"].is_null() && c["why"].as_str().unwrap().contains("namespace"));
    assert!(stdout.contains("not run here:"));
    // The per-layer explanation: overlay's VXLAN layer, against host's loopback.
    let ov = r["explanations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["mode"] == "overlay")
        .expect("an explanation for overlay");
    assert!(ov["error"].is_null(), "{ov}");
    let layers: Vec<&str> = ov["directions"][0]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["layer"].as_str().unwrap())
        .collect();
    assert!(layers.iter().any(|l| l.contains("vxlan")), "{layers:?}");
    assert!(stdout.contains("overlay: round trip p50"));
}

#[test]
fn amaral2015_quick_runs_placements_and_environments() {
    require_root();
    let (_, r) = experiment("amaral2015.toml");
    let (p, _) = both_ratios(&r, "table2-stream", "C-H bridge");
    assert!((p - 15.82 / 35.71).abs() < 1e-9);
    both_ratios(&r, "table2-rr", "C-H bridge");
    // Nested LB/LB runs in the nested lab: the inner container to the host, two bridges.
    let (p, _) = both_ratios(&r, "table2-stream", "nested LB/LB");
    assert!((p - 12.53 / 35.71).abs() < 1e-9);
    // One 1 s run each on a drifting machine: the ratio exists; its size is for full runs.
    both_ratios(&r, "table2-rr", "nested LB/LB");
    // VM-H runs the client in a stock guest on a tap on the bridge, and says how it ran.
    for table in ["table2-stream", "table2-rr"] {
        both_ratios(&r, table, "VM-H bridge");
        let vm = row(&r, table, "VM-H bridge");
        assert!(
            vm["notes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n.as_str().unwrap().contains("guest under")),
            "{vm}"
        );
    }
    let nested = r["explanations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["mode"] == "nested")
        .expect("an explanation for nested");
    assert!(nested["error"].is_null(), "{nested}");
    // The explanation holds both bridges: two crossings of the host stack's bridge output.
    let br = nested["directions"][0]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["layer"] == "bridge (host stack to port)")
        .unwrap_or_else(|| panic!("no bridge layer: {nested}"));
    assert_eq!(br["crossings"], 2, "{br}");
    // OVS is run and, on a kernel without the openvswitch module, refused naming it.
    let ovs = row(&r, "table2-stream", "OVS");
    if ovs["ours"].is_null() {
        let why = ovs["why"].as_str().unwrap();
        assert!(why.contains("CONFIG_OPENVSWITCH"), "{ovs}");
    }
    let vm = row(&r, "sysbench-cpu", "VM");
    assert!(vm["ours"].as_f64().unwrap() > 0.0, "{vm}");
    assert!(
        !vm["notes"].as_array().unwrap().is_empty(),
        "the accelerator and why: {vm}"
    );
}

#[test]
fn dhar2016_quick_boots_vms_and_containers() {
    require_root();
    let (stdout, r) = experiment("dhar2016.toml");
    both_ratios(&r, "table5.1-vm-boot", "2 VMs");
    both_ratios(&r, "table5.1-vm-shutdown", "2 VMs");
    both_ratios(&r, "table5.2-container-boot", "2 containers");
    assert!(
        row(&r, "table5.1-vm-boot", "12 VMs")["why"]
            .as_str()
            .unwrap()
            .contains("--quick")
    );
    // Containers' shutdown is timed now (kill to reaped, cgroup and namespace removed).
    let (_, ours) = both_ratios(&r, "table5.2-container-shutdown", "2 containers");
    assert!(ours > 0.0, "{stdout}");
    assert!(!stdout.contains("the native runtime times start-up phases only"));
}

fn trace(lab: &str, repeat: u32, json: &std::path::Path) {
    run_ok(profiler().args([
        "trace",
        "--lab",
        lab,
        "-l",
        "2",
        "--repeat",
        &repeat.to_string(),
        "--json",
        json.to_str().unwrap(),
    ]));
}

/// Generous for a loaded machine; 1 ms on a microsecond layer is still far beyond it.
// The reader's wake-up and run-queue wait flip with where the threads run: the socket layer
// went 6.3 -> 30 µs between two normal CI runs before it was split, and the run-queue wait
// 842 ns -> 8.7 µs after (the one-way time with them). A 1 ms delay on the bridge is +2000%
// one-way and +60000% in its layer, so these still catch it.
const LOOSE: &str = "p50=50%,p99=300%,throughput=50%,one_way@*=1000%,layer:*=100%,\
     layer:ip/transport*=1000%,layer:wake-up*=2000%,layer:run-queue*=2000%,\
     layer:data-ready*=2000%,layer:reader*=1000%";

#[test]
fn check_passes_two_normal_runs_and_fails_one_with_1ms_injected_naming_the_layer() {
    require_root();
    let id = "chk1";
    let _guard = LabGuard(id.into());
    run_ok(profiler().args(["lab", "up", "--mode", "bridge", "--id", id, "--json"]));
    let (base, cur, slow) = (tmp("base.json"), tmp("cur.json"), tmp("slow.json"));
    trace(id, 2, &base);
    trace(id, 2, &cur);
    let (md, xml) = (tmp("summary.md"), tmp("junit.xml"));
    let ok = profiler()
        .args([
            "check",
            "--baseline",
            base.to_str().unwrap(),
            cur.to_str().unwrap(),
        ])
        .args(["--max-regress", LOOSE, "--summary", md.to_str().unwrap()])
        .args(["--junit", xml.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&ok.stdout);
    eprintln!("{stdout}");
    assert_eq!(ok.status.code(), Some(0), "two normal runs: {stdout}");
    assert!(stdout.contains("no regression"));
    assert!(
        std::fs::read_to_string(&md)
            .unwrap()
            .contains("no regression")
    );
    assert!(!std::fs::read_to_string(&xml).unwrap().contains("<failure"));

    // 1 ms held on the client's bridge port (TC ingress on veth-c): the bridge layer.
    let mut inject = profiler()
        .args(["inject", "--lab", id, "--dev", "veth-c", "--ingress"])
        .args(["--delay", "1ms", "-l", "12"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    trace(id, 1, &slow);
    let _ = inject.kill();
    let _ = inject.wait();
    let (md, xml) = (tmp("summary2.md"), tmp("junit2.xml"));
    let bad = profiler()
        .args([
            "check",
            "--baseline",
            base.to_str().unwrap(),
            slow.to_str().unwrap(),
        ])
        .args(["--max-regress", LOOSE, "--summary", md.to_str().unwrap()])
        .args(["--junit", xml.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&bad.stdout);
    eprintln!("{stdout}");
    assert_eq!(bad.status.code(), Some(1), "1 ms injected: {stdout}");
    assert!(
        stdout.contains("the layer that grew most: bridge@requests"),
        "{stdout}"
    );
    let junit = std::fs::read_to_string(&xml).unwrap();
    assert!(
        junit.contains("<failure message=\"layer:bridge@requests regressed"),
        "{junit}"
    );
    assert!(
        std::fs::read_to_string(&md)
            .unwrap()
            .contains("The layer that grew most: **bridge@requests**")
    );
}

#[test]
fn check_refuses_a_malformed_baseline_in_one_line_with_exit_2() {
    let bad = tmp("malformed.json");
    std::fs::write(&bad, "{\"net\": [1,").unwrap();
    let other = tmp("other.json");
    std::fs::write(&other, "{\"hello\": 1}").unwrap();
    for (base, needle) in [
        (&bad, "is not JSON"),
        (
            &other,
            "not a trace, bench, experiment, boot or sysbench report",
        ),
    ] {
        let o = profiler()
            .args([
                "check",
                "--baseline",
                base.to_str().unwrap(),
                other.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(needle) && err.contains("baseline"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let o = profiler()
        .args([
            "check",
            "--baseline",
            bad.to_str().unwrap(),
            bad.to_str().unwrap(),
        ])
        .args(["--max-regress", "p99=ten%"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad --max-regress rule 'p99=ten%'"));
}

#[test]
fn check_compares_bench_reports_of_repeated_runs() {
    require_root();
    let mut files = vec![];
    for n in ["bench1.json", "bench2.json"] {
        let o = run_ok(profiler().args(["bench", "tcp_rr", "-l", "1", "--repeat", "3", "--json"]));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["repeat"], 3);
        assert_eq!(v["runs"].as_array().unwrap().len(), 3);
        let p = tmp(n);
        std::fs::write(&p, &o.stdout).unwrap();
        files.push(p);
    }
    let o = profiler()
        .args([
            "check",
            "--baseline",
            files[0].to_str().unwrap(),
            files[1].to_str().unwrap(),
        ])
        // Loopback tcp_rr on 2 cores shared with other builds: its p50 was seen to triple
        // between two 1 s runs, so this checks the plumbing and the spread, loosely.
        .args(["--max-regress", &format!("{LOOSE},p50=400%,throughput=75%")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("bench report") && stdout.contains("(3 run(s))"),
        "{stdout}"
    );
}

/// A sysbench cpu run with four times the primes does far fewer events per second: the gate
/// names throughput; the same report against itself passes; a boot report against a sysbench
/// report is bad input.
#[test]
fn check_gates_sysbench_and_boot_reports() {
    require_root();
    let sysbench = |primes: &str, name: &str| {
        let o = run_ok(profiler().args([
            "sysbench",
            "cpu",
            "--cpu-max-prime",
            primes,
            "--time",
            "1",
            "--json",
        ]));
        let p = tmp(name);
        std::fs::write(&p, &o.stdout).unwrap();
        p
    };
    let base = sysbench("10000", "sb-base.json");
    let slow = sysbench("40000", "sb-slow.json");
    let check = |b: &std::path::Path, c: &std::path::Path| {
        profiler()
            .args([
                "check",
                "--baseline",
                b.to_str().unwrap(),
                c.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };
    let o = check(&base, &base);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("sysbench report"), "{out}");
    let o = check(&base, &slow);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("throughput") && l.to_lowercase().contains("regress")),
        "{out}"
    );
    let o = run_ok(profiler().args(["boot", "--container", "native", "--json", "-"]));
    let boot = tmp("boot.json");
    std::fs::write(&boot, &o.stdout).unwrap();
    let o = check(&boot, &boot);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("boot report") && out.contains("total"),
        "{out}"
    );
    let o = check(&boot, &base);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("boot report") && err.contains("sysbench report"),
        "{err}"
    );
}

/// A placement the mode has no place for is bad input: one line, exit 2, nothing built.
#[test]
fn a_bad_placement_is_one_line_and_exit_2() {
    let f = tmp("bad-placement.toml");
    std::fs::write(
        &f,
        r#"paper = "bad"
[[table]]
id = "rr"
title = "rr"
kind = "net"
test = "tcp_rr"
metric = "rr_latency_us"
unit = "us"
baseline = "x"
rows = [{ setup = "x", mode = "nested", placement = "VM-H" }]
"#,
    )
    .unwrap();
    let o = profiler()
        .args(["experiment", f.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("placement 'VM-H' in mode nested"), "{err}");
}
