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
    builtin_secs(lab, test, SECS)
}

fn builtin_secs(lab: &str, test: &str, secs: &str) -> Result<serde_json::Value> {
    let mut c = profiler();
    c.args(["bench", test, "--lab", lab, "-l", secs, "--json"]);
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

/// SIGINT, then SIGKILL after 5 s: a bpftrace interrupted while still attaching was seen to
/// ignore SIGINT and hang the benchmark.
fn stop_bpftrace(bt: &mut Child) {
    let _ = Command::new("kill")
        .args(["-INT", &bt.id().to_string()])
        .status();
    for _ in 0..50 {
        if let Ok(Some(_)) = bt.try_wait() {
            return;
        }
        sleep(Duration::from_millis(100));
    }
    let _ = bt.kill();
    let _ = bt.wait();
}

/// Interleaved (untraced, traced) pairs per configuration and test, each run this long.
const PAIRS: usize = 10;
const PAIR_SECS: &str = "2";

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// "median (min-max)".
fn spread(v: &[f64], digits: usize) -> String {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return "-".into();
    }
    let m = median(&mut v);
    format!(
        "{m:.digits$} ({:.digits$}-{:.digits$})",
        v[0],
        v[v.len() - 1]
    )
}

/// One configuration's runs of one test.
#[derive(Default)]
struct Pairs {
    ratio: Vec<f64>,
    p50_ratio: Vec<f64>,
    share: Vec<f64>,
    every: Vec<f64>,
    duty: Vec<f64>,
    ns_per_txn: Vec<f64>,
    followed_ns: Vec<f64>,
    unfollowed_ns: Vec<f64>,
    floor_ns: Vec<f64>,
    rss_kib: Vec<f64>,
}

pub fn trace() -> Result<()> {
    let lab = LabUp::new("overlay", "bt")?;
    let script = std::env::temp_dir().join("profiler-peer.bt");
    std::fs::write(&script, BPFTRACE_PEER)?;
    let traced = |test: &str, extra: &[&str]| -> Result<serde_json::Value> {
        let file = "/tmp/profiler-bench-trace.json";
        let mut c = profiler();
        c.args(["trace", "--lab", &lab.id, "-t", test, "-l", PAIR_SECS]);
        if test.ends_with("rr") {
            c.args(["-r", "14,14"]);
        }
        let ok = c
            .args(extra)
            .args(["--json", file])
            .stdout(Stdio::null())
            .status()?
            .success();
        if !ok {
            bail!("profiler trace {extra:?} failed");
        }
        let v = serde_json::from_slice(&std::fs::read(file)?)?;
        let _ = std::fs::remove_file(file);
        Ok(v)
    };
    let peer = |test: &str| -> Result<serde_json::Value> {
        let mut bt = spawn_quiet({
            let mut c = Command::new("bpftrace");
            c.arg(&script);
            c
        })?;
        sleep(Duration::from_secs(3)); // bpftrace compiles and attaches
        let r = builtin_secs(&lab.id, test, PAIR_SECS);
        stop_bpftrace(&mut bt);
        Ok(serde_json::json!({ "workload": r? }))
    };
    let configs: [(&str, &[&str]); 4] = [
        ("defaults (--overhead 1)", &[]),
        ("--follow-every 1", &["--follow-every", "1"]),
        (
            "empty programs on every hook (the floor)",
            &["--empty-programs"],
        ),
        ("bpftrace peer", &[]),
    ];
    let tests = [
        ("tcp_rr", "transactions_per_sec", true),
        ("tcp_stream", "throughput_mbps", false),
        ("udp_rr", "transactions_per_sec", true),
    ];
    let mut results: Vec<(&str, &str, Pairs)> = vec![];
    for (test, key, rr) in tests {
        for (ci, (config, extra)) in configs.iter().enumerate() {
            let mut p = Pairs::default();
            for i in 0..PAIRS {
                let run_traced = || -> Result<serde_json::Value> {
                    if ci == 3 {
                        peer(test)
                    } else {
                        traced(test, extra)
                    }
                };
                // Alternate the order so a drift favours neither side.
                let (u, t) = if i % 2 == 0 {
                    let u = builtin_secs(&lab.id, test, PAIR_SECS)?;
                    (u, run_traced()?)
                } else {
                    let t = run_traced()?;
                    (builtin_secs(&lab.id, test, PAIR_SECS)?, t)
                };
                let w = &t["workload"];
                let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
                p.ratio.push(f(w, key) / f(&u, key));
                if rr {
                    p.p50_ratio
                        .push(f(&w["latency"], "p50_us") / f(&u["latency"], "p50_us"));
                }
                let c = &t["tracer"];
                p.share.push(f(c, "measured_share"));
                p.every.push(f(c, "follow_every"));
                p.duty.push(f(c, "duty_cycle"));
                if rr {
                    p.ns_per_txn
                        .push(f(c, "bpf_ns_per_sec") / f(w, "transactions_per_sec"));
                }
                p.followed_ns.push(f(c, "followed_ns_per_run"));
                p.unfollowed_ns.push(f(c, "unfollowed_ns_per_run"));
                p.floor_ns.push(f(c, "floor_ns_per_run"));
                p.rss_kib.push(f(&t, "peak_rss_kib"));
                eprintln!(
                    "bench-trace: {test} {config} pair {}: ratio {:.3}",
                    i + 1,
                    p.ratio.last().unwrap()
                );
            }
            results.push((test, config, p));
        }
    }
    // Per-program cost: one extra run of every packet with statistics on.
    let stats = traced("tcp_rr", &["--follow-every", "1", "--bpf-stats"])?;
    let mut md = format!(
        "# bench-trace\n\nMachine: {}\n\n`cargo xtask bench-trace`: one overlay lab; for each test and configuration {PAIRS} interleaved pairs (untraced `profiler bench`, traced), {PAIR_SECS} s per run, the order alternating. Each cell is the median of the pairs and, in brackets, their range. The ratio is the traced run's rate over its untraced partner's; the RTT ratio is the traced workload's round-trip p50 over the untraced one's.\n\n",
        machine()
    );
    md += "| test | configuration | rate ratio | RTT p50 ratio | tracer's measured share of one CPU | one in N | attached | BPF ns per transaction |\n|---|---|---|---|---|---|---|---|\n";
    for (test, config, p) in &results {
        let traced_cfg = !config.starts_with("bpftrace") && !config.starts_with("empty");
        md += &format!(
            "| {test} | {config} | {} | {} | {} | {} | {} | {} |\n",
            spread(&p.ratio, 3),
            if p.p50_ratio.is_empty() {
                "-".into()
            } else {
                spread(&p.p50_ratio, 3)
            },
            if traced_cfg {
                spread(&p.share.iter().map(|x| x * 100.0).collect::<Vec<_>>(), 2) + " %"
            } else {
                "-".into()
            },
            if traced_cfg {
                spread(&p.every, 0)
            } else {
                "-".into()
            },
            if traced_cfg {
                spread(&p.duty.iter().map(|x| x * 100.0).collect::<Vec<_>>(), 1) + " %"
            } else {
                "-".into()
            },
            spread(&p.ns_per_txn, 0),
        );
    }
    md += "\nPer-invocation cost under the default budget (bpf_stats while attached; the floor is an empty raw tracepoint program on net_dev_queue in the same window), ns per run, median (range) over the pairs:\n\n| test | followed hook | hook on a packet not followed | floor | followed - floor | not followed - floor |\n|---|---|---|---|---|---|\n";
    for (test, config, p) in &results {
        if !config.starts_with("defaults") {
            continue;
        }
        let minus =
            |a: &[f64]| -> Vec<f64> { a.iter().zip(&p.floor_ns).map(|(x, f)| x - f).collect() };
        md += &format!(
            "| {test} | {} | {} | {} | {} | {} |\n",
            spread(&p.followed_ns, 0),
            spread(&p.unfollowed_ns, 0),
            spread(&p.floor_ns, 0),
            spread(&minus(&p.followed_ns), 0),
            spread(&minus(&p.unfollowed_ns), 0)
        );
    }
    md += "\nEvery program with `--follow-every 1 --bpf-stats` (tcp_rr, one run; statistics on for the whole run):\n\n| program | runs | ns per run |\n|---|---|---|\n";
    for p in stats["tracer"]["programs"].as_array().into_iter().flatten() {
        md += &format!(
            "| {} | {} | {:.0} |\n",
            p["program"].as_str().unwrap_or(""),
            p["runs"],
            p["ns_per_run"].as_f64().unwrap_or(0.0)
        );
    }
    let rss: Vec<f64> = results
        .iter()
        .flat_map(|(_, _, p)| p.rss_kib.iter().map(|k| k / 1024.0))
        .filter(|x| x.is_finite())
        .collect();
    md += &format!("\nPeak RSS of `profiler trace`: {} MiB.\n", spread(&rss, 0));
    md += &map_memory()?;
    println!("{md}");
    write_doc("trace", &md)
}

/// BPF map memory computed from the object's map definitions for 2 to 256 CPUs, per command
/// (its own subject at full size, the rest shrunk), and one interval's read.
fn map_memory() -> Result<String> {
    let v = json(profiler().args(["doctor", "--json"]).stdout(Stdio::piped()))?;
    let mut md = String::from(
        "\nBPF map memory computed from the map definitions (`profiler doctor --json`, `map_memory_model`), MiB, and the bytes user space copies for one interval's reading:\n\n| subject | 2 CPUs | 16 | 64 | 128 | 256 CPUs | bytes read per interval at 256 CPUs |\n|---|---|---|---|---|---|---|\n",
    );
    for m in v["map_memory_model"].as_array().into_iter().flatten() {
        let at = |n: u64| {
            m["by_cpus"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|x| x["cpus"].as_u64() == Some(n))
                .map_or("-".into(), |x| {
                    format!("{:.1}", x["bytes"].as_f64().unwrap_or(0.0) / 1048576.0)
                })
        };
        let read = m["by_cpus"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|x| x["cpus"].as_u64() == Some(256))
            .and_then(|x| x["read_bytes"].as_u64())
            .unwrap_or(0);
        md += &format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            m["subject"].as_str().unwrap_or("?"),
            at(2),
            at(16),
            at(64),
            at(128),
            at(256),
            read
        );
    }
    Ok(md)
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

/// OLTP pairs: the server, its TCP port, and how to run a client beside it.
struct OltpServer {
    child: Child,
    port: u64,
    /// `nsenter` into the server's network namespace (native), or nothing (host).
    enter: Option<u64>,
}

impl OltpServer {
    /// `profiler mariadb`, on the host or under `unshare` in new mount, UTS, IPC and network
    /// namespaces (what `run --env native` gives a workload), holding until killed.
    fn start(native: bool) -> Result<Self> {
        use std::io::BufRead as _;
        let exe = std::fs::canonicalize(PROFILER)?;
        let mut cmd = if native {
            let mut c = Command::new("unshare");
            c.args(["--mount", "--uts", "--ipc", "--net", "--"])
                .arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let mut child = cmd
            .arg("mariadb")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("{cmd:?}"))?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().context("stdout")?).read_line(&mut line)?;
        let v: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("profiler mariadb printed {line:?}"))?;
        Ok(Self {
            port: v["port"].as_u64().context("port")?,
            enter: native.then(|| v["pid"].as_u64()).flatten(),
            child,
        })
    }

    fn client(&self, prog: &str) -> Command {
        match self.enter {
            Some(pid) => {
                let mut c = Command::new("nsenter");
                c.args(["-t", &pid.to_string(), "-n", "--"]).arg(prog);
                c
            }
            None => Command::new(prog),
        }
    }

    fn stop(mut self) {
        // SIGTERM: it stops the server and removes its data.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

const OLTP_PAIRS: usize = 10;
const OLTP_THREADS: &str = "2";

/// transactions/s from Debian's sysbench OLTP output.
fn sysbench_tps(out: &str) -> Result<f64> {
    out.lines()
        .find_map(|l| {
            let l = l.trim().strip_prefix("transactions:")?;
            l.split('(').nth(1)?.split_whitespace().next()?.parse().ok()
        })
        .ok_or_else(|| anyhow!("no transactions line in sysbench's output:\n{out}"))
}

/// `profiler sysbench oltp_read_write` against Debian's sysbench on the same server, over
/// TCP on loopback, interleaved pairs (the order alternates), on the host and in a native
/// container (server and both clients in its network namespace).
pub fn sysbench_oltp() -> Result<()> {
    let exe = std::fs::canonicalize(PROFILER)?;
    let mut md = format!(
        "# bench-sysbench: OLTP\n\nMachine: {}\n\n`profiler sysbench oltp_read_write` against Debian's sysbench 1.0.20 on the same MariaDB 10.11 (`profiler mariadb`: its own data dir on disk, TCP on 127.0.0.1), 1 table of 10000 rows, {OLTP_THREADS} threads, {SECS} s per run, {OLTP_PAIRS} interleaved pairs per environment, the order alternating (`cargo xtask bench-sysbench --oltp-only`). native: the server and both clients in new mount, UTS, IPC and network namespaces (`unshare`, clients by `nsenter`).\n\n| env | ours tx/s median (min-max) | sysbench tx/s median (min-max) | ratio median (min-max) |\n|---|---|---|---|\n",
        machine()
    );
    for (env, native) in [("host", false), ("native", true)] {
        let server = OltpServer::start(native)?;
        let port = server.port.to_string();
        let conn = |c: &mut Command| {
            c.args([
                "--mysql-host=127.0.0.1",
                &format!("--mysql-port={port}"),
                "--mysql-user=sbtest",
                "--mysql-db=sbtest",
                "--table-size=10000",
            ]);
        };
        let result = (|| -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
            let mut c = server.client("sysbench");
            c.arg("oltp_read_write");
            conn(&mut c);
            text(c.arg("prepare"))?;
            let (mut ours, mut peer, mut ratio) = (vec![], vec![], vec![]);
            for i in 0..OLTP_PAIRS {
                let run_ours = || -> Result<f64> {
                    let mut c = server.client(&exe.to_string_lossy());
                    c.args(["sysbench", "oltp_read_write", "run"]);
                    conn(&mut c);
                    c.args(["--threads", OLTP_THREADS, "--time", SECS, "--json"]);
                    json(&mut c)?["run"]["oltp"]["transactions_per_sec"]
                        .as_f64()
                        .ok_or_else(|| anyhow!("no transactions_per_sec in our report"))
                };
                let run_peer = || -> Result<f64> {
                    let mut c = server.client("sysbench");
                    c.arg("oltp_read_write");
                    conn(&mut c);
                    c.args([
                        &format!("--threads={OLTP_THREADS}"),
                        &format!("--time={SECS}"),
                        "run",
                    ]);
                    sysbench_tps(&text(&mut c)?)
                };
                let (o, p) = if i % 2 == 0 {
                    let o = run_ours()?;
                    (o, run_peer()?)
                } else {
                    let p = run_peer()?;
                    (run_ours()?, p)
                };
                eprintln!("bench: oltp {env} pair {i}: ours {o:.1} tx/s, sysbench {p:.1} tx/s");
                ours.push(o);
                peer.push(p);
                ratio.push(o / p);
            }
            let mut c = server.client("sysbench");
            c.arg("oltp_read_write");
            conn(&mut c);
            text(c.arg("cleanup"))?;
            Ok((ours, peer, ratio))
        })();
        server.stop();
        let (ours, peer, ratio) = result?;
        md += &format!(
            "| {env} | {} | {} | {} |\n",
            spread(&ours, 1),
            spread(&peer, 1),
            spread(&ratio, 3)
        );
    }
    md += "\nGoal: the ratio's median within 0.95-1.05 on host and native.\n";
    println!("{md}");
    write_doc("sysbench-oltp", &md)
}
