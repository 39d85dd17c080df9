//! Devices, addresses and routes through rtnetlink, one netlink socket per lab namespace.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context as _, Result, anyhow};
use futures::TryStreamExt as _;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use super::netns;

/// A lab namespace and a netlink handle bound to it.
pub struct Ns {
    pub name: String,
    handle: Handle,
}

impl Ns {
    /// Opens a netlink socket inside `name`; its connection task runs on the current runtime.
    pub fn open(name: &str) -> Result<Self> {
        // The socket registers with the runtime's reactor when created, on the namespace's thread.
        let rt = tokio::runtime::Handle::current();
        let (conn, handle, _) = netns::run_in(name, move || {
            let _guard = rt.enter();
            Ok(rtnetlink::new_connection()?)
        })
        .with_context(|| format!("netlink socket in {name}"))?;
        tokio::spawn(conn);
        Ok(Self {
            name: name.to_string(),
            handle,
        })
    }

    pub async fn add(
        &self,
        what: &str,
        msg: rtnetlink::packet_route::link::LinkMessage,
    ) -> Result<()> {
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| explain_add(what, e))
            .with_context(|| format!("in {}", self.name))
    }

    pub async fn index(&self, dev: &str) -> Result<u32> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(dev.to_string())
            .execute();
        let link = links
            .try_next()
            .await
            .with_context(|| format!("looking up {dev} in {}", self.name))?
            .ok_or_else(|| anyhow!("no device {dev} in {}", self.name))?;
        Ok(link.header.index)
    }

    async fn set(
        &self,
        msg: rtnetlink::packet_route::link::LinkMessage,
        what: String,
    ) -> Result<()> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .with_context(|| format!("{what} in {}", self.name))
    }

    pub async fn up(&self, dev: &str) -> Result<()> {
        let m = LinkUnspec::new_with_name(dev).up().build();
        self.set(m, format!("setting {dev} up")).await
    }

    pub async fn mtu(&self, dev: &str, mtu: u32) -> Result<()> {
        let m = LinkUnspec::new_with_name(dev).mtu(mtu).build();
        self.set(m, format!("setting {dev} mtu {mtu}")).await
    }

    pub async fn master(&self, dev: &str, bridge: &str) -> Result<()> {
        let br = self.index(bridge).await?;
        let m = LinkUnspec::new_with_name(dev).controller(br).build();
        self.set(m, format!("enslaving {dev} to {bridge}")).await
    }

    /// Moves `dev` into the namespace `to` (its peer, if a veth, stays here).
    pub async fn move_to(&self, dev: &str, to: &str) -> Result<()> {
        let f = std::fs::File::open(netns::path(to)).with_context(|| format!("opening {to}"))?;
        use std::os::fd::AsRawFd as _;
        let m = LinkUnspec::new_with_name(dev)
            .setns_by_fd(f.as_raw_fd())
            .build();
        self.set(m, format!("moving {dev} to {to}")).await
    }

    pub async fn addr(&self, dev: &str, ip: Ipv4Addr, prefix: u8) -> Result<()> {
        let idx = self.index(dev).await?;
        self.handle
            .address()
            .add(idx, IpAddr::V4(ip), prefix)
            .execute()
            .await
            .with_context(|| format!("adding {ip}/{prefix} to {dev} in {}", self.name))
    }

    /// `ip route add DEST/PREFIX [via GW] dev DEV [onlink]`.
    pub async fn route(
        &self,
        dest: Ipv4Addr,
        prefix: u8,
        gateway: Option<Ipv4Addr>,
        dev: &str,
    ) -> Result<()> {
        let idx = self.index(dev).await?;
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dest, prefix)
            .output_interface(idx);
        if let Some(gw) = gateway {
            // Calico style: the gateway is not on any subnet of the device.
            b = b.gateway(gw).onlink();
        } else {
            b = b.scope(rtnetlink::packet_route::route::RouteScope::Link);
        }
        self.handle
            .route()
            .add(b.build())
            .execute()
            .await
            .with_context(|| format!("adding route {dest}/{prefix} dev {dev} in {}", self.name))
    }

    /// Writes a sysctl under /proc/sys/net as seen from this namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_string();
        netns::run_in(&self.name, move || {
            std::fs::write(&path, &value).with_context(|| format!("writing {path}"))
        })
        .with_context(|| format!("sysctl {key} in {}", self.name))
    }
}

/// Netlink answers EOPNOTSUPP for a link kind the kernel was built without.
fn explain_add(what: &str, e: rtnetlink::Error) -> anyhow::Error {
    let text = e.to_string();
    if text.contains("Operation not supported") || text.contains("-95") {
        anyhow!("the kernel cannot create a {what} device (Operation not supported)")
    } else {
        anyhow!("creating {what}: {text}")
    }
}

pub fn veth(name: &str, peer: &str) -> rtnetlink::packet_route::link::LinkMessage {
    rtnetlink::LinkVeth::new(name, peer).build()
}

pub fn bridge(name: &str) -> rtnetlink::packet_route::link::LinkMessage {
    rtnetlink::LinkBridge::new(name).up().build()
}

pub fn vxlan(
    name: &str,
    vni: u32,
    underlay: u32,
    local: Ipv4Addr,
    remote: Ipv4Addr,
) -> rtnetlink::packet_route::link::LinkMessage {
    rtnetlink::LinkVxlan::new(name, vni)
        .dev(underlay)
        .port(super::plan::VXLAN_PORT)
        .local(local)
        .remote(remote)
        .learning(false)
        .build()
}

pub fn macvlan(name: &str, parent: u32) -> rtnetlink::packet_route::link::LinkMessage {
    rtnetlink::LinkMacVlan::new(
        name,
        parent,
        rtnetlink::packet_route::link::MacVlanMode::Bridge,
    )
    .build()
}

pub fn ipvlan(name: &str, parent: u32) -> rtnetlink::packet_route::link::LinkMessage {
    rtnetlink::LinkIpVlan::new(name, parent, rtnetlink::packet_route::link::IpVlanMode::L2).build()
}

pub fn ipvlan_l3(name: &str, parent: u32) -> rtnetlink::packet_route::link::LinkMessage {
    rtnetlink::LinkIpVlan::new(name, parent, rtnetlink::packet_route::link::IpVlanMode::L3).build()
}

/// Geneve has no local address or device attribute: the route to `remote` picks both.
pub fn geneve(
    name: &str,
    vni: u32,
    remote: Ipv4Addr,
) -> rtnetlink::packet_route::link::LinkMessage {
    rtnetlink::LinkGeneve::new(name, vni).remote(remote).build()
}

pub fn gre(
    name: &str,
    local: Ipv4Addr,
    remote: Ipv4Addr,
) -> rtnetlink::packet_route::link::LinkMessage {
    rtnetlink::LinkGre::new(name)
        .local(local)
        .remote(remote)
        .build()
}

pub fn ipip(
    name: &str,
    local: Ipv4Addr,
    remote: Ipv4Addr,
) -> rtnetlink::packet_route::link::LinkMessage {
    rtnetlink::LinkIpIp::new(name)
        .local(local)
        .remote(remote)
        .build()
}
