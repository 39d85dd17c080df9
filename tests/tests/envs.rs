//! The same workload on the host, in a native container and in a Docker container; and the
//! density curve, which on this 2-core machine must bend after 2 instances.

use profiler_tests::*;
use serde_json::Value;

#[test]
fn one_workload_in_each_environment() {
    require_root();
    for env in ["host", "native", "docker"] {
        // Four threads on two cores: they must wait in the run queue, and the tracer sees it.
        let out = run_ok(profiler().args([
            "run",
            "--env",
            env,
            "sysbench",
            "cpu",
            "--time",
            "1",
            "--threads",
            "4",
        ]));
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["env"], env);
        let eps = r["report"]["run"]["events_per_sec"].as_f64().unwrap();
        assert!(eps > 100.0, "{env}: {eps} events/s");
        // The environment's start-up is inside the wall time, the run is not longer than it.
        assert!(
            r["wall_ns"].as_f64().unwrap() >= 1e9,
            "{env}: {}",
            r["wall_ns"]
        );
    }
}

#[test]
fn density_bends_after_the_core_count() {
    require_root();
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(cores, 2, "this test's expectation is for a 2-core machine");
    let file = "/tmp/profiler-test-density.json";
    run_ok(profiler().args([
        "density",
        "--env",
        "native",
        "--instances",
        "1,2,4",
        "--time",
        "2",
        "--json",
        file,
    ]));
    let d: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    let slow: Vec<f64> = d["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["slowdown"].as_f64().unwrap())
        .collect();
    assert_eq!(slow.len(), 3);
    assert!(
        slow[0] < 1.25,
        "one instance in a container ~ the host: {slow:?}"
    );
    assert!(
        slow[1] < 1.4,
        "two instances on two cores barely slow down: {slow:?}"
    );
    assert!(
        slow[2] > 1.6 * slow[1],
        "four instances on two cores must bend: {slow:?}"
    );
}
