//! The client side: handshake, the timed data phase on the calling thread, STOP, results.
//! Hot loops read the clock once per transaction (the end of one is the start of the next)
//! and allocate nothing; every blocking call has a timeout so a dead server cannot hang us.

use std::{
    collections::VecDeque,
    io::{self, ErrorKind, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use hdrhistogram::Histogram;
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrStorage, connect, setsockopt, socket, sockopt,
};

use super::{
    Options, Report, Test,
    proto::{self, Reply, Results},
    report::{self, Measured},
    sock,
};

/// Longest a server may stay silent when it owes us something.
pub const STALL: Duration = if cfg!(test) {
    Duration::from_secs(1)
} else {
    Duration::from_secs(5)
};
/// The server answers results within its idle tick once it has seen STOP; allow for a slow one.
const RESULTS_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes of the sequence number a udp_rr request carries and its response echoes.
pub fn echo_width(request: usize, response: usize) -> usize {
    8.min(request).min(response)
}

pub fn run(host: IpAddr, port: u16, opts: &Options) -> Result<Report> {
    let addr = SocketAddr::new(host, port);
    let mut ctl = TcpStream::connect_timeout(&addr, STALL)
        .with_context(|| format!("connecting to the workload server at {addr}"))?;
    ctl.set_nodelay(true)?;
    if let Ok(a) = ctl.local_addr() {
        super::CONTROL_PORT.store(a.port(), std::sync::atomic::Ordering::Relaxed);
    }
    ctl.set_read_timeout(Some(STALL))?;
    ctl.set_write_timeout(Some(STALL))?;
    ctl.write_all(&opts.spec().encode())
        .context("sending the test to the server")?;
    let reply = Reply::read(&mut ctl).map_err(|e| stalled(e, STALL, "the server's reply"))?;
    match reply.status {
        proto::STATUS_OK => {}
        proto::STATUS_BUSY => bail!("workload server {addr} is busy with another test"),
        _ => bail!(
            "workload server {addr} refused {}: {}",
            opts.test,
            reply.message
        ),
    }

    let cpu0 = sock::thread_cpu();
    let measured = data_phase(addr, &reply, opts);
    let client_cpu = sock::thread_cpu().saturating_sub(cpu0);

    let _ = ctl.write_all(&[proto::STOP]);
    // After a failed data phase the results only add context: do not wait long for them.
    let wait = if measured.is_ok() {
        RESULTS_TIMEOUT
    } else {
        STALL
    };
    ctl.set_read_timeout(Some(wait))?;
    let results = Results::read(&mut ctl).map_err(|e| stalled(e, wait, "the server's results"));
    let measured = match (measured, &results) {
        (Err(e), Ok(r)) if !r.message.is_empty() => {
            return Err(e.context(format!("server: {}", r.message)));
        }
        (m, _) => m?,
    };
    let results = results?;
    if results.status != proto::STATUS_OK {
        bail!("workload server failed: {}", results.message);
    }
    Ok(report::build(opts, addr, measured, &results, client_cpu))
}

fn stalled(e: io::Error, waited: Duration, what: &str) -> anyhow::Error {
    if sock::is_tick(&e) {
        anyhow!("no answer from the workload server within {waited:?} waiting for {what}")
    } else if e.kind() == ErrorKind::UnexpectedEof {
        anyhow!("the workload server closed the connection instead of sending {what}")
    } else {
        anyhow!(e).context(format!("reading {what}"))
    }
}

fn data_phase(addr: SocketAddr, reply: &Reply, opts: &Options) -> Result<Measured> {
    match opts.test {
        Test::TcpStream => tcp_stream(&join(addr, reply.token, false)?, opts),
        Test::TcpMaerts => tcp_maerts(&join(addr, reply.token, false)?, opts),
        Test::TcpRr => tcp_rr(&join(addr, reply.token, true)?, opts),
        Test::TcpCrr => tcp_crr(addr, reply.token, opts),
        Test::UdpStream | Test::UdpRr => {
            let any: IpAddr = match addr {
                SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
                SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
            };
            let u = UdpSocket::bind((any, 0)).context("binding a UDP socket")?;
            let to = SocketAddr::new(addr.ip(), reply.udp_port);
            u.connect(to)
                .with_context(|| format!("connecting UDP to {to}"))?;
            if opts.test == Test::UdpStream {
                udp_stream(&u, opts)
            } else {
                udp_rr(&u, opts)
            }
        }
    }
}

/// Opens the session's data connection.
fn join(addr: SocketAddr, token: u64, nodelay: bool) -> Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, STALL)
        .with_context(|| format!("opening the data connection to {addr}"))?;
    s.set_nodelay(nodelay)?;
    s.set_read_timeout(Some(STALL))?;
    s.set_write_timeout(Some(STALL))?;
    s.write_all(&proto::data_hello(token))?;
    Ok(s)
}

fn histogram() -> Histogram<u64> {
    // 1 ns .. 1 h at 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

fn data_err(e: io::Error, what: &str) -> anyhow::Error {
    if sock::is_tick(&e) {
        anyhow!("the workload server stalled for {STALL:?} ({what})")
    } else {
        anyhow!(e).context(what.to_string())
    }
}

/// Calls `op` back to back for the test's duration, recording the time of each call.
fn each_call(opts: &Options, mut op: impl FnMut(&mut Measured) -> Result<()>) -> Result<Measured> {
    let mut m = Measured::new(histogram());
    let start = Instant::now();
    let deadline = start + opts.duration;
    let mut t0 = start;
    loop {
        op(&mut m)?;
        let t = Instant::now();
        m.hist.saturating_record(sock::nanos(t - t0));
        t0 = t;
        if t >= deadline {
            break;
        }
    }
    m.elapsed = t0 - start;
    Ok(m)
}

fn tcp_stream(s: &TcpStream, opts: &Options) -> Result<Measured> {
    let mut s = s;
    let buf = vec![0u8; opts.send_size];
    let m = each_call(opts, |m| {
        match s.write(&buf) {
            Ok(k) => {
                m.bytes_tx += k as u64;
                m.msgs_tx += 1;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(data_err(e, "sending")),
        }
        Ok(())
    })?;
    // The server counts to EOF.
    let _ = s.shutdown(Shutdown::Write);
    Ok(m)
}

fn tcp_maerts(s: &TcpStream, opts: &Options) -> Result<Measured> {
    let mut s = s;
    let mut buf = vec![0u8; opts.send_size.max(super::TCP_SEND_SIZE)];
    // Closing with unread data resets the connection, which ends the server's send loop.
    each_call(opts, |m| {
        match s.read(&mut buf) {
            Ok(0) => bail!("the workload server ended the stream early"),
            Ok(k) => {
                m.bytes_rx += k as u64;
                m.msgs_rx += 1;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(data_err(e, "receiving")),
        }
        Ok(())
    })
}

fn tcp_rr(s: &TcpStream, opts: &Options) -> Result<Measured> {
    let mut s = s;
    let req = vec![0u8; opts.request];
    let mut resp = vec![0u8; opts.response];
    let mut m = Measured::new(histogram());
    let mut in_flight = VecDeque::with_capacity(opts.burst as usize);
    let start = Instant::now();
    for _ in 0..opts.burst {
        s.write_all(&req)
            .map_err(|e| data_err(e, "sending a request"))?;
        in_flight.push_back(Instant::now());
    }
    let deadline = start + opts.duration;
    let mut t;
    loop {
        s.read_exact(&mut resp)
            .map_err(|e| data_err(e, "receiving a response"))?;
        t = Instant::now();
        let sent = in_flight.pop_front().unwrap_or(t);
        m.hist.saturating_record(sock::nanos(t - sent));
        m.transactions += 1;
        if t >= deadline {
            break;
        }
        s.write_all(&req)
            .map_err(|e| data_err(e, "sending a request"))?;
        in_flight.push_back(t);
    }
    m.elapsed = t - start;
    for _ in in_flight {
        if s.read_exact(&mut resp).is_err() {
            break;
        }
    }
    let _ = s.shutdown(Shutdown::Write);
    m.count_rr(opts);
    Ok(m)
}

fn tcp_crr(addr: SocketAddr, token: u64, opts: &Options) -> Result<Measured> {
    let mut hello_req = proto::data_hello(token).to_vec();
    hello_req.resize(hello_req.len() + opts.request, 0);
    let mut resp = vec![0u8; opts.response];
    let sa = SockaddrStorage::from(addr);
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let mut m = Measured::new(histogram());
    let start = Instant::now();
    let deadline = start + opts.duration;
    let mut t0 = start;
    loop {
        let mut s = crr_connect(&sa, family).map_err(|e| {
            if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
                anyhow!("out of local ports for tcp_crr ({e}); see net.ipv4.ip_local_port_range")
            } else {
                data_err(e, "connecting")
            }
        })?;
        s.write_all(&hello_req)
            .map_err(|e| data_err(e, "sending a request"))?;
        s.read_exact(&mut resp)
            .map_err(|e| data_err(e, "receiving a response"))?;
        // Wait for the server's FIN so TIME_WAIT stays on its side, as netperf does.
        let _ = s.read(&mut resp[..1]);
        drop(s);
        let t = Instant::now();
        m.hist.saturating_record(sock::nanos(t - t0));
        m.transactions += 1;
        t0 = t;
        if t >= deadline {
            break;
        }
    }
    m.elapsed = t0 - start;
    m.count_rr(opts);
    Ok(m)
}

/// A fresh connection with NODELAY and both timeouts set before connect (connect honours
/// SO_SNDTIMEO), without std's non-blocking connect_timeout dance.
fn crr_connect(sa: &SockaddrStorage, family: AddressFamily) -> io::Result<TcpStream> {
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::TcpNoDelay, &true)?;
    sock::set_timeouts(&fd, STALL)?;
    connect(fd.as_raw_fd(), sa)?;
    Ok(TcpStream::from(fd))
}

fn udp_err(e: io::Error) -> anyhow::Error {
    if e.kind() == ErrorKind::ConnectionRefused {
        anyhow!("nothing listens on the server's UDP port (is it published for UDP too?)")
    } else {
        anyhow!(e).context("UDP")
    }
}

/// A send the kernel dropped (full queue): the datagram is simply lost.
fn udp_dropped(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR)
    )
}

pub(super) fn udp_stream(u: &UdpSocket, opts: &Options) -> Result<Measured> {
    let buf = vec![0u8; opts.send_size];
    each_call(opts, |m| {
        match u.send(&buf) {
            Ok(k) => {
                m.bytes_tx += k as u64;
                m.msgs_tx += 1;
            }
            Err(e) if udp_dropped(&e) => m.local_drops += 1,
            Err(e) => return Err(udp_err(e)),
        }
        Ok(())
    })
}

/// `burst` requests in flight, each carrying a sequence number the server echoes. One
/// unanswered for `udp_timeout` is counted lost and replaced; a late answer is discarded.
pub(super) fn udp_rr(u: &UdpSocket, opts: &Options) -> Result<Measured> {
    u.set_read_timeout(Some(opts.udp_timeout))?;
    let w = echo_width(opts.request, opts.response);
    let mut req = vec![0u8; opts.request];
    // One byte more than expected, so an oversized datagram does not pass as a response.
    let mut resp = vec![0u8; opts.response + 1];
    let mut m = Measured::new(histogram());
    let mut seq = 0u64;
    let mut send = |req: &mut [u8], m: &mut Measured| -> Result<u64> {
        seq += 1;
        req[..w].copy_from_slice(&seq.to_le_bytes()[..w]);
        match u.send(req) {
            Ok(k) => {
                m.bytes_tx += k as u64;
                m.msgs_tx += 1;
            }
            Err(e) if udp_dropped(&e) => m.local_drops += 1,
            Err(e) => return Err(udp_err(e)),
        }
        Ok(seq)
    };
    let start = Instant::now();
    let deadline = start + opts.duration;
    let mut slots: Vec<(u64, Instant)> = Vec::with_capacity(opts.burst as usize);
    for _ in 0..opts.burst {
        let s = send(&mut req, &mut m)?;
        slots.push((s, Instant::now()));
    }
    let mut t;
    loop {
        let got = match u.recv(&mut resp) {
            Ok(k) => Some(k),
            Err(e) if sock::is_tick(&e) || e.kind() == ErrorKind::Interrupted => None,
            Err(e) => return Err(udp_err(e)),
        };
        t = Instant::now();
        if let Some(k) = got {
            m.msgs_rx += 1;
            m.bytes_rx += k as u64;
            let hit = (k == opts.response)
                .then(|| {
                    slots
                        .iter()
                        .position(|(s, _)| s.to_le_bytes()[..w] == resp[..w])
                })
                .flatten();
            match hit {
                Some(i) => {
                    m.hist.saturating_record(sock::nanos(t - slots[i].1));
                    m.transactions += 1;
                    if t < deadline {
                        slots[i] = (send(&mut req, &mut m)?, t);
                    }
                }
                None => m.stale += 1,
            }
        }
        if t >= deadline {
            break;
        }
        for slot in &mut slots {
            if t - slot.1 >= opts.udp_timeout {
                m.lost += 1;
                *slot = (send(&mut req, &mut m)?, t);
            }
        }
    }
    m.elapsed = t - start;
    m.count_rr(opts);
    Ok(m)
}
