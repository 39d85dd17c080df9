//! Small socket and clock helpers shared by both sides.

use std::{
    io::{self, ErrorKind, Read, Write},
    os::fd::AsFd,
    time::Duration,
};

use nix::sys::{
    socket::{setsockopt, sockopt},
    time::TimeVal,
};

/// CPU time (user + system) of the calling thread.
pub fn thread_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// SO_RCVTIMEO and SO_SNDTIMEO. On a listener, accepted sockets inherit them (Linux copies
/// the socket), which is how every server socket gets its idle tick without a syscall each.
pub fn set_timeouts(fd: &impl AsFd, t: Duration) -> io::Result<()> {
    let tv = TimeVal::new(t.as_secs() as _, t.subsec_micros() as _);
    setsockopt(fd, sockopt::ReceiveTimeout, &tv)?;
    setsockopt(fd, sockopt::SendTimeout, &tv)?;
    Ok(())
}

/// A timeout from SO_RCVTIMEO/SO_SNDTIMEO (EAGAIN) rather than a failure.
pub fn is_tick(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// The peer went away: for the server, the normal end of a test.
pub fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted
    )
}

pub enum Fill {
    Full,
    /// Clean EOF before the first byte.
    Eof,
    /// `give_up` said so on an idle tick.
    GaveUp,
}

/// Reads exactly `buf.len()` bytes on a socket with a receive timeout, asking `give_up` at
/// every timeout (unlike `read_exact`, progress survives a tick).
pub fn read_full(
    s: &mut impl Read,
    buf: &mut [u8],
    mut give_up: impl FnMut() -> bool,
) -> io::Result<Fill> {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(Fill::Eof),
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if is_tick(&e) => {
                if give_up() {
                    return Ok(Fill::GaveUp);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Fill::Full)
}

/// `write_all` that survives send-timeout ticks; false if `give_up` said so.
pub fn write_full(
    s: &mut impl Write,
    mut buf: &[u8],
    mut give_up: impl FnMut() -> bool,
) -> io::Result<bool> {
    while !buf.is_empty() {
        match s.write(buf) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if is_tick(&e) => {
                if give_up() {
                    return Ok(false);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// A random session token (pairs data connections with their session; not a secret).
pub fn token() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// Nanoseconds, saturating, for histograms.
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `recvmmsg` over preallocated buffers: one syscall takes every datagram already queued
/// (up to the batch), so a UDP receiver keeps up with a sender doing one `send` each.
pub struct RecvBatch {
    _bufs: Vec<u8>,
    _iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl RecvBatch {
    pub fn new(batch: usize, slot: usize) -> RecvBatch {
        let mut bufs = vec![0u8; batch * slot];
        let mut iovs: Vec<libc::iovec> = (0..batch)
            .map(|i| libc::iovec {
                iov_base: bufs[i * slot..].as_mut_ptr().cast(),
                iov_len: slot,
            })
            .collect();
        let hdrs = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: all-zero is a valid mmsghdr (null name and control).
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        // The heap blocks the pointers refer to stay put when the Vecs move.
        RecvBatch {
            _bufs: bufs,
            _iovs: iovs,
            hdrs,
        }
    }

    /// Waits for one datagram (SO_RCVTIMEO applies), takes the rest without waiting; returns
    /// the datagrams' full lengths (MSG_TRUNC: not cut to the slot).
    pub fn recv(
        &mut self,
        fd: &impl std::os::fd::AsRawFd,
    ) -> io::Result<impl Iterator<Item = usize> + '_> {
        // SAFETY: every header points at an iovec and buffer owned by self, alive and unaliased.
        let r = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                self.hdrs.len() as _,
                libc::MSG_WAITFORONE | libc::MSG_TRUNC,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(self.hdrs[..r as usize].iter().map(|h| h.msg_len as usize))
    }
}
