//! Docker container start-up through the daemon's API: phases present, ordered, adding up to
//! the wall clock, and nothing the profiler made left behind. Needs a running Docker daemon
//! (`cargo xtask test` starts one when it is installed but not running).

use std::{io::Write as _, process::Stdio, time::Instant};

use profiler_tests::*;
use serde_json::Value;

fn leftovers() -> (usize, usize) {
    let count = |args: &[&str]| {
        let out = std::process::Command::new("docker")
            .args(args)
            .output()
            .expect("the docker CLI");
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    (
        count(&["ps", "-aq", "--filter", "label=profiler"]),
        count(&["images", "-q", "--filter", "label=profiler"]),
    )
}

fn boot(args: &[&str]) -> (Value, f64) {
    let file = format!("/tmp/profiler-test-docker-{}.json", std::process::id());
    let t = Instant::now();
    run_ok(
        profiler()
            .args(["boot", "--container", "docker", "--json", &file])
            .args(args),
    );
    let wall = t.elapsed().as_nanos() as f64;
    let v = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let _ = std::fs::remove_file(&file);
    (v, wall)
}

#[test]
fn docker_start_up_in_phases() {
    require_root();
    assert!(
        std::path::Path::new("/var/run/docker.sock").exists(),
        "no Docker daemon at /var/run/docker.sock: `cargo xtask test` starts it; is docker.io installed?"
    );
    let (r, wall) = boot(&[]);
    let b = &r["boots"][0];
    let phases: Vec<(&str, f64)> = b["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["ns"].as_f64().unwrap()))
        .collect();
    let names: Vec<&str> = phases.iter().map(|p| p.0).collect();
    assert_eq!(names, ["create", "start", "running", "ready"]);
    assert!(phases.iter().all(|p| p.1 > 0.0), "{phases:?}");
    let sum: f64 = phases.iter().map(|p| p.1).sum();
    assert_eq!(sum, b["total_ns"].as_f64().unwrap());
    // The whole run: setup, the start-up, teardown, against the wall clock around the process
    // (which adds process start and exit).
    let laps = |k: &str| -> f64 {
        r[k].as_array()
            .unwrap()
            .iter()
            .map(|p| p["ns"].as_f64().unwrap())
            .sum()
    };
    let accounted = laps("setup") + sum + laps("teardown");
    assert!(
        (wall - accounted).abs() <= 0.05 * wall + 20e6,
        "accounted {accounted} ns of {wall} ns"
    );
    assert!(b["ready_by"].as_str().unwrap().contains("HTTP"));
    let kernel: Vec<&str> = r["kernel"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k[1].as_str().unwrap())
        .collect();
    assert!(kernel.iter().any(|c| c.starts_with("runc")), "{kernel:?}");
    assert!(
        kernel.contains(&"busybox"),
        "the entrypoint's exec: {kernel:?}"
    );
    assert_eq!(leftovers(), (0, 0), "containers or images left behind");
}

#[test]
fn eight_at_once_have_distributions() {
    require_root();
    let (r, _) = boot(&["--count", "8"]);
    assert_eq!(r["boots"].as_array().unwrap().len(), 8);
    let summary = r["summary"].as_array().unwrap();
    let names: Vec<&str> = summary
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["create", "start", "running", "ready", "total"]);
    for s in summary {
        assert_eq!(s["count"], 8, "{s}");
        let (min, p50, max) = (&s["min_ns"], &s["p50_ns"], &s["max_ns"]);
        assert!(
            min.as_u64() <= p50.as_u64() && p50.as_u64() <= max.as_u64(),
            "{s}"
        );
    }
    assert_eq!(leftovers(), (0, 0));
}

#[test]
fn a_missing_image_is_one_line_and_leaves_nothing() {
    require_root();
    let out = profiler()
        .args([
            "boot",
            "--container",
            "docker",
            "--image",
            "profiler-no-such-image:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("profiler-no-such-image"), "{err}");
    assert_eq!(leftovers(), (0, 0));
}

/// A container of ours on Docker's default bridge, serving `profiler serve`; removed on drop.
struct Server {
    name: String,
    image: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.name]);
        let _ = docker(&["rmi", "-f", &self.image]);
    }
}

fn docker(args: &[&str]) -> std::process::Output {
    std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI")
}

#[test]
fn attach_only_on_a_docker_bridge_names_layers_and_the_container() {
    require_root();
    let id = std::process::id();
    let server = Server {
        name: format!("profiler-test-serve-{id}"),
        image: format!("profiler-test-serve:{id}"),
    };
    // This binary and its libraries as the image (the same rootfs `run --env docker` uses),
    // labelled so a later run reaps it if this test dies.
    let rootfs = profiler::docker::image::rootfs_with(&profiler_path().to_string_lossy())
        .expect("the image's rootfs");
    let mut import = std::process::Command::new("docker")
        .args(["import", "--change", "LABEL profiler=1", "-", &server.image])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("docker import");
    import.stdin.take().unwrap().write_all(&rootfs).unwrap();
    assert!(import.wait().unwrap().success(), "docker import failed");
    // Labelled as the tool labels its own, with this test as the owner: kept while the test
    // lives (every profiler command reaps containers of a dead owner), reaped if it dies.
    let owner = format!(
        "{}={}",
        profiler::cleanup::docker::OWNER_LABEL,
        profiler::cleanup::Owner::me()
    );
    let run = docker(&[
        "run",
        "-d",
        "--label",
        "profiler=1",
        "--label",
        &owner,
        "--name",
        &server.name,
        &server.image,
        "/profiler",
        "serve",
    ]);
    assert!(run.status.success(), "{run:?}");
    let ip = docker(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.IPAddress}}",
        &server.name,
    ]);
    let ip = String::from_utf8_lossy(&ip.stdout).trim().to_string();
    assert!(!ip.is_empty(), "the container has no address on the bridge");

    // `serve` listens on its control port (12865) once it is up.
    let t = Instant::now();
    while std::net::TcpStream::connect((ip.as_str(), 12865)).is_err() {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(20),
            "the container's `profiler serve` never answered: {:?}",
            docker(&["logs", &server.name])
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Traffic from the host's namespace to the container on serve's one port, traced by port only.
    let mut bench = profiler()
        .args(["bench", "tcp_rr", "-H", &ip, "-l", "5"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(800));
    let file = format!("/tmp/profiler-test-docker-trace-{id}.json");
    let out = run_ok(profiler().args([
        "trace",
        "--attach-only",
        "--port",
        "12865",
        "-l",
        "2",
        "--print-every",
        "200",
        "--json",
        &file,
    ]));
    assert!(bench.wait().unwrap().success(), "bench against {ip} failed");
    let r: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(
        r["net"]["counts"]["delivered"].as_u64().unwrap_or(0) > 50,
        "{}",
        r["net"]["counts"]
    );
    let layers: Vec<String> = r["net"]["directions"][0]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["crossings"].as_u64().unwrap_or(0) >= 1)
        .map(|l| l["layer"].as_str().unwrap().to_string())
        .collect();
    // docker0 is a Linux bridge and the container hangs off it by a veth pair.
    assert!(layers.iter().any(|l| l.starts_with("bridge")), "{layers:?}");
    assert!(layers.iter().any(|l| l.contains("veth")), "{layers:?}");
    // The samples name the container's namespace by the container (name and id from the API).
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&server.name), "{stdout}");
}
