//! Servers the tool starts for a workload (nginx for `web`), wherever the workload runs: the
//! host's namespaces, or a lab namespace as a native container. One lifecycle for every kind:
//! a work directory with an owner-carrying name (config, pid file, logs, data), the server
//! in a cgroup of its own (its CPU time, and every process it forks killed with it), stopped
//! and removed on every exit path; what a `kill -9` left goes at the next command's start
//! (the master dies with us by PDEATHSIG, its workers by the cgroup reaper, the directory by
//! [`reap_stale`]).

pub mod nginx;

use std::{
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};

use crate::cleanup::Owner;

/// Work directories are `<tmp>/profiler-srv-<kind>-<pid>-<start>-<i>`.
pub const DIR_PREFIX: &str = "profiler-srv-";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Where a process runs: the host's namespaces, or a named lab network namespace with its own
/// mount, UTS and IPC namespaces too (a native container, as `run --env native` makes one).
#[derive(Clone, Debug)]
pub enum Place {
    Host,
    Container(String),
    /// A lab namespace, nothing else unshared (the client side of a lab).
    Netns(String),
}

impl Place {
    /// Makes `cmd` start in this place (setns, unshare in the child before exec).
    pub fn apply(&self, cmd: &mut Command) -> Result<()> {
        use std::os::unix::process::CommandExt as _;
        let (ns, container) = match self {
            Place::Host => return Ok(()),
            Place::Container(ns) => (ns, true),
            Place::Netns(ns) => (ns, false),
        };
        let f = std::fs::File::open(crate::lab::netns::path(ns))
            .with_context(|| format!("no lab namespace {ns}"))?;
        let fd: OwnedFd = f.into();
        // SAFETY: setns and unshare are async-signal-safe; the fd is kept alive by the closure.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if container
                    && libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC)
                        != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// Runs `f` on a thread in this place's network namespace.
    pub fn run_in<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        match self {
            Place::Host => f(),
            Place::Container(ns) | Place::Netns(ns) => crate::lab::netns::run_in(ns, f),
        }
    }
}

/// A server's work directory, named by its owner; removed when dropped or on a signal.
pub struct Workdir {
    pub path: PathBuf,
    key: String,
}

impl Workdir {
    pub fn new(kind: &str) -> Result<Workdir> {
        let me = Owner::me();
        let name = format!(
            "{DIR_PREFIX}{kind}-{}-{}-{}",
            me.pid,
            me.start,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        // Workers drop root (nginx: `nobody`): they read the document root.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        let key = format!("server-dir:{}", path.display());
        let p = path.clone();
        crate::cleanup::on_signal(&key, move || {
            let _ = std::fs::remove_dir_all(&p);
        });
        Ok(Workdir { path, key })
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
        crate::cleanup::forget(&self.key);
    }
}

/// The owner a work directory's name carries.
fn dir_owner(name: &str) -> Option<Owner> {
    let rest = name.strip_prefix(DIR_PREFIX)?;
    let mut parts = rest.rsplitn(4, '-');
    let _i: u32 = parts.next()?.parse().ok()?;
    let start = parts.next()?.parse().ok()?;
    let pid = parts.next()?.parse().ok()?;
    let kind = parts.next()?;
    (!kind.is_empty()).then_some(Owner { pid, start })
}

/// Removes the work directories of dead owners (their processes went with their cgroups).
pub fn reap_stale() {
    let tmp = std::env::temp_dir();
    for e in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(owner) = dir_owner(&name)
            && !owner.alive()
            && std::fs::remove_dir_all(e.path()).is_ok()
        {
            eprintln!(
                "profiler: removed stale server directory {}",
                e.path().display()
            );
        }
    }
}

/// A running server: its main process (our child, dying with us) and the cgroup every process
/// of it runs in.
pub struct Server {
    pub name: String,
    child: Option<Child>,
    pub pid: u32,
    pub cgroup: PathBuf,
    key: String,
}

impl Server {
    /// Starts `cmd` in `place`, inside a new cgroup the child joins before it execs (so
    /// nothing it forks runs outside it).
    pub fn spawn(name: &str, mut cmd: Command, place: &Place) -> Result<Server> {
        use std::os::unix::process::CommandExt as _;
        let root = crate::container::cgroup::root()?;
        let me = Owner::me();
        // The workload index of `run_name` is ours (a counter), not the child's pid: the child
        // joins before it exists as a pid we know.
        let cg = root.join(crate::container::cgroup::run_name(
            &me,
            1_000_000 + NEXT.fetch_add(1, Ordering::Relaxed),
        ));
        std::fs::create_dir(&cg).with_context(|| format!("creating cgroup {}", cg.display()))?;
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(cg.join("cgroup.procs"))
            .with_context(|| format!("opening {}/cgroup.procs", cg.display()));
        let procs: OwnedFd = match procs {
            Ok(f) => f.into(),
            Err(e) => {
                let _ = std::fs::remove_dir(&cg);
                return Err(e);
            }
        };
        let key = format!("server:{}", cg.display());
        let c2 = cg.clone();
        crate::cleanup::on_signal(&key, move || {
            let _ = std::fs::write(c2.join("cgroup.kill"), "1");
            let _ = crate::container::cgroup::remove(&c2);
        });
        // SAFETY: write is async-signal-safe; "0" moves the calling (child) process.
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let undo = |e: anyhow::Error| {
            let _ = crate::container::cgroup::remove(&cg);
            crate::cleanup::forget(&key);
            e
        };
        place.apply(&mut cmd).map_err(undo)?;
        let child = crate::cleanup::die_with_parent(&mut cmd)
            .spawn()
            .with_context(|| format!("starting {name}"))
            .map_err(undo)?;
        Ok(Server {
            name: name.to_string(),
            pid: child.id(),
            child: Some(child),
            cgroup: cg,
            key,
        })
    }

    /// CPU time of every process in the server's cgroup so far, µs.
    pub fn cpu_usec(&self) -> Option<u64> {
        cgroup_cpu_usec(&self.cgroup)
    }

    /// Whether the main process has exited (and why).
    pub fn exited(&mut self) -> Option<String> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(st)) => Some(st.to_string()),
            _ => None,
        }
    }

    /// SIGTERM (nginx, MariaDB: a fast shutdown), up to `grace`, then everything in the cgroup
    /// is killed; the cgroup is removed.
    pub fn stop(&mut self, grace: Duration) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: our own child, not yet reaped, so the pid is still its.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            let end = Instant::now() + grace;
            while Instant::now() < end {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = std::fs::write(self.cgroup.join("cgroup.kill"), "1");
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::write(self.cgroup.join("cgroup.kill"), "1");
        if let Err(e) = crate::container::cgroup::remove(&self.cgroup) {
            eprintln!("profiler: {e:#}");
        }
        crate::cleanup::forget(&self.key);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

/// `usage_usec` of a cgroup v2 directory's cpu.stat.
pub fn cgroup_cpu_usec(dir: &Path) -> Option<u64> {
    let s = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until `ready` answers true (polled every 5 ms in `place`), the server exits, or
/// `timeout` passes.
pub fn wait_ready(
    server: &mut Server,
    place: &Place,
    timeout: Duration,
    ready: impl Fn() -> bool + Send + Sync + Clone + 'static,
    log: &Path,
) -> Result<Duration> {
    let t0 = Instant::now();
    loop {
        let r = ready.clone();
        if place.run_in(move || Ok(r()))? {
            return Ok(t0.elapsed());
        }
        // The line that says why (nginx ends a failed bind with "still could not bind()").
        let tail = || {
            std::fs::read_to_string(log)
                .map(|s| {
                    let mut lines = s.lines().rev();
                    let last = s.lines().last().unwrap_or("");
                    lines
                        .find(|l| l.contains("failed"))
                        .unwrap_or(last)
                        .to_string()
                })
                .unwrap_or_default()
        };
        if let Some(st) = server.exited() {
            return Err(anyhow!(
                "{} exited ({st}) before it answered: {}",
                server.name,
                tail()
            ));
        }
        if crate::cleanup::stop_requested() {
            return Err(anyhow!("{}", crate::cleanup::interrupted()));
        }
        if t0.elapsed() > timeout {
            return Err(anyhow!(
                "{} did not answer within {timeout:?}: {}",
                server.name,
                tail()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_directories_carry_their_owner() {
        let me = Owner::me();
        let name = format!("{DIR_PREFIX}nginx-{}-{}-3", me.pid, me.start);
        assert_eq!(dir_owner(&name), Some(me.clone()));
        let kind_with_dash = format!("{DIR_PREFIX}my-db-{}-{}-0", me.pid, me.start);
        assert_eq!(dir_owner(&kind_with_dash), Some(me));
        for bad in [
            "profiler-srv-",
            "profiler-srv-1-2-3",
            "profiler-srv-x-1-2",
            "profiler-srv-x-a-2-3",
            "profiler-tar-1.tar",
        ] {
            assert_eq!(dir_owner(bad), None, "{bad}");
        }
    }

    #[test]
    fn cpu_stat_usage_is_read() {
        let d = std::env::temp_dir().join(format!("profiler-test-cpustat-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("cpu.stat"), "usage_usec 1234\nuser_usec 1000\n").unwrap();
        assert_eq!(cgroup_cpu_usec(&d), Some(1234));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
