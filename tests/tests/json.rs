//! One convention for machine output: `--json` (or `--json -`) prints the JSON on stdout and
//! nothing else there; `--json FILE` writes it to FILE and leaves the human report on stdout.

use profiler_tests::*;
use serde_json::Value;

fn both_ways(args: &[&str], check: impl Fn(&Value)) {
    let out = run_ok(profiler().args(args).arg("--json"));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?} --json: stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    check(&v);
    let dash = run_ok(profiler().args(args).args(["--json", "-"]));
    check(&serde_json::from_slice(&dash.stdout).expect("--json - prints JSON"));
    let file = std::env::temp_dir().join(format!(
        "profiler-test-json-{}-{}.json",
        args[0],
        std::process::id()
    ));
    let out = run_ok(profiler().args(args).arg("--json").arg(&file));
    let v: Value = serde_json::from_slice(&std::fs::read(&file).unwrap())
        .unwrap_or_else(|e| panic!("{args:?} --json FILE: not JSON ({e})"));
    let _ = std::fs::remove_file(&file);
    check(&v);
    assert!(
        serde_json::from_slice::<Value>(&out.stdout).is_err() && !out.stdout.is_empty(),
        "{args:?} --json FILE: stdout should be the human report"
    );
}

#[test]
fn every_command_takes_json_with_and_without_a_file() {
    require_root();
    both_ways(&["doctor"], |v| assert!(v["mechanisms"].is_object()));
    both_ways(&["sysbench", "cpu", "--time", "0.3"], |v| {
        assert!(v.is_object(), "{v}")
    });
    both_ways(&["bench", "tcp_rr", "--mode", "host", "-l", "0.3"], |v| {
        assert!(v["transactions"].as_u64().unwrap() > 0)
    });
    both_ways(&["trace", "--mode", "host", "-l", "0.5"], |v| {
        assert!(v["net"]["directions"].is_array())
    });
    both_ways(&["kvm", "--micro-vm", "pio", "--count", "10"], |v| {
        assert_eq!(v["micro_vm"]["traced"], 10)
    });
    both_ways(&["boot", "--container", "native", "--net", "none"], |v| {
        assert!(v["wall_ns"].as_u64().unwrap() > 0, "{v}")
    });
    let _g = LabGuard("js".into());
    let up = run_ok(profiler().args(["lab", "up", "--mode", "host", "--id", "js", "--json"]));
    let d: Value = serde_json::from_slice(&up.stdout).unwrap();
    assert_eq!(d["id"], "js");
    both_ways(&["lab", "list"], |v| {
        assert!(v.as_array().unwrap().iter().any(|l| l["id"] == "js"))
    });
}

#[test]
fn json_on_stdout_refuses_what_also_prints_there() {
    require_root();
    assert_refused_in_one_line(
        &["trace", "--mode", "host", "--interval", "1", "--json"],
        "give --json a FILE",
    );
}
