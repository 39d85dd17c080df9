//! `cargo xtask bench-workloads` and `cargo xtask bench-trace`: benchmarks, not tests. Each run
//! prints a markdown table with the machine it ran on and writes it under docs/benchmarks/.

use std::{
    process::{Child, Command, Stdio},
    thread::sleep,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};

const PROFILER: &str = "target/release/profiler";
const SECS: &str = "5";

fn profiler() -> Command {
    Command::new(PROFILER)
}

fn json(cmd: &mut Command) -> Result<serde_json::Value> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed");
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("JSON from {cmd:?}"))
}

fn text(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// A peer tool run inside a lab namespace.
fn in_ns(ns: &str, prog: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, prog]);
    c
}

fn spawn_quiet(mut cmd: Command) -> Result<Child> {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("{cmd:?}"))
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let kernel = text(Command::new("uname").arg("-r")).unwrap_or_default();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024 / 1024);
    format!("{nproc} CPUs ({cpu}), {mem} GiB, kernel {}", kernel.trim())
}

struct LabUp {
    id: String,
    desc: serde_json::Value,
}

impl LabUp {
    fn new(mode: &str, id: &str) -> Result<LabUp> {
        let _ = profiler().args(["lab", "down", id]).output();
        let desc = json(profiler().args(["lab", "up", "--mode", mode, "--id", id, "--json"]))?;
        Ok(LabUp {
            id: id.into(),
            desc,
        })
    }
    fn s(&self, k: &str) -> String {
        let v = &self.desc;
        match k {
            "client_ns" => v["client"]["netns"].as_str(),
            "server_ns" => v["server"]["netns"].as_str(),
            "server_addr" => v["server"]["addr"].as_str(),
            "connect" => v["connect"].as_str(),
            _ => None,
        }
        .unwrap_or_default()
        .to_string()
    }
}

impl Drop for LabUp {
    fn drop(&mut self) {
        let _ = profiler().args(["lab", "down", &self.id]).output();
    }
}

/// rr tests use sockperf's default message size (14 bytes) both ways, to compare like with like.
fn builtin(lab: &str, test: &str) -> Result<serde_json::Value> {
    let mut c = profiler();
    c.args(["bench", test, "--lab", lab, "-l", SECS, "--json"]);
    if test.ends_with("rr") {
        c.args(["-r", "14,14"]);
    }
    json(&mut c)
}

fn iperf3(lab: &LabUp) -> Result<f64> {
    let mut server = spawn_quiet({
        let mut c = in_ns(&lab.s("server_ns"), "iperf3");
        c.args(["-s", "-1", "-p", "20001"]);
        c
    })?;
    sleep(Duration::from_millis(500));
    let out = json(in_ns(&lab.s("client_ns"), "iperf3").args([
        "-c",
        &lab.s("connect"),
        "-p",
        "20001",
        "-t",
        SECS,
        "-J",
    ]));
    let _ = server.kill();
    let _ = server.wait();
    let v = out?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e6)
        .ok_or_else(|| anyhow!("no throughput in iperf3's JSON"))
}

/// sockperf ping-pong round trips per second.
fn sockperf(lab: &LabUp, tcp: bool) -> Result<f64> {
    let mut server = spawn_quiet({
        let mut c = in_ns(&lab.s("server_ns"), "sockperf");
        c.args(["sr", "-i", &lab.s("server_addr"), "-p", "20002"]);
        if tcp {
            c.arg("--tcp");
        }
        c
    })?;
    sleep(Duration::from_millis(500));
    let mut c = in_ns(&lab.s("client_ns"), "sockperf");
    c.args([
        "pp",
        "-i",
        &lab.s("connect"),
        "-p",
        "20002",
        "-t",
        SECS,
        "--mps=max",
    ]);
    if tcp {
        c.arg("--tcp");
    }
    let out = text(&mut c);
    let _ = server.kill();
    let _ = server.wait();
    let out = out?;
    // "[Valid Duration] RunTime=4.990 sec; SentMessages=123; ReceivedMessages=123"
    let line = out
        .lines()
        .find(|l| l.contains("Valid Duration"))
        .ok_or_else(|| anyhow!("no summary in sockperf's output:\n{out}"))?;
    let field = |k: &str| -> Option<f64> {
        let rest = &line[line.find(k)? + k.len()..];
        rest.trim_start_matches('=')
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .next()?
            .parse()
            .ok()
    };
    let (t, n) = (
        field("RunTime").ok_or_else(|| anyhow!("no RunTime: {line}"))?,
        field("ReceivedMessages").ok_or_else(|| anyhow!("no ReceivedMessages: {line}"))?,
    );
    Ok(n / t)
}

fn write_doc(name: &str, body: &str) -> Result<()> {
    std::fs::create_dir_all("docs/benchmarks")?;
    let path = format!("docs/benchmarks/{name}.md");
    std::fs::write(&path, body)?;
    eprintln!("bench: written to {path}");
    Ok(())
}

pub fn workloads() -> Result<()> {
    let mut md = format!(
        "# bench-workloads\n\nMachine: {}\n\nBuilt-in generator against the peers, same lab, {SECS} s each (`cargo xtask bench-workloads`).\n\n| mode | test | built-in | peer | peer result | ratio |\n|---|---|---|---|---|---|\n",
        machine()
    );
    for mode in ["host", "overlay"] {
        let lab = LabUp::new(mode, &format!("bw{}", &mode[..1]))?;
        let ours = builtin(&lab.id, "tcp_stream")?["throughput_mbps"]
            .as_f64()
            .unwrap_or(0.0);
        let peer = iperf3(&lab)?;
        md += &format!(
            "| {mode} | tcp_stream | {ours:.0} Mbit/s | iperf3 | {peer:.0} Mbit/s | {:.2} |\n",
            ours / peer
        );
        for (test, tcp) in [("tcp_rr", true), ("udp_rr", false)] {
            let ours = builtin(&lab.id, test)?["transactions_per_sec"]
                .as_f64()
                .unwrap_or(0.0);
            let peer = sockperf(&lab, tcp)?;
            md += &format!(
                "| {mode} | {test} | {ours:.0} trans/s | sockperf pp{} | {peer:.0} round trips/s | {:.2} |\n",
                if tcp { " --tcp" } else { "" },
                ours / peer
            );
        }
    }
    println!("{md}");
    write_doc("workloads", &md)
}

/// The peer: per-skb segment histograms in bpftrace, tracepoints only.
const BPFTRACE_PEER: &str = r#"
tracepoint:net:net_dev_queue { $k = args->skbaddr; if (@t[$k]) { @seg[@h[$k], 1] = hist(nsecs - @t[$k]); } @t[$k] = nsecs; @h[$k] = 1; }
tracepoint:net:net_dev_start_xmit { $k = args->skbaddr; if (@t[$k]) { @seg[@h[$k], 2] = hist(nsecs - @t[$k]); } @t[$k] = nsecs; @h[$k] = 2; }
tracepoint:net:netif_rx { $k = args->skbaddr; if (@t[$k]) { @seg[@h[$k], 3] = hist(nsecs - @t[$k]); } @t[$k] = nsecs; @h[$k] = 3; }
tracepoint:net:netif_receive_skb { $k = args->skbaddr; if (@t[$k]) { @seg[@h[$k], 4] = hist(nsecs - @t[$k]); } @t[$k] = nsecs; @h[$k] = 4; }
tracepoint:skb:consume_skb { delete(@t[args->skbaddr]); delete(@h[args->skbaddr]); }
END { clear(@t); clear(@h); }
"#;

pub fn trace() -> Result<()> {
    let lab = LabUp::new("overlay", "bt")?;
    let mut md = format!(
        "# bench-trace\n\nMachine: {}\n\nOverlay lab, {SECS} s per run (`cargo xtask bench-trace`). Perturbation: the workload's rate with the tracer attached over its rate without.\n\n| test | untraced | profiler trace | ratio | trace --follow-every 10 | ratio | bpftrace peer | ratio |\n|---|---|---|---|---|---|---|---|\n",
        machine()
    );
    let mut traced_report = serde_json::Value::Null;
    // Statistics cost time of their own: the perturbation runs go without them.
    let traced = |test: &str, follow: &str, stats: bool| -> Result<serde_json::Value> {
        let file = "/tmp/profiler-bench-trace.json";
        let mut c = profiler();
        c.args([
            "trace",
            "--lab",
            &lab.id,
            "-t",
            test,
            "-l",
            SECS,
            "--follow-every",
            follow,
        ]);
        if stats {
            c.arg("--bpf-stats");
        }
        let ok = c
            .args(["--json", file])
            .stdout(Stdio::null())
            .status()?
            .success();
        if !ok {
            bail!("profiler trace failed");
        }
        Ok(serde_json::from_slice(&std::fs::read(file)?)?)
    };
    for (test, key, unit) in [
        ("tcp_rr", "transactions_per_sec", "trans/s"),
        ("tcp_stream", "throughput_mbps", "Mbit/s"),
    ] {
        let base = builtin(&lab.id, test)?[key].as_f64().unwrap_or(0.0);
        let all = traced(test, "1", false)?["workload"][key]
            .as_f64()
            .unwrap_or(0.0);
        if test == "tcp_rr" {
            traced_report = traced(test, "1", true)?;
        }
        let tenth = traced(test, "10", false)?["workload"][key]
            .as_f64()
            .unwrap_or(0.0);
        let script = std::env::temp_dir().join("profiler-peer.bt");
        std::fs::write(&script, BPFTRACE_PEER)?;
        let mut bt = spawn_quiet({
            let mut c = Command::new("bpftrace");
            c.arg(&script);
            c
        })?;
        sleep(Duration::from_secs(3)); // bpftrace compiles and attaches
        let peer = builtin(&lab.id, test)?[key].as_f64().unwrap_or(0.0);
        let _ = Command::new("kill")
            .args(["-INT", &bt.id().to_string()])
            .status();
        let _ = bt.wait();
        md += &format!(
            "| {test} | {base:.0} {unit} | {all:.0} {unit} | {:.2} | {tenth:.0} {unit} | {:.2} | {peer:.0} {unit} | {:.2} |\n",
            all / base,
            tenth / base,
            peer / base
        );
    }
    md += "\nBPF run time per invocation (`--bpf-stats`, program body only; trampoline and tracepoint entry are not counted, so this undercounts: the perturbation above is the honest figure):\n\n| program | runs | ns per run |\n|---|---|---|\n";
    for p in traced_report["programs"].as_array().into_iter().flatten() {
        md += &format!(
            "| {} | {} | {:.0} |\n",
            p[0].as_str().unwrap_or(""),
            p[1],
            p[2].as_f64().unwrap_or(0.0)
        );
    }
    md += &format!(
        "\nPeak RSS of `profiler trace`: {} MiB.\n",
        traced_report["peak_rss_kib"].as_u64().unwrap_or(0) / 1024
    );
    println!("{md}");
    write_doc("trace", &md)
}

/// events/s from `sysbench ... run` output: total number of events over total time (memory
/// and fileio print no "events per second" line).
fn sysbench_eps(out: &str) -> Result<f64> {
    let field = |key: &str| -> Option<f64> {
        out.lines()
            .find(|l| l.trim_start().starts_with(key))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().trim_end_matches('s'))
            .and_then(|v| v.parse().ok())
    };
    match (field("total number of events"), field("total time")) {
        (Some(n), Some(t)) if t > 0.0 => Ok(n / t),
        _ => Err(anyhow!(
            "no event count or time in sysbench's output:\n{out}"
        )),
    }
}

pub fn sysbench() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("profiler-bench-sysbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut md = format!(
        "# bench-sysbench\n\nMachine: {}\n\nThe built-in workloads against Debian's sysbench, same parameters, 5 s each, alternating (`cargo xtask bench-sysbench`).\n\n| test | parameters | built-in events/s | sysbench events/s | ratio |\n|---|---|---|---|---|\n",
        machine()
    );
    let cases: [(&str, &[&str]); 4] = [
        ("cpu", &["--cpu-max-prime=20000"]),
        ("memory", &[]),
        ("memory", &["--memory-oper=read"]),
        (
            "fileio",
            &["--file-total-size=256M", "--file-test-mode=rndrw"],
        ),
    ];
    let cwd = |c: &mut Command| {
        c.current_dir(&dir);
    };
    for (test, params) in cases {
        if test == "fileio" {
            let mut c = Command::new("sysbench");
            c.arg("fileio").args(params).arg("prepare");
            cwd(&mut c);
            text(&mut c)?;
        }
        let mut ours = Command::new(std::fs::canonicalize(PROFILER)?);
        ours.args(["sysbench", test])
            .args(params)
            .args(["--time", SECS, "--json"]);
        cwd(&mut ours);
        let o = json(&mut ours)?["run"]["events_per_sec"]
            .as_f64()
            .unwrap_or(0.0);
        let mut peer = Command::new("sysbench");
        peer.arg(test)
            .args(params)
            .args([&format!("--time={SECS}"), "run"]);
        cwd(&mut peer);
        let p = sysbench_eps(&text(&mut peer)?)?;
        if test == "fileio" {
            let mut c = Command::new("sysbench");
            c.arg("fileio").args(params).arg("cleanup");
            cwd(&mut c);
            text(&mut c)?;
        }
        md += &format!(
            "| {test} | {} | {o:.0} | {p:.0} | {:.2} |\n",
            if params.is_empty() {
                "defaults".to_string()
            } else {
                params.join(" ")
            },
            o / p
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    md += "\nmemory: the built-in loop has no per-event global lock, which sysbench takes (about 90 ns per 1 KiB block here); so it is faster, not slower.\n";
    println!("{md}");
    write_doc("sysbench", &md)
}
