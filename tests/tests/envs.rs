//! The same workload on the host, in a native container, in a Docker container and in a qemu
//! VM; and the density curve, which on this 2-core machine must bend after 2 instances.

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
    // Two on two cores: 1.0-1.3 on a quiet run, but 1.80 was seen in one CI run on this VM
    // (its host's other tenants steal a core now and then); the bend below is the claim.
    assert!(
        slow[1] < 1.9,
        "two instances on two cores slow down less than four: {slow:?}"
    );
    assert!(
        slow[2] > 1.6 * slow[1],
        "four instances on two cores must bend: {slow:?}"
    );
}

/// Our workload VMs still alive: qemu with a workload initramfs on its command line (other
/// qemus on this machine, e.g. libvirt's or `migrate`'s, are not ours).
fn workload_qemus() -> Vec<String> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("qemu-system") && c.contains("-workload.cpio"))
        .filter(|c| !c.contains("-name profiler-migrate"))
        .collect()
}

/// Temp files of workload VMs left in the cache dir: `tmp-<pid>-...` whose owner is gone (a
/// live owner is another command still running, e.g. `migrate`).
fn workload_temps() -> Vec<String> {
    let owner_alive = |n: &str| {
        n.split('-')
            .nth(1)
            .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
    };
    std::fs::read_dir(profiler::boot::artefacts::cache_dir())
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("tmp-") && !owner_alive(n))
                .collect()
        })
        .unwrap_or_default()
}

fn assert_nothing_left(what: &str) {
    assert!(
        workload_qemus().is_empty(),
        "{what}: qemu left: {:?}",
        workload_qemus()
    );
    assert!(
        workload_temps().is_empty(),
        "{what}: temp files left: {:?}",
        workload_temps()
    );
}

/// Where a stock guest cannot boot on KVM (no /dev/kvm, or the PVM backend), auto means TCG.
fn expect_tcg() -> bool {
    !std::path::Path::new("/dev/kvm").exists()
        || std::path::Path::new("/sys/module/kvm_pvm").exists()
}

#[test]
fn a_workload_in_a_vm_reports_its_boot() {
    require_root();
    // --accel auto's choice: the KVM probe, then (here) TCG.
    let t = std::time::Instant::now();
    let out = run_ok(profiler().args([
        "run",
        "--env",
        "vm",
        "sysbench",
        "cpu",
        "--cpu-max-prime",
        "2000",
        "--time",
        "1",
    ]));
    eprintln!("run --env vm: {:?}", t.elapsed());
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["env"], "vm");
    assert!(r["report"]["run"]["total_events"].as_u64().unwrap() > 0);
    assert!(r["report"]["run"]["events_per_sec"].as_f64().unwrap() > 0.0);
    let accel = r["accelerator"].as_str().unwrap();
    assert!(!r["accelerator_reason"].as_str().unwrap().is_empty());
    let vm = &r["vm"];
    if expect_tcg() {
        assert_eq!(accel, "tcg", "{}", r["accelerator_reason"]);
    }
    if accel == "tcg" {
        assert!(vm["vm_exits"].is_null());
        assert!(
            vm["notes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n == "TCG: no KVM exits"),
            "{}",
            vm["notes"]
        );
    } else {
        assert!(vm["vm_exits"].is_object(), "{}", vm["vm_exits"]);
    }
    let phases = vm["phases"].as_array().unwrap();
    let names: Vec<&str> = phases.iter().map(|p| p["name"].as_str().unwrap()).collect();
    for want in ["kernel_boot", "init", "workload", "shutdown"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let mut sum = 0;
    for p in phases {
        assert_eq!(p["complete"], true, "{p}");
        let ns = p["ns"].as_u64().unwrap();
        assert!(ns > 0, "{p}");
        sum += ns;
    }
    let total = vm["total_ns"].as_u64().unwrap();
    assert_eq!(sum, total);
    // The run (1 s) is inside the workload phase; the whole run inside the wall time.
    let workload = phases.iter().find(|p| p["name"] == "workload").unwrap();
    assert!(workload["ns"].as_u64().unwrap() >= 1_000_000_000);
    assert!(r["wall_ns"].as_u64().unwrap() >= total);
    eprintln!(
        "phases: {:?}",
        phases
            .iter()
            .map(|p| format!("{} {} ms", p["name"], p["ns"].as_u64().unwrap() / 1_000_000))
            .collect::<Vec<_>>()
    );
    assert_nothing_left("after a run");
}

#[test]
fn a_workload_failing_in_the_vm_is_one_line_and_leaves_nothing() {
    require_root();
    // Arguments the host checks and accepts (it does before it boots anything), but a run the
    // workload itself fails in the guest: fileio's files were never prepared there.
    let out = profiler()
        .args(["run", "--env", "vm", "--accel", "tcg"])
        .args([
            "sysbench",
            "fileio",
            "run",
            "--file-test-mode",
            "seqrd",
            "--time",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("failed in the VM (exit status 1)") && err.contains("is missing"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_nothing_left("after a failing workload");

    // Killed at the time limit: the same, and nothing left either. 1 s: this guest is ready
    // about 2 s after its spawn here, so 2 s landed on either side of ready.
    let out = profiler()
        .args(["run", "--env", "vm", "--accel", "tcg", "--timeout", "1"])
        .args(["sysbench", "cpu", "--time", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("killed: not ready within 1.0 s"), "{err}");
    assert_nothing_left("after a timeout");
}

#[test]
fn density_of_vms_has_their_boot_phases() {
    require_root();
    let file = "/tmp/profiler-test-density-vm.json";
    run_ok(profiler().args([
        "density",
        "--env",
        "vm",
        "--accel",
        "tcg",
        "--workload",
        "cpu",
        "--instances",
        "1,2",
        "--time",
        "1",
        "--json",
        file,
    ]));
    let d: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    let rows = d["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for (row, n) in rows.iter().zip([1, 2]) {
        assert_eq!(row["instances"], n);
        assert_eq!(row["events_per_sec"].as_array().unwrap().len(), n);
        let startup = row["startup"].as_array().unwrap();
        let names: Vec<&str> = startup
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        for want in ["vmm_setup", "kernel_boot", "init", "workload"] {
            assert!(names.contains(&want), "{n}: {want} missing from {names:?}");
        }
        for p in startup {
            let (p50, max) = (p["p50_ns"].as_u64().unwrap(), p["max_ns"].as_u64().unwrap());
            assert!(0 < p50 && p50 <= max, "{n}: {p}");
        }
    }
    assert_nothing_left("after density");
}

#[test]
fn a_density_that_cannot_fit_is_refused_in_one_line_with_nothing_started() {
    require_root();
    // Anything a refused run started and left comes here (not to init) once it exits.
    become_subreaper();
    let me = std::process::id();
    let cgroups = profiler_cgroups();
    for args in [
        &["density", "--env", "native", "--instances", "5000"][..],
        &["density", "--env", "docker", "--instances", "1,5000"][..],
        &["density", "--env", "vm", "--instances", "5000"][..],
    ] {
        let err = assert_refused_in_one_line(args, "--instances 5000 needs");
        assert!(
            err.contains("at most") && err.contains("or pass --force"),
            "{err}"
        );
        assert_eq!(profiler_cgroups(), cgroups, "{args:?} made a cgroup");
        let left = live_children(&[me], "sysbench");
        assert!(left.is_empty(), "{args:?} ran a workload: {left:?}");
    }
    // One run whose buffers cannot fit: refused before the container starts.
    let err = assert_refused_in_one_line(
        &[
            "run",
            "--env",
            "native",
            "sysbench",
            "memory",
            "--memory-block-size",
            "100T",
        ],
        "--memory-block-size 102400 GiB",
    );
    assert!(err.contains("ask for less, or pass --force"), "{err}");
    assert_eq!(profiler_cgroups(), cgroups);
}

#[test]
fn kill_9_of_a_native_run_leaves_nothing_after_the_next_command() {
    require_root();
    let mut child = profiler()
        .args(["run", "--env", "native", "sysbench", "cpu", "--time", "30"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let ours = |pid: u32| {
        let prefix = format!("profiler-run-{pid}-");
        profiler_cgroups()
            .into_iter()
            .filter(|c| c.starts_with(&prefix))
            .collect::<Vec<_>>()
    };
    // Killed once the workload (`profiler sysbench cpu ...` in the container) runs: its
    // start-up took over 1.5 s on a loaded machine. Until it execs, the container's child is a
    // clone of this run, with its command line.
    let is_sysbench = |p: &u32| {
        std::fs::read(format!("/proc/{p}/cmdline"))
            .is_ok_and(|c| c.split(|b| *b == 0).nth(1) == Some(&b"sysbench"[..]))
    };
    let t = std::time::Instant::now();
    let mut workload: Vec<(u32, String)> = vec![];
    while workload.is_empty() && t.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(50));
        workload = live_children(&[pid], "sysbench cpu");
        workload.retain(|(p, _)| is_sysbench(p));
    }
    if workload.is_empty() {
        child.kill().unwrap();
    }
    assert_eq!(
        workload.len(),
        1,
        "the workload is not running: {workload:?}"
    );
    assert_eq!(
        ours(pid).len(),
        1,
        "no cgroup of the run: {:?}",
        profiler_cgroups()
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // The workload died with its parent (PR_SET_PDEATHSIG); its cgroup stays until reaped.
    let t = std::time::Instant::now();
    while std::path::Path::new(&format!("/proc/{}/cmdline", workload[0].0)).exists()
        && std::fs::read(format!("/proc/{}/cmdline", workload[0].0)).is_ok_and(|c| !c.is_empty())
    {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(1),
            "the workload outlived its parent"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(ours(pid).len(), 1, "kill -9 cannot clean up");
    let out = run_ok(profiler().args(["lab", "list"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("removed stale cgroup"), "{stderr}");
    assert!(ours(pid).is_empty(), "left: {:?}", ours(pid));
    // Nothing else of a dead owner either: a second command finds nothing to reap.
    let again = run_ok(profiler().args(["lab", "list"]));
    assert!(!String::from_utf8_lossy(&again.stderr).contains("stale"));
}

#[test]
fn bad_run_and_density_input_is_one_line_naming_the_option() {
    require_root();
    let instances = "'--instances <INSTANCES>': expected a whole number of at least 1";
    let time = "'--time <TIME>': expected seconds greater than 0";
    let timeout = "'--timeout <TIMEOUT>': expected a whole number of at least 1";
    for (args, needle) in [
        (
            &["density", "--env", "native", "--instances", "0"][..],
            instances,
        ),
        (
            &["density", "--env", "native", "--instances", "1,-2"][..],
            instances,
        ),
        (
            &["density", "--env", "host", "--instances", "x"][..],
            instances,
        ),
        (&["density", "--env", "native", "--time", "0"][..], time),
        (&["density", "--env", "native", "--time", "-1"][..], time),
        (&["density", "--env", "docker", "--time", "soon"][..], time),
        (
            &["run", "--env", "host", "--timeout", "0", "sysbench", "cpu"][..],
            timeout,
        ),
        (
            &[
                "run",
                "--env",
                "native",
                "--timeout",
                "-1",
                "sysbench",
                "cpu",
            ][..],
            timeout,
        ),
        // The workload's own parser, in its environment: still one line, naming the option.
        (
            &["run", "--env", "host", "sysbench", "cpu", "--threads", "0"][..],
            "'--threads <N>': expected a whole number of at least 1",
        ),
    ] {
        assert_refused_in_one_line(args, needle);
    }
}
