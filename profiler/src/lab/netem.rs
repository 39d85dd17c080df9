//! netem as the other injector: `tc qdisc add dev DEV root netem delay D` in a lab namespace,
//! on kernels that have sch_netem (a stock kernel's module; this host's kernel lacks it). It
//! delays a device's egress, where the TC program (`probes::inject`) delays in a bpf_loop.

use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};

/// Whether this kernel can hold a netem qdisc now: built in, or its module loaded.
pub fn available() -> bool {
    use crate::kernel::modules::{Build, Modules};
    matches!(
        Modules::running().build("CONFIG_NET_SCH_NETEM", "sch_netem"),
        Build::BuiltIn | Build::Module { loaded: true, .. }
    )
}

/// Why netem can't be used here, in one phrase.
pub fn why_not() -> String {
    crate::kernel::modules::Modules::running().describe("CONFIG_NET_SCH_NETEM", "sch_netem")
}

/// A netem root qdisc on one lab device, removed on drop (and with the lab's namespace).
pub struct Netem {
    netns: String,
    dev: String,
}

fn tc(netns: &str, args: Vec<String>) -> Result<()> {
    let shown = args.join(" ");
    let out = super::netns::run_in(netns, move || {
        crate::cleanup::die_with_parent(&mut Command::new("tc"))
            .args(&args)
            .output()
            .context("running tc (install iproute2)")
    })?;
    if !out.status.success() {
        bail!(
            "tc {shown}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Netem {
    pub fn add(netns: &str, dev: &str, delay: Duration) -> Result<Netem> {
        if !available() {
            bail!("netem is not usable here: {}", why_not());
        }
        let us = delay.as_nanos() as f64 / 1e3;
        tc(
            netns,
            ["qdisc", "add", "dev", dev, "root", "netem", "delay"]
                .map(String::from)
                .into_iter()
                .chain([format!("{us}us")])
                .collect(),
        )
        .with_context(|| format!("adding netem on {dev} in {netns}"))?;
        Ok(Netem {
            netns: netns.into(),
            dev: dev.into(),
        })
    }

    /// Removes a netem root qdisc a dead run left (the reaper): the lab kept its device.
    pub fn remove(netns: &str, dev: &str) -> Result<()> {
        tc(
            netns,
            ["qdisc", "del", "dev", dev, "root"]
                .map(String::from)
                .to_vec(),
        )
    }
}

impl Drop for Netem {
    fn drop(&mut self) {
        let _ = Netem::remove(&self.netns, &self.dev);
    }
}
