//! Built-in netperf-style traffic generators: `tcp_stream`, `tcp_maerts`, `tcp_rr`, `tcp_crr`,
//! `udp_stream`, `udp_rr`, named and measured as netperf does (CPU per side from
//! `getrusage(RUSAGE_THREAD)`, service demand as in Suo et al., Table V).
//!
//! Each side runs on its own blocking std thread, optionally inside a lab namespace:
//!
//! ```no_run
//! use profiler::workload::{self, Endpoints, Options, Test};
//! let report = workload::run(&Endpoints::loopback(0), &Options::new(Test::TcpRr))?;
//! workload::print(&report);
//! # anyhow::Ok(())
//! ```
//!
//! [`serve`] is the long-running server (`profiler serve`) and [`run_remote`] the client alone
//! against it. The wire format is in `proto.rs`: one TCP port carries the control connection
//! and the TCP data connections; UDP tests use the same port number for UDP.

mod cli;
mod client;
mod proto;
mod report;
mod server;
mod sock;
#[cfg(test)]
mod tests;

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr},
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Serialize;

pub use cli::{BenchArgs, ServeArgs, parse_duration, parse_rr, parse_size, parse_think};
pub use report::{Latency, Report, UdpCounts, print};

/// netperf's default control port, which `profiler serve` listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 12865;
/// Default `-m` for TCP streams: iperf3's block size.
pub const TCP_SEND_SIZE: usize = 128 * 1024;
/// Default `-m` for `udp_stream`: one datagram that fits a 1450-byte VXLAN MTU unfragmented.
pub const UDP_SEND_SIZE: usize = 1400;
/// Largest UDP payload over IPv4.
pub const UDP_MAX: usize = 65507;
/// Largest request, response or send size accepted (either side allocates it).
pub const MAX_SIZE: usize = 16 << 20;
pub const MAX_BURST: u32 = 1024;

/// A netperf test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Test {
    /// Bulk TCP, client sends.
    TcpStream,
    /// Bulk TCP, server sends ("stream" backwards).
    TcpMaerts,
    /// TCP request/response on one connection.
    TcpRr,
    /// TCP connect, request/response, close, per transaction.
    TcpCrr,
    /// Bulk UDP, client sends; reports sent and received datagrams.
    UdpStream,
    /// UDP request/response; a transaction lost for longer than the timeout is counted and resent.
    UdpRr,
}

impl Test {
    pub const ALL: [Test; 6] = [
        Test::TcpStream,
        Test::TcpMaerts,
        Test::TcpRr,
        Test::TcpCrr,
        Test::UdpStream,
        Test::UdpRr,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Test::TcpStream => "tcp_stream",
            Test::TcpMaerts => "tcp_maerts",
            Test::TcpRr => "tcp_rr",
            Test::TcpCrr => "tcp_crr",
            Test::UdpStream => "udp_stream",
            Test::UdpRr => "udp_rr",
        }
    }

    /// Request/response tests count transactions; the others count bytes.
    pub fn is_rr(self) -> bool {
        matches!(self, Test::TcpRr | Test::TcpCrr | Test::UdpRr)
    }

    pub fn is_udp(self) -> bool {
        matches!(self, Test::UdpStream | Test::UdpRr)
    }

    fn code(self) -> u8 {
        Test::ALL.iter().position(|t| *t == self).unwrap() as u8 + 1
    }

    fn from_code(c: u8) -> Option<Test> {
        Test::ALL.get((c as usize).checked_sub(1)?).copied()
    }
}

impl fmt::Display for Test {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Test {
    type Err = anyhow::Error;

    /// Accepts netperf's spelling too (`TCP_RR`).
    fn from_str(s: &str) -> Result<Test> {
        Test::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<_> = Test::ALL.iter().map(|t| t.name()).collect();
                anyhow!("unknown test '{s}': expected one of {}", names.join(", "))
            })
    }
}

/// Where each side runs. In a NAT lab the client connects to a published address that DNATs
/// to `server_bind`; the port is the same on both (TCP and, for UDP tests, UDP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub client_netns: Option<String>,
    pub server_netns: Option<String>,
    pub server_bind: IpAddr,
    pub connect: IpAddr,
    /// 0: the server picks a free port and the client follows (not through NAT).
    pub port: u16,
}

impl Endpoints {
    /// Client and server in a lab's client and server namespaces, on the lab's first port.
    pub fn in_lab(desc: &crate::lab::Description) -> Endpoints {
        Endpoints {
            client_netns: Some(desc.client.netns.clone()),
            server_netns: Some(desc.server.netns.clone()),
            server_bind: desc.server.addr,
            connect: desc.connect,
            port: desc.ports.0,
        }
    }

    /// Both sides in the current namespace, over 127.0.0.1.
    pub fn loopback(port: u16) -> Endpoints {
        Endpoints {
            client_netns: None,
            server_netns: None,
            server_bind: Ipv4Addr::LOCALHOST.into(),
            connect: Ipv4Addr::LOCALHOST.into(),
            port,
        }
    }
}

/// The local port of the last control connection this process's client opened (0: none yet):
/// a tracer leaves that connection out of the round trip (it shares the service port, and the
/// server reads its STOP only at an idle tick).
pub static CONTROL_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

/// What to run, netperf's knobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub test: Test,
    /// `-l`: length of the data phase.
    pub duration: Duration,
    /// `-r REQ,RESP`: bytes per request and per response (rr tests).
    pub request: usize,
    pub response: usize,
    /// `-m`: bytes per send call (stream tests; a datagram for `udp_stream`).
    pub send_size: usize,
    /// `--burst`: transactions in flight (rr tests); 1 is netperf's plain rr.
    pub burst: u32,
    /// `udp_rr`: a transaction unanswered for this long is counted lost and a new one sent.
    pub udp_timeout: Duration,
    /// `--think`: the in-process server's time between a request and its response (server
    /// side only: not sent to a remote server).
    pub think: Duration,
}

impl Options {
    /// netperf's defaults: 10 s, `-r 1,1`, 128 KiB TCP sends (1400-byte datagrams), burst 1.
    pub fn new(test: Test) -> Options {
        Options {
            test,
            duration: Duration::from_secs(10),
            request: 1,
            response: 1,
            send_size: if test.is_udp() {
                UDP_SEND_SIZE
            } else {
                TCP_SEND_SIZE
            },
            burst: 1,
            udp_timeout: Duration::from_millis(10),
            think: Duration::ZERO,
        }
    }

    pub fn validate(&self) -> Result<()> {
        spec_problem(&self.spec()).map_or(Ok(()), |p| bail!("{p}"))?;
        if self.duration.is_zero() || self.duration > Duration::from_secs(86_400) {
            bail!("duration must be between 1 ms and 1 day");
        }
        if self.test == Test::UdpRr && self.udp_timeout.is_zero() {
            bail!("udp_rr needs a non-zero loss timeout");
        }
        Ok(())
    }

    fn spec(&self) -> proto::Spec {
        let c = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        proto::Spec {
            test: self.test,
            request: c(self.request),
            response: c(self.response),
            send_size: c(self.send_size),
            burst: self.burst,
            duration_ms: u32::try_from(self.duration.as_millis()).unwrap_or(u32::MAX),
        }
    }
}

/// Why the server (or the client, before asking) refuses these sizes; both sides check.
fn spec_problem(s: &proto::Spec) -> Option<String> {
    let max = if s.test.is_udp() { UDP_MAX } else { MAX_SIZE };
    let bad = |what: &str, v: u32| format!("{what} {v} out of range for {}: 1..={max}", s.test);
    if s.test.is_rr() {
        for (what, v) in [("request size", s.request), ("response size", s.response)] {
            if v == 0 || v as usize > max {
                return Some(bad(what, v));
            }
        }
        if s.burst == 0 || s.burst > MAX_BURST {
            return Some(format!("burst {} out of range: 1..={MAX_BURST}", s.burst));
        }
    } else if s.send_size == 0 || s.send_size as usize > max {
        return Some(bad("send size", s.send_size));
    }
    if s.duration_ms == 0 {
        return Some("duration must be at least 1 ms".into());
    }
    None
}

/// Runs one test: the server on its own thread (in `server_netns`), waits until it listens, the
/// client on another (in `client_netns`) for `opts.duration`, then stops and joins both.
pub fn run(endpoints: &Endpoints, opts: &Options) -> Result<Report> {
    opts.validate()?;
    let shutdown = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel::<Result<u16>>();
    let server = {
        let (ns, bind, port, think) = (
            endpoints.server_netns.clone(),
            endpoints.server_bind,
            endpoints.port,
            opts.think,
        );
        let shutdown = shutdown.clone();
        thread::Builder::new()
            .name("workload-server".into())
            .spawn(move || -> Result<()> {
                let setup = || -> Result<server::Server> {
                    if let Some(ns) = &ns {
                        crate::lab::netns::enter(ns)?;
                    }
                    Ok(server::Server::bind(bind, port)?.with_think(think))
                };
                let srv = match setup() {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return Ok(());
                    }
                };
                let _ = ready_tx.send(Ok(srv.port()));
                srv.serve(&shutdown, Some(1), false)
            })
            .context("spawning the server thread")?
    };
    let join_server = |server: thread::JoinHandle<Result<()>>| -> Result<()> {
        server
            .join()
            .map_err(|_| anyhow!("workload server thread panicked"))?
    };
    let port = match ready_rx.recv() {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            let _ = join_server(server);
            return Err(e.context("starting the workload server"));
        }
        Err(_) => {
            return Err(join_server(server)
                .err()
                .unwrap_or_else(|| anyhow!("workload server ended before listening")));
        }
    };
    let client = {
        let (ns, connect, opts) = (
            endpoints.client_netns.clone(),
            endpoints.connect,
            opts.clone(),
        );
        let port = if endpoints.port == 0 {
            port
        } else {
            endpoints.port
        };
        thread::Builder::new()
            .name("workload-client".into())
            .spawn(move || -> Result<Report> {
                if let Some(ns) = &ns {
                    crate::lab::netns::enter(ns)?;
                }
                client::run(connect, port, &opts)
            })
    };
    let result = match client {
        Ok(c) => c
            .join()
            .map_err(|_| anyhow!("workload client thread panicked"))
            .and_then(|r| r),
        Err(e) => Err(anyhow!(e).context("spawning the client thread")),
    };
    shutdown.store(true, Ordering::Relaxed);
    let server_result = join_server(server);
    match (result, server_result) {
        (Ok(r), _) => Ok(r),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(s)) => Err(e.context(format!("server side: {s:#}"))),
    }
}

/// `profiler serve`: serves tests, one at a time, until the process ends. A client arriving
/// during a test is told the server is busy.
pub fn serve(bind: IpAddr, port: u16, think: Duration) -> Result<()> {
    let srv = server::Server::bind(bind, port)?.with_think(think);
    eprintln!(
        "profiler serve: listening on {} (TCP and UDP)",
        std::net::SocketAddr::new(bind, srv.port())
    );
    srv.serve(&AtomicBool::new(false), None, true)
}

/// The built-in server on its own thread in the lab namespace `netns`, for a client elsewhere
/// (a VM on the lab's bridge): bound before this returns, serving until `stop` is set.
pub fn serve_in(
    netns: &str,
    bind: IpAddr,
    port: u16,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<Result<()>>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let ns = netns.to_string();
    let t = std::thread::spawn(move || -> Result<()> {
        let srv = crate::lab::netns::enter(&ns).and_then(|_| server::Server::bind(bind, port));
        let srv = match srv {
            Ok(s) => {
                let _ = tx.send(Ok(()));
                s
            }
            Err(e) => {
                let _ = tx.send(Err(format!("{e:#}")));
                return Ok(());
            }
        };
        srv.serve(&stop, None, false)
    });
    rx.recv()
        .map_err(|_| anyhow!("the server thread ended before binding"))?
        .map_err(|e| anyhow!("{e}"))?;
    Ok(t)
}

/// The client alone, in the calling thread, against a [`serve`] at `host:port`.
pub fn run_remote(host: IpAddr, port: u16, opts: &Options) -> Result<Report> {
    opts.validate()?;
    client::run(host, port, opts)
}
