//! The lab: container network modes built in network namespaces through netlink, driven by
//! workloads, torn down on every exit path. The host's root namespace is never touched: every
//! device, address, route and firewall rule lives in namespaces named `pf-<id>-<role>`.

pub mod link;
pub mod netem;
pub mod netns;
mod ovs;
pub mod plan;
mod registry;
pub mod tap;
mod topology;

use std::{net::IpAddr, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

pub use registry::{list, reap_stale, remove};
pub use topology::check_kernel;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Client and server in one namespace over loopback: the baseline.
    Host,
    /// Two containers on a Linux bridge (Docker's default network).
    Bridge,
    /// The bridge plus a published port: DNAT in, MASQUERADE out (Docker's `-p`).
    Nat,
    /// Two hosts joined by an underlay; bridge + VXLAN on each (Docker overlay, Flannel).
    Overlay,
    /// macvlan children in bridge mode on a parent device of the lab host.
    Macvlan,
    /// veth with /32 host routes and proxy ARP, no bridge (Calico).
    Routed,
    /// ipvlan L2 children on a parent device of the lab host.
    Ipvlan,
    /// IP-in-IP between two hosts (Calico IPIP).
    Ipip,
    /// ipvlan L3 children: routed by the parent's ipvlan, no ARP between them.
    IpvlanL3,
    /// Two hosts joined by an underlay; bridge + Geneve on each (OVN's encapsulation).
    Geneve,
    /// GRE between two hosts, routed like ipip (Calico and Flannel's IP-tunnel shape).
    Gre,
    /// A container network inside a container: the host's bridge, an outer container routing
    /// to its own bridge, an inner container behind it (Amaral's nested LB/LB). The client is
    /// on the lab host, the server in the inner container.
    Nested,
    /// Two containers on an Open vSwitch bridge (the kernel datapath, ovs-vswitchd in the
    /// lab's host namespace): Amaral's OVS row.
    Ovs,
}

impl Mode {
    pub const ALL: [Mode; 13] = [
        Mode::Host,
        Mode::Bridge,
        Mode::Nat,
        Mode::Overlay,
        Mode::Macvlan,
        Mode::Routed,
        Mode::Ipvlan,
        Mode::Ipip,
        Mode::IpvlanL3,
        Mode::Geneve,
        Mode::Gre,
        Mode::Nested,
        Mode::Ovs,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Host => "host",
            Mode::Bridge => "bridge",
            Mode::Nat => "nat",
            Mode::Overlay => "overlay",
            Mode::Macvlan => "macvlan",
            Mode::Routed => "routed",
            Mode::Ipvlan => "ipvlan",
            Mode::Ipip => "ipip",
            Mode::IpvlanL3 => "ipvlan-l3",
            Mode::Geneve => "geneve",
            Mode::Gre => "gre",
            Mode::Nested => "nested",
            Mode::Ovs => "ovs",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// What a device is for, so other tools can find the layer they want to act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    ContainerEnd,
    HostEnd,
    Bridge,
    Vxlan,
    Tunnel,
    Underlay,
    External,
    Parent,
    Loopback,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Device {
    pub netns: String,
    pub name: String,
    /// The kernel's link kind: veth, bridge, vxlan, macvlan, dummy, ipip, loopback.
    pub kind: String,
    pub role: Role,
    pub addr: Option<String>,
    pub mtu: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Endpoint {
    pub netns: String,
    /// The address this side uses (the server listens here).
    pub addr: IpAddr,
}

/// A lab as `lab up --json` prints it and the registry stores it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Description {
    pub id: String,
    pub mode: Mode,
    pub namespaces: Vec<String>,
    pub devices: Vec<Device>,
    pub client: Endpoint,
    pub server: Endpoint,
    /// The address the client dials: the server's, or in `nat` the host's published address.
    pub connect: IpAddr,
    /// Ports the lab carries (published and DNAT-ed in `nat`).
    pub ports: (u16, u16),
    /// The process that owns a temporary lab; `None` once `lab up` hands it to the user.
    pub owner: Option<registry::Owner>,
}

impl Description {
    pub fn device(&self, role: Role) -> impl Iterator<Item = &Device> {
        self.devices.iter().filter(move |d| d.role == role)
    }
}

/// A lab this process built. Dropping it tears the lab down, unless it was `keep`-ed.
pub struct Lab {
    pub desc: Description,
    keep: bool,
}

impl Lab {
    /// Builds a lab of `mode`. Any failure tears down whatever was built before returning it.
    pub fn up(mode: Mode, id: Option<&str>) -> Result<Lab> {
        crate::kernel::require_root("building a lab")?;
        reap_stale();
        let id = match id {
            Some(id) => {
                validate_id(id)?;
                id.to_string()
            }
            None => registry::free_id(),
        };
        topology::check_kernel(mode)?;
        let desc = registry::claim(&id, mode)?;
        let undo = id.clone();
        crate::cleanup::on_signal_last(&signal_key(&id), move || {
            if let Err(e) = remove(&undo) {
                eprintln!("profiler: tearing down lab {undo}: {e:#}");
            }
        });
        let mut lab = Lab { desc, keep: false };
        // The line each step redraws, cleared however this ends.
        let _progress = crate::progress::Cleared;
        crate::progress::show(&format!("building the {mode} lab {id}"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(topology::build(&mut lab.desc))
            .with_context(|| format!("building the {mode} lab {id}"))?;
        crate::progress::show(&format!("the {mode} lab {id}: checking it carries traffic"));
        check_connectivity(&lab.desc)
            .with_context(|| format!("the {mode} lab {id} was built but carries no traffic"))?;
        registry::save(&lab.desc)?;
        Ok(lab)
    }

    /// Hands the lab over to the user: it stays up after this process exits.
    pub fn keep(mut self) -> Result<Description> {
        self.desc.owner = None;
        registry::save(&self.desc)?;
        self.keep = true;
        crate::cleanup::forget(&signal_key(&self.desc.id));
        Ok(self.desc.clone())
    }
}

/// The key of a lab's teardown on a signal.
fn signal_key(id: &str) -> String {
    format!("lab:{id}")
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = remove(&self.desc.id) {
            eprintln!("profiler: tearing down lab {}: {e:#}", self.desc.id);
        }
        crate::cleanup::forget(&signal_key(&self.desc.id));
    }
}

/// Runs iptables inside a lab namespace (as Docker does, the rules live with the network).
pub fn iptables_in(ns: &str, args: &[&str]) -> Result<()> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    netns::run_in(ns, move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        topology::iptables(&a)
    })
}

/// The lab to work in: an existing one by id (left up), or a new one of `mode`, torn down when
/// the returned [`Lab`] is dropped.
pub fn existing_or_new(id: Option<&str>, mode: Mode) -> Result<(Description, Option<Lab>)> {
    match id {
        Some(id) => Ok((find(id)?, None)),
        None => {
            eprintln!("profiler: building the {mode} lab...");
            let l = Lab::up(mode, None)?;
            Ok((l.desc.clone(), Some(l)))
        }
    }
}

/// An existing lab, by id (for `bench --lab`, `trace --lab`).
pub fn find(id: &str) -> Result<Description> {
    validate_id(id)?;
    registry::load(id)
        .with_context(|| format!("no lab {id}: `profiler lab list` shows the labs that exist"))
}

pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 12
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !ok {
        bail!("bad lab id {id:?}: use 1 to 12 lowercase letters or digits, e.g. --id a1");
    }
    Ok(())
}

/// A TCP connection from the client's namespace to the server's, through the whole path.
fn check_connectivity(d: &Description) -> Result<()> {
    let port = d.ports.1;
    let (bind, connect) = (d.server.addr, d.connect);
    let listener = netns::run_in(&d.server.netns, move || {
        Ok(std::net::TcpListener::bind((bind, port))?)
    })?;
    listener.set_nonblocking(true)?;
    // Never blocks past the client's attempts, whatever happens to them.
    let accept = std::thread::spawn(move || -> Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            match listener.accept() {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => return Err(e.into()),
            }
        }
        bail!("the server side saw no connection")
    });
    netns::run_in(&d.client.netns, move || {
        let mut last = None;
        // The first packets may wait for ARP and the bridge's port state.
        for _ in 0..30 {
            match std::net::TcpStream::connect_timeout(
                &(connect, port).into(),
                Duration::from_millis(500),
            ) {
                Ok(_) => return Ok(()),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(anyhow::anyhow!(
            "no TCP connection to {connect}:{port}: {}",
            last.map(|e| e.to_string()).unwrap_or_default()
        ))
    })?;
    accept
        .join()
        .map_err(|_| anyhow::anyhow!("accept thread panicked"))??;
    Ok(())
}
