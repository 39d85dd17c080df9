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
type Hook = Box<dyn FnOnce() + Send>;
/// Other things to undo on a signal (containers, VMs), by a key the owner removes them with.
static HOOKS: Mutex<Vec<(String, Hook)>> = Mutex::new(Vec::new());
/// How long one undo hook may take on a signal.
const HOOK_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `undo` if a signal ends the process before [`forget`] is called with `key`.
pub fn on_signal(key: &str, undo: impl FnOnce() + Send + 'static) {
    HOOKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((key.to_string(), Box::new(undo)));
}

pub fn forget(key: &str) {
    HOOKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(k, _)| k != key);
}
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
    let hooks = std::mem::take(&mut *HOOKS.lock().unwrap_or_else(|e| e.into_inner()));
    for (key, undo) in hooks {
        // A hook talks to daemons (libvirtd, dockerd) that may hang: bounded, so the signal
        // still ends the process and the labs below still go.
        let (done, wait) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            undo();
            let _ = done.send(());
        });
        if wait.recv_timeout(HOOK_LIMIT).is_err() {
            eprintln!(
                "profiler: undoing {key} took over {} s: left for the next run to reap",
                HOOK_LIMIT.as_secs()
            );
        }
    }
    let ids = std::mem::take(&mut *OWNED_LABS.lock().unwrap_or_else(|e| e.into_inner()));
    for id in ids {
        if let Err(e) = crate::lab::remove(&id) {
            eprintln!("profiler: tearing down lab {id}: {e:#}");
        }
    }
}

/// A process, identified beyond its pid by its start time (pids are reused).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Owner {
    pub pid: u32,
    pub start: u64,
}

impl Owner {
    pub fn me() -> Owner {
        let pid = std::process::id();
        Owner {
            pid,
            start: start_time(pid).unwrap_or(0),
        }
    }

    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start)
    }
}

/// Field 22 of /proc/PID/stat: start time in clock ticks since boot; None once it is dead.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after its ')' are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    // A zombie (killed, not yet reaped) owns nothing any more.
    if rest.starts_with('Z') || rest.starts_with('X') {
        return None;
    }
    rest.split(' ').nth(19)?.parse().ok()
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.pid, self.start)
    }
}

impl std::str::FromStr for Owner {
    type Err = ();
    fn from_str(s: &str) -> Result<Owner, ()> {
        let (pid, start) = s.split_once(':').ok_or(())?;
        Ok(Owner {
            pid: pid.parse().map_err(|_| ())?,
            start: start.parse().map_err(|_| ())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn my_start_time_is_readable_and_i_am_alive() {
        let me = Owner::me();
        assert!(me.start > 0);
        assert!(me.alive());
        let ghost = Owner {
            pid: me.pid,
            start: me.start + 1,
        };
        assert!(!ghost.alive(), "a reused pid must not pass for the owner");
    }

    #[test]
    fn owner_round_trips_through_a_label() {
        let me = Owner::me();
        assert_eq!(me.to_string().parse::<Owner>(), Ok(me));
        assert!("garbage".parse::<Owner>().is_err());
    }
}
