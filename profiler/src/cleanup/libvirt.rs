//! libvirt domains a dead owner left running, and their console and log files. `boot --vm
//! libvirt` names each domain `profiler-<pid>-<start>-<i>` ([`super::owner::name`]). Only
//! when libvirtd answers on its socket (one connect: nothing waits when it is not running).

use virt::connect::Connect;

use super::owner;

pub const URI: &str = "qemu:///system";
pub const SOCKET: &str = "/run/libvirt/libvirt-sock";
/// Serial console files of running domains.
pub const RUN_DIR: &str = "/run/profiler/libvirt";
/// libvirtd's per-domain QEMU log, which it keeps after the domain is gone.
pub const LOG_DIR: &str = "/var/log/libvirt/qemu";

/// The reaper's entry: connects only when libvirtd listens; the files go either way.
pub fn reap_stale() {
    if std::os::unix::net::UnixStream::connect(SOCKET).is_ok()
        && let Ok(mut conn) = Connect::open(Some(URI))
    {
        reap(&conn);
        let _ = conn.close();
    } else {
        reap_files();
    }
}

/// Destroys running domains whose owner is gone (a `kill -9` of an earlier run), then their
/// files.
pub fn reap(conn: &Connect) {
    if let Ok(domains) = conn.list_all_domains(0) {
        for d in domains {
            let Ok(name) = d.get_name() else { continue };
            if let Some(o) = owner::of_name(&name).filter(|o| !o.alive())
                && d.is_active().unwrap_or(false)
                && d.destroy().is_ok()
            {
                eprintln!(
                    "profiler: destroyed libvirt domain {name}, left running by pid {}",
                    o.pid
                );
            }
        }
    }
    reap_files();
}

fn reap_files() {
    for (dir, suffix) in [(RUN_DIR, ".console"), (LOG_DIR, ".log")] {
        let Ok(dir) = std::fs::read_dir(dir) else {
            continue;
        };
        for f in dir.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(suffix) else {
                continue;
            };
            if owner::of_name(stem).is_some_and(|o| !o.alive()) {
                let _ = std::fs::remove_file(f.path());
            }
        }
    }
}
