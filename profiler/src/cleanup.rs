//! Everything the tool creates is removed on every exit path. Drop handles normal exit and
//! panics; this module handles SIGINT/SIGTERM/SIGHUP: a dedicated thread waits for them and
//! tears down what this process owns before exiting. After a `kill -9`, `lab::reap_stale` at the
//! next start finds what the dead owner left.

use std::sync::{
    Mutex,
    atomic::{AtomicBool, Ordering},
};

use nix::sys::signal::{SigSet, Signal};

static OWNED_LABS: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Set by a command that reports what it has on the first signal (trace); a second signal
/// still tears down and exits at once.
static INTERRUPTIBLE: AtomicBool = AtomicBool::new(false);
static STOP: AtomicBool = AtomicBool::new(false);

/// The caller will poll [`stop_requested`] and end cleanly on the first signal.
pub fn set_interruptible() {
    INTERRUPTIBLE.store(true, Ordering::SeqCst);
}

pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Must run first in `main`, before any other thread exists, so every thread inherits the mask.
pub fn install_signal_teardown() {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    if set.thread_block().is_err() {
        return;
    }
    std::thread::spawn(move || {
        let mut sig = set.wait().unwrap_or(Signal::SIGTERM);
        if INTERRUPTIBLE.load(Ordering::SeqCst) {
            STOP.store(true, Ordering::SeqCst);
            sig = set.wait().unwrap_or(Signal::SIGTERM);
        }
        teardown_owned();
        eprintln!("profiler: {sig}: lab torn down, exiting");
        std::process::exit(128 + sig as i32);
    });
}

pub fn own_lab(id: &str) {
    OWNED_LABS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(id.to_string());
}

pub fn disown_lab(id: &str) {
    OWNED_LABS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|x| x != id);
}

fn teardown_owned() {
    let ids = std::mem::take(&mut *OWNED_LABS.lock().unwrap_or_else(|e| e.into_inner()));
    for id in ids {
        if let Err(e) = crate::lab::remove(&id) {
            eprintln!("profiler: tearing down lab {id}: {e:#}");
        }
    }
}
