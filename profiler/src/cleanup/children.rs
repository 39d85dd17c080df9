//! Children this process has running and has not reaped (QEMUs): a signal's teardown kills
//! them at once (SIGKILL); PR_SET_PDEATHSIG covers a sudden exit of this process.

use std::sync::Mutex;

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
