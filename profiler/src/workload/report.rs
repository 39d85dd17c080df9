//! What a run measured, as netperf's omni output would show it.

use std::{fmt, net::SocketAddr, time::Duration};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::{Options, Test, proto::Results};

/// One run's result. Serialises without the raw histogram (its percentiles are in `latency`).
#[derive(Clone, Serialize)]
pub struct Report {
    pub test: Test,
    /// The address the client connected to.
    pub server: String,
    pub request: usize,
    pub response: usize,
    pub send_size: usize,
    pub burst: u32,
    /// Length of the client's data phase, as measured.
    pub duration_secs: f64,
    /// rr tests: completed transactions; 0 for streams.
    pub transactions: u64,
    pub transactions_per_sec: f64,
    /// Payload bytes delivered: received by the receiving side for streams, request plus
    /// response bytes of completed transactions for rr.
    pub bytes: u64,
    /// `bytes` in 10^6 bit/s.
    pub throughput_mbps: f64,
    /// What one latency sample is: "transaction", "send call" or "recv call".
    pub latency_of: &'static str,
    pub latency: Latency,
    /// CPU (user + system) of the client and server threads over the data phase.
    pub client_cpu_secs: f64,
    pub server_cpu_secs: f64,
    /// (client + server CPU) per transaction, rr tests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_demand_us_per_tran: Option<f64>,
    /// (client + server CPU) per KiB delivered, stream tests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_demand_us_per_kb: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udp: Option<UdpCounts>,
    /// Latency samples in nanoseconds.
    #[serde(skip)]
    pub histogram: Histogram<u64>,
}

/// Like the JSON: the histogram's bucket array would drown everything else.
impl fmt::Debug for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let json = serde_json::to_string(self).map_err(|_| fmt::Error)?;
        write!(f, "Report {json}")
    }
}

/// Percentiles of `Report::histogram`, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub mean_us: f64,
    pub stddev_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p99_9_us: f64,
    pub max_us: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let us = |ns: u64| ns as f64 / 1e3;
        Latency {
            samples: h.len(),
            mean_us: h.mean() / 1e3,
            stddev_us: h.stdev() / 1e3,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p99_9_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// Datagram counts. udp_stream: `client_sent` vs `server_received`, `lost` their difference.
/// udp_rr: requests sent/received, responses sent/received, `lost` the transactions given up
/// after the timeout (`stale` late answers discarded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UdpCounts {
    pub client_sent: u64,
    pub server_received: u64,
    pub server_sent: u64,
    pub client_received: u64,
    pub lost: u64,
    pub stale: u64,
    /// Sends the client's own kernel refused (ENOBUFS/EAGAIN).
    pub client_send_drops: u64,
}

/// What the client counted in its data phase.
pub(super) struct Measured {
    pub elapsed: Duration,
    pub hist: Histogram<u64>,
    pub transactions: u64,
    pub bytes_tx: u64,
    pub msgs_tx: u64,
    pub bytes_rx: u64,
    pub msgs_rx: u64,
    pub lost: u64,
    pub stale: u64,
    pub local_drops: u64,
    /// Payload of completed transactions (rr).
    pub rr_bytes: u64,
}

impl Measured {
    pub fn new(hist: Histogram<u64>) -> Measured {
        Measured {
            elapsed: Duration::ZERO,
            hist,
            transactions: 0,
            bytes_tx: 0,
            msgs_tx: 0,
            bytes_rx: 0,
            msgs_rx: 0,
            lost: 0,
            stale: 0,
            local_drops: 0,
            rr_bytes: 0,
        }
    }

    pub fn count_rr(&mut self, opts: &Options) {
        self.rr_bytes = self.transactions * (opts.request + opts.response) as u64;
    }
}

pub(super) fn build(
    opts: &Options,
    server: SocketAddr,
    m: Measured,
    r: &Results,
    client_cpu: Duration,
) -> Report {
    let secs = m.elapsed.as_secs_f64().max(1e-9);
    let bytes = match opts.test {
        Test::TcpStream | Test::UdpStream => r.bytes_rx,
        Test::TcpMaerts => m.bytes_rx,
        Test::TcpRr | Test::TcpCrr | Test::UdpRr => m.rr_bytes,
    };
    let client_cpu_secs = client_cpu.as_secs_f64();
    let server_cpu_secs = r.cpu_ns as f64 / 1e9;
    let cpu_us = (client_cpu_secs + server_cpu_secs) * 1e6;
    let rr = opts.test.is_rr();
    let udp = match opts.test {
        Test::UdpStream => Some(UdpCounts {
            client_sent: m.msgs_tx,
            server_received: r.msgs_rx,
            lost: m.msgs_tx.saturating_sub(r.msgs_rx),
            client_send_drops: m.local_drops,
            ..UdpCounts::default()
        }),
        Test::UdpRr => Some(UdpCounts {
            client_sent: m.msgs_tx,
            server_received: r.msgs_rx,
            server_sent: r.msgs_tx,
            client_received: m.msgs_rx,
            lost: m.lost,
            stale: m.stale,
            client_send_drops: m.local_drops,
        }),
        _ => None,
    };
    Report {
        test: opts.test,
        server: server.to_string(),
        request: opts.request,
        response: opts.response,
        send_size: opts.send_size,
        burst: opts.burst,
        duration_secs: secs,
        transactions: m.transactions,
        transactions_per_sec: m.transactions as f64 / secs,
        bytes,
        throughput_mbps: bytes as f64 * 8.0 / secs / 1e6,
        latency_of: match opts.test {
            Test::TcpStream | Test::UdpStream => "send call",
            Test::TcpMaerts => "recv call",
            _ => "transaction",
        },
        latency: Latency::of(&m.hist),
        client_cpu_secs,
        server_cpu_secs,
        service_demand_us_per_tran: (rr && m.transactions > 0)
            .then(|| cpu_us / m.transactions as f64),
        service_demand_us_per_kb: (!rr && bytes > 0).then(|| cpu_us / (bytes as f64 / 1024.0)),
        udp,
        histogram: m.hist,
    }
}

/// Prints a netperf-omni-like block.
pub fn print(r: &Report) {
    print!("{}", render(r));
}

pub(super) fn render(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let what = if r.test.is_rr() {
        format!(
            "request {} B, response {} B, burst {}",
            r.request, r.response, r.burst
        )
    } else {
        format!("send size {} B", r.send_size)
    };
    let _ = writeln!(
        o,
        "{} to {}: {:.2} s, {what}",
        r.test.name().to_uppercase(),
        r.server,
        r.duration_secs
    );
    if r.test.is_rr() {
        let _ = writeln!(
            o,
            "  transactions    {:>14}  {:>14.1} /s",
            r.transactions, r.transactions_per_sec
        );
    }
    let _ = writeln!(
        o,
        "  throughput      {:>14.2} Mbit/s  ({} B)",
        r.throughput_mbps, r.bytes
    );
    if let Some(u) = &r.udp {
        if r.test == Test::UdpStream {
            let pct = 100.0 * u.lost as f64 / u.client_sent.max(1) as f64;
            let _ = writeln!(
                o,
                "  datagrams       sent {}, received {}, lost {} ({pct:.2}%)",
                u.client_sent, u.server_received, u.lost
            );
        } else {
            let _ = writeln!(
                o,
                "  datagrams       requests {} sent / {} received, responses {} sent / {} received, lost {}, late {}",
                u.client_sent, u.server_received, u.server_sent, u.client_received, u.lost, u.stale
            );
        }
    }
    let l = &r.latency;
    let _ = writeln!(
        o,
        "  latency (us)    mean {:.2}  stddev {:.2}  p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (per {}, {} samples)",
        l.mean_us,
        l.stddev_us,
        l.p50_us,
        l.p90_us,
        l.p99_us,
        l.p99_9_us,
        l.max_us,
        r.latency_of,
        l.samples
    );
    let _ = writeln!(
        o,
        "  cpu (s)         client {:.3}  server {:.3}",
        r.client_cpu_secs, r.server_cpu_secs
    );
    if let Some(d) = r.service_demand_us_per_tran {
        let _ = writeln!(o, "  service demand  {d:.3} us/tran (client + server CPU)");
    }
    if let Some(d) = r.service_demand_us_per_kb {
        let _ = writeln!(o, "  service demand  {d:.3} us/KB (client + server CPU)");
    }
    o
}
