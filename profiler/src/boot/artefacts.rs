//! The guest for `--vm qemu`, built once into a cache directory and reused: Debian's cloud
//! kernel, extracted (never installed) from its package, and an initramfs written here from
//! busybox-static and an `/init` script that prints the boot markers.

use std::{
    fs,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, Result, bail};

use super::cpio::{self, Entry};

pub const DEFAULT_CACHE: &str = "/var/cache/profiler/vm";
/// Overrides [`DEFAULT_CACHE`].
pub const CACHE_ENV: &str = "PROFILER_VM_CACHE";
/// The metapackage; its `Depends` names the versioned kernel package.
pub const KERNEL_META: &str = "linux-image-cloud-amd64";
pub const BUSYBOX_PACKAGE: &str = "busybox-static";

/// The guest's init. Markers go through /dev/kmsg at a level the console always prints, so
/// they reach the serial port with the kernel's timestamp; /dev/console if kmsg is missing.
/// "ready" means user space is up: devtmpfs, proc and sys mounted.
pub const INIT: &str = r#"#!/bin/sh
bb=/bin/busybox
$bb mount -t devtmpfs dev /dev
mark() { echo "<2>PROFILER_MARK $1" > /dev/kmsg || echo "PROFILER_MARK $1" > /dev/console; }
mark init
$bb mount -t proc proc /proc
$bb mount -t sysfs sys /sys
mark ready
$bb poweroff -f
"#;

#[derive(Clone, Debug, serde::Serialize)]
pub struct Artefacts {
    pub dir: PathBuf,
    pub kernel: PathBuf,
    /// Package and version the kernel came from.
    pub kernel_package: String,
    pub initramfs: PathBuf,
    /// `/bin/busybox` (installed busybox-static) or the extracted package.
    pub busybox_from: String,
    /// Something had to be downloaded or written in this run.
    pub built: bool,
}

pub fn cache_dir() -> PathBuf {
    std::env::var_os(CACHE_ENV).map_or_else(|| PathBuf::from(DEFAULT_CACHE), PathBuf::from)
}

/// The kernel and initramfs, from the cache or built into it.
pub fn prepare() -> Result<Artefacts> {
    let dir = cache_dir();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Concurrent runs (parallel tests) share the cache: one builds, the others wait.
    let lock = fs::File::create(dir.join(".lock"))
        .with_context(|| format!("creating {}/.lock", dir.display()))?;
    // SAFETY: flock on a descriptor we own; released when `lock` is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!(
            "locking {}/.lock: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
    }
    reap_stale_temps(&dir);
    let mut built = false;
    let (kernel, kernel_package) = match cached_kernel(&dir) {
        Some(k) => k,
        None => {
            built = true;
            fetch_kernel(&dir)?
        }
    };
    let (busybox, busybox_from) = busybox(&dir, &mut built)?;
    let image = cpio::write(&initramfs_entries(
        fs::read(&busybox).with_context(|| format!("reading {}", busybox.display()))?,
    ))?;
    let initramfs = dir.join("initramfs.cpio");
    if fs::read(&initramfs).ok().as_deref() != Some(&image[..]) {
        built = true;
        write_atomic(&initramfs, &image)?;
    }
    Ok(Artefacts {
        dir,
        kernel,
        kernel_package,
        initramfs,
        busybox_from,
        built,
    })
}

pub fn initramfs_entries(busybox: Vec<u8>) -> Vec<Entry> {
    vec![
        Entry::dir("bin"),
        Entry::dir("dev"),
        // The kernel opens it for init's stdio before /init mounts devtmpfs.
        Entry::char_dev("dev/console", 0o600, 5, 1),
        Entry::dir("proc"),
        Entry::dir("sys"),
        Entry::file("bin/busybox", 0o755, busybox),
        Entry::symlink("bin/sh", "busybox"),
        Entry::file("init", 0o755, INIT.as_bytes().to_vec()),
    ]
}

fn cached_kernel(dir: &Path) -> Option<(PathBuf, String)> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    found.sort();
    let kernel = found.pop()?;
    let package = fs::read_to_string(dir.join("kernel-package"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown package".into());
    Some((kernel, package))
}

/// Downloads the versioned kernel package the metapackage points at and extracts vmlinuz.
fn fetch_kernel(dir: &Path) -> Result<(PathBuf, String)> {
    let package = kernel_package()?;
    let tmp = TempDir::new(dir)?;
    let deb = download(&package, &tmp.0)?;
    let version = deb_field(&deb, "Version")?;
    let root = tmp.0.join("root");
    extract(&deb, &root)?;
    let boot = root.join("boot");
    let vmlinuz = fs::read_dir(&boot)
        .with_context(|| format!("{package} has no boot/ directory"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("{package} has no boot/vmlinuz-*"))?;
    let name = vmlinuz.file_name().unwrap_or_default().to_owned();
    let dest = dir.join(name);
    let label = format!("{package} {version}");
    write_atomic(&dir.join("kernel-package"), label.as_bytes())?;
    fs::rename(&vmlinuz, &dest)
        .or_else(|_| fs::copy(&vmlinuz, &dest).map(|_| ()))
        .with_context(|| format!("moving the kernel to {}", dest.display()))?;
    Ok((dest, label))
}

/// `linux-image-cloud-amd64` -> `linux-image-6.1.0-56-cloud-amd64` (apt's candidate).
fn kernel_package() -> Result<String> {
    let out = apt(&["apt-cache", "depends", "--important", KERNEL_META])?;
    parse_depends(&out, "linux-image-").with_context(|| {
        format!(
            "apt-cache depends {KERNEL_META} names no linux-image package (run `apt-get update`?)"
        )
    })
}

pub fn parse_depends(text: &str, prefix: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let dep = l.trim().strip_prefix("Depends:")?.trim();
        let dep = dep.trim_start_matches('<').trim_end_matches('>');
        dep.starts_with(prefix).then(|| dep.to_string())
    })
}

/// The static busybox: the installed one when static, else from the cache, else downloaded.
fn busybox(dir: &Path, built: &mut bool) -> Result<(PathBuf, String)> {
    for p in ["/bin/busybox", "/usr/bin/busybox"] {
        if fs::read(p).is_ok_and(|b| is_static_x86_64(&b)) {
            return Ok((PathBuf::from(p), format!("{p} (installed)")));
        }
    }
    let cached = dir.join("busybox");
    let from = format!(
        "{BUSYBOX_PACKAGE} package, extracted to {}",
        cached.display()
    );
    if fs::read(&cached).is_ok_and(|b| is_static_x86_64(&b)) {
        return Ok((cached, from));
    }
    *built = true;
    let tmp = TempDir::new(dir)?;
    let deb = download(BUSYBOX_PACKAGE, &tmp.0)?;
    let root = tmp.0.join("root");
    extract(&deb, &root)?;
    let bin = root.join("bin/busybox");
    let bytes = fs::read(&bin).with_context(|| format!("{BUSYBOX_PACKAGE} has no bin/busybox"))?;
    if !is_static_x86_64(&bytes) {
        bail!("{BUSYBOX_PACKAGE}'s bin/busybox is not a static x86-64 executable");
    }
    write_atomic(&cached, &bytes)?;
    Ok((cached, from))
}

/// A 64-bit x86 ELF without a program interpreter: runs in an initramfs with no libc.
pub fn is_static_x86_64(elf: &[u8]) -> bool {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") || u16_at(0x12) != Some(62) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..phnum as usize).all(|i| {
        let at = phoff as usize + i * phentsize as usize;
        u32_at(at).is_some_and(|t| t != 3) // PT_INTERP
    })
}

/// The last non-empty line a tool printed: apt's error is there.
fn last_line(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

fn apt(argv: &[&str]) -> Result<String> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .with_context(|| format!("running {} (is this Debian or Ubuntu?)", argv[0]))?;
    if !out.status.success() {
        let last = last_line(&out.stderr);
        bail!("`{}` failed: {}", argv.join(" "), last);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `apt-get download PACKAGE` into `dir`, refreshing the package lists once if apt cannot find it.
fn download(package: &str, dir: &Path) -> Result<PathBuf> {
    // As root, apt drops to the _apt user, which cannot write our temp dir; stay root.
    let fetch = || {
        Command::new("apt-get")
            .args(["-q", "-o", "APT::Sandbox::User=root", "download", package])
            .current_dir(dir)
            .output()
            .with_context(|| "running apt-get (is this Debian or Ubuntu?)".to_string())
    };
    let mut out = fetch()?;
    if !out.status.success() {
        apt(&["apt-get", "update", "-q"])?;
        out = fetch()?;
    }
    if !out.status.success() {
        let last = last_line(&out.stderr);
        bail!("apt-get download {package} failed: {}", last);
    }
    fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| format!("apt-get download {package} left no .deb"))
}

fn extract(deb: &Path, to: &Path) -> Result<()> {
    let d = deb.to_string_lossy();
    let t = to.to_string_lossy();
    apt(&["dpkg-deb", "-x", &d, &t]).map(|_| ())
}

fn deb_field(deb: &Path, field: &str) -> Result<String> {
    let d = deb.to_string_lossy();
    Ok(apt(&["dpkg-deb", "-f", &d, field])?.trim().to_string())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// A scratch directory `<cache>/tmp-<pid>-<n>`, removed on drop; a dead owner's is removed at
/// the next run ([`reap_stale_temps`]).
struct TempDir(PathBuf);

impl TempDir {
    fn new(cache: &Path) -> Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = cache.join(format!("tmp-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn reap_stale_temps(cache: &Path) {
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let owner = name
            .strip_prefix("tmp-")
            .and_then(|r| r.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .or_else(|| {
                // write_atomic's `<file>.tmp-<pid>`.
                name.rsplit_once(".tmp-")
                    .and_then(|(_, pid)| pid.parse::<u32>().ok())
            });
        if let Some(pid) = owner
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = fs::remove_dir_all(e.path()).or_else(|_| fs::remove_file(e.path()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_names_the_versioned_kernel() {
        let text = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            parse_depends(text, "linux-image-").as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        let virt = "x\n  Depends: <linux-image-6.1.0-9-cloud-amd64>\n";
        assert_eq!(
            parse_depends(virt, "linux-image-").as_deref(),
            Some("linux-image-6.1.0-9-cloud-amd64")
        );
        assert_eq!(
            parse_depends("x\n  Recommends: foo\n", "linux-image-"),
            None
        );
    }

    #[test]
    fn static_elf_check() {
        // A minimal ELF64 x86-64 header with one PT_LOAD (1) or PT_INTERP (3) program header.
        let elf = |ptype: u32| {
            let mut b = vec![0u8; 64 + 56];
            b[..6].copy_from_slice(b"\x7fELF\x02\x01");
            b[0x12..0x14].copy_from_slice(&62u16.to_le_bytes());
            b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
            b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
            b[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
            b[64..68].copy_from_slice(&ptype.to_le_bytes());
            b
        };
        assert!(is_static_x86_64(&elf(1)));
        assert!(!is_static_x86_64(&elf(3)));
        assert!(!is_static_x86_64(b"#!/bin/sh\n"));
        let mut truncated = elf(1);
        truncated.truncate(66);
        assert!(!is_static_x86_64(&truncated));
        // A real dynamic executable has PT_INTERP.
        if let Ok(ls) = fs::read("/bin/ls") {
            assert!(!is_static_x86_64(&ls));
        }
    }

    #[test]
    fn initramfs_has_init_console_and_busybox() {
        let image = cpio::write(&initramfs_entries(b"\x7fELF".to_vec())).unwrap();
        let entries = cpio::parse(&image).unwrap();
        let get = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
        assert_eq!(get("init").mode, cpio::S_IFREG | 0o755);
        assert!(String::from_utf8_lossy(&get("init").data).contains("PROFILER_MARK $1"));
        assert_eq!(get("dev/console").rdev, (5, 1));
        assert_eq!(get("bin/sh").data, b"busybox");
        assert_eq!(get("bin/busybox").data, b"\x7fELF");
    }

    #[test]
    fn init_marks_init_then_ready_then_powers_off() {
        let at = |s: &str| INIT.find(s).unwrap();
        assert!(INIT.starts_with("#!/bin/sh\n"));
        assert!(at("mark init") < at("mark ready"));
        assert!(at("mark ready") < at("poweroff -f"));
    }
}
