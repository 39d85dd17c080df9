//! The server side: one listener, one session at a time, everything on the calling thread (so
//! `RUSAGE_THREAD` is the server's whole cost). Every socket carries a short receive/send
//! timeout (the idle tick); only on a tick does the session look at the control connection,
//! the run's shutdown flag and its hard deadline, so the hot loops stay two syscalls a
//! transaction and nothing can block for longer than a tick.

use std::{
    io::{self, ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use nix::sys::socket::{setsockopt, sockopt};

use super::{
    TCP_SEND_SIZE, Test,
    proto::{self, Reply, Results, Spec},
    sock::{self, Fill, is_gone, is_tick, read_full, write_full},
    spec_problem,
};

/// How often a blocked server call comes back to check whether the test is over.
const IDLE_TICK: Duration = Duration::from_millis(100);
/// How long a new connection may take to say hello.
const HELLO_TICKS: u32 = 50;
/// How long the data connection may take to arrive after the reply.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// A session never outlives its announced duration by more than this.
const GRACE: Duration = Duration::from_secs(30);
const BUSY: &str = "server busy with another test";

pub struct Server {
    listener: TcpListener,
    /// Port 0 was asked for: the UDP port may differ from the TCP one.
    any_port: bool,
    /// Time the server spends between a request and its response (`--think`), spinning.
    think: Duration,
}

impl Server {
    pub fn bind(bind: IpAddr, port: u16) -> Result<Server> {
        let listener = TcpListener::bind((bind, port))
            .with_context(|| format!("listening on {}", SocketAddr::new(bind, port)))?;
        sock::set_timeouts(&listener, IDLE_TICK).context("setting the idle tick")?;
        // Inherited by accepted sockets: rr responses go out at once.
        setsockopt(&listener, sockopt::TcpNoDelay, &true).context("TCP_NODELAY")?;
        Ok(Server {
            listener,
            any_port: port == 0,
            think: Duration::ZERO,
        })
    }

    /// Spends `d` between each request and its response (rr tests): a known application time.
    pub fn with_think(mut self, d: Duration) -> Server {
        self.think = d;
        self
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Serves sessions until `shutdown` is set or `max_sessions` have run.
    pub fn serve(
        &self,
        shutdown: &AtomicBool,
        max_sessions: Option<usize>,
        log: bool,
    ) -> Result<()> {
        let mut sessions = 0;
        loop {
            if shutdown.load(Ordering::Relaxed) || max_sessions.is_some_and(|m| sessions >= m) {
                return Ok(());
            }
            let (mut s, peer) = match self.listener.accept() {
                Ok(x) => x,
                Err(e) if is_tick(&e) || e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if transient_accept_error(&e) => {
                    std::thread::sleep(IDLE_TICK);
                    continue;
                }
                Err(e) => return Err(e).context("accept"),
            };
            let mut prefix = [0u8; proto::PREFIX_LEN];
            let mut ticks = 0;
            let give_up = || {
                ticks += 1;
                ticks > HELLO_TICKS || shutdown.load(Ordering::Relaxed)
            };
            if !matches!(read_full(&mut s, &mut prefix, give_up), Ok(Fill::Full)) {
                continue;
            }
            match proto::check_prefix(&prefix) {
                Ok(proto::KIND_CONTROL) => {}
                // A data connection of a session already over, or not ours at all.
                Ok(_) => continue,
                Err(m) => {
                    if log {
                        eprintln!("profiler serve: {peer}: {m}");
                    }
                    continue;
                }
            }
            let mut rest = [0u8; proto::CONTROL_HELLO_LEN - proto::PREFIX_LEN];
            if !matches!(read_full(&mut s, &mut rest, || true), Ok(Fill::Full)) {
                continue;
            }
            sessions += 1;
            let outcome = match Spec::decode(&rest)
                .and_then(|spec| spec_problem(&spec).map_or(Ok(spec), Err))
            {
                Ok(spec) => self.session(s, spec, shutdown).map(|r| (spec, r)),
                Err(m) => {
                    let _ = refuse(&mut s, proto::STATUS_REFUSED, &m);
                    Err(anyhow::anyhow!("refused: {m}"))
                }
            };
            if log {
                match outcome {
                    Ok((spec, r)) => eprintln!(
                        "profiler serve: {peer}: {} {} ms: received {} B in {} messages, sent {} B in {} messages{}",
                        spec.test,
                        spec.duration_ms,
                        r.bytes_rx,
                        r.msgs_rx,
                        r.bytes_tx,
                        r.msgs_tx,
                        if r.message.is_empty() {
                            String::new()
                        } else {
                            format!(" (error: {})", r.message)
                        }
                    ),
                    Err(e) => eprintln!("profiler serve: {peer}: {e:#}"),
                }
            }
        }
    }

    /// One test: reply, data phase, results. Errors of the data phase go to the client in the
    /// results; only a control connection that fails is an error here.
    fn session(&self, mut ctl: TcpStream, spec: Spec, shutdown: &AtomicBool) -> Result<Results> {
        let token = sock::token();
        let udp = if spec.test.is_udp() {
            match self.udp_socket() {
                Ok(u) => Some(u),
                Err(e) => {
                    let m = format!("{e:#}");
                    refuse(&mut ctl, proto::STATUS_ERROR, &m)?;
                    return Err(e);
                }
            }
        } else {
            None
        };
        let udp_port = udp
            .as_ref()
            .and_then(|u| u.local_addr().ok())
            .map_or(0, |a| a.port());
        Reply {
            status: proto::STATUS_OK,
            token,
            udp_port,
            message: String::new(),
        }
        .write(&mut ctl)
        .context("replying to the client")?;
        ctl.set_nonblocking(true)?;
        let mut c = Control {
            ctl: &ctl,
            shutdown,
            deadline: Instant::now() + Duration::from_millis(spec.duration_ms.into()) + GRACE,
            over: false,
        };
        let cpu0 = sock::thread_cpu();
        let mut counts = Counts::default();
        let outcome = match (spec.test, &udp) {
            (Test::TcpCrr, _) => self.tcp_crr(token, &spec, &mut c, &mut counts),
            (Test::UdpStream, Some(u)) => {
                self.gatekeeping(|| udp_stream(u, &spec, &mut c, &mut counts))
            }
            (Test::UdpRr, Some(u)) => {
                self.gatekeeping(|| udp_rr(u, &spec, self.think, &mut c, &mut counts))
            }
            _ => match self.join(token, &mut c) {
                Ok(Some(s)) => {
                    self.gatekeeping(|| tcp_one(s, &spec, self.think, &mut c, &mut counts))
                }
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            },
        };
        let cpu = sock::thread_cpu().saturating_sub(cpu0);
        drop(udp);
        let stop_seen = c.over;
        ctl.set_nonblocking(false)?;
        if !stop_seen {
            // Take the client's STOP first: closing over an unread byte would reset the
            // connection under the results.
            let mut ticks = 0;
            let _ = read_full(&mut ctl, &mut [0u8; 1], || {
                ticks += 1;
                ticks > HELLO_TICKS || shutdown.load(Ordering::Relaxed)
            });
        }
        let results = Results {
            status: if outcome.is_ok() {
                proto::STATUS_OK
            } else {
                proto::STATUS_ERROR
            },
            cpu_ns: sock::nanos(cpu),
            bytes_rx: counts.bytes_rx,
            msgs_rx: counts.msgs_rx,
            bytes_tx: counts.bytes_tx,
            msgs_tx: counts.msgs_tx,
            message: outcome.err().map(|e| format!("{e:#}")).unwrap_or_default(),
        };
        results
            .write(&mut ctl)
            .context("sending results to the client")?;
        Ok(results)
    }

    fn udp_socket(&self) -> Result<UdpSocket> {
        let addr = self.listener.local_addr()?;
        let u = UdpSocket::bind(addr).or_else(|e| {
            if self.any_port {
                UdpSocket::bind(SocketAddr::new(addr.ip(), 0))
            } else {
                Err(e)
            }
        });
        let u = u.with_context(|| format!("binding UDP {addr}"))?;
        u.set_read_timeout(Some(IDLE_TICK))?;
        // Room for bursts (SO_RCVBUFFORCE passes rmem_max as root); smaller is only more loss.
        let room = 4 << 20;
        let _ = setsockopt(&u, sockopt::RcvBufForce, &room)
            .or_else(|_| setsockopt(&u, sockopt::RcvBuf, &room));
        Ok(u)
    }

    /// Waits for the session's data connection; a new control connection meanwhile is told
    /// the server is busy.
    fn join(&self, token: u64, c: &mut Control) -> Result<Option<TcpStream>> {
        let limit = Instant::now() + JOIN_TIMEOUT;
        let mut hello = [0u8; proto::DATA_HELLO_LEN];
        loop {
            match self.listener.accept() {
                Ok((mut s, _)) => {
                    if admit(&mut s, &mut hello, token, c) {
                        return Ok(Some(s));
                    }
                }
                Err(e) if is_tick(&e) || e.kind() == ErrorKind::Interrupted => {
                    if c.over() || Instant::now() > limit {
                        return Ok(None);
                    }
                }
                Err(e) if transient_accept_error(&e) => {}
                Err(e) => return Err(e).context("accept"),
            }
        }
    }

    /// Runs `f` (a data phase that does not accept) while a helper thread tells clients
    /// arriving meanwhile that the server is busy, instead of leaving them in the backlog.
    fn gatekeeping<T>(&self, f: impl FnOnce() -> T) -> T {
        let done = AtomicBool::new(false);
        std::thread::scope(|sc| {
            sc.spawn(|| {
                let mut hello = [0u8; proto::PREFIX_LEN];
                while !done.load(Ordering::Relaxed) {
                    if let Ok((mut s, _)) = self.listener.accept() {
                        let mut ticks = 0;
                        let give_up = || {
                            ticks += 1;
                            ticks > 10 || done.load(Ordering::Relaxed)
                        };
                        if let Ok(Fill::Full) = read_full(&mut s, &mut hello, give_up)
                            && proto::check_prefix(&hello) == Ok(proto::KIND_CONTROL)
                        {
                            let _ = refuse(&mut s, proto::STATUS_BUSY, BUSY);
                        }
                    }
                }
            });
            let r = f();
            done.store(true, Ordering::Relaxed);
            r
        })
    }
    /// tcp_crr: accept, read hello + request, write response, close; the server closes first
    /// so TIME_WAIT lands here, not on the client's ephemeral ports.
    fn tcp_crr(&self, token: u64, spec: &Spec, c: &mut Control, n: &mut Counts) -> Result<()> {
        let mut buf = vec![0u8; proto::DATA_HELLO_LEN + spec.request as usize];
        let resp = vec![0u8; spec.response as usize];
        for i in 0u64.. {
            if i % 256 == 255 && c.past_deadline() {
                break;
            }
            let mut s = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if is_tick(&e) || e.kind() == ErrorKind::Interrupted => {
                    if c.over() {
                        break;
                    }
                    continue;
                }
                Err(e) if transient_accept_error(&e) => continue,
                Err(e) => return Err(e).context("accept"),
            };
            if !admit(&mut s, &mut buf, token, c) {
                continue;
            }
            n.rx(spec.request as usize);
            if let Ok(true) = write_full(&mut s, &resp, || c.over()) {
                n.tx(resp.len());
            }
        }
        Ok(())
    }
}

/// tcp_stream, tcp_maerts, tcp_rr: one data connection.
fn tcp_one(
    mut s: TcpStream,
    spec: &Spec,
    think: Duration,
    c: &mut Control,
    n: &mut Counts,
) -> Result<()> {
    let end = |e: io::Error| if is_gone(&e) { Ok(()) } else { Err(e) };
    match spec.test {
        Test::TcpStream => {
            s.set_nodelay(false)?;
            let mut buf = vec![0u8; (spec.send_size as usize).max(TCP_SEND_SIZE)];
            for i in 0u64.. {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(k) => n.rx(k),
                    Err(e) if is_tick(&e) => {
                        if c.over() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return end(e).context("receiving"),
                }
                if i % 256 == 255 && c.past_deadline() {
                    break;
                }
            }
        }
        Test::TcpMaerts => {
            s.set_nodelay(false)?;
            let buf = vec![0u8; spec.send_size as usize];
            for i in 0u64.. {
                match s.write(&buf) {
                    Ok(k) => n.tx(k),
                    Err(e) if is_tick(&e) => {
                        if c.over() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return end(e).context("sending"),
                }
                if i % 256 == 255 && c.past_deadline() {
                    break;
                }
            }
        }
        _ => {
            let mut req = vec![0u8; spec.request as usize];
            let resp = vec![0u8; spec.response as usize];
            for i in 0u64.. {
                match read_full(&mut s, &mut req, || c.over()) {
                    Ok(Fill::Full) => n.rx(req.len()),
                    Ok(_) => break,
                    Err(e) if e.kind() == ErrorKind::UnexpectedEof => break,
                    Err(e) => return end(e).context("receiving a request"),
                }
                spin(think);
                match write_full(&mut s, &resp, || c.over()) {
                    Ok(true) => n.tx(resp.len()),
                    Ok(false) => break,
                    Err(e) => return end(e).context("sending a response"),
                }
                if i % 256 == 255 && c.past_deadline() {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Reads a data hello (and whatever else `buf` has room for) from a new connection; true if
/// it belongs to this session. A control hello is answered "busy"; anything else is dropped.
fn admit(s: &mut TcpStream, buf: &mut [u8], token: u64, c: &mut Control) -> bool {
    let mut got = 0;
    let mut ticks = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return false,
            Ok(k) => got += k,
            Err(e) if is_tick(&e) => {
                ticks += 1;
                if ticks > HELLO_TICKS || c.over() {
                    return false;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
        if got >= proto::PREFIX_LEN && buf[5] != proto::KIND_DATA {
            break;
        }
    }
    match proto::check_prefix(&buf[..got.min(proto::PREFIX_LEN)]) {
        Ok(proto::KIND_DATA) if got >= proto::DATA_HELLO_LEN => {
            u64::from_le_bytes(buf[6..14].try_into().unwrap()) == token
        }
        Ok(proto::KIND_CONTROL) => {
            let _ = refuse(s, proto::STATUS_BUSY, BUSY);
            false
        }
        _ => false,
    }
}

fn udp_stream(u: &UdpSocket, spec: &Spec, c: &mut Control, n: &mut Counts) -> Result<()> {
    let mut batch = sock::RecvBatch::new(64, spec.send_size as usize);
    for i in 0u64.. {
        match batch.recv(u) {
            Ok(lens) => lens.for_each(|k| n.rx(k)),
            // The client stops sending before it says STOP, so an idle tick has seen it all.
            Err(e) if is_tick(&e) => {
                if c.over() {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("receiving datagrams"),
        }
        if i % 256 == 255 && c.past_deadline() {
            break;
        }
    }
    Ok(())
}

fn udp_rr(
    u: &UdpSocket,
    spec: &Spec,
    think: Duration,
    c: &mut Control,
    n: &mut Counts,
) -> Result<()> {
    let mut buf = vec![0u8; 65536];
    let mut resp = vec![0u8; spec.response as usize];
    let echo = super::client::echo_width(spec.request as usize, spec.response as usize);
    for i in 0u64.. {
        match u.recv_from(&mut buf) {
            Ok((k, from)) => {
                n.rx(k);
                // Echo the sequence number so the client can tell a late answer from a fresh one.
                let e = echo.min(k);
                resp[..e].copy_from_slice(&buf[..e]);
                spin(think);
                // A failed send (ENOBUFS and friends) is a loss the client counts.
                if let Ok(k) = u.send_to(&resp, from) {
                    n.tx(k);
                }
            }
            Err(e) if is_tick(&e) => {
                if c.over() {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("receiving requests"),
        }
        if i % 256 == 255 && c.past_deadline() {
            break;
        }
    }
    Ok(())
}

/// Busy for `d`: a sleep would add a wake-up and a run-queue wait to the application's time.
fn spin(d: Duration) {
    if d.is_zero() {
        return;
    }
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

#[derive(Default)]
struct Counts {
    bytes_rx: u64,
    msgs_rx: u64,
    bytes_tx: u64,
    msgs_tx: u64,
}

impl Counts {
    fn rx(&mut self, k: usize) {
        self.bytes_rx += k as u64;
        self.msgs_rx += 1;
    }
    fn tx(&mut self, k: usize) {
        self.bytes_tx += k as u64;
        self.msgs_tx += 1;
    }
}

/// Whether the session is over: STOP or EOF on the (non-blocking) control connection, the
/// run's shutdown flag, or the hard deadline. Asked only on idle ticks.
struct Control<'a> {
    ctl: &'a TcpStream,
    shutdown: &'a AtomicBool,
    deadline: Instant,
    over: bool,
}

impl Control<'_> {
    fn over(&mut self) -> bool {
        if !self.over {
            let mut b = [0u8; 1];
            self.over = match (&mut &*self.ctl).read(&mut b) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => false,
                _ => true, // STOP, EOF or a broken control connection
            } || self.shutdown.load(Ordering::Relaxed)
                || Instant::now() > self.deadline;
        }
        self.over
    }

    fn past_deadline(&mut self) -> bool {
        if Instant::now() > self.deadline {
            self.over = true;
        }
        self.over
    }
}

fn refuse(s: &mut TcpStream, status: u8, message: &str) -> io::Result<()> {
    Reply {
        status,
        token: 0,
        udp_port: 0,
        message: message.into(),
    }
    .write(s)
}

/// Accept failures that concern one connection or a passing shortage, not the listener.
fn transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EPROTO
                | libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::EPERM
        )
    )
}
