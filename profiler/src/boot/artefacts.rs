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
pub use crate::exe::{elf_interp, last_line, libraries, parse_ldd};

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

impl Artefacts {
    /// The setup lap's name: "artefacts (built)" or "(cached)".
    pub fn lap_name(&self) -> &'static str {
        if self.built {
            "artefacts (built)"
        } else {
            "artefacts (cached)"
        }
    }
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

/// Console markers of a workload guest's result (`run --env vm`).
pub const RESULT_BEGIN: &str = "PROFILER_RESULT_BEGIN";
pub const RESULT_END: &str = "PROFILER_RESULT_END";
pub const STDERR_BEGIN: &str = "PROFILER_STDERR_BEGIN";
pub const STDERR_END: &str = "PROFILER_STDERR_END";
pub const EXIT: &str = "PROFILER_EXIT";
/// Where the workload's binary and arguments go in its initramfs.
pub const WORKLOAD_BIN: &str = "bin/profiler";
pub const WORKLOAD_ARGS: &str = "args";

/// A workload guest's init: the stock markers, then the workload (arguments from /args, one a
/// line) with its output kept in files, a `done` mark, and the output on the console between
/// markers. The console log level drops to emergencies first so no printk lands inside it.
pub fn workload_init(lib_dirs: &[String]) -> String {
    workload_init_with(lib_dirs, "")
}

/// [`workload_init`] with shell lines (`pre`) run after `ready`, before the workload: a stock
/// guest's module loading.
pub fn workload_init_with(lib_dirs: &[String], pre: &str) -> String {
    format!(
        r#"#!/bin/sh
bb=/bin/busybox
$bb mount -t devtmpfs dev /dev
mark() {{ echo "<2>PROFILER_MARK $1" > /dev/kmsg || echo "PROFILER_MARK $1" > /dev/console; }}
mark init
$bb mount -t proc proc /proc
$bb mount -t sysfs sys /sys
mark ready
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
{pre}set --
while IFS= read -r a; do set -- "$@" "$a"; done < /{WORKLOAD_ARGS}
cd /tmp
LD_LIBRARY_PATH={libs} /{WORKLOAD_BIN} "$@" > /tmp/.out 2> /tmp/.err < /dev/null
rc=$?
mark done
echo 1 > /proc/sys/kernel/printk
echo {RESULT_BEGIN}
$bb cat /tmp/.out
echo
echo {RESULT_END}
if [ $rc -ne 0 ]; then
  echo {STDERR_BEGIN}
  $bb tail -c 4000 /tmp/.err
  echo
  echo {STDERR_END}
fi
echo "{EXIT} $rc"
$bb poweroff -f
"#,
        libs = lib_dirs.join(":")
    )
}

/// The workload's arguments for `/args`: one a line, so the shell rebuilds argv exactly
/// (quotes, spaces and globs stay literal). A newline or NUL cannot be carried.
pub fn encode_args(args: &[String]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for a in args {
        if a.contains(['\n', '\0']) {
            bail!("--env vm: the workload argument {a:?} contains a newline or NUL");
        }
        out.extend_from_slice(a.as_bytes());
        out.push(b'\n');
    }
    Ok(out)
}

/// What a workload guest printed between its markers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GuestOutput {
    /// The workload's stdout (None: no complete result block).
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    pub exit: Option<i32>,
}

/// Finds the result blocks in a workload guest's console lines. Kernel lines (a printk
/// timestamp) inside a block are dropped; text before an end marker on its line is kept (the
/// output may not end with a newline).
pub fn parse_guest_output(console: &[String]) -> GuestOutput {
    let mut out = GuestOutput::default();
    let mut block: Option<(&str, Vec<&str>)> = None;
    for line in console {
        if let Some((end, lines)) = block.as_mut() {
            if let Some(at) = line.find(*end) {
                let before = line[..at].trim_end();
                if !before.is_empty() {
                    lines.push(before);
                }
                let text = lines.join("\n");
                if *end == RESULT_END {
                    out.stdout = Some(text);
                } else {
                    out.stderr = Some(text);
                }
                block = None;
            } else if super::serial::printk_time(line).is_none() {
                lines.push(line);
            }
            continue;
        }
        if line.contains(RESULT_BEGIN) {
            block = Some((RESULT_END, Vec::new()));
        } else if line.contains(STDERR_BEGIN) {
            block = Some((STDERR_END, Vec::new()));
        } else if let Some(at) = line.find(EXIT) {
            out.exit = line[at + EXIT.len()..]
                .split_whitespace()
                .next()
                .and_then(|c| c.parse().ok());
        }
    }
    out
}

/// Every directory above `path` (relative, parents first), for the cpio: the kernel does not
/// create them.
fn parents(path: &str) -> Vec<String> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    (1..parts.len()).map(|n| parts[..n].join("/")).collect()
}

/// The stock guest's files plus this program, its libraries, the workload's arguments and
/// [`workload_init`] as `/init`.
pub fn workload_entries(
    busybox: Vec<u8>,
    exe: Vec<u8>,
    libs: &[(PathBuf, Vec<u8>)],
    args: &[String],
) -> Result<Vec<Entry>> {
    workload_entries_with(busybox, exe, libs, args, None)
}

/// [`workload_entries`] plus a stock guest's modules, tools and their loading.
pub fn workload_entries_with(
    busybox: Vec<u8>,
    exe: Vec<u8>,
    libs: &[(PathBuf, Vec<u8>)],
    args: &[String],
    extra: Option<&super::stock::Extra>,
) -> Result<Vec<Entry>> {
    let mut entries: Vec<Entry> = initramfs_entries(busybox)
        .into_iter()
        .filter(|e| e.name != "init")
        .collect();
    entries.push(Entry::dir("tmp"));
    let mut dirs: Vec<String> = entries.iter().map(|e| e.name.clone()).collect();
    let mut lib_dirs: Vec<String> = Vec::new();
    for (path, bytes) in libs {
        let name = path.to_string_lossy().trim_start_matches('/').to_string();
        for d in parents(&name) {
            if !dirs.contains(&d) {
                entries.push(Entry::dir(&d));
                dirs.push(d);
            }
        }
        if let Some(d) = path.parent().map(|d| d.to_string_lossy().into_owned())
            && !lib_dirs.contains(&d)
        {
            lib_dirs.push(d);
        }
        entries.push(Entry::file(&name, 0o755, bytes.clone()));
    }
    entries.push(Entry::file(WORKLOAD_BIN, 0o755, exe));
    entries.push(Entry::file(WORKLOAD_ARGS, 0o644, encode_args(args)?));
    let pre = extra.map_or("", |x| x.init.as_str());
    entries.push(Entry::file(
        "init",
        0o755,
        workload_init_with(&lib_dirs, pre).into_bytes(),
    ));
    if let Some(x) = extra {
        super::stock::merge(&mut entries, x);
    }
    Ok(entries)
}

/// A workload's initramfs in the cache dir, removed on drop, on a signal's teardown, and (after
/// a kill -9) by the next [`prepare`] (its name is a `tmp-<pid>-<start>-` temp).
pub struct WorkloadImage {
    pub path: PathBuf,
    pub bytes: u64,
    /// The program's debug sections were left out (objcopy), so the guest unpacks less.
    pub stripped: bool,
}

impl WorkloadImage {
    fn key(&self) -> String {
        format!("vm-initramfs {}", self.path.display())
    }
}

impl Drop for WorkloadImage {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        crate::cleanup::forget(&self.key());
    }
}

/// This program without its debug sections (a debug build is mostly DWARF), when binutils'
/// objcopy is there; None otherwise (the whole file is used).
fn strip_debug(tmp: &Path) -> Option<Vec<u8>> {
    let ok = crate::cleanup::die_with_parent(&mut Command::new("objcopy"))
        .arg("--strip-debug")
        // Not /proc/self/exe: in objcopy's process that is objcopy.
        .arg(format!("/proc/{}/exe", std::process::id()))
        .arg(tmp)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let bytes = if ok { fs::read(tmp).ok() } else { None };
    let _ = fs::remove_file(tmp);
    bytes.filter(|b| elf_interp(b).is_some() || is_static_x86_64(b))
}

/// Builds the initramfs that runs `args` (this program's own subcommand) in the guest.
pub fn workload_initramfs(a: &Artefacts, args: &[String]) -> Result<WorkloadImage> {
    workload_initramfs_with(a, args, None)
}

/// [`workload_initramfs`] for a stock guest: `extra` carries its modules and tools.
pub fn workload_initramfs_with(
    a: &Artefacts,
    args: &[String],
    extra: Option<&super::stock::Extra>,
) -> Result<WorkloadImage> {
    let mut built = false;
    let (busybox, _) = busybox(&a.dir, &mut built)?;
    let busybox = fs::read(&busybox).with_context(|| format!("reading {}", busybox.display()))?;
    static N: AtomicU32 = AtomicU32::new(0);
    let tmp = |what: &str| {
        let n = N.fetch_add(1, Ordering::Relaxed);
        a.dir.join(format!("tmp-{}-{n}-{what}", owner_tag()))
    };
    let stripped = strip_debug(&tmp("exe"));
    let exe = match &stripped {
        Some(b) => b.clone(),
        None => fs::read("/proc/self/exe").context("reading this program (/proc/self/exe)")?,
    };
    let exe_path = fs::read_link("/proc/self/exe").context("finding this program")?;
    // A rebuilt binary shows as "<path> (deleted)": ldd then reads the new file, same libraries.
    let exe_path = PathBuf::from(
        exe_path
            .to_string_lossy()
            .trim_end_matches(" (deleted)")
            .to_string(),
    );
    let libs = libraries(&exe_path, &exe)?
        .into_iter()
        .map(|p| {
            let bytes = fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
            Ok((p, bytes))
        })
        .collect::<Result<Vec<_>>>()?;
    let image = cpio::write(&workload_entries_with(busybox, exe, &libs, args, extra)?)?;
    let out = WorkloadImage {
        path: tmp("workload.cpio"),
        bytes: image.len() as u64,
        stripped: stripped.is_some(),
    };
    let path = out.path.clone();
    crate::cleanup::on_signal(&out.key(), move || {
        let _ = fs::remove_file(&path);
    });
    fs::write(&out.path, &image).with_context(|| format!("writing {}", out.path.display()))?;
    Ok(out)
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
pub(super) fn busybox(dir: &Path, built: &mut bool) -> Result<(PathBuf, String)> {
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

pub(super) fn apt(argv: &[&str]) -> Result<String> {
    let out = crate::cleanup::die_with_parent(&mut Command::new(argv[0]))
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
pub(super) fn download(package: &str, dir: &Path) -> Result<PathBuf> {
    // As root, apt drops to the _apt user, which cannot write our temp dir; stay root.
    let fetch = || {
        crate::cleanup::die_with_parent(&mut Command::new("apt-get"))
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

pub(super) fn extract(deb: &Path, to: &Path) -> Result<()> {
    let d = deb.to_string_lossy();
    let t = to.to_string_lossy();
    apt(&["dpkg-deb", "-x", &d, &t]).map(|_| ())
}

pub(super) fn deb_field(deb: &Path, field: &str) -> Result<String> {
    let d = deb.to_string_lossy();
    Ok(apt(&["dpkg-deb", "-f", &d, field])?.trim().to_string())
}

pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", owner_tag()));
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// `<pid>-<start time>`: names temporary files so a later run knows their owner is gone even
/// when its pid has been reused.
fn owner_tag() -> String {
    let o = crate::cleanup::Owner::me();
    format!("{}-{}", o.pid, o.start)
}

/// The owner in a temp name's `<pid>-<start>-...` part.
fn tagged_owner(tag: &str) -> Option<crate::cleanup::Owner> {
    let mut it = tag.split('-');
    Some(crate::cleanup::Owner {
        pid: it.next()?.parse().ok()?,
        start: it.next()?.parse().ok()?,
    })
}

/// A scratch directory `<cache>/tmp-<pid>-<start>-<n>`, removed on drop; a dead owner's is removed at
/// the next run ([`reap_stale_temps`]).
#[derive(Debug)]
pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn new(cache: &Path) -> Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = cache.join(format!("tmp-{}-{n}", owner_tag()));
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

/// Temp files and initramfs copies in the cache whose owner is dead (for the reaper).
pub fn reap_stale() {
    reap_stale_temps(&cache_dir());
}

fn reap_stale_temps(cache: &Path) {
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let owner = name
            .strip_prefix("tmp-")
            .and_then(tagged_owner)
            .or_else(|| {
                // write_atomic's `<file>.tmp-<pid>-<start>`.
                name.rsplit_once(".tmp-")
                    .and_then(|(_, tag)| tagged_owner(tag))
            });
        if let Some(owner) = owner
            && !owner.alive()
        {
            let _ = fs::remove_dir_all(e.path()).or_else(|_| fs::remove_file(e.path()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_carry_a_live_owner() {
        let tag = owner_tag();
        let me = tagged_owner(&format!("{tag}-3-exe")).expect("parsed");
        assert_eq!(me, crate::cleanup::Owner::me());
        assert!(me.alive());
        // The same pid with another start time is a former holder of the pid: gone.
        let former = crate::cleanup::Owner {
            start: me.start + 1,
            ..me
        };
        assert!(!former.alive());
        assert_eq!(tagged_owner("x-1"), None);
    }

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
    fn guest_output_survives_kernel_lines_and_carriage_returns() {
        // The console as the serial reader splits it: \r\n line ends, a printk line inside
        // the result, output without a final newline (END on its last line).
        let raw = b"[    4.1] PROFILER_MARK done\r\nPROFILER_RESULT_BEGIN\r\n{\r\n  \"a\": 1,\r\n\
[    4.2] random: crng init done\r\n  \"b\": \"x y\"\r\n}PROFILER_RESULT_END\r\nPROFILER_EXIT 0\r\n\
[    4.3] reboot: Power down\r\n";
        let mut split = super::super::serial::LineSplitter::new();
        let lines: Vec<String> = split
            .feed(raw, std::time::Instant::now())
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        let out = parse_guest_output(&lines);
        assert_eq!(out.exit, Some(0));
        assert_eq!(out.stderr, None);
        let json: serde_json::Value = serde_json::from_str(out.stdout.as_deref().unwrap()).unwrap();
        assert_eq!(json, serde_json::json!({"a": 1, "b": "x y"}));
    }

    #[test]
    fn guest_output_of_a_failure() {
        let lines: Vec<String> = [
            "PROFILER_RESULT_BEGIN",
            "PROFILER_RESULT_END",
            "PROFILER_STDERR_BEGIN",
            "error: unexpected argument '--bogus' found",
            "[    5.0] some printk",
            "Usage: profiler sysbench",
            "PROFILER_STDERR_END",
            "PROFILER_EXIT 2",
        ]
        .map(String::from)
        .to_vec();
        let out = parse_guest_output(&lines);
        assert_eq!(out.exit, Some(2));
        assert_eq!(out.stdout.as_deref(), Some(""));
        assert_eq!(
            out.stderr.as_deref(),
            Some("error: unexpected argument '--bogus' found\nUsage: profiler sysbench")
        );
        // A guest that died mid-way: no block, no status.
        let cut = parse_guest_output(&["PROFILER_RESULT_BEGIN".into(), "{".into()]);
        assert_eq!(cut, GuestOutput::default());
    }

    #[test]
    fn args_are_one_a_line_and_newlines_refused() {
        let args: Vec<String> = ["sysbench", "cpu", "--file-dir", "a b*'\"$x", "", "--json"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            encode_args(&args).unwrap(),
            b"sysbench\ncpu\n--file-dir\na b*'\"$x\n\n--json\n"
        );
        assert!(encode_args(&["a\nb".to_string()]).is_err());
        assert!(encode_args(&["a\0b".to_string()]).is_err());
    }

    #[test]
    fn ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd5b1f2000)\n\
            \tlibvirt.so.0 => /lib/x86_64-linux-gnu/libvirt.so.0 (0x00007f0b1c000000)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0bfc5e0000)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0bfc31e000)\n\
            \tlibxml2.so.2 => /lib/x86_64-linux-gnu/libxml2.so.2 (0x00007f0b1b000000)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0bfc31e000)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f0bfdacd000)\n";
        let got = parse_ldd(text).unwrap();
        let got: Vec<&str> = got.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(
            got,
            [
                "/lib/x86_64-linux-gnu/libvirt.so.0",
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib/x86_64-linux-gnu/libxml2.so.2",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
        let e = parse_ldd("\tlibvirt.so.0 => not found\n").unwrap_err();
        assert_eq!(e.to_string(), "ldd: libvirt.so.0 not found");
        assert!(
            parse_ldd("\tnot a dynamic executable\n")
                .unwrap()
                .is_empty()
        );
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
    }

    /// A real libvirt client's closure (when virsh is installed): libvirt, what it needs, the
    /// loader; every one a file.
    #[test]
    fn closure_of_a_libvirt_client() {
        let virsh = Path::new("/usr/bin/virsh");
        let Ok(elf) = fs::read(virsh) else {
            return;
        };
        let libs = libraries(virsh, &elf).unwrap();
        let has = |n: &str| libs.iter().any(|l| l.to_string_lossy().ends_with(n));
        assert!(
            has("/libvirt.so.0") && has("/libc.so.6") && has("/libxml2.so.2"),
            "{libs:?}"
        );
        assert!(has("ld-linux-x86-64.so.2"), "{libs:?}");
        assert!(libs.iter().all(|l| l.is_file()), "{libs:?}");
    }

    #[test]
    fn interp_of_an_elf() {
        // ELF header, one PT_INTERP program header pointing at the string after it.
        let interp = b"/lib64/ld-linux-x86-64.so.2\0";
        let mut b = vec![0u8; 64 + 56];
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        b[64..68].copy_from_slice(&3u32.to_le_bytes());
        b[64 + 8..64 + 16].copy_from_slice(&120u64.to_le_bytes());
        b[64 + 32..64 + 40].copy_from_slice(&(interp.len() as u64).to_le_bytes());
        b.extend_from_slice(interp);
        assert_eq!(
            elf_interp(&b).as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
        b[64..68].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(elf_interp(&b), None);
        assert_eq!(elf_interp(b"#!/bin/sh"), None);
        if let Ok(ls) = fs::read("/bin/ls") {
            assert!(elf_interp(&ls).is_some_and(|i| i.contains("ld-linux")));
        }
    }

    #[test]
    fn workload_initramfs_layout() {
        let libs = vec![
            (
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                b"libc".to_vec(),
            ),
            (PathBuf::from("/lib64/ld-linux-x86-64.so.2"), b"ld".to_vec()),
        ];
        let args = vec!["sysbench".to_string(), "cpu".to_string()];
        let entries = workload_entries(b"bb".to_vec(), b"exe".to_vec(), &libs, &args).unwrap();
        let image = cpio::write(&entries).unwrap();
        let parsed = cpio::parse(&image).unwrap();
        let at = |n: &str| {
            parsed
                .iter()
                .position(|e| e.name == n)
                .unwrap_or_else(|| panic!("{n} missing"))
        };
        // The kernel creates no directories: each comes before what is in it.
        assert!(at("lib") < at("lib/x86_64-linux-gnu"));
        assert!(at("lib/x86_64-linux-gnu") < at("lib/x86_64-linux-gnu/libc.so.6"));
        assert!(at("lib64") < at("lib64/ld-linux-x86-64.so.2"));
        assert_eq!(parsed[at(WORKLOAD_BIN)].data, b"exe");
        assert_eq!(parsed[at(WORKLOAD_ARGS)].data, b"sysbench\ncpu\n");
        assert_eq!(parsed.iter().filter(|e| e.name == "init").count(), 1);
        let init = String::from_utf8(parsed[at("init")].data.clone()).unwrap();
        assert!(init.contains("LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/lib64 /bin/profiler"));
        let pos = |s: &str| init.find(s).unwrap_or_else(|| panic!("{s} missing"));
        assert!(pos("mark ready") < pos("/bin/profiler"));
        assert!(pos("/bin/profiler") < pos("mark done"));
        assert!(pos("mark done") < pos("/proc/sys/kernel/printk"));
        assert!(pos("/proc/sys/kernel/printk") < pos(RESULT_BEGIN));
        assert!(pos(RESULT_END) < pos(STDERR_BEGIN));
        assert!(pos(EXIT) < pos("poweroff -f"));
        assert_eq!(parents("a/b/c"), ["a", "a/b"]);
    }

    #[test]
    fn init_marks_init_then_ready_then_powers_off() {
        let at = |s: &str| INIT.find(s).unwrap();
        assert!(INIT.starts_with("#!/bin/sh\n"));
        assert!(at("mark init") < at("mark ready"));
        assert!(at("mark ready") < at("poweroff -f"));
    }
}
