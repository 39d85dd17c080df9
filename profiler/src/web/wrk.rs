//! wrk (Debian's 4.1) as the load generator: HTTP/1.1 keep-alive, `-c` connections over `-t`
//! epoll threads. Its `done()` hook prints what its summary rounds away: the request count,
//! errors, min, max, mean and deviation, percentiles on a fine grid, and, when that is cheap,
//! the whole latency record (wrk keeps one count per microsecond value, after its
//! coordinated-omission correction), which becomes an HDR histogram here. wrk's Lua hands the
//! record out one value at a time, each a scan from the smallest: quadratic, so a run with a
//! stall of seconds (a range of millions of µs) gets the percentiles only. wrk rather than a
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

/// wrk's Lua `done()`: the summary line, min/max/mean/stdev, percentiles (each a scan of at
/// most the range), and the exact record when its cost (distinct values x range) is small.
pub const SCRIPT: &str = r#"done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("PROFILER_WRK %d %d %d %d %d %d %d %d\n", summary.duration,
    summary.requests, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout))
  if summary.requests == 0 then return end
  io.write(string.format("PROFILER_LAT %d %d %.3f %.3f\n", latency.min, latency.max,
    latency.mean, latency.stdev))
  io.write("PROFILER_PCT")
  local ps = {}
  for i = 1, 199 do ps[#ps + 1] = i / 2 end
  for _, p in ipairs({99.6, 99.7, 99.8, 99.9, 99.95, 99.99, 99.999}) do ps[#ps + 1] = p end
  for _, p in ipairs(ps) do io.write(string.format(" %g:%d", p, latency:percentile(p))) end
  io.write("\n")
  local n = #latency
  if n * (latency.max - latency.min + 1) < 300000000 then
    io.write("PROFILER_HIST")
    for i = 1, n do
      local v, c = latency(i)
      io.write(string.format(" %d:%d", v, c))
    end
    io.write("\n")
  end
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
    /// Non-empty buckets of wrk's record: [value_ns, count]; empty when the record was too
    /// costly to hand over (see the module's note): `percentiles` then.
    pub histogram: Vec<(u64, u64)>,
    /// [percent, value_ns] on a grid: every 0.5%, then 99.6 to 99.999.
    pub percentiles: Vec<(f64, u64)>,
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
    let opt = |tag: &str| stdout.lines().find_map(|l| l.strip_prefix(tag));
    let mut percentiles = vec![];
    for pair in opt("PROFILER_PCT").unwrap_or("").split_whitespace() {
        let (p, v) = pair
            .split_once(':')
            .ok_or_else(|| anyhow!("wrk's percentiles: {pair}"))?;
        let (p, v_us): (f64, u64) = (p.parse()?, v.parse()?);
        percentiles.push((p, v_us.saturating_mul(1000)));
    }
    let mut histogram = vec![];
    let mut h = crate::hist::empty();
    for pair in opt("PROFILER_HIST").unwrap_or("").split_whitespace() {
        let (v, c) = pair
            .split_once(':')
            .ok_or_else(|| anyhow!("wrk's histogram: {pair}"))?;
        let (v_us, c): (u64, u64) = (v.parse()?, c.parse()?);
        let ns = v_us.saturating_mul(1000).max(1);
        h.saturating_record_n(ns, c);
        histogram.push((ns, c));
    }
    let latency = if !histogram.is_empty() {
        Summary::of(&h)
    } else if let Some(lat) = opt("PROFILER_LAT ") {
        let f: Vec<f64> = lat
            .split_whitespace()
            .map(|v| v.parse().context("wrk's latency line"))
            .collect::<Result<_>>()?;
        let [min, max, mean, stdev] = f[..] else {
            bail!("wrk's latency line has {} fields, expected 4", f.len());
        };
        let at = |q: f64| {
            percentiles
                .iter()
                .find(|(p, _)| (*p - q).abs() < 1e-9)
                .map_or(0, |(_, v)| *v)
        };
        Summary {
            count: requests,
            min: (min * 1000.0) as u64,
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
            p99_9: at(99.9),
            max: (max * 1000.0) as u64,
            mean: mean * 1000.0,
            stddev: stdev * 1000.0,
        }
    } else {
        if requests > 0 {
            bail!(
                "wrk printed no latency for {requests} requests: {}",
                stdout.trim()
            );
        }
        Summary::default()
    };
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
        latency,
        histogram,
        percentiles,
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
                   PROFILER_LAT 11 5000 300.5 900.1\n\
                   PROFILER_PCT 50:12 90:100 99:5000\n\
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
        assert_eq!(r.percentiles[1], (90.0, 100_000));
    }

    #[test]
    fn without_the_record_the_summary_comes_from_the_percentiles() {
        let out = "PROFILER_WRK 1000000 400 1000 0 0 0 0 0\n\
                   PROFILER_LAT 10 8000000 20.5 400.25\n\
                   PROFILER_PCT 50:15 90:40 99:900 99.9:7000000\n";
        let r = parse(out, 4, 2).unwrap();
        assert!(r.histogram.is_empty());
        let l = r.latency;
        assert_eq!((l.count, l.min, l.max), (400, 10_000, 8_000_000_000));
        assert_eq!(
            (l.p50, l.p90, l.p99, l.p99_9),
            (15_000, 40_000, 900_000, 7_000_000_000)
        );
        assert!((l.mean - 20_500.0).abs() < 1e-6 && (l.stddev - 400_250.0).abs() < 1e-6);
        // Requests with no latency at all is wrk's output cut short.
        assert!(parse("PROFILER_WRK 1000000 400 1000 0 0 0 0 0\n", 4, 2).is_err());
        assert_eq!(
            parse("PROFILER_WRK 1000000 0 0 5 0 0 0 0\n", 4, 2)
                .unwrap()
                .latency
                .count,
            0
        );
    }

    #[test]
    fn refuses_output_without_the_script_lines() {
        let e = parse("Requests/sec: 1000\n", 1, 1).unwrap_err();
        assert!(e.to_string().contains("PROFILER_WRK"), "{e}");
        assert!(parse("PROFILER_WRK 1 2 3\nPROFILER_HIST\n", 1, 1).is_err());
    }
}
