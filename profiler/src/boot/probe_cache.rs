//! `--accel auto`'s answer (KVM or TCG, and why), kept per kernel, QEMU version and /dev/kvm in
//! the guest's cache directory, so a warm boot does not spend a probe (~10 s here) again. Any
//! of the three changing (a new kernel or kernel build, another QEMU, /dev/kvm of another
//! backend or device) makes the next run probe again; `--probe-again` forces it. A probe cut
//! short (timeout, signal) is not kept.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::qemu::Accel;

/// What the answer depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    /// `uname -r` and `uname -v`: a rebuilt kernel of the same release differs in its build.
    pub kernel: String,
    /// `qemu-system-x86_64 --version`'s first line.
    pub qemu: String,
    /// The KVM backend (vmx, svm, pvm) and /dev/kvm's device number.
    pub kvm: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    key: Key,
    accel: String,
    why: String,
    probed_unix_s: u64,
}

/// The cache file: in the guest's cache directory (`PROFILER_VM_CACHE` moves both).
pub fn path() -> PathBuf {
    super::artefacts::cache_dir().join("kvm-probe.json")
}

impl Key {
    /// This machine's, now.
    pub fn now() -> Key {
        use std::os::unix::fs::MetadataExt as _;
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let kernel = format!(
            "{} {}",
            read("/proc/sys/kernel/osrelease").trim(),
            read("/proc/sys/kernel/version").trim()
        );
        let qemu = std::process::Command::new(super::qemu::QEMU)
            .arg("--version")
            .output()
            .map(|o| {
                let out = String::from_utf8_lossy(&o.stdout).into_owned();
                out.lines().next().unwrap_or("").to_string()
            })
            .unwrap_or_default();
        let dev = std::fs::metadata("/dev/kvm").map_or(0, |m| m.rdev());
        let kvm = format!(
            "{:?} {}:{}",
            crate::kernel::kvm_backend(),
            libc::major(dev),
            libc::minor(dev)
        );
        Key { kernel, qemu, kvm }
    }
}

/// The cached answer for `key`, with how old it is, or None (absent, unreadable, another key).
pub fn lookup(key: &Key) -> Option<(Accel, String, std::time::Duration)> {
    lookup_in(&path(), key)
}

fn lookup_in(p: &std::path::Path, key: &Key) -> Option<(Accel, String, std::time::Duration)> {
    let e: Entry = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
    if &e.key != key {
        return None;
    }
    let accel = match e.accel.as_str() {
        "kvm" => Accel::Kvm,
        "tcg" => Accel::Tcg,
        _ => return None,
    };
    let age = now_unix_s().saturating_sub(e.probed_unix_s);
    Some((accel, e.why, std::time::Duration::from_secs(age)))
}

/// Keeps a probe's answer (a failure to write only costs the next run a probe).
pub fn store(key: Key, accel: Accel, why: &str) {
    store_in(&path(), key, accel, why)
}

fn store_in(p: &std::path::Path, key: Key, accel: Accel, why: &str) {
    let e = Entry {
        key,
        accel: accel.name().into(),
        why: why.into(),
        probed_unix_s: now_unix_s(),
    };
    // An owner-tagged temp, renamed: a kill -9 mid-write leaves what the reaper removes.
    let written = serde_json::to_vec_pretty(&e)
        .map_err(anyhow::Error::from)
        .and_then(|json| super::artefacts::write_atomic(p, &json));
    if let Err(err) = written {
        eprintln!(
            "profiler: could not keep the KVM probe's answer in {}: {err:#}",
            p.display()
        );
    }
}

fn now_unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_kept_for_its_key_only() {
        let dir = std::env::temp_dir().join(format!("probe-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("kvm-probe.json");
        let key = Key {
            kernel: "6.18 #1".into(),
            qemu: "QEMU emulator version 7.2.22".into(),
            kvm: "Pvm 10:232".into(),
        };
        assert!(lookup_in(&file, &key).is_none());
        store_in(&file, key.clone(), Accel::Tcg, "KVM failed a stock guest");
        let (accel, why, age) = lookup_in(&file, &key).expect("the stored answer");
        assert_eq!(
            (accel, why.as_str()),
            (Accel::Tcg, "KVM failed a stock guest")
        );
        assert!(age.as_secs() < 60);
        for other in [
            Key {
                kernel: "6.18 #2".into(),
                ..key.clone()
            },
            Key {
                qemu: "QEMU emulator version 8.2.2".into(),
                ..key.clone()
            },
            Key {
                kvm: "Vmx 10:232".into(),
                ..key.clone()
            },
        ] {
            assert!(lookup_in(&file, &other).is_none(), "{other:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
