//! wrk (Debian's 4.1) as the load generator: HTTP/1.1 keep-alive, `-c` connections over `-t`
//! epoll threads. Its `done()` hook prints what its summary rounds away: the request count,
//! errors, and the whole latency record (wrk keeps one count per microsecond value, after its
//! coordinated-omission correction), which becomes an HDR histogram here. wrk rather than a
//! client of our own: it is the reference figure others quote, and on two shared cores a
//! client's own CPU is the server's competitor, so the leanest one (C, epoll) is the fairest.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Serialize;

use crate::{hist::Summary, server::Place};

pub const BINARY: &str = "/usr/bin/wrk";

/// wrk's Lua `done()`: one summary line and one line of `value_us:count` pairs.
pub const SCRIPT: &str = r#"done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("PROFILER_WRK %d %d %d %d %d %d %d %d\n", summary.duration,
    summary.requests, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout))
  io.write("PROFILER_HIST")
  for i = 1, #latency do
    local v, c = latency(i)
    io.write(string.format(" %d:%d", v, c))
  end
  io.write("\n")
end
"#;

/// What one wrk run measured.
#[derive(Debug, Clone, Serialize)]
pub struct WrkRun {
    pub connections: usize,
    pub threads: usize,
    /// wrk's own measured duration, s.
    pub seconds: f64,
    pub requests: u64,
    pub bytes: u64,
    pub requests_per_sec: f64,
    /// connect, read, write, non-2xx/3xx status, timeout.
    pub errors: Errors,
    /// Response time (request written to response read), ns: wrk's record, which includes
    /// its coordinated-omission correction (for each response slower than twice the mean
    /// interval per connection, the ones that would have waited behind it), so `count` can
    /// exceed `requests`.
    pub latency: Summary,
    /// Non-empty buckets of wrk's record: [value_ns, count].
    pub histogram: Vec<(u64, u64)>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Errors {
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub status: u64,
    pub timeout: u64,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.connect + self.read + self.write + self.status + self.timeout
    }
}

pub fn version() -> Result<String> {
    let out = Command::new(BINARY).arg("-v").output().map_err(|_| {
        anyhow!("{BINARY} is missing: install wrk (`apt-get install wrk`, or `cargo xtask setup`)")
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .nth(1)
        .unwrap_or("?")
        .trim_start_matches("debian/")
        .to_string())
}

/// Parses the two lines [`SCRIPT`] prints.
pub fn parse(stdout: &str, connections: usize, threads: usize) -> Result<WrkRun> {
    let line = |tag: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(tag))
            .ok_or_else(|| anyhow!("wrk printed no {tag} line: {}", stdout.trim()))
    };
    let nums: Vec<u64> = line("PROFILER_WRK ")?
        .split_whitespace()
        .map(|v| v.parse().context("wrk's summary"))
        .collect::<Result<_>>()?;
    let [
        duration_us,
        requests,
        bytes,
        connect,
        read,
        write,
        status,
        timeout,
    ] = nums[..]
    else {
        bail!("wrk's summary has {} fields, expected 8", nums.len());
    };
    let mut h = crate::hist::empty();
    let mut histogram = vec![];
    for pair in line("PROFILER_HIST")?.split_whitespace() {
        let (v, c) = pair
            .split_once(':')
            .ok_or_else(|| anyhow!("wrk's histogram: {pair}"))?;
        let (v_us, c): (u64, u64) = (v.parse()?, c.parse()?);
        let ns = v_us.saturating_mul(1000).max(1);
        h.saturating_record_n(ns, c);
        histogram.push((ns, c));
    }
    let seconds = duration_us as f64 / 1e6;
    Ok(WrkRun {
        connections,
        threads,
        seconds,
        requests,
        bytes,
        requests_per_sec: if seconds > 0.0 {
            requests as f64 / seconds
        } else {
            0.0
        },
        errors: Errors {
            connect,
            read,
            write,
            status,
            timeout,
        },
        latency: Summary::of(&h),
        histogram,
    })
}

/// Runs wrk in `place` against `url` with `connections` for `length`; `script` is the path of
/// [`SCRIPT`] written out. Ends early (with an error) on a signal.
pub fn run(
    place: &Place,
    url: &str,
    connections: usize,
    length: Duration,
    script: &std::path::Path,
) -> Result<WrkRun> {
    let threads = connections.min(num_cpus());
    let mut cmd = Command::new(BINARY);
    cmd.args(["-t", &threads.to_string(), "-c", &connections.to_string()])
        .arg("-d")
        .arg(format!("{}s", length.as_secs().max(1)))
        .args(["--timeout", "10s", "--latency", "-s"])
        .arg(script)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    place.apply(&mut cmd)?;
    let child = crate::cleanup::die_with_parent(&mut cmd)
        .spawn()
        .context("starting wrk")?;
    let out = crate::envs::wait_with_timeout(child, length + Duration::from_secs(30))?;
    if !out.status.success() {
        bail!(
            "wrk failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse(&String::from_utf8_lossy(&out.stdout), connections, threads)
}

pub fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_script_prints() {
        let out = "Running 2s test @ http://127.0.0.1:1/\n  Latency Distribution\n     50%  167.00us\n\
                   PROFILER_WRK 2018200 100 117000 0 1 0 2 0\n\
                   PROFILER_HIST 11:30 12:40 100:25 5000:5\n";
        let r = parse(out, 16, 2).unwrap();
        assert_eq!(r.requests, 100);
        assert!((r.seconds - 2.0182).abs() < 1e-9);
        assert!((r.requests_per_sec - 100.0 / 2.0182).abs() < 1e-6);
        assert_eq!(r.errors.total(), 3);
        assert_eq!(r.latency.count, 100);
        // 70 of 100 at or below 12 µs: the median is 12 µs (within HDR's precision).
        assert!(
            (11_900..=12_100).contains(&r.latency.p50),
            "{}",
            r.latency.p50
        );
        assert!(r.latency.max >= 4_990_000 && r.latency.max <= 5_010_000);
        assert_eq!(r.histogram[0], (11_000, 30));
    }

    #[test]
    fn refuses_output_without_the_script_lines() {
        let e = parse("Requests/sec: 1000\n", 1, 1).unwrap_err();
        assert!(e.to_string().contains("PROFILER_WRK"), "{e}");
        assert!(parse("PROFILER_WRK 1 2 3\nPROFILER_HIST\n", 1, 1).is_err());
    }
}
