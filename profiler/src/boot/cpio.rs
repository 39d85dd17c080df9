//! The cpio "newc" format (what the kernel unpacks as an initramfs), written in Rust so the
//! host needs no `cpio` tool. Layout per entry: the magic `070701`, 13 fields of 8 hex digits,
//! the NUL-terminated name padded to 4 bytes, the data padded to 4 bytes; `TRAILER!!!` ends it.

use anyhow::{Result, bail};

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFCHR: u32 = 0o020000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Path without a leading `/`, as the kernel expects.
    pub name: String,
    /// File type and permission bits.
    pub mode: u32,
    /// Device numbers of a character or block node.
    pub rdev: (u32, u32),
    /// File contents, or a symlink's target.
    pub data: Vec<u8>,
}

impl Entry {
    pub fn dir(name: &str) -> Self {
        Self::new(name, S_IFDIR | 0o755, Vec::new())
    }

    pub fn file(name: &str, perm: u32, data: Vec<u8>) -> Self {
        Self::new(name, S_IFREG | perm, data)
    }

    pub fn symlink(name: &str, target: &str) -> Self {
        Self::new(name, S_IFLNK | 0o777, target.as_bytes().to_vec())
    }

    pub fn char_dev(name: &str, perm: u32, major: u32, minor: u32) -> Self {
        let mut e = Self::new(name, S_IFCHR | perm, Vec::new());
        e.rdev = (major, minor);
        e
    }

    fn new(name: &str, mode: u32, data: Vec<u8>) -> Self {
        Self {
            name: name.trim_start_matches('/').to_string(),
            mode,
            rdev: (0, 0),
            data,
        }
    }
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn header(out: &mut Vec<u8>, ino: u32, e: &Entry) -> Result<()> {
    let size = u32::try_from(e.data.len())
        .map_err(|_| anyhow::anyhow!("{} is too large for cpio newc (4 GiB)", e.name))?;
    let is_dir = e.mode & 0o170000 == S_IFDIR;
    let fields: [u32; 13] = [
        ino,
        e.mode,
        0, // uid: root
        0, // gid: root
        if is_dir { 2 } else { 1 },
        0, // mtime: fixed, so the same inputs give the same bytes
        size,
        0,
        0,
        e.rdev.0,
        e.rdev.1,
        e.name.len() as u32 + 1,
        0, // check: only for the crc format
    ];
    out.extend_from_slice(MAGIC);
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(e.name.as_bytes());
    out.push(0);
    pad4(out);
    Ok(())
}

/// The archive of `entries`, in order, with the trailer.
pub fn write(entries: &[Entry]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if e.name.is_empty() || e.name == TRAILER {
            bail!("cpio entry name {:?} is reserved", e.name);
        }
        header(&mut out, i as u32 + 1, e)?;
        out.extend_from_slice(&e.data);
        pad4(&mut out);
    }
    header(&mut out, 0, &Entry::new(TRAILER, 0, Vec::new()))?;
    Ok(out)
}

/// Reads an archive back (up to the trailer): the check on what [`write`] produced.
pub fn parse(bytes: &[u8]) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut at = 0;
    loop {
        let Some(h) = bytes.get(at..at + HEADER_LEN) else {
            bail!("cpio archive truncated at byte {at} (no trailer)");
        };
        if &h[..6] != MAGIC {
            bail!("not a cpio newc header at byte {at}");
        }
        let field = |i: usize| -> Result<u32> {
            let s = std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i])?;
            Ok(u32::from_str_radix(s, 16)?)
        };
        let (mode, size, namesize) = (field(1)?, field(6)? as usize, field(11)? as usize);
        let rdev = (field(9)?, field(10)?);
        let name_end = at + HEADER_LEN + namesize;
        let Some(name) = bytes.get(at + HEADER_LEN..name_end.saturating_sub(1)) else {
            bail!("cpio name truncated at byte {at}");
        };
        let name = String::from_utf8_lossy(name).into_owned();
        let data_at = name_end.next_multiple_of(4);
        if name == TRAILER {
            return Ok(entries);
        }
        let Some(data) = bytes.get(data_at..data_at + size) else {
            bail!("cpio data of {name} truncated");
        };
        entries.push(Entry {
            name,
            mode,
            rdev,
            data: data.to_vec(),
        });
        at = (data_at + size).next_multiple_of(4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Entry> {
        vec![
            Entry::dir("/bin"),
            Entry::dir("dev"),
            Entry::char_dev("dev/console", 0o600, 5, 1),
            Entry::file(
                "bin/busybox",
                0o755,
                (0..=255u8).cycle().take(1001).collect(),
            ),
            Entry::symlink("bin/sh", "busybox"),
            Entry::file("init", 0o755, b"#!/bin/sh\n".to_vec()),
            Entry::file("empty", 0o644, Vec::new()),
        ]
    }

    #[test]
    fn round_trip() {
        let bytes = write(&sample()).unwrap();
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(parse(&bytes).unwrap(), sample());
    }

    #[test]
    fn header_layout_is_newc() {
        let bytes = write(&[Entry::file("a", 0o644, b"xyz".to_vec())]).unwrap();
        // magic, ino 1, mode 0100644, uid, gid, nlink 1, mtime, size 3, ..., namesize 2.
        let h = std::str::from_utf8(&bytes[..HEADER_LEN]).unwrap();
        assert!(h.starts_with("0707010000000100008"), "{h}");
        assert_eq!(&h[6 + 8 * 6..6 + 8 * 7], "00000003");
        assert_eq!(&h[6 + 8 * 11..6 + 8 * 12], "00000002");
        // Name "a\0" at 110..112, padded to 112, data at 112, padded to 116.
        assert_eq!(&bytes[110..112], b"a\0");
        assert_eq!(&bytes[112..115], b"xyz");
        assert_eq!(&bytes[116..122], MAGIC);
        assert!(
            std::str::from_utf8(&bytes[116 + HEADER_LEN..])
                .unwrap()
                .starts_with(TRAILER)
        );
    }

    #[test]
    fn truncation_and_reserved_names_are_errors() {
        let bytes = write(&sample()).unwrap();
        assert!(parse(&bytes[..bytes.len() - 120]).is_err());
        assert!(parse(b"garbage").is_err());
        assert!(write(&[Entry::dir(TRAILER)]).is_err());
        assert!(write(&[Entry::dir("/")]).is_err());
    }

    /// When busybox is on the host, its cpio must list what we wrote (an independent reader).
    #[test]
    fn busybox_cpio_lists_the_archive() {
        let Some(bb) = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
        else {
            return;
        };
        use std::io::Write as _;
        let mut child = crate::cleanup::die_with_parent(&mut std::process::Command::new(bb))
            .args(["cpio", "-t"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(&write(&sample()).unwrap())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        let names: Vec<String> = sample().into_iter().map(|e| e.name).collect();
        assert_eq!(listed, names);
    }
}
