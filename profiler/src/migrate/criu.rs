//! `migrate --container native`: CRIU's own check of this kernel, before anything starts. Where
//! it fails the run is refused with criu's reason (Debian's criu 3.17 on this host: "vdso:
//! Unexpected rt vDSO area bounds").

use std::process::Command;

use anyhow::{Result, bail};

pub const CRIU: &str = "criu";

/// Runs `criu check`; an error in one line with criu's own reason where it fails.
pub fn check() -> Result<()> {
    let out = match Command::new(CRIU).arg("check").output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "--container native: criu is not installed: `apt-get install criu` (cargo xtask setup)"
        ),
        Err(e) => bail!("--container native: running `criu check`: {e}"),
    };
    if out.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    bail!(
        "--container native: `criu check` fails on this host ({}): {}",
        version().unwrap_or_else(|| "criu".into()),
        reason(&text)
    )
}

/// `criu --version`'s "Version: X" as "criu X".
fn version() -> Option<String> {
    let out = Command::new(CRIU).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = text.lines().find_map(|l| l.strip_prefix("Version:"))?;
    Some(format!("criu {}", v.trim()))
}

/// criu's errors without their source locations, joined; else its last line.
pub fn reason(text: &str) -> String {
    let errors: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("Error (")?;
            let msg = rest.split_once("): ").map_or(rest, |(_, m)| m);
            Some(msg.trim().trim_end_matches('.'))
        })
        .filter(|m| !m.is_empty())
        .collect();
    if errors.is_empty() {
        return text
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("no reason given")
            .to_string();
    }
    errors.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criu_reason_is_its_errors_in_one_line() {
        // Debian's criu 3.17.1 on this host's 6.18 kernel.
        let text = "Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds\nError (criu/vdso.c:613): vdso: Failed to fill self vdso symtable\nError (criu/kerndat.c:1615): kerndat_vdso_fill_symtable failed when initializing kerndat.\nError (criu/crtools.c:260): Could not initialize kernel features detection.\n";
        let r = reason(text);
        assert_eq!(
            r,
            "vdso: Unexpected rt vDSO area bounds; vdso: Failed to fill self vdso symtable; kerndat_vdso_fill_symtable failed when initializing kerndat; Could not initialize kernel features detection"
        );
        assert!(!r.contains('\n'));
        assert_eq!(
            reason("\nsomething else went wrong\n\n"),
            "something else went wrong"
        );
    }
}
