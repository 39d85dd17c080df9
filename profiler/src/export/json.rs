//! The one convention for machine output: `--json [FILE]`. No value, or `-`, prints the JSON on
//! stdout instead of the human report (messages and progress stay on stderr); a FILE gets the
//! JSON and the terminal still gets the human report.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::Serialize;

/// Whether `--json` sends the JSON to stdout.
pub fn to_stdout(json: Option<&Path>) -> bool {
    json.is_some_and(|p| p == Path::new("-"))
}

/// Prints the human report and/or the JSON as `--json` asks.
pub fn emit<T: Serialize>(json: Option<&PathBuf>, value: &T, human: impl FnOnce(&T)) -> Result<()> {
    match json {
        Some(p) if to_stdout(Some(p)) => {
            println!("{}", serde_json::to_string_pretty(value)?);
        }
        Some(p) => {
            human(value);
            std::fs::write(p, serde_json::to_vec_pretty(value)?)
                .with_context(|| format!("writing {}", p.display()))?;
        }
        None => human(value),
    }
    Ok(())
}

/// `--json [FILE]`, when asked: `-` is stdout (and the caller prints no table).
pub fn write(path: Option<&std::path::Path>, r: &impl serde::Serialize) -> Result<()> {
    match path {
        Some(p) if to_stdout(Some(p)) => {
            println!("{}", serde_json::to_string_pretty(r)?)
        }
        Some(path) => {
            let json = serde_json::to_vec_pretty(r)?;
            std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        }
        None => {}
    }
    Ok(())
}

/// Whether the human table goes to stdout (not when the JSON does).
pub fn table(json: Option<&std::path::Path>) -> bool {
    !to_stdout(json)
}
