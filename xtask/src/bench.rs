//! `cargo xtask bench-workloads` and `cargo xtask bench-trace`: benchmarks, not tests. Each run
//! prints a markdown table with the machine it ran on and writes it under docs/benchmarks/.

use std::{
    process::{Child, Command, Stdio},
    thread::sleep,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};

pub const PROFILER: &str = "target/release/profiler";
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
    bin: std::path::PathBuf,
}

impl LabUp {
    fn new(mode: &str, id: &str) -> Result<LabUp> {
        Self::with(PROFILER.as_ref(), mode, id)
    }
    /// A lab made and removed by the profiler binary `bin`.
    fn with(bin: &std::path::Path, mode: &str, id: &str) -> Result<LabUp> {
        let _ = Command::new(bin).args(["lab", "down", id]).output();
        let desc =
            json(Command::new(bin).args(["lab", "up", "--mode", mode, "--id", id, "--json"]))?;
        Ok(LabUp {
            id: id.into(),
            desc,
            bin: bin.into(),
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
        let _ = Command::new(&self.bin)
            .args(["lab", "down", &self.id])
            .output();
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

fn iperf3(lab: &LabUp) -> Result<Side> {
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
    let end = &v["end"];
    let rate = end["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e6)
        .ok_or_else(|| anyhow!("no throughput in iperf3's JSON"))?;
    // Percent of one CPU over the test, per end.
    let secs = end["sum_received"]["seconds"].as_f64().unwrap_or(f64::NAN);
    let cpu = end["cpu_utilization_percent"]["host_total"]
        .as_f64()
        .zip(end["cpu_utilization_percent"]["remote_total"].as_f64())
        .map(|(h, r)| (h + r) / 100.0 * secs);
    let gb = end["sum_received"]["bytes"].as_f64().unwrap_or(f64::NAN) / 1e9;
    Ok(Side {
        rate,
        cpu_ms_per_gb: cpu.map(|c| c * 1e3 / gb),
    })
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

/// Interleaved (built-in, peer) pairs per mode and test; the order within a pair alternates so
/// neither side always runs second on a drifting machine.
const WORKLOAD_PAIRS: usize = 5;

/// One side of a pair: its rate, and for streams the CPU it spent per GB moved (both ends).
struct Side {
    rate: f64,
    cpu_ms_per_gb: Option<f64>,
}

fn ours(lab: &LabUp, test: &str) -> Result<Side> {
    let v = builtin(&lab.id, test)?;
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    Ok(if test == "tcp_stream" {
        let gb = f("bytes") / 1e9;
        Side {
            rate: f("throughput_mbps"),
            cpu_ms_per_gb: Some((f("client_cpu_secs") + f("server_cpu_secs")) * 1e3 / gb),
        }
    } else {
        Side {
            rate: f("transactions_per_sec"),
            cpu_ms_per_gb: None,
        }
    })
}

fn peer(lab: &LabUp, test: &str) -> Result<Side> {
    Ok(match test {
        "tcp_stream" => iperf3(lab)?,
        t => Side {
            rate: sockperf(lab, t == "tcp_rr")?,
            cpu_ms_per_gb: None,
        },
    })
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub fn workloads() -> Result<()> {
    let mut md = format!(
        "# bench-workloads\n\nMachine: {}\n\nBuilt-in generator against the peers, same lab, {SECS} s per run, {WORKLOAD_PAIRS} \
         interleaved pairs per row (the order alternates within pairs); medians, with the pairs' \
         min-max (`cargo xtask bench-workloads`). Load average at the start: {}. CPU per GB is \
         both ends' user + system time over the bytes moved (ours: the client's and server's \
         threads; iperf3: its own `cpu_utilization_percent`, host + remote).\n\n\
         | mode | test | built-in | peer | peer result | ratio (pairs) | CPU ms/GB built-in / peer |\n\
         |---|---|---|---|---|---|---|\n",
        machine(),
        load_average()
    );
    for mode in ["host", "overlay"] {
        let lab = LabUp::new(mode, &format!("bw{}", &mode[..1]))?;
        for (test, peer_name, unit) in [
            ("tcp_stream", "iperf3", "Mbit/s"),
            ("tcp_rr", "sockperf pp --tcp", "trans/s"),
            ("udp_rr", "sockperf pp", "trans/s"),
        ] {
            let (mut us, mut them, mut ratios) = (vec![], vec![], vec![]);
            let (mut us_cpu, mut them_cpu) = (vec![], vec![]);
            for i in 0..WORKLOAD_PAIRS {
                let (a, b) = if i % 2 == 0 {
                    let a = ours(&lab, test)?;
                    (a, peer(&lab, test)?)
                } else {
                    let b = peer(&lab, test)?;
                    (ours(&lab, test)?, b)
                };
                ratios.push(a.rate / b.rate);
                us.push(a.rate);
                them.push(b.rate);
                us_cpu.extend(a.cpu_ms_per_gb);
                them_cpu.extend(b.cpu_ms_per_gb);
            }
            let cpu = if us_cpu.is_empty() {
                "-".to_string()
            } else {
                format!("{} / {}", spread(&us_cpu, 0), spread(&them_cpu, 0))
            };
            md += &format!(
                "| {mode} | {test} | {} {unit} | {peer_name} | {} {unit} | {} | {cpu} |\n",
                spread(&us, 0),
                spread(&them, 0),
                spread(&ratios, 2),
            );
        }
    }
    md += &format!("\nLoad average at the end: {}.\n", load_average());
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

/// CPU seconds (user + system) of this process's waited-for children (proc(5) stat fields 16
/// and 17, in clock ticks of 1/100 s).
fn children_cpu_s() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<f64> = s[s.rfind(')').map_or(0, |i| i + 2)..]
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    (f.get(13).unwrap_or(&0.0) + f.get(14).unwrap_or(&0.0)) / 100.0
}

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
        "# bench-sysbench: OLTP\n\nMachine: {}\n\n`profiler sysbench oltp_read_write` against Debian's sysbench 1.0.20 on the same MariaDB 10.11 (`profiler mariadb`: its own data dir on disk, TCP on 127.0.0.1), 1 table of 10000 rows, {OLTP_THREADS} threads, {SECS} s per run, {OLTP_PAIRS} interleaved pairs per environment, the order alternating (`cargo xtask bench-sysbench --oltp-only`). native: the server and both clients in new mount, UTS, IPC and network namespaces (`unshare`, clients by `nsenter`). Load average at the start: {}.\n\n| env | ours tx/s median (min-max) | sysbench tx/s median (min-max) | ratio median (min-max) | ours client CPU ms/tx | sysbench client CPU ms/tx |\n|---|---|---|---|---|---|\n",
        machine(),
        load_average()
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
        let result = (|| -> Result<[Vec<f64>; 5]> {
            let mut c = server.client("sysbench");
            c.arg("oltp_read_write");
            conn(&mut c);
            text(c.arg("prepare"))?;
            let (mut ours, mut peer, mut ratio) = (vec![], vec![], vec![]);
            let (mut ours_cpu, mut peer_cpu) = (vec![], vec![]);
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
                // The client's CPU (user + system) per transaction, from our waited children.
                let timed = |f: &dyn Fn() -> Result<f64>| -> Result<(f64, f64)> {
                    let c0 = children_cpu_s();
                    let tps = f()?;
                    let secs: f64 = SECS.parse().unwrap_or(5.0);
                    Ok((tps, (children_cpu_s() - c0) * 1e3 / (tps * secs)))
                };
                let ((o, oc), (p, pc)) = if i % 2 == 0 {
                    let o = timed(&run_ours)?;
                    (o, timed(&run_peer)?)
                } else {
                    let p = timed(&run_peer)?;
                    (timed(&run_ours)?, p)
                };
                eprintln!(
                    "bench: oltp {env} pair {i}: ours {o:.1} tx/s ({oc:.3} CPU ms/tx), sysbench {p:.1} tx/s ({pc:.3} CPU ms/tx)"
                );
                ours.push(o);
                peer.push(p);
                ratio.push(o / p);
                ours_cpu.push(oc);
                peer_cpu.push(pc);
            }
            let mut c = server.client("sysbench");
            c.arg("oltp_read_write");
            conn(&mut c);
            text(c.arg("cleanup"))?;
            Ok([ours, peer, ratio, ours_cpu, peer_cpu])
        })();
        server.stop();
        let [ours, peer, ratio, ours_cpu, peer_cpu] = result?;
        md += &format!(
            "| {env} | {} | {} | {} | {} | {} |\n",
            spread(&ours, 1),
            spread(&peer, 1),
            spread(&ratio, 3),
            spread(&ours_cpu, 3),
            spread(&peer_cpu, 3)
        );
    }
    md += &format!(
        "\nLoad average at the end: {}. Goal: the ratio's median within 0.95-1.05 on host and native.\n",
        load_average()
    );
    println!("{md}");
    write_doc("sysbench-oltp", &md)
}

/// Rounds of `bench-trace-ab`, each one untraced run and four traced ones.
const AB_ROUNDS: usize = 10;
const AB_SECTION: &str = "## This build against an earlier one (`cargo xtask bench-trace-ab`)";

/// `cargo xtask bench-trace-ab BEFORE`: the tracer of this build against BEFORE (another
/// build's profiler binary), interleaved in one run on one lab, so the VM's drift falls on
/// both alike. Each round runs, in an order that rotates: the untraced workload, then each
/// build with the default budget (followed / not-followed ns per run and the rate ratio) and
/// with `--follow-every 1 --bpf-stats` (every net program's ns per run, every packet
/// followed). Replaces its own section of docs/benchmarks/trace.md.
pub fn trace_ab(before: &str, after: &str) -> Result<()> {
    let before = std::fs::canonicalize(before).with_context(|| format!("{before}: no binary"))?;
    let after = std::fs::canonicalize(after).with_context(|| format!("{after}: no binary"))?;
    let load = || {
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().map(String::from))
            .unwrap_or_default()
    };
    let load_start = load();
    let lab = LabUp::with(&after, "overlay", "ab")?;
    let untraced = |test: &str| -> Result<serde_json::Value> {
        let mut c = Command::new(&after);
        c.args(["bench", test, "--lab", &lab.id, "-l", PAIR_SECS, "--json"]);
        if test.ends_with("rr") {
            c.args(["-r", "14,14"]);
        }
        json(&mut c)
    };
    let traced = |bin: &std::path::Path, test: &str, extra: &[&str]| -> Result<serde_json::Value> {
        let file = "/tmp/profiler-bench-trace-ab.json";
        let mut c = Command::new(bin);
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
            bail!("{} trace {extra:?} failed", bin.display());
        }
        let v = serde_json::from_slice(&std::fs::read(file)?)?;
        let _ = std::fs::remove_file(file);
        Ok(v)
    };
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let mut md = format!(
        "{AB_SECTION}\n\nMachine: {}. Before: `{}`; after: `{}`. One overlay lab, {AB_ROUNDS} rounds per test, {PAIR_SECS} s per run; each round runs the untraced workload and the four traced runs below in an order rotated by one each round. Median (range) over the rounds; ratios are traced rate over the same round's untraced rate.\n\n",
        machine(),
        before.display(),
        after.display()
    );
    let mut per_prog = String::new();
    for (test, key) in [
        ("tcp_rr", "transactions_per_sec"),
        ("tcp_stream", "throughput_mbps"),
    ] {
        // [before, after] x [defaults, every packet]
        let mut ratio: [[Vec<f64>; 2]; 2] = Default::default();
        let mut followed: [Vec<f64>; 2] = Default::default();
        let mut unfollowed: [Vec<f64>; 2] = Default::default();
        let mut floor: [Vec<f64>; 2] = Default::default();
        // before, after, and after / before within each round (the drift cancels there).
        let mut progs: std::collections::BTreeMap<String, [Vec<f64>; 3]> = Default::default();
        let mut paired: [Vec<f64>; 2] = Default::default();
        for round in 0..AB_ROUNDS {
            let mut results: Vec<Option<serde_json::Value>> = vec![None; 5];
            for k in 0..5 {
                let which = (k + round) % 5;
                let bin = if which % 2 == 1 { &before } else { &after };
                results[which] = Some(match which {
                    0 => untraced(test)?,
                    1 | 2 => traced(bin, test, &[])?,
                    _ => traced(bin, test, &["--follow-every", "1", "--bpf-stats"])?,
                });
            }
            let r: Vec<serde_json::Value> = results.into_iter().map(Option::unwrap).collect();
            let untraced = f(&r[0], key);
            for (b, (d, e)) in [(0, (1, 3)), (1, (2, 4))] {
                ratio[b][0].push(f(&r[d]["workload"], key) / untraced);
                ratio[b][1].push(f(&r[e]["workload"], key) / untraced);
                let c = &r[d]["tracer"];
                followed[b].push(f(c, "followed_ns_per_run"));
                unfollowed[b].push(f(c, "unfollowed_ns_per_run"));
                floor[b].push(f(c, "floor_ns_per_run"));
                for p in r[e]["tracer"]["programs"].as_array().into_iter().flatten() {
                    let name = p["program"].as_str().unwrap_or("?").to_string();
                    progs.entry(name).or_default()[b].push(f(p, "ns_per_run"));
                }
            }
            let ns = |i: usize, name: &str| {
                r[i]["tracer"]["programs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| p["program"] == name)
                    .map_or(f64::NAN, |p| f(p, "ns_per_run"))
            };
            for (name, v) in progs.iter_mut() {
                v[2].push(ns(4, name) / ns(3, name));
            }
            for (k, key) in ["followed_ns_per_run", "unfollowed_ns_per_run"]
                .iter()
                .enumerate()
            {
                paired[k].push(f(&r[2]["tracer"], key) / f(&r[1]["tracer"], key));
            }
            eprintln!(
                "bench-trace-ab: {test} round {}: ratio before {:.3} after {:.3}",
                round + 1,
                ratio[0][0].last().unwrap(),
                ratio[1][0].last().unwrap()
            );
        }
        md += &format!(
            "**{test}**\n\n| | before | after |\n|---|---|---|\n| rate ratio, defaults (--overhead 1) | {} | {} |\n| rate ratio, --follow-every 1 | {} | {} |\n| followed hook, ns per run (defaults) | {} | {} |\n| hook on a packet not followed, ns per run | {} | {} |\n| floor (empty program), ns per run | {} | {} |\n| after / before within each round: followed hook | | {} |\n| after / before within each round: hook not followed | | {} |\n\n",
            spread(&ratio[0][0], 3),
            spread(&ratio[1][0], 3),
            spread(&ratio[0][1], 3),
            spread(&ratio[1][1], 3),
            spread(&followed[0], 0),
            spread(&followed[1], 0),
            spread(&unfollowed[0], 0),
            spread(&unfollowed[1], 0),
            spread(&floor[0], 0),
            spread(&floor[1], 0),
            spread(&paired[0], 3),
            spread(&paired[1], 3),
        );
        per_prog += &format!(
            "\n{test}, `--follow-every 1 --bpf-stats`, ns per run, and after / before within each round:\n\n| program | before | after | after / before |\n|---|---|---|---|\n"
        );
        for (name, [b, a, ab]) in &progs {
            per_prog += &format!(
                "| {name} | {} | {} | {} |\n",
                spread(b, 0),
                spread(a, 0),
                spread(ab, 3)
            );
        }
    }
    md += &per_prog;
    md += &format!(
        "\nLoad average (1 min) at the start and the end: {load_start} and {}.\n",
        load()
    );
    println!("{md}");
    let path = "docs/benchmarks/trace.md";
    let doc = std::fs::read_to_string(path).unwrap_or_default();
    // Keep what else the file says; this section is replaced up to the next one.
    let kept = match doc.find(AB_SECTION) {
        Some(start) => {
            let rest = &doc[start + AB_SECTION.len()..];
            let end = rest
                .find("\n## ")
                .map_or(doc.len(), |e| start + AB_SECTION.len() + e + 1);
            format!("{}{}", &doc[..start], &doc[end..])
        }
        None => doc,
    };
    write_doc("trace", &format!("{}\n\n{md}", kept.trim_end()))
}
