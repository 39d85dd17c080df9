//! Facts about the running kernel read from its own interfaces: BTF, tracefs, securityfs,
//! kallsyms and sysctls. Nothing here guesses from version numbers.

pub mod btf;
pub mod modules;

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

pub const BTF_VMLINUX: &str = "/sys/kernel/btf/vmlinux";
const TRACEFS_CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
const SECURITYFS: &str = "/sys/kernel/security";

/// Fails with the exact command to use when the caller is not root.
pub fn require_root(what: &str) -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let args: Vec<String> = std::env::args().collect();
    bail!(
        "{what} needs root (BPF, namespaces, tracefs): run `sudo -E {}`",
        args.join(" ")
    )
}

/// CLOCK_MONOTONIC in ns: what `Instant` and bpf_ktime_get_ns read, as a number another
/// process (or the kernel) can compare.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn has_btf() -> bool {
    Path::new(BTF_VMLINUX).exists()
}

/// Where tracefs is mounted; mounts it at /sys/kernel/tracing when it is not.
pub fn tracefs() -> Result<PathBuf> {
    for dir in TRACEFS_CANDIDATES {
        if Path::new(dir).join("events").is_dir() {
            return Ok(PathBuf::from(dir));
        }
    }
    let dir = TRACEFS_CANDIDATES[0];
    nix::mount::mount(
        Some("tracefs"),
        dir,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("tracefs is not mounted and mounting it at {dir} failed"))?;
    Ok(PathBuf::from(dir))
}

/// True when `category:name` is a classic tracepoint of this kernel.
pub fn tracepoint_exists(category: &str, name: &str) -> bool {
    tracefs()
        .map(|t| t.join("events").join(category).join(name).is_dir())
        .unwrap_or(false)
}

/// The kernel's lockdown mode (`none`, `integrity`, `confidentiality`), mounting securityfs
/// when needed; `None` when the kernel has no lockdown LSM.
pub fn lockdown() -> Option<String> {
    let file = Path::new(SECURITYFS).join("lockdown");
    if !file.exists() {
        let _ = nix::mount::mount(
            Some("securityfs"),
            SECURITYFS,
            Some("securityfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
    }
    let text = fs::read_to_string(file).ok()?;
    parse_lockdown(&text)
}

/// `none [integrity] confidentiality` -> `integrity`.
pub fn parse_lockdown(text: &str) -> Option<String> {
    let start = text.find('[')?;
    let end = text[start..].find(']')? + start;
    Some(text[start + 1..end].to_string())
}

pub fn bpf_stats_enabled() -> Option<bool> {
    fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .ok()
        .map(|s| s.trim() == "1")
}

/// Where a kernel function lives, as far as attaching to it is concerned.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SymbolHome {
    /// In vmlinux: fentry (via vmlinux BTF), kprobe and tp_btf can reach it.
    Vmlinux,
    /// In a loadable module: kprobes reach it, aya's fentry cannot (it uses vmlinux BTF only).
    Module(String),
    /// Not in kallsyms: inlined, static and removed, or not built.
    Absent,
}

/// Kernel symbols, read once from /proc/kallsyms (needs root to see addresses, not names).
pub struct Kallsyms {
    text: String,
}

impl Kallsyms {
    pub fn read() -> Result<Self> {
        Ok(Self {
            text: fs::read_to_string("/proc/kallsyms").context("reading /proc/kallsyms")?,
        })
    }

    pub fn home(&self, func: &str) -> SymbolHome {
        for line in self.text.lines() {
            let mut it = line.split_whitespace();
            let (_addr, kind, name) = (it.next(), it.next(), it.next());
            if name != Some(func) || !matches!(kind, Some("t" | "T")) {
                continue;
            }
            return match it.next() {
                Some(module) => SymbolHome::Module(module.trim_matches(['[', ']']).to_string()),
                None => SymbolHome::Vmlinux,
            };
        }
        SymbolHome::Absent
    }
}

/// Which hardware virtualisation backs /dev/kvm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KvmBackend {
    Vmx,
    Svm,
    /// Pagetable-based Virtual Machine: KVM nested in a VM without VMX/SVM.
    Pvm,
    /// /dev/kvm exists but none of the known vendor modules is loaded.
    Unknown,
    None,
}

pub fn kvm_backend() -> KvmBackend {
    if !Path::new("/dev/kvm").exists() {
        return KvmBackend::None;
    }
    let module = |m: &str| Path::new("/sys/module").join(m).exists();
    if module("kvm_intel") {
        KvmBackend::Vmx
    } else if module("kvm_amd") {
        KvmBackend::Svm
    } else if module("kvm_pvm") {
        KvmBackend::Pvm
    } else {
        KvmBackend::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockdown_bracket_is_the_mode() {
        assert_eq!(
            parse_lockdown("none [integrity] confidentiality\n").as_deref(),
            Some("integrity")
        );
        assert_eq!(
            parse_lockdown("[none] integrity confidentiality").as_deref(),
            Some("none")
        );
        assert_eq!(parse_lockdown("none integrity"), None);
    }

    #[test]
    fn kallsyms_tells_vmlinux_from_module() {
        let k = Kallsyms {
            text: "ffffffff81000000 T __dev_queue_xmit\n\
                   ffffffffc0001000 t vxlan_xmit\t[vxlan]\n\
                   ffffffff82000000 D some_data\n"
                .into(),
        };
        assert_eq!(k.home("__dev_queue_xmit"), SymbolHome::Vmlinux);
        assert_eq!(k.home("vxlan_xmit"), SymbolHome::Module("vxlan".into()));
        assert_eq!(k.home("some_data"), SymbolHome::Absent);
        assert_eq!(k.home("nope"), SymbolHome::Absent);
    }
}
