//! The profiler's own payload image, for hosts without a registry: a root filesystem of
//! busybox-static and a web page, imported with `docker import` semantics (`/images/create?
//! fromSrc=-`), labelled so a later run can find and remove it.

use anyhow::{Context as _, Result, bail};

/// A minimal ustar archive writer: regular files and directories, enough for a root filesystem.
pub struct Tar {
    buf: Vec<u8>,
}

impl Tar {
    pub fn new() -> Tar {
        Tar { buf: vec![] }
    }

    fn header(&mut self, name: &str, mode: u32, size: usize, kind: u8) -> Result<()> {
        if name.len() > 99 {
            bail!("tar entry name too long: {name}");
        }
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let octal = |h: &mut [u8; 512], at: usize, width: usize, v: u64| {
            let s = format!("{v:0w$o}\0", w = width - 1);
            h[at..at + width].copy_from_slice(s.as_bytes());
        };
        octal(&mut h, 100, 8, mode as u64);
        octal(&mut h, 108, 8, 0); // uid
        octal(&mut h, 116, 8, 0); // gid
        octal(&mut h, 124, 12, size as u64);
        octal(&mut h, 136, 12, 0); // mtime
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        // The checksum is computed with its own field as spaces.
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        self.buf.extend_from_slice(&h);
        Ok(())
    }

    pub fn dir(&mut self, name: &str) -> Result<()> {
        self.header(&format!("{}/", name.trim_end_matches('/')), 0o755, 0, b'5')
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> Result<()> {
        self.header(name, mode, data.len(), b'0')?;
        self.buf.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.buf.extend(std::iter::repeat_n(0u8, pad));
        Ok(())
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend(std::iter::repeat_n(0u8, 1024));
        self.buf
    }
}

impl Default for Tar {
    fn default() -> Self {
        Tar::new()
    }
}

pub const BUSYBOX: &str = "/bin/busybox";
/// The payload listens here; ready = its first HTTP answer.
pub const PORT: u16 = 8080;

/// Adds `path` (absolute) to the archive with every parent directory, once (`dirs` holds
/// what is in already).
pub fn add_path(t: &mut Tar, dirs: &mut Vec<String>, path: &str, mode: u32) -> Result<()> {
    let rel = path.trim_start_matches('/');
    let mut parent = String::new();
    let parts: Vec<&str> = rel.split('/').collect();
    for p in &parts[..parts.len() - 1] {
        parent = if parent.is_empty() {
            p.to_string()
        } else {
            format!("{parent}/{p}")
        };
        if !dirs.contains(&parent) {
            t.dir(&parent)?;
            dirs.push(parent.clone());
        }
    }
    // Docker refuses an archive with a path twice (two programs' shared libraries).
    if dirs.iter().any(|d| d == rel) {
        return Ok(());
    }
    dirs.push(rel.to_string());
    let data = std::fs::read(path).with_context(|| format!("reading {path}"))?;
    t.file(rel, mode, &data)
}

/// The payload root filesystem plus this very binary (as /profiler) and the libraries it links,
/// so a container can run the profiler's own workloads.
pub fn rootfs_with_self() -> Result<Vec<u8>> {
    let exe = std::fs::read_link("/proc/self/exe").context("finding this program")?;
    rootfs_with(&exe.to_string_lossy())
}

/// The same for another program `exe` (as `/profiler`): its libraries, busybox, /tmp.
pub fn rootfs_with(exe: &str) -> Result<Vec<u8>> {
    rootfs_with_extra(exe, &[])
}

/// [`rootfs_with`] plus host files at their own paths (a server the workload starts), and a
/// root entry in /etc/passwd and /etc/group for what looks its user up.
pub fn rootfs_with_extra(exe: &str, extra: &[std::path::PathBuf]) -> Result<Vec<u8>> {
    let mut t = Tar::new();
    let mut dirs = vec![];
    add_path(&mut t, &mut dirs, BUSYBOX, 0o755)?;
    for p in extra {
        let p = p.to_string_lossy();
        let mode = if p.ends_with(".so") || p.contains(".so.") || p.contains("/sbin/") {
            0o755
        } else {
            0o644
        };
        add_path(&mut t, &mut dirs, &p, mode)?;
    }
    if !extra.is_empty() {
        if !dirs.iter().any(|d| d == "etc") {
            t.dir("etc")?;
            dirs.push("etc".into());
        }
        t.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")?;
        t.file("etc/group", 0o644, b"root:x:0:\n")?;
    }
    let data = std::fs::read(exe).with_context(|| format!("reading {exe}"))?;
    for lib in crate::exe::libraries(std::path::Path::new(exe), &data)? {
        add_path(&mut t, &mut dirs, &lib.to_string_lossy(), 0o755)?;
    }
    t.file("profiler", 0o755, &data)?;
    t.dir("tmp")?;
    Ok(t.finish())
}

/// The root filesystem: /bin/busybox (static), /www/index.html.
pub fn rootfs() -> Result<Vec<u8>> {
    let busybox = std::fs::read(BUSYBOX).with_context(|| {
        format!("reading {BUSYBOX}: install Debian's busybox-static (cargo xtask setup does)")
    })?;
    // A dynamically linked busybox would not run in an image without libc.
    if busybox
        .windows(b"/lib64/ld-linux".len())
        .any(|w| w == b"/lib64/ld-linux")
    {
        bail!("{BUSYBOX} is dynamically linked: install busybox-static");
    }
    let mut t = Tar::new();
    t.dir("bin")?;
    t.file("bin/busybox", 0o755, &busybox)?;
    t.dir("www")?;
    t.file("www/index.html", 0o644, b"profiler payload\n")?;
    t.dir("tmp")?;
    Ok(t.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_headers_have_valid_checksums_and_padding() {
        let mut t = Tar::new();
        t.dir("www").unwrap();
        t.file("www/a", 0o644, b"hello").unwrap();
        let b = t.finish();
        assert_eq!(b.len() % 512, 0);
        for hdr in [&b[0..512], &b[512..1024]] {
            let stored =
                u32::from_str_radix(std::str::from_utf8(&hdr[148..154]).unwrap().trim(), 8)
                    .unwrap();
            let mut h = hdr.to_vec();
            h[148..156].copy_from_slice(b"        ");
            assert_eq!(stored, h.iter().map(|&x| x as u32).sum::<u32>());
        }
        assert_eq!(&b[1024..1029], b"hello");
        assert_eq!(&b[512 + 124..512 + 135], b"00000000005");
    }

    /// `tar` itself must read what we write.
    #[test]
    fn system_tar_lists_it() {
        let mut t = Tar::new();
        t.dir("bin").unwrap();
        t.file("bin/x", 0o755, b"#!/bin/sh\n").unwrap();
        let path = std::env::temp_dir().join(format!("profiler-tar-{}.tar", std::process::id()));
        std::fs::write(&path, t.finish()).unwrap();
        let out = crate::cleanup::die_with_parent(&mut std::process::Command::new("tar"))
            .arg("tvf")
            .arg(&path)
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&path);
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            listing.contains("bin/x") && listing.contains("bin/"),
            "{listing}"
        );
    }
}
