//! Everything the tool creates is removed on every exit path. Drop handles normal exit and
//! panics; this module handles SIGINT/SIGTERM/SIGHUP: a dedicated thread waits for them, stops
//! new spawns at once ([`stop_requested`]) and tears down what this process owns within 10 s
//! (a second signal: at once), exiting 128 + the signal. After a `kill -9`, [`reap_stale`] at
//! the next command's start removes what the dead owner left, and its children died with it
//! ([`die_with_parent`]).

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicI32, Ordering},
    },
    time::{Duration, Instant},
};

use nix::sys::signal::{SigSet, Signal};

static OWNED_LABS: Mutex<Vec<String>> = Mutex::new(Vec::new());
type Hook = Box<dyn FnOnce() + Send>;
/// Other things to undo on a signal (containers, VMs), by a key the owner removes them with.
static HOOKS: Mutex<Vec<(String, Hook)>> = Mutex::new(Vec::new());
/// How long the undo hooks may take together on a signal.
const HOOK_LIMIT: Duration = Duration::from_secs(10);

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
/// The first signal received (0: none).
static SIGNALLED: AtomicI32 = AtomicI32::new(0);
/// After the first signal, how long an interruptible command has to end by itself before the
/// signal thread tears down and exits for it...
const GRACE: Duration = Duration::from_secs(8);
/// ...and how long that teardown, or one after a second signal, may take: 10 s in all.
const FORCED_LIMIT: Duration = Duration::from_secs(2);

/// The caller will poll [`stop_requested`] and end cleanly on the first signal.
pub fn set_interruptible() {
    INTERRUPTIBLE.store(true, Ordering::SeqCst);
}

pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Asks every loop that polls [`stop_requested`] to end, as a signal does (e.g. when a spawn
/// failed and the rest must not go on).
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// The signal that ended or is ending this run (SIGINT, SIGTERM, SIGHUP), if any.
pub fn signalled() -> Option<Signal> {
    Signal::try_from(SIGNALLED.load(Ordering::SeqCst)).ok()
}

/// "interrupted (SIGTERM)": why a loop that polled [`stop_requested`] ended.
pub fn interrupted() -> String {
    match signalled() {
        Some(sig) => format!("interrupted ({sig})"),
        None => "interrupted".into(),
    }
}

/// The shell's convention for a run a signal cut short: 128 + the signal's number.
pub fn exit_code(sig: Signal) -> u8 {
    (128 + sig as i32) as u8
}

/// A named thread, or one line saying why it could not start (resource exhaustion is an
/// error, not a panic).
pub fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<std::thread::JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| thread_error(name, &e))
}

/// The error of a thread that could not start.
pub fn thread_error(name: &str, e: &std::io::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "starting a thread ({name}): {e}; the machine is out of tasks or memory (pid_max, threads-max, ulimit -u)"
    )
}

/// A signal line on stderr; a closed stderr (the parent is gone) must not kill this thread.
fn say(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "profiler: {line}");
}

/// Waits for one of `set`, at most `limit` (forever: None).
fn wait_signal(set: &SigSet, limit: Option<Duration>) -> Option<Signal> {
    let Some(limit) = limit else {
        return set.wait().ok();
    };
    let ts = libc::timespec {
        tv_sec: limit.as_secs() as libc::time_t,
        tv_nsec: limit.subsec_nanos() as libc::c_long,
    };
    // SAFETY: the set and timespec outlive the call; no siginfo is asked for.
    let n = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    Signal::try_from(n).ok()
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
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let sig = wait_signal(&set, None).unwrap_or(Signal::SIGTERM);
            SIGNALLED.store(sig as i32, Ordering::SeqCst);
            // From here on nothing new starts: every spawn loop polls this.
            STOP.store(true, Ordering::SeqCst);
            let limit = if INTERRUPTIBLE.load(Ordering::SeqCst) {
                // The command ends itself (and reports); a second signal, or its grace
                // running out, makes the teardown ours and short.
                let again = wait_signal(&set, Some(GRACE));
                say(&match again {
                    Some(s) => format!("{s} again: tearing down now"),
                    None => format!(
                        "{sig}: still running after {} s, tearing down now",
                        GRACE.as_secs()
                    ),
                });
                FORCED_LIMIT
            } else {
                HOOK_LIMIT
            };
            teardown_bounded(&set, limit);
            say(&format!("{sig}: torn down, exiting"));
            std::process::exit(exit_code(sig).into());
        });
    // Without the thread the signals stay blocked and would be ignored: let them kill.
    if spawned.is_err() {
        let _ = set.thread_unblock();
    }
}

/// [`teardown_owned`] within `limit`, cut short by a further signal.
fn teardown_bounded(set: &SigSet, limit: Duration) {
    crate::boot::qemu::kill_children();
    let (done, wait) = std::sync::mpsc::channel();
    let worker = std::thread::Builder::new().spawn(move || {
        teardown_owned(limit);
        let _ = done.send(());
    });
    if worker.is_err() {
        // No thread to spare: tear down here, unbounded but not skipped.
        teardown_owned(limit);
        return;
    }
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if wait.recv_timeout(Duration::from_millis(20)).is_ok() {
            return;
        }
        if wait_signal(set, Some(Duration::ZERO)).is_some() {
            say("another signal: exiting without waiting for the teardown");
            return;
        }
    }
    say(&format!(
        "teardown took over {} s: the rest is left for the next run to reap",
        limit.as_secs()
    ));
}

/// Set on the workloads this tool runs as its own children: they leave reaping to it.
pub const WORKLOAD_ENV: &str = "PROFILER_WORKLOAD";

/// The one reaper, which every command runs at its start: removes what a run of this tool left
/// when it was killed (its owner, pid + start time, is dead): labs (namespaces and files, a
/// half-built one too), cgroups of every name (`profiler-<lab>-<n>`, `profiler-run-*`), and
/// temp files and initramfs copies in the artefacts cache. (Docker containers and libvirt
/// domains need their daemons: `boot --container docker` and `boot --vm libvirt` reap those.)
/// Root only; silent unless it removes something.
pub fn reap_stale() {
    if !nix::unistd::geteuid().is_root() || std::env::var_os(WORKLOAD_ENV).is_some() {
        return;
    }
    crate::lab::reap_stale();
    if let Ok(root) = crate::container::cgroup::root() {
        let live: Vec<String> = crate::lab::list().into_iter().map(|d| d.id).collect();
        crate::container::cgroup::reap_stale(&root, &live);
    }
    crate::boot::artefacts::reap_stale();
}

/// Makes `cmd`'s child die (SIGKILL) with the thread that spawns it, so a `kill -9` of this
/// process leaves none running: PR_SET_PDEATHSIG, then a look at the parent, which may have
/// died before the flag was set (the child was then already handed to init).
pub fn die_with_parent(cmd: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt as _;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl, getppid and raise are async-signal-safe; nothing here allocates.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::raise(libc::SIGKILL);
            }
            Ok(())
        })
    }
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

/// Runs every undo hook at once (each may talk to a daemon that hangs: bounded by `limit`
/// together), then removes the labs this process owns.
fn teardown_owned(limit: Duration) {
    let hooks = std::mem::take(&mut *HOOKS.lock().unwrap_or_else(|e| e.into_inner()));
    let (done, wait) = std::sync::mpsc::channel();
    let mut pending = Vec::new();
    for (key, undo) in hooks {
        let done = done.clone();
        let k = key.clone();
        let spawned = std::thread::Builder::new().spawn(move || {
            undo();
            let _ = done.send(k);
        });
        match spawned {
            Ok(_) => pending.push(key),
            Err(e) => say(&format!("undoing {key}: {}", thread_error(&key, &e))),
        }
    }
    drop(done);
    let end = Instant::now() + limit;
    while !pending.is_empty() {
        let left = end.saturating_duration_since(Instant::now());
        match wait.recv_timeout(left) {
            Ok(k) => pending.retain(|p| *p != k),
            Err(_) => break,
        }
    }
    for key in pending {
        say(&format!(
            "undoing {key} took over {} s: left for the next run to reap",
            limit.as_secs()
        ));
    }
    let ids = std::mem::take(&mut *OWNED_LABS.lock().unwrap_or_else(|e| e.into_inner()));
    for id in ids {
        if let Err(e) = crate::lab::remove(&id) {
            say(&format!("tearing down lab {id}: {e:#}"));
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
