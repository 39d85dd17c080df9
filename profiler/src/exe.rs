//! This program's file and what it needs to run elsewhere: its shared libraries and loader,
//! for a VM's initramfs or a container image (`boot/artefacts.rs`, `docker/image.rs`).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// The files `ldd` resolved (libraries and the loader), in its order; an unresolved library
/// is an error, a static executable has none.
pub fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not a dynamic executable") || line.contains("statically linked") {
            continue;
        }
        let target = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    bail!("ldd: {} not found", name.trim());
                }
                rest
            }
            None => line,
        };
        // "/lib/x/libc.so.6 (0x7f...)"; the vDSO has no path.
        let path = target.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') && !out.iter().any(|p| p == Path::new(path)) {
            out.push(PathBuf::from(path));
        }
    }
    Ok(out)
}

/// PT_INTERP of a 64-bit little-endian ELF: the dynamic loader it names.
pub fn elf_interp(elf: &[u8]) -> Option<String> {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") {
        return None;
    }
    let (phoff, phentsize, phnum) = (u64_at(0x20)?, u16_at(0x36)?, u16_at(0x38)?);
    (0..phnum as usize).find_map(|i| {
        let at = usize::try_from(phoff).ok()? + i * phentsize as usize;
        if elf.get(at..at + 4)? != 3u32.to_le_bytes() {
            return None;
        }
        let (off, size) = (u64_at(at + 8)? as usize, u64_at(at + 32)? as usize);
        let raw = elf.get(off..off.checked_add(size)?)?;
        let s = raw.split(|&b| b == 0).next()?;
        Some(String::from_utf8_lossy(s).into_owned())
    })
}

/// A program's shared libraries and loader, from `ldd` on its file (`elf`, its bytes): this
/// program's for a VM's initramfs, or a container image's.
pub fn libraries(exe: &Path, elf: &[u8]) -> Result<Vec<PathBuf>> {
    let out = crate::cleanup::die_with_parent(&mut Command::new("ldd"))
        .arg(exe)
        .output()
        .context("running ldd (libc-bin)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = parse_ldd(&text).with_context(|| format!("ldd {}", exe.display()))?;
    if !out.status.success() && libs.is_empty() && elf_interp(elf).is_some() {
        bail!("ldd {} failed: {}", exe.display(), last_line(&out.stderr));
    }
    if let Some(interp) = elf_interp(elf)
        && !libs.iter().any(|l| l == Path::new(&interp))
    {
        libs.push(PathBuf::from(interp));
    }
    Ok(libs)
}

/// The last non-empty line a tool printed (apt's and ldd's errors are there).
pub fn last_line(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}
