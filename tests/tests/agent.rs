//! `profiler agent`: scraped by a real Prometheus (Debian's, its own config in a temp dir, on
//! loopback) while lab traffic runs; PromQL's view of a layer must agree with the tool's own.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use profiler_tests::*;
use serde_json::Value;

fn http_get(addr: &str, path: &str, accept: Option<&str>) -> String {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{accept}\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.split_whitespace().nth(1) == Some("200"),
        "{path}: {head}"
    );
    body.to_string()
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for the agent to answer.
fn wait_up(addr: &str, agent: &mut Child) {
    let t = Instant::now();
    while TcpStream::connect(addr).is_err() {
        if let Some(st) = agent.try_wait().unwrap() {
            panic!("the agent exited early: {st}");
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the agent never listened on {addr}"
        );
        sleep(Duration::from_millis(100));
    }
}

#[test]
fn prometheus_scrapes_the_agent_and_its_quantile_matches_the_report() {
    require_root();
    let _lab = LabGuard("agt".into());
    run_ok(profiler().args(["lab", "up", "--mode", "bridge", "--id", "agt"]));
    let _bench = Kill(
        profiler()
            .args(["bench", "tcp_rr", "--lab", "agt", "-l", "40"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let agent_addr = format!("127.0.0.1:{}", free_port());
    let mut agent = profiler()
        .args([
            "agent",
            "--listen",
            &agent_addr,
            "--port",
            "20000",
            "--duration",
            "35",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_up(&agent_addr, &mut agent);

    // Prometheus, as an operator runs it: a scrape config, its own storage, loopback only.
    let dir = std::env::temp_dir().join(format!("profiler-test-prom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let prom_addr = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: profiler\n    static_configs:\n      - targets: ['{agent_addr}']\n"
        ),
    )
    .unwrap();
    let prom = Kill(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian's package, installed by `cargo xtask setup`)"),
    );
    let query = |q: &str| -> Value {
        let body = http_get(
            &prom_addr,
            &format!("/api/v1/query?query={}", encode(q)),
            None,
        );
        serde_json::from_str(&body).unwrap()
    };
    let series =
        r#"profiler_net_layer_latency_seconds_bucket{layer="bridge",direction="requests"}"#;
    let t = Instant::now();
    let mut up = Value::Null;
    loop {
        if TcpStream::connect(&prom_addr).is_ok() {
            up = query("up");
            let have = query(&format!("count({series})"));
            if have["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
            {
                break;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(25),
            "Prometheus never stored the agent's series; up = {up}"
        );
        sleep(Duration::from_millis(500));
    }
    // Prometheus 2.42 asks for OpenMetrics first: a healthy target means that parse too.
    let targets: Value =
        serde_json::from_str(&http_get(&prom_addr, "/api/v1/targets", None)).unwrap();
    let target = &targets["data"]["activeTargets"][0];
    assert_eq!(target["health"], "up", "{target}");
    sleep(Duration::from_secs(2));
    let q = query(&format!("histogram_quantile(0.5, {series})"));
    let promql_s: f64 = q["data"]["result"][0]["value"][1]
        .as_str()
        .unwrap_or_else(|| panic!("{q}"))
        .parse()
        .unwrap();
    let report: Value = serde_json::from_str(&http_get(&agent_addr, "/report.json", None)).unwrap();
    let bridge = report["directions"][0]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["layer"] == "bridge")
        .unwrap_or_else(|| panic!("no bridge layer: {report}"))
        .clone();
    let p50 = bridge["p50"].as_f64().unwrap();
    // The bucket holding the tool's p50: two edges per octave, 2^k and 1.5 * 2^k.
    let edges = profiler::agent::metrics::edges_ns();
    let hi = *edges.iter().find(|&&e| e as f64 >= p50).unwrap() as f64;
    let lo = edges
        .iter()
        .rev()
        .find(|&&e| (e as f64) < p50)
        .copied()
        .unwrap_or(0) as f64;
    let promql_ns = promql_s * 1e9;
    eprintln!("PromQL p50 {promql_ns:.0} ns, the agent's p50 {p50} ns, bucket {lo}..{hi} ns");
    assert!(
        (promql_ns - p50).abs() <= hi - lo,
        "PromQL p50 {promql_ns:.0} ns against the agent's {p50} ns (bucket {lo}..{hi})"
    );

    // The Prometheus text format passes promtool's own lint.
    let text = http_get(&agent_addr, "/metrics", None);
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    lint.stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let om = http_get(
        &agent_addr,
        "/metrics",
        Some("application/openmetrics-text; version=1.0.0"),
    );
    assert!(om.ends_with("# EOF\n"));
    for name in [
        "profiler_tracer_cpu_share",
        "profiler_net_packets_followed_total",
        "profiler_softirq_run_seconds_count",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
    drop(prom);
    let st = agent.wait().unwrap();
    assert!(st.success(), "the agent exited with {st}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_agent_input_is_one_line() {
    require_root();
    for (args, needle) in [
        (&["agent", "--overhead", "0"][..], "--overhead must be"),
        (&["agent", "--listen", "nowhere"][..], "invalid value"),
        (
            &["agent", "--netns", "pf-nosuch"][..],
            "no network namespace pf-nosuch",
        ),
        (&["agent", "--duration", "-1"][..], "--duration"),
    ] {
        assert_refused_in_one_line(args, needle);
    }
    // A port already taken.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    assert_refused_in_one_line(&["agent", "--listen", &addr], "cannot bind");
}

#[test]
fn shipped_unit_and_daemonset_are_well_formed() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/agent");
    let ds: Value =
        serde_yaml::from_str(&std::fs::read_to_string(root.join("daemonset.yaml")).unwrap())
            .expect("daemonset.yaml parses");
    assert_eq!(ds["kind"], "DaemonSet");
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "agent");
    assert_eq!(c["securityContext"]["privileged"], true);
    assert_eq!(
        ds["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"],
        c["ports"][0]["containerPort"].to_string()
    );
    // The arguments the manifest and the unit pass are ones the agent accepts.
    let unit = std::fs::read_to_string(root.join("profiler-agent.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let unit_args: Vec<&str> = exec.split_whitespace().skip(1).collect();
    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        c: Sub,
    }
    #[derive(clap::Subcommand)]
    enum Sub {
        Agent(profiler::agent::AgentArgs),
    }
    for a in [&args[..], &unit_args[..]] {
        let full: Vec<&str> = std::iter::once("profiler")
            .chain(a.iter().copied())
            .collect();
        if let Err(e) = <Cli as clap::Parser>::try_parse_from(&full) {
            panic!("{full:?}: {e}");
        }
    }
}
