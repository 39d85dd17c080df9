//! Which labs exist, who owns them, and the reaping of what a killed owner left behind.
//! One JSON file per lab in /run/profiler/labs (tmpfs: a reboot forgets labs, as it forgets
//! their namespaces). The file is written before the first namespace is created, so a
//! namespace with the prefix and no file is always a leftover.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};

use super::{Description, Endpoint, Mode, netns, plan::PREFIX};
pub use crate::cleanup::Owner;

const DIR: &str = "/run/profiler/labs";

fn file(id: &str) -> PathBuf {
    PathBuf::from(DIR).join(format!("{id}.json"))
}

pub fn ns_name(id: &str, role: &str) -> String {
    format!("{PREFIX}-{id}-{role}")
}

/// The lab id a namespace belongs to, if it carries the prefix.
fn id_of(ns: &str) -> Option<&str> {
    let rest = ns.strip_prefix(PREFIX)?.strip_prefix('-')?;
    Some(rest.split_once('-')?.0)
}

/// Reserves `id` for a lab this process is about to build; refuses an id in use.
pub fn claim(id: &str, mode: Mode) -> Result<Description> {
    std::fs::create_dir_all(DIR).with_context(|| format!("creating {DIR}"))?;
    let taken = netns::list().iter().any(|n| id_of(n) == Some(id));
    if taken || file(id).exists() {
        bail!("lab id {id} is in use: pick another --id, or `profiler lab down {id}` first");
    }
    let placeholder = Endpoint {
        netns: String::new(),
        addr: std::net::Ipv4Addr::LOCALHOST.into(),
    };
    let desc = Description {
        id: id.to_string(),
        mode,
        namespaces: vec![],
        devices: vec![],
        client: placeholder.clone(),
        server: placeholder,
        connect: std::net::Ipv4Addr::LOCALHOST.into(),
        ports: super::plan::PORTS,
        owner: Some(Owner::me()),
    };
    let json = serde_json::to_vec_pretty(&desc)?;
    // create_new: two processes claiming one id cannot both win.
    use std::io::Write as _;
    std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(file(id))
        .and_then(|mut f| f.write_all(&json))
        .map_err(|e| anyhow::anyhow!("lab id {id} is in use ({e}): pick another --id"))?;
    Ok(desc)
}

pub fn save(desc: &Description) -> Result<()> {
    let tmp = file(&format!("{}.tmp", desc.id));
    std::fs::write(&tmp, serde_json::to_vec_pretty(desc)?)?;
    std::fs::rename(&tmp, file(&desc.id)).context("saving the lab's description")
}

pub fn load(id: &str) -> Result<Description> {
    let bytes = std::fs::read(file(id))?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// The first free numeric id.
pub fn free_id() -> String {
    let used: Vec<String> = list().into_iter().map(|d| d.id).collect();
    let in_ns: Vec<String> = netns::list()
        .iter()
        .filter_map(|n| id_of(n).map(str::to_string))
        .collect();
    (1..)
        .map(|i: u32| i.to_string())
        .find(|i| !used.contains(i) && !in_ns.contains(i) && !file(i).exists())
        .expect("a free id")
}

/// The labs that exist (after reaping those whose owner died).
pub fn list() -> Vec<Description> {
    let Ok(dir) = std::fs::read_dir(DIR) else {
        return vec![];
    };
    let mut labs: Vec<Description> = dir
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect();
    labs.sort_by(|a, b| a.id.cmp(&b.id));
    labs
}

/// Removes a lab: its namespaces (and with them every device, route and rule in them) and its
/// file. Also removes prefixed namespaces of that id that the file does not list (a build cut
/// short). Missing pieces are not errors.
pub fn remove(id: &str) -> Result<()> {
    let mut first_err = None;
    for ns in netns::list().iter().filter(|n| id_of(n) == Some(id)) {
        if let Err(e) = netns::delete(ns) {
            first_err.get_or_insert(e);
        }
    }
    let _ = std::fs::remove_file(file(id));
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Removes labs whose owning process is gone (killed with -9, or crashed), and prefixed
/// namespaces that no lab file accounts for. Returns the ids removed.
pub fn reap_stale() -> Vec<String> {
    let mut reaped = vec![];
    for d in list() {
        if d.owner.as_ref().is_some_and(|o| !o.alive()) && remove(&d.id).is_ok() {
            reaped.push(d.id);
        }
    }
    for ns in netns::list() {
        if let Some(id) = id_of(&ns)
            && !file(id).exists()
            && netns::delete(&ns).is_ok()
            && !reaped.iter().any(|r| r == id)
        {
            reaped.push(id.to_string());
        }
    }
    for id in &reaped {
        eprintln!("profiler: removed stale lab {id} (its owner is gone)");
    }
    reaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names_carry_the_id() {
        assert_eq!(ns_name("a1", "hx"), "pf-a1-hx");
        assert_eq!(id_of("pf-a1-hx"), Some("a1"));
        assert_eq!(id_of("pf-7-c"), Some("7"));
        assert_eq!(id_of("pfx-1-c"), None);
        assert_eq!(id_of("other"), None);
    }
}
