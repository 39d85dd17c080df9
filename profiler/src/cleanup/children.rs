//! Children this process has running and has not reaped (QEMUs): a signal's teardown kills
//! them at once (SIGKILL); PR_SET_PDEATHSIG covers a sudden exit of this process.

use std::{sync::Mutex, time::Instant};

static CHILDREN: Mutex<Vec<i32>> = Mutex::new(Vec::new());

pub fn add(pid: i32) {
    CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
}

/// Before reaping, so a signal never kills a pid that was reaped and reused.
pub fn remove(pid: i32) {
    CHILDREN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|&p| p != pid);
}

pub fn kill_all() {
    for &pid in CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        // SAFETY: the pid is ours and unreaped (removed from the list before reaping).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Blocks until `pid` exits, leaving it unreaped (a zombie) so its pid stays ours; when.
pub fn wait_exit(pid: i32) -> Instant {
    loop {
        // SAFETY: a zeroed siginfo_t is valid for waitid to fill.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: plain syscall on our own child.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Instant::now();
        }
    }
}
