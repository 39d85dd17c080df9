//! Open vSwitch's kernel datapath for the `ovs` lab, driven with ovs-dpctl (genetlink) inside
//! the lab's host namespace, where the datapath lives and dies with the namespace.
//!
//! The flows are installed directly, as the megaflows ovs-vswitchd's NORMAL action settles on
//! for two ports (each port's traffic to the other): every packet then takes the datapath's
//! fast path, which is what a steady-state measurement of OVS measures. ovs-vswitchd is not
//! run: in the TCG guests here (OVS 3.1, per-CPU upcall dispatch) it starts no upcall handler
//! ("Overriding n-handler-threads to 0"), so no flow ever gets installed through it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, bail};

use super::netns;

const DIRS: [&str; 4] = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

fn dpctl_path() -> Result<PathBuf> {
    DIRS.iter()
        .map(|d| Path::new(d).join("ovs-dpctl"))
        .find(|p| p.exists())
        .ok_or_else(|| {
            anyhow!(
                "ovs-dpctl not found: install Debian's openvswitch-switch (Open vSwitch's tools)"
            )
        })
}

/// Open vSwitch's datapath tool is installed.
pub fn check_tools() -> Result<()> {
    dpctl_path().map(|_| ())
}

/// `ovs-dpctl ARGS` in the namespace `ns`.
pub fn dpctl(ns: &str, args: &[&str]) -> Result<()> {
    let tool = dpctl_path()?;
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    netns::run_in(ns, move || {
        let out = Command::new(&tool)
            .args(&args)
            .output()
            .context("running ovs-dpctl")?;
        if !out.status.success() {
            bail!(
                "ovs-dpctl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    })
}
