//! Everything the tool creates is removed on every exit path. Drop handles normal exit and
//! panics; this module handles SIGINT/SIGTERM/SIGHUP: a dedicated thread waits for them, stops
//! new spawns at once ([`stop_requested`]) and tears down what this process owns within 10 s
//! (a second signal: at once), exiting 128 + the signal. After a `kill -9`, [`reap_stale`] at
//! the next command's start removes what the dead owner left, and its children died with it
//! ([`die_with_parent`]).
//!
//! This is a floor below the rooms: it names none of them. Rooms register what to undo on a
//! signal ([`on_signal`], [`on_signal_last`]) and how to reap their leftovers ([`Reaper`],
//! registered once by `main` from `profiler::REAPERS`); what needs no room (QEMU processes,
//! Docker, libvirt) it reaps itself.

pub mod children;
pub mod docker;
#[cfg(feature = "libvirt")]
pub mod libvirt;
pub mod owner;
mod qemu;

pub use owner::Owner;

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicI32, Ordering},
    },
    time::{Duration, Instant},
};

use nix::sys::signal::{SigSet, Signal};

type Hook = Box<dyn FnOnce() + Send>;
/// What to undo on a signal (containers, VMs), by a key the owner removes them with.
static HOOKS: Mutex<Vec<(String, Hook)>> = Mutex::new(Vec::new());
/// What to undo after every [`HOOKS`] entry ran (labs: containers and VMs may sit in them).
static LAST_HOOKS: Mutex<Vec<(String, Hook)>> = Mutex::new(Vec::new());
/// How long the undo hooks may take together on a signal.
const HOOK_LIMIT: Duration = Duration::from_secs(10);

/// Runs `undo` if a signal ends the process before [`forget`] is called with `key`.
pub fn on_signal(key: &str, undo: impl FnOnce() + Send + 'static) {
    HOOKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((key.to_string(), Box::new(undo)));
}

/// Like [`on_signal`], run after every hook [`on_signal`] registered has ended (labs).
pub fn on_signal_last(key: &str, undo: impl FnOnce() + Send + 'static) {
    LAST_HOOKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((key.to_string(), Box::new(undo)));
}

pub fn forget(key: &str) {
    for hooks in [&HOOKS, &LAST_HOOKS] {
        hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(k, _)| k != key);
    }
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
    children::kill_all();
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

/// How a room removes what a killed run of it left (its owner is dead).
#[derive(Clone, Copy)]
pub struct Reaper {
    pub what: &'static str,
    pub reap: fn(),
}

static REAPERS: Mutex<Vec<Reaper>> = Mutex::new(Vec::new());

/// The rooms' reapers [`reap_stale`] runs, in order (`main` registers `profiler::REAPERS`).
pub fn register_reapers(reapers: &[Reaper]) {
    let mut r = REAPERS.lock().unwrap_or_else(|e| e.into_inner());
    for x in reapers {
        if !r.iter().any(|y| y.what == x.what) {
            r.push(*x);
        }
    }
}

/// The one reaper, which every command runs at its start: removes what a run of this tool left
/// when it was killed (its owner, pid + start time, is dead): QEMU processes (by the owner in
/// their `-name`), then the registered rooms' leftovers (labs, a half-built one too; cgroups of
/// every name; temp files and initramfs copies; the injector's TC filters), then Docker
/// containers and images labelled by owner (when a daemon answers) and libvirt domains named by
/// owner (when libvirtd answers). Root only; silent unless it removes something; a few ms when
/// there is nothing to remove.
pub fn reap_stale() {
    if !nix::unistd::geteuid().is_root() || std::env::var_os(WORKLOAD_ENV).is_some() {
        return;
    }
    // Docker's round trips (a few ms) overlap the rest.
    let docker = std::thread::Builder::new()
        .name("reap-docker".into())
        .spawn(docker::reap_stale);
    qemu::reap_stale();
    let reapers = REAPERS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for r in reapers {
        (r.reap)();
    }
    #[cfg(feature = "libvirt")]
    libvirt::reap_stale();
    match docker {
        Ok(t) => {
            let _ = t.join();
        }
        Err(_) => docker::reap_stale(),
    }
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

/// Runs every undo hook at once (each may talk to a daemon that hangs: bounded by `limit`
/// together), then the last ones (labs) the same way in what is left of `limit`.
fn teardown_owned(limit: Duration) {
    let end = Instant::now() + limit;
    let hooks = std::mem::take(&mut *HOOKS.lock().unwrap_or_else(|e| e.into_inner()));
    run_hooks(hooks, end);
    // Labs get their second even when a daemon's hook used up the time.
    let last = std::mem::take(&mut *LAST_HOOKS.lock().unwrap_or_else(|e| e.into_inner()));
    run_hooks(last, end.max(Instant::now() + Duration::from_secs(1)));
}

fn run_hooks(hooks: Vec<(String, Hook)>, end: Instant) {
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
    while !pending.is_empty() {
        let left = end.saturating_duration_since(Instant::now());
        match wait.recv_timeout(left) {
            Ok(k) => pending.retain(|p| *p != k),
            Err(_) => break,
        }
    }
    for key in pending {
        say(&format!(
            "undoing {key} took too long: left for the next run to reap"
        ));
    }
}
