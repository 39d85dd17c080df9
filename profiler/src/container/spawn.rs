//! The container's init: clone(2) into new namespaces, wait for the parent's go, exec.
//! Between clone and exec the child is a copy of a multi-threaded process, so it makes raw
//! system calls only (no allocation, no locks) on data prepared before the clone.

use std::{
    ffi::{CString, c_char},
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::{
    fcntl::OFlag,
    sched::CloneFlags,
    sys::wait::{Id, WaitPidFlag, WaitStatus, waitid},
    unistd::{Pid, pipe2},
};

/// The payload's status pipe, as the payload sees it (`--fd 3`, `printf x >&3`).
pub const STATUS_FD: i32 = 3;
/// The child runs a few system calls on this stack, then execs.
const STACK: usize = 256 * 1024;

pub struct Child {
    pub pid: Pid,
    /// Write one byte to release the child into exec.
    pub go: OwnedFd,
    /// The payload's status pipe: its entry time, then (no network) its ready byte.
    pub status: OwnedFd,
}

/// Clones the container's init in new mount, PID, UTS, IPC and network namespaces. It blocks
/// until a byte arrives on `go`, then makes its mounts private, sets its hostname, puts the
/// status pipe on fd 3 and execs `argv`. It dies with the calling thread (PR_SET_PDEATHSIG).
pub fn clone_child(argv: &[String], hostname: &str) -> Result<Child> {
    let args = super::cstrings(argv)?;
    let Some(path) = args.first() else {
        bail!("the payload's command line is empty");
    };
    let mut ptrs: Vec<*const c_char> = args.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let host = CString::new(hostname)?;
    let (go_r, go_w) = pipe2(OFlag::O_CLOEXEC).context("pipe2")?;
    let (st_r, st_w) = pipe2(OFlag::O_CLOEXEC).context("pipe2")?;
    let (go_r_fd, go_w_fd, st_r_fd, st_w_fd) = (
        go_r.as_raw_fd(),
        go_w.as_raw_fd(),
        st_r.as_raw_fd(),
        st_w.as_raw_fd(),
    );
    let mut stack = vec![0u8; STACK];
    let path_ptr = path.as_ptr();
    let argv_ptr = ptrs.as_ptr();
    let host_ptr = host.as_ptr();
    let host_len = host.as_bytes().len();
    let cb = Box::new(move || -> isize {
        // SAFETY: async-signal-safe system calls on memory the parent prepared (and that this
        // copy of it owns); the child never returns into Rust code that allocates.
        unsafe {
            init(
                go_r_fd,
                [go_w_fd, st_r_fd],
                st_w_fd,
                host_ptr,
                host_len,
                path_ptr,
                argv_ptr,
            )
        }
    });
    let flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNET;
    // SAFETY: the callback only makes system calls (see `init`); the stack outlives the call
    // (the child runs on its own copy of it).
    let pid = unsafe { nix::sched::clone(cb, &mut stack, flags, Some(libc::SIGCHLD)) }
        .map_err(|e| anyhow!("clone(2) into new namespaces: {e}"))?;
    Ok(Child {
        pid,
        go: go_w,
        status: st_r,
    })
}

/// The child's side, up to exec. Exit codes tell the parent where it stopped.
unsafe fn init(
    go: i32,
    close: [i32; 2],
    status: i32,
    host: *const c_char,
    host_len: usize,
    path: *const c_char,
    argv: *const *const c_char,
) -> isize {
    unsafe {
        // Dies with the thread that cloned it, so a killed profiler leaves no payload running.
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        for fd in close {
            libc::close(fd);
        }
        let mut b = 0u8;
        loop {
            let n = libc::read(go, (&raw mut b).cast(), 1);
            if n == 1 {
                break;
            }
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            // The parent gave up before releasing us.
            libc::_exit(120);
        }
        // runc's rootfs step in small: nothing mounted in here propagates to the host.
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            libc::_exit(121);
        }
        if libc::sethostname(host, host_len) != 0 {
            libc::_exit(122);
        }
        // dup2 onto itself keeps close-on-exec; clear it instead.
        let ok = if status == STATUS_FD {
            libc::fcntl(STATUS_FD, libc::F_SETFD, 0) == 0
        } else {
            libc::dup2(status, STATUS_FD) == STATUS_FD
        };
        if !ok {
            libc::_exit(123);
        }
        // The profiler blocks its teardown signals in every thread; the payload starts clean.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        libc::execv(path, argv);
        libc::_exit(127)
    }
}

/// Why the child is gone, if it is (without reaping it: teardown does).
pub fn exited(pid: Pid) -> Option<String> {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(pid), flags) {
        Ok(WaitStatus::Exited(_, code)) => Some(match code {
            120 => "the container's init was never released".to_string(),
            121 => "the container's init could not make its mounts private".to_string(),
            122 => "the container's init could not set its hostname".to_string(),
            123 => "the container's init could not set up fd 3".to_string(),
            127 => "exec of the payload failed (wrong path?)".to_string(),
            c => format!("the payload exited with status {c}"),
        }),
        Ok(WaitStatus::Signaled(_, sig, _)) => Some(format!("the payload was killed by {sig}")),
        _ => None,
    }
}

/// What has come through the status pipe so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Status {
    Incomplete,
    /// Ready; with the payload's CLOCK_MONOTONIC at entry if it sent one.
    Ready(Option<u64>),
}

/// Our payload writes "<CLOCK_MONOTONIC ns>\n" on entry and, without a network, one more byte
/// when ready. Any other first byte is a foreign payload's ready byte (no entry time).
pub fn parse_status(buf: &[u8]) -> Status {
    match buf.first() {
        None => Status::Incomplete,
        Some(b) if b.is_ascii_digit() => match parse_entry(buf) {
            Some(t) if buf.len() > buf.iter().position(|&c| c == b'\n').unwrap_or(0) + 1 => {
                Status::Ready(Some(t))
            }
            _ => Status::Incomplete,
        },
        Some(_) => Status::Ready(None),
    }
}

/// The entry time line, once complete.
pub fn parse_entry(buf: &[u8]) -> Option<u64> {
    let end = buf.iter().position(|&c| c == b'\n')?;
    std::str::from_utf8(&buf[..end]).ok()?.parse().ok()
}

/// Waits for the ready byte (no network). Returns when it arrived and the entry time.
pub fn read_ready(status: &OwnedFd, pid: Pid, timeout: Duration) -> Result<(Instant, Option<u64>)> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![];
    loop {
        if !read_some(status, &mut buf, pid, deadline)? {
            bail!(
                "the payload closed its status pipe before it was ready{}",
                exited(pid).map(|w| format!(" ({w})")).unwrap_or_default()
            );
        }
        if let Status::Ready(t) = parse_status(&buf) {
            return Ok((Instant::now(), t));
        }
    }
}

/// After a networked payload answered: its entry time, which it wrote before listening.
/// `None` from a payload that sends none.
pub fn read_entry(status: &OwnedFd, pid: Pid, wait: Duration) -> Result<Option<u64>> {
    let deadline = Instant::now() + wait;
    let mut buf = vec![];
    while Instant::now() < deadline {
        match read_some(status, &mut buf, pid, deadline) {
            Ok(true) => {}
            Ok(false) | Err(_) => break,
        }
        if let Some(t) = parse_entry(&buf) {
            return Ok(Some(t));
        }
    }
    Ok(parse_entry(&buf))
}

/// Appends what the pipe has; waits in short slices for stop requests and the child's death.
/// `false` at end of file.
fn read_some(fd: &OwnedFd, buf: &mut Vec<u8>, pid: Pid, deadline: Instant) -> Result<bool> {
    loop {
        if crate::cleanup::stop_requested() {
            bail!("interrupted");
        }
        let now = Instant::now();
        if now >= deadline {
            bail!(
                "the payload was not ready in time{}",
                exited(pid).map(|w| format!(" ({w})")).unwrap_or_default()
            );
        }
        let slice = (deadline - now).min(Duration::from_millis(50));
        let mut pfd = libc::pollfd {
            fd: fd.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, valid for the call.
        let n = unsafe { libc::poll(&mut pfd, 1, slice.as_millis().max(1) as i32) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("poll on the payload's status pipe");
        }
        if n == 0 {
            continue;
        }
        let mut chunk = [0u8; 64];
        match nix::unistd::read(fd, &mut chunk) {
            Ok(0) => return Ok(false),
            Ok(k) => {
                buf.extend_from_slice(&chunk[..k]);
                return Ok(true);
            }
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => continue,
            Err(e) => return Err(anyhow!("reading the payload's status pipe: {e}")),
        }
    }
}
