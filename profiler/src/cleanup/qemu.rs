//! QEMU processes a dead owner left running. Every QEMU this tool spawns carries its owner in
//! `-name profiler-<pid>-<start>-<i>,...` ([`super::owner::name`]); PR_SET_PDEATHSIG kills it
//! with its spawner, so this is the backstop for a QEMU that outlived it (a death signal lost
//! to a race, or a qemu another tool re-parented). libvirt's QEMU (`-name guest=...`) is
//! libvirtd's to stop: [`super::libvirt`] destroys its domain.

use super::owner::{self, Owner};

/// Kills (SIGKILL) every `qemu-system-*` whose `-name` names a dead owner. A /proc scan that
/// reads one small `comm` file per process: well under a millisecond on an idle host.
pub fn reap_stale() {
    for (pid, owner) in ours() {
        if owner.alive() {
            continue;
        }
        // SAFETY: plain kill(2) of a process we just read; a pid reused in between would have
        // to be another qemu-system carrying a dead owner's name.
        if unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) } == 0 {
            eprintln!(
                "profiler: killed QEMU {pid}, left running by pid {} (its owner is gone)",
                owner.pid
            );
        }
    }
}

/// (pid, owner) of the running QEMU processes this tool started (plain `-name`).
fn ours() -> Vec<(u32, Owner)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with(b"qemu-system"))
        })
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            Some((pid, owner_in(&cmdline)?))
        })
        .collect()
}

/// The owner in a QEMU command line's `-name profiler-<pid>-<start>-<i>[,opts]`.
fn owner_in(cmdline: &[u8]) -> Option<Owner> {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let at = args.iter().position(|a| *a == b"-name")?;
    let value = std::str::from_utf8(args.get(at + 1)?).ok()?;
    owner::of_name(value.split(',').next()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_comes_from_the_name_option() {
        let me = Owner::me();
        let line = format!(
            "qemu-system-x86_64\0-accel\0tcg\0-name\0{},debug-threads=on\0-m\0256\0",
            owner::name(&me, 2)
        );
        assert_eq!(owner_in(line.as_bytes()), Some(me));
        // libvirt's, and one from before names carried owners: not ours to kill.
        for other in [
            "qemu-system-x86_64\0-name\0guest=profiler-1-2-0,debug-threads=on\0",
            "qemu-system-x86_64\0-name\0profiler,debug-threads=on\0",
            "qemu-system-x86_64\0-m\x00256\0",
        ] {
            assert_eq!(owner_in(other.as_bytes()), None, "{other:?}");
        }
    }

    #[test]
    fn a_scan_finds_no_qemu_of_mine() {
        let me = Owner::me();
        assert!(ours().iter().all(|(_, o)| *o != me));
    }
}
