//! Named network namespaces, as `ip netns` keeps them: a file in /run/netns bind-mounted onto
//! the namespace, so it lives without a process in it and other tools (`ip netns exec`) see it.
//! A namespace is per thread: entering one only ever moves the calling thread.

use std::{
    fs::File,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow};
use nix::{
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns, unshare},
};

pub const NETNS_DIR: &str = "/run/netns";

pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// All named namespaces, e.g. for finding a prefix's leftovers.
pub fn list() -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Creates the named namespace (with loopback up). Fails if the name is taken.
pub fn create(name: &str) -> Result<()> {
    std::fs::create_dir_all(NETNS_DIR).with_context(|| format!("creating {NETNS_DIR}"))?;
    let target = path(name);
    // create_new: refuse to clobber another namespace of the same name.
    File::options()
        .write(true)
        .create_new(true)
        .open(&target)
        .with_context(|| format!("creating {} (name taken?)", target.display()))?;
    let name = name.to_string();
    let result = std::thread::spawn(move || -> Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
        let tid = nix::unistd::gettid();
        let src = format!("/proc/self/task/{tid}/ns/net");
        mount(
            Some(src.as_str()),
            &path(&name),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("bind-mounting the namespace onto {}", path(&name).display()))?;
        // SAFETY: a plain netlink request; loopback is ifindex 1 in a new namespace.
        unsafe { aya::netlink_set_link_up(1) }.map_err(|e| anyhow!("bringing up loopback: {e}"))?;
        Ok(())
    })
    .join()
    .map_err(|_| anyhow!("netns creation thread panicked"))?;
    if result.is_err() {
        let _ = delete(&name_of(&target));
    }
    result
}

fn name_of(p: &Path) -> String {
    p.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// Removes the named namespace; the kernel frees it (and its devices) once nothing holds it.
/// Missing is not an error.
pub fn delete(name: &str) -> Result<()> {
    let target = path(name);
    if !target.exists() {
        return Ok(());
    }
    let _ = umount2(&target, MntFlags::MNT_DETACH);
    std::fs::remove_file(&target).with_context(|| format!("removing {}", target.display()))
}

/// Moves the calling thread into the named namespace. Only for threads that stay there
/// (workload threads); otherwise use [`run_in`].
pub fn enter(name: &str) -> Result<()> {
    let f = File::open(path(name)).with_context(|| format!("no lab namespace {name}"))?;
    setns(f.as_fd(), CloneFlags::CLONE_NEWNET).with_context(|| format!("setns into {name}"))
}

/// Runs `f` on a fresh thread inside the named namespace and returns its result.
/// Sockets (netlink included) created by `f` stay bound to that namespace afterwards.
pub fn run_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let name = name.to_string();
    std::thread::spawn(move || {
        enter(&name)?;
        f()
    })
    .join()
    .map_err(|_| anyhow!("thread in namespace panicked"))?
}
