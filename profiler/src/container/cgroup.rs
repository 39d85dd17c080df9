//! One cgroup v2 directory per container, `profiler-<lab id>-<n>`, under the cgroup v2 root:
//! /sys/fs/cgroup on a unified host, /sys/fs/cgroup/unified (or wherever cgroup2 is mounted)
//! on a hybrid one.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::unistd::Pid;

const PREFIX: &str = "profiler-";

/// The cgroup v2 hierarchy's mount point, checked writable.
pub fn root() -> Result<PathBuf> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let Some(root) = cgroup2_mount(&mountinfo) else {
        bail!(
            "no cgroup v2 hierarchy is mounted (/sys/fs/cgroup is cgroup v1): containers need one, \
             e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`"
        );
    };
    let procs = root.join("cgroup.procs");
    nix::unistd::access(&procs, nix::unistd::AccessFlags::W_OK).map_err(|e| {
        anyhow!(
            "the cgroup v2 hierarchy at {} is not writable ({e}): containers need to create cgroups",
            root.display()
        )
    })?;
    Ok(root)
}

/// The cgroup2 mount point from /proc/self/mountinfo; /sys/fs/cgroup itself first.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    let mounts: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split(' ').next()? == "cgroup2").then_some(pre.split(' ').nth(4)?)
        })
        .collect();
    mounts
        .iter()
        .find(|m| **m == "/sys/fs/cgroup")
        .or_else(|| mounts.iter().find(|m| m.starts_with("/sys/fs/cgroup/")))
        .or(mounts.first())
        .map(PathBuf::from)
}

/// Creates the container's cgroup and moves `pid` into it.
pub fn create(root: &Path, name: &str, pid: Pid) -> Result<PathBuf> {
    let dir = root.join(name);
    std::fs::create_dir(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
    let procs = dir.join("cgroup.procs");
    if let Err(e) = std::fs::write(&procs, pid.to_string()) {
        let _ = std::fs::remove_dir(&dir);
        return Err(anyhow!("writing pid {pid} to {}: {e}", procs.display()));
    }
    Ok(dir)
}

/// Removes a cgroup whose processes are dead or dying; kills what is left first.
pub fn remove(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    // An exiting task leaves its cgroup a moment after waitpid returns: retry EBUSY briefly.
    for attempt in 0..200 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                if attempt == 10 {
                    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => return Err(anyhow!("removing cgroup {}: {e}", dir.display())),
        }
    }
    bail!("removing cgroup {}: still busy after 1 s", dir.display())
}

/// The name of a `run --env native` workload's cgroup: its owner (this process, pid and
/// start time, so a reused pid is no owner) and the workload's pid.
pub fn run_name(owner: &crate::cleanup::Owner, workload: u32) -> String {
    format!("{PREFIX}run-{}-{}-{workload}", owner.pid, owner.start)
}

/// What a cgroup name of ours says about who owns it.
#[derive(Debug, PartialEq, Eq)]
enum Kind<'a> {
    /// `profiler-<lab id>-<n>`: a container of a lab (`boot --container native`, density).
    Lab(&'a str),
    /// `profiler-run-<pid>-<start>-<workload pid>`: a `run --env native` workload's.
    Run(crate::cleanup::Owner),
}

fn kind(name: &str) -> Option<Kind<'_>> {
    let rest = name.strip_prefix(PREFIX)?;
    let parts: Vec<&str> = rest.split('-').collect();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match parts[..] {
        [id, n] if !id.is_empty() && digits(n) => Some(Kind::Lab(id)),
        ["run", pid, start, child] if digits(child) => Some(Kind::Run(crate::cleanup::Owner {
            pid: pid.parse().ok()?,
            start: start.parse().ok()?,
        })),
        _ => None,
    }
}

/// The lab id in a `profiler-<id>-<n>` name.
#[cfg(test)]
fn id_of(name: &str) -> Option<&str> {
    match kind(name)? {
        Kind::Lab(id) => Some(id),
        Kind::Run(_) => None,
    }
}

/// Our cgroups under `root` (for tests and reaping).
pub fn leftovers(root: &Path) -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(root) else {
        return vec![];
    };
    let mut v: Vec<PathBuf> = dir
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().and_then(kind).is_some())
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// Whether a cgroup of ours belongs to no one: a lab's whose lab is gone, a run's whose owner
/// died. `profiler-run-<pid>` (the name before owners were in it) is a lab `run`'s container
/// or a workload's; it is stale when neither that lab nor that pid is alive.
fn stale(name: &str, live_labs: &[String]) -> bool {
    let lab_live = |id: &str| live_labs.iter().any(|l| l == id);
    match kind(name) {
        Some(Kind::Lab("run")) => {
            let pid = name.rsplit('-').next().unwrap_or_default();
            !lab_live("run") && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        }
        Some(Kind::Lab(id)) => !lab_live(id),
        Some(Kind::Run(owner)) => !owner.alive(),
        None => false,
    }
}

/// Removes cgroups left by a killed profiler (see [`stale`]), killing what runs in them.
pub fn reap_stale(root: &Path, live_labs: &[String]) {
    for dir in leftovers(root) {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if stale(&name, live_labs) {
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
            match remove(&dir) {
                Ok(()) => eprintln!("profiler: removed stale cgroup {}", dir.display()),
                Err(e) => eprintln!("profiler: {e:#}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_on_unified_and_hybrid_hosts() {
        let unified = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup2_mount(unified), Some("/sys/fs/cgroup".into()));
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                      32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(hybrid), Some("/sys/fs/cgroup/unified".into()));
        let v1 = "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n";
        assert_eq!(cgroup2_mount(v1), None);
    }

    #[test]
    fn cgroup_names_carry_the_lab_id() {
        assert_eq!(id_of("profiler-3-0"), Some("3"));
        assert_eq!(id_of("profiler-a1-17"), Some("a1"));
        assert_eq!(id_of("profiler-3-x"), None);
        assert_eq!(id_of("other-3-0"), None);
    }

    #[test]
    fn run_cgroups_carry_their_owner() {
        let me = crate::cleanup::Owner::me();
        let name = run_name(&me, 42);
        assert_eq!(kind(&name), Some(Kind::Run(me.clone())));
        assert_eq!(id_of(&name), None, "a run's cgroup is no lab's");
        assert!(!stale(&name, &[]), "my own run's cgroup is not stale");
        let dead = crate::cleanup::Owner {
            start: me.start + 1,
            ..me
        };
        assert!(stale(&run_name(&dead, 42), &[]));
        // The older `profiler-run-<workload pid>`: stale once that pid is gone, unless a lab
        // `run` owns it.
        let mine = format!("profiler-run-{}", std::process::id());
        assert!(!stale(&mine, &[]));
        assert!(stale("profiler-run-4194305", &[]), "above pid_max: dead");
        assert!(!stale("profiler-run-4194305", &["run".into()]));
        assert!(stale("profiler-7-0", &[]) && !stale("profiler-7-0", &["7".into()]));
        assert!(!stale("profiler-run-x-y-z", &[]) && kind("profiler-run-x-y-z").is_none());
    }
}
