//! The native container runtime: every phase of a start-up is present, positive and in order,
//! the phases add up to the wall clock, and nothing (namespace, cgroup, payload) is left.

use std::time::{Duration, Instant};

use profiler::container::{self, ContainerBootArgs, Host, NetMode, Phase, Startup};
use profiler_tests::*;

/// The payload: the profiler binary's hidden command (main.rs dispatches it to
/// `profiler::container::payload_main`).
fn payload() -> Vec<String> {
    vec![
        profiler().get_program().to_string_lossy().into_owned(),
        container::PAYLOAD_COMMAND.to_string(),
    ]
}

fn args(net: NetMode, count: usize, payload: Vec<String>) -> ContainerBootArgs {
    ContainerBootArgs {
        count,
        net,
        json: None,
        timeout: 15.0,
        payload,
    }
}

fn expected(net: NetMode, foreign: bool) -> Vec<Phase> {
    let mut v = vec![Phase::Clone, Phase::Cgroup, Phase::Netns];
    if net != NetMode::None {
        v.extend([Phase::Veth, Phase::Bridge, Phase::Addr]);
    }
    if foreign {
        v.push(Phase::ExecReady);
    } else {
        v.extend([Phase::Exec, Phase::Ready]);
    }
    v
}

fn check_phases(s: &Startup, want: &[Phase]) {
    let got: Vec<Phase> = s.phases.iter().map(|p| p.phase).collect();
    assert_eq!(got, want, "container {}: phases", s.index);
    let mut offset = 0;
    for p in &s.phases {
        assert!(
            p.ns > 0,
            "container {}: {} is not positive",
            s.index,
            p.name
        );
        assert_eq!(
            p.offset_ns, offset,
            "container {}: {} out of order",
            s.index, p.name
        );
        offset += p.ns;
    }
    assert_eq!(s.sum_ns(), s.total_ns, "container {}: phases sum", s.index);
}

/// Within 5% of `wall` with the thread's tools made before the clock (`context_ns`), and never
/// more than it.
fn check_sum(s: &Startup, context_ns: u64, wall: Duration) {
    let (sum, wall) = (
        s.sum_ns() as f64,
        wall.as_nanos() as f64 - context_ns as f64,
    );
    assert!(
        sum <= wall,
        "phases {sum} ns exceed the wall clock {wall} ns"
    );
    assert!(
        sum >= wall * 0.95,
        "phases {sum} ns are under 95% of the wall clock {wall} ns"
    );
}

/// Names of payload processes still running (by a marker in their command line).
fn running(marker: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(marker)
                .then(|| format!("{}: {cmd}", e.file_name().to_string_lossy()))
        })
        .collect()
}

fn assert_nothing_left(lab: &str, marker: &str) {
    assert_gone(lab);
    let k: Vec<String> = namespaces()
        .into_iter()
        .filter(|n| n.starts_with("pf-") && n.contains("-k"))
        .collect();
    assert!(k.is_empty(), "container namespaces left: {k:?}");
    let root = container::cgroup_root().expect("cgroup v2 root");
    assert!(
        container::cgroup_leftovers(&root).is_empty(),
        "cgroups left: {:?}",
        container::cgroup_leftovers(&root)
    );
    let top = container::cgroup_leftovers(std::path::Path::new("/sys/fs/cgroup"));
    assert!(top.is_empty(), "cgroups left: {top:?}");
    // SIGKILL + waitpid in teardown: gone, not zombies.
    assert!(
        running(marker).is_empty(),
        "payloads left: {:?}",
        running(marker)
    );
}

/// One container through each network mode, the test's own clock around the start.
#[test]
fn one_container_in_each_network_mode() {
    require_root();
    for net in [
        NetMode::None,
        NetMode::Bridge,
        NetMode::Nat,
        NetMode::Overlay,
    ] {
        let host = Host::prepare(&args(net, 1, payload())).expect("prepare");
        let lab = host.lab_id().to_string();
        let _guard = LabGuard(lab.clone());
        let t = Instant::now();
        let c = host.start(0).unwrap_or_else(|e| panic!("{net:?}: {e:#}"));
        let wall = t.elapsed();
        check_phases(&c.startup, &expected(net, false));
        check_sum(&c.startup, c.outside_ns, wall);
        let pid = c.pid().expect("pid");
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        drop(c);
        drop(host);
        assert_nothing_left(&lab, container::PAYLOAD_COMMAND);
    }
}

/// A foreign payload that sends no entry time: exec and ready are one phase.
#[test]
fn foreign_payload_without_network() {
    require_root();
    let sh = vec![
        "/bin/sh".to_string(),
        "-c".into(),
        "printf x >&3; exec sleep 600 # pf-foreign-payload".into(),
    ];
    let host = Host::prepare(&args(NetMode::None, 1, sh)).expect("prepare");
    let lab = host.lab_id().to_string();
    let _guard = LabGuard(lab.clone());
    let t = Instant::now();
    let c = host.start(0).unwrap_or_else(|e| panic!("{e:#}"));
    let wall = t.elapsed();
    check_phases(&c.startup, &expected(NetMode::None, true));
    check_sum(&c.startup, c.outside_ns, wall);
    drop(c);
    drop(host);
    assert_nothing_left(&lab, "sleep 600");
}

/// `--count 8`: eight start-ups at once, each phase's distribution over the eight.
#[test]
fn eight_containers_at_once() {
    require_root();
    let json = std::env::temp_dir().join("pf-boot-container-8.json");
    let mut a = args(NetMode::Bridge, 8, payload());
    a.json = Some(json.clone());
    let r = container::run(&a).unwrap_or_else(|e| panic!("{e:#}"));
    let _guard = LabGuard(r.lab.clone());
    container::print(&r);
    assert_eq!(r.containers.len(), 8);
    for (i, s) in r.containers.iter().enumerate() {
        assert_eq!(s.index, i);
        check_phases(s, &expected(NetMode::Bridge, false));
    }
    let want = expected(NetMode::Bridge, false);
    assert_eq!(r.phases().len(), want.len());
    for (st, p) in r.phases().iter().zip(&want) {
        assert_eq!(st.name, p.name());
        assert_eq!(st.count, 8, "{}", st.name);
        assert!(
            0 < st.min_ns && st.min_ns <= st.p50_ns && st.p50_ns <= st.p90_ns,
            "{st:?}"
        );
        assert!(st.p90_ns <= st.max_ns + st.max_ns / 500, "{st:?}");
    }
    assert_eq!(r.total().map(|t| t.count), Some(8));
    // Each shutdown is timed, and all eight fit inside the teardown lap that removed them.
    let downs: Vec<u64> = r.containers.iter().filter_map(|c| c.shutdown_ns).collect();
    assert_eq!(downs.len(), 8, "{:?}", r.containers);
    assert!(downs.iter().all(|&d| d > 0));
    assert_eq!(r.shutdown.as_ref().map(|s| s.count), Some(8));
    let removed = r
        .wall
        .teardown
        .iter()
        .find(|l| l.name == "containers removed")
        .map(|l| l.ns)
        .expect("a 'containers removed' lap");
    assert!(downs.iter().all(|&d| d <= removed), "{downs:?} > {removed}");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the --json file")).unwrap();
    assert_eq!(v["containers"].as_array().map(Vec::len), Some(8));
    let _ = std::fs::remove_file(&json);
    assert_nothing_left(&r.lab, container::PAYLOAD_COMMAND);
}

/// A payload that cannot start: the start fails in one line and leaves nothing, with the
/// veth, bridge port and cgroup already made.
#[test]
fn failure_halfway_leaves_nothing() {
    require_root();
    let host = Host::prepare(&args(
        NetMode::Bridge,
        1,
        vec!["/nonexistent/pf-missing-payload".into()],
    ))
    .expect("prepare");
    let lab = host.lab_id().to_string();
    let _guard = LabGuard(lab.clone());
    let e = host.start(0).err().expect("a missing payload must fail");
    let msg = format!("{e:#}");
    assert!(msg.contains("exec"), "{msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
    drop(host);
    assert_nothing_left(&lab, "pf-missing-payload");
}

/// `profiler boot --container native --json`: the report accounts for the whole run as timed
/// from outside the process (exec, the lab, the containers, teardown) within 10%, and its
/// laps add up to its own wall clock exactly.
#[test]
fn the_report_accounts_for_the_wall_clock_outside() {
    require_root();
    let json = std::env::temp_dir().join("pf-boot-container-wall.json");
    for net in ["none", "bridge"] {
        let t = Instant::now();
        run_ok(
            profiler()
                .args(["boot", "--container", "native", "--net", net, "--json"])
                .arg(&json),
        );
        let outside = t.elapsed().as_nanos() as f64;
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).expect("the --json file")).unwrap();
        let laps = |k: &str| -> u64 {
            v[k].as_array()
                .unwrap_or_else(|| panic!("{k}: {v}"))
                .iter()
                .map(|p| p["ns"].as_u64().unwrap())
                .sum()
        };
        let wall = v["wall_ns"].as_u64().unwrap();
        let inside = v["instances_wall_ns"].as_u64().unwrap();
        assert_eq!(laps("setup") + inside + laps("teardown"), wall, "{v}");
        let setup: Vec<&str> = v["setup"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert!(setup.contains(&"lab and cgroups"), "{setup:?}");
        let teardown = v["teardown"].as_array().unwrap();
        assert!(
            teardown.iter().any(|p| p["name"] == "lab removed"),
            "{teardown:?}"
        );
        let total = v["containers"][0]["total_ns"].as_u64().unwrap();
        assert!(0 < total && total <= inside, "{total} of {inside}");
        let off = (outside - wall as f64).abs() / outside;
        assert!(
            net == "none" || off < 0.10,
            "--net {net}: the report's wall clock {wall} ns, measured outside {outside} ns ({:.1}% apart)",
            off * 100.0
        );
        eprintln!(
            "--net {net}: outside {:.1} ms, report {:.1} ms ({:.1}% apart)",
            outside / 1e6,
            wall as f64 / 1e6,
            off * 100.0
        );
        let labs = v["lab"].as_str().unwrap().to_string();
        assert_nothing_left(&labs, container::PAYLOAD_COMMAND);
    }
    let _ = std::fs::remove_file(&json);
}
