//! Arguments of `profiler bench` and `profiler serve`, netperf's flags where netperf has one.
//! Sizes, lengths and `-r` stay text until [`BenchArgs::options`] so a bad value gets one
//! precise line.

use std::{
    net::{IpAddr, Ipv4Addr, ToSocketAddrs},
    time::Duration,
};

use anyhow::{Result, anyhow, bail};

use super::{DEFAULT_PORT, Options, Test};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Test to run, netperf's names.
    #[arg(value_enum, ignore_case = true)]
    pub test: Test,
    /// Lab network mode to measure across; "host" runs both sides here, over loopback.
    #[arg(long, default_value = "host")]
    pub mode: String,
    /// Use this existing lab instead of building a throwaway one.
    #[arg(long)]
    pub lab: Option<String>,
    /// Length of the test in seconds (netperf -l); fractions and an "ms" suffix work.
    #[arg(short = 'l', value_name = "SECS", default_value = "10")]
    pub length: String,
    /// Request and response sizes in bytes, rr tests (netperf -r).
    #[arg(short = 'r', value_name = "REQ,RESP", default_value = "1,1")]
    pub rr: String,
    /// Bytes per send, stream tests (netperf -m); K and M suffixes work.
    /// Default 128K for TCP, 1400 for UDP.
    #[arg(short = 'm', value_name = "BYTES")]
    pub send_size: Option<String>,
    /// Transactions in flight, rr tests.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = crate::opts::at_least::<u32, 1>)]
    pub burst: u32,
    /// The report as JSON: on stdout (no FILE, or -) or into FILE.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    pub json: Option<std::path::PathBuf>,
    /// Run only the client, against `profiler serve` on HOST.
    #[arg(short = 'H', value_name = "HOST")]
    pub host: Option<String>,
    /// The server's port (TCP, and UDP for UDP tests).
    #[arg(short = 'p', long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// The built-in server spends this long (spinning) between each request and its response,
    /// rr tests, e.g. 200us: a known application time. Not with -H (the remote server's own).
    #[arg(long, value_name = "TIME", value_parser = parse_think)]
    pub think: Option<Duration>,
}

impl BenchArgs {
    /// The validated options; errors are one line naming the flag.
    pub fn options(&self) -> Result<Options> {
        let mut o = Options::new(self.test);
        o.duration = parse_duration(&self.length)?;
        (o.request, o.response) = parse_rr(&self.rr)?;
        if let Some(m) = &self.send_size {
            o.send_size = parse_size(m).map_err(|_| {
                anyhow!("bad -m value '{m}': expected bytes per send, e.g. -m 128K")
            })?;
        }
        o.burst = self.burst;
        if let Some(t) = self.think {
            if self.host.is_some() {
                bail!(
                    "--think is the built-in server's: with -H give it to `profiler serve --think` instead"
                );
            }
            o.think = t;
        }
        o.validate()?;
        Ok(o)
    }

    /// `-H`, as an address (names are resolved).
    pub fn remote(&self) -> Result<Option<IpAddr>> {
        let Some(h) = &self.host else { return Ok(None) };
        if let Ok(ip) = h.parse() {
            return Ok(Some(ip));
        }
        (h.as_str(), self.port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .map(|a| Some(a.ip()))
            .ok_or_else(|| anyhow!("bad -H value '{h}': not an address or a resolvable host name"))
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (TCP and UDP).
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub bind: IpAddr,
    /// Port to listen on (TCP, and UDP for UDP tests).
    #[arg(short = 'p', long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Spend this long (spinning) between each request and its response, rr tests, e.g. 200us.
    #[arg(long, value_name = "TIME", value_parser = parse_think)]
    pub think: Option<Duration>,
}

impl ServeArgs {
    /// Serves until the process is killed.
    pub fn run(&self) -> Result<()> {
        super::serve(self.bind, self.port, self.think.unwrap_or_default())
    }
}

/// `--think`: a time with a unit (ns, us, ms, s), at most one second.
pub fn parse_think(s: &str) -> Result<Duration> {
    let bad = || {
        anyhow!(
            "bad --think value '{s}': expected a time up to 1s with its unit, e.g. 200us or 2ms"
        )
    };
    let t = s.trim();
    let (num, unit) = t
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| t.split_at(i))
        .ok_or_else(bad)?;
    let ns_per = match unit {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        _ => return Err(bad()),
    };
    let v: f64 = num.trim().parse().map_err(|_| bad())?;
    if !v.is_finite() || v < 0.0 || v * ns_per > 1e9 {
        return Err(bad());
    }
    Ok(Duration::from_nanos((v * ns_per).round() as u64))
}

/// `-r REQ,RESP`.
pub fn parse_rr(s: &str) -> Result<(usize, usize)> {
    let bad = || anyhow!("bad -r value '{s}': expected REQ,RESP in bytes, e.g. -r 1,1");
    let (a, b) = s.split_once(',').ok_or_else(bad)?;
    let req = parse_size(a).map_err(|_| bad())?;
    let resp = parse_size(b).map_err(|_| bad())?;
    if req == 0 || resp == 0 {
        bail!("bad -r value '{s}': request and response must be at least 1 byte");
    }
    Ok((req, resp))
}

/// Bytes with an optional K/M/G suffix (powers of 1024, as netperf's -m).
pub fn parse_size(s: &str) -> Result<usize> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1 << 10),
        Some((i, 'm' | 'M')) => (&t[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| anyhow!("bad size '{s}': expected bytes, e.g. 1400 or 128K"))
}

/// `-l`: seconds (fractions allowed) or milliseconds with "ms".
pub fn parse_duration(s: &str) -> Result<Duration> {
    let bad = || anyhow!("bad -l value '{s}': expected seconds greater than 0, e.g. -l 10");
    let t = s.trim();
    let d = if let Some(ms) = t.strip_suffix("ms") {
        ms.trim().parse::<u64>().ok().map(Duration::from_millis)
    } else {
        t.strip_suffix('s')
            .unwrap_or(t)
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v > 0.0 && *v <= 86_400.0)
            .map(Duration::from_secs_f64)
    };
    d.filter(|d| !d.is_zero()).ok_or_else(bad)
}
