//! How each mode is built. Each step is named, so a test can inject a failure halfway
//! (`PROFILER_FAIL_AT=<step>`) and check that nothing is left behind.

use std::{net::Ipv4Addr, process::Command};

use anyhow::{Context as _, Result, anyhow, bail};

use super::{
    Description, Device, Endpoint, Mode, Role,
    link::{self, Ns},
    netns,
    plan::{self, CONTAINER_NET, CONTAINER_PREFIX, EXTERNAL_NET, INNER_NET, UNDERLAY_NET, at},
    registry::{ns_name, save},
};

/// Fails at the named step when PROFILER_FAIL_AT says so: a test hook for teardown paths.
fn step(name: &str) -> Result<()> {
    crate::progress::show(&format!("building the lab: {name} done"));
    if std::env::var("PROFILER_FAIL_AT").is_ok_and(|s| s == name) {
        bail!("injected failure at step {name} (PROFILER_FAIL_AT)");
    }
    Ok(())
}

/// The kernel features a mode needs, tried for real in a throwaway namespace.
pub fn check_kernel(mode: Mode) -> Result<()> {
    // (feature, config option, module)
    let needs: &[(&str, &str, &str)] = match mode {
        Mode::Host => &[],
        Mode::Bridge => &[VETH, BRIDGE],
        Mode::Nat => &[VETH, BRIDGE, ("iptables-nat", "CONFIG_NF_NAT", "nf_nat")],
        Mode::Overlay => &[VETH, BRIDGE, ("vxlan", "CONFIG_VXLAN", "vxlan")],
        Mode::Macvlan => &[("macvlan", "CONFIG_MACVLAN", "macvlan")],
        Mode::Routed => &[VETH],
        Mode::Ipvlan => &[("ipvlan", "CONFIG_IPVLAN", "ipvlan")],
        Mode::Ipip => &[VETH, ("ipip", "CONFIG_NET_IPIP", "ipip")],
        Mode::IpvlanL3 => &[VETH, ("ipvlan", "CONFIG_IPVLAN", "ipvlan")],
        Mode::Geneve => &[VETH, BRIDGE, ("geneve", "CONFIG_GENEVE", "geneve")],
        Mode::Gre => &[VETH, ("gre", "CONFIG_NET_IPGRE", "ip_gre")],
        Mode::Nested => &[VETH, BRIDGE],
        Mode::Ovs => &[VETH, ("openvswitch", "CONFIG_OPENVSWITCH", "openvswitch")],
    };
    let mut modules = None;
    for (feature, option, module) in needs {
        try_feature(feature).map_err(|e| {
            let m = modules.get_or_insert_with(crate::kernel::modules::Modules::running);
            anyhow!(
                "mode {mode} needs {feature}, which this kernel lacks ({}; {e})",
                m.describe(option, module)
            )
        })?;
    }
    if mode == Mode::Ovs {
        super::ovs::check_tools().map_err(|e| anyhow!("mode {mode}: {e}"))?;
    }
    Ok(())
}

const VETH: (&str, &str, &str) = ("veth", "CONFIG_VETH", "veth");
const BRIDGE: (&str, &str, &str) = ("bridge", "CONFIG_BRIDGE", "bridge");

/// Creates one device of the kind (or runs iptables' nat table) in a throwaway namespace.
fn try_feature(feature: &'static str) -> Result<()> {
    if feature == "openvswitch" {
        // The datapath is made by ovs-vswitchd, not by a link message: the module must be in.
        use crate::kernel::modules::{Build, Modules};
        return match Modules::running().build("CONFIG_OPENVSWITCH", "openvswitch") {
            Build::BuiltIn | Build::Module { loaded: true, .. } => Ok(()),
            _ => bail!("no Open vSwitch datapath"),
        };
    }
    std::thread::spawn(move || -> Result<()> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
        if feature == "iptables-nat" {
            return iptables(&["-t", "nat", "-A", "POSTROUTING", "-j", "MASQUERADE"]);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection()?;
            tokio::spawn(conn);
            let parent = || async {
                handle
                    .link()
                    .add(link::veth("pfparent", "pfpeer"))
                    .execute()
                    .await?;
                let mut l = handle
                    .link()
                    .get()
                    .match_name("pfparent".to_string())
                    .execute();
                use futures::TryStreamExt as _;
                let l = l.try_next().await?.ok_or_else(|| anyhow!("no parent"))?;
                Ok::<u32, anyhow::Error>(l.header.index)
            };
            let msg = match feature {
                "veth" => link::veth("pfa", "pfb"),
                "bridge" => link::bridge("pfbr"),
                "vxlan" => rtnetlink::LinkVxlan::new("pfvx", 1)
                    .port(plan::VXLAN_PORT)
                    .build(),
                "macvlan" => link::macvlan("pfmv", parent().await?),
                "ipvlan" => link::ipvlan("pfiv", parent().await?),
                "ipip" => link::ipip("pfip", at(UNDERLAY_NET, 1), at(UNDERLAY_NET, 2)),
                "geneve" => link::geneve("pfgn", 1, at(UNDERLAY_NET, 2)),
                "gre" => link::gre("pfgre", at(UNDERLAY_NET, 1), at(UNDERLAY_NET, 2)),
                other => bail!("unknown feature {other}"),
            };
            handle
                .link()
                .add(msg)
                .execute()
                .await
                .map_err(|e| anyhow!("creating a {feature} device: {e}"))
        })
    })
    .join()
    .map_err(|_| anyhow!("feature probe panicked"))?
}

/// Runs iptables in the calling thread's namespace (the child inherits it).
pub(super) fn iptables(args: &[&str]) -> Result<()> {
    let out = crate::cleanup::die_with_parent(&mut Command::new("iptables"))
        .args(["-w", "5"])
        .args(args)
        .output()
        .map_err(|e| anyhow!("running iptables ({e}): install the iptables package"))?;
    if !out.status.success() {
        bail!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Records a device in the description.
fn dev(d: &mut Description, ns: &str, name: &str, kind: &str, role: Role, addr: Option<String>) {
    d.devices.push(Device {
        netns: ns.into(),
        name: name.into(),
        kind: kind.into(),
        role,
        addr,
        mtu: None,
    });
}

/// Creates the lab's namespaces, recording each in the description (and on disk) first.
fn namespaces(d: &mut Description, roles: &[&str]) -> Result<Vec<Ns>> {
    let mut out = vec![];
    for role in roles {
        let name = ns_name(&d.id, role);
        d.namespaces.push(name.clone());
        save(d)?;
        netns::create(&name)?;
        out.push(Ns::open(&name)?);
    }
    Ok(out)
}

/// A container on `host`: veth `eth0` in the container, `veth-<tag>` on the host side.
async fn container(
    d: &mut Description,
    host: &Ns,
    c: &Ns,
    tag: &str,
    ip: std::net::Ipv4Addr,
    prefix: u8,
) -> Result<()> {
    let host_end = format!("veth-{tag}");
    c.add("veth", link::veth("eth0", &host_end)).await?;
    c.move_to(&host_end, &host.name).await?;
    c.addr("eth0", ip, prefix).await?;
    c.up("eth0").await?;
    host.up(&host_end).await?;
    dev(
        d,
        &c.name,
        "eth0",
        "veth",
        Role::ContainerEnd,
        Some(format!("{ip}/{prefix}")),
    );
    dev(d, &host.name, &host_end, "veth", Role::HostEnd, None);
    Ok(())
}

/// A Linux bridge with the containers' gateway address.
async fn gateway_bridge(d: &mut Description, host: &Ns) -> Result<()> {
    host.add("bridge", link::bridge("br0")).await?;
    let gw = at(CONTAINER_NET, 1);
    host.addr("br0", gw, CONTAINER_PREFIX).await?;
    dev(
        d,
        &host.name,
        "br0",
        "bridge",
        Role::Bridge,
        Some(format!("{gw}/{CONTAINER_PREFIX}")),
    );
    Ok(())
}

fn endpoints(d: &mut Description, client: &Ns, server: &Ns) {
    d.client = Endpoint {
        netns: client.name.clone(),
        addr: at(CONTAINER_NET, 2).into(),
    };
    d.server = Endpoint {
        netns: server.name.clone(),
        addr: at(CONTAINER_NET, 3).into(),
    };
    d.connect = d.server.addr;
}

pub async fn build(d: &mut Description) -> Result<()> {
    match d.mode {
        Mode::Host => host(d).await,
        Mode::Bridge => bridge(d, false).await,
        Mode::Nat => bridge(d, true).await,
        Mode::Overlay => overlay(d, Mode::Overlay).await,
        Mode::Geneve => overlay(d, Mode::Geneve).await,
        Mode::Macvlan => macvlan(d, Child::Macvlan).await,
        Mode::Ipvlan => macvlan(d, Child::IpvlanL2).await,
        Mode::IpvlanL3 => macvlan(d, Child::IpvlanL3).await,
        Mode::Routed => routed(d).await,
        Mode::Ipip => tunnel(d, Mode::Ipip).await,
        Mode::Gre => tunnel(d, Mode::Gre).await,
        Mode::Nested => nested(d).await,
        Mode::Ovs => ovs(d).await,
    }
}

async fn host(d: &mut Description) -> Result<()> {
    let [h] = <[Ns; 1]>::try_from(namespaces(d, &["h"])?).map_err(|_| anyhow!("namespaces"))?;
    dev(
        d,
        &h.name,
        "lo",
        "loopback",
        Role::Loopback,
        Some("127.0.0.1/8".into()),
    );
    d.client = Endpoint {
        netns: h.name.clone(),
        addr: std::net::Ipv4Addr::LOCALHOST.into(),
    };
    d.server = d.client.clone();
    d.connect = d.server.addr;
    step("host")
}

/// `bridge`: client and server containers on one bridge. `nat`: the server on the bridge, the
/// client outside, reaching it through the host's published ports.
async fn bridge(d: &mut Description, nat: bool) -> Result<()> {
    let [h, c, s] =
        <[Ns; 3]>::try_from(namespaces(d, &["h", "c", "s"])?).map_err(|_| anyhow!("namespaces"))?;
    step("namespaces")?;
    gateway_bridge(d, &h).await?;
    step("bridge")?;
    container(d, &h, &s, "s", at(CONTAINER_NET, 3), CONTAINER_PREFIX).await?;
    h.master("veth-s", "br0").await?;
    s.route(
        std::net::Ipv4Addr::UNSPECIFIED,
        0,
        Some(at(CONTAINER_NET, 1)),
        "eth0",
    )
    .await?;
    step("server")?;
    if !nat {
        container(d, &h, &c, "c", at(CONTAINER_NET, 2), CONTAINER_PREFIX).await?;
        h.master("veth-c", "br0").await?;
        endpoints(d, &c, &s);
        return step("client");
    }
    // The outside world: the client reaches the host's external address.
    c.add("veth", link::veth("eth0", "ext0")).await?;
    c.move_to("ext0", &h.name).await?;
    let (pub_ip, client_ip) = (at(EXTERNAL_NET, 1), at(EXTERNAL_NET, 2));
    h.addr("ext0", pub_ip, 24).await?;
    h.up("ext0").await?;
    c.addr("eth0", client_ip, 24).await?;
    c.up("eth0").await?;
    dev(
        d,
        &h.name,
        "ext0",
        "veth",
        Role::External,
        Some(format!("{pub_ip}/24")),
    );
    dev(
        d,
        &c.name,
        "eth0",
        "veth",
        Role::ContainerEnd,
        Some(format!("{client_ip}/24")),
    );
    // Lets the ablation run reach the server without NAT (same path, no DNAT rule hit).
    c.route(at(CONTAINER_NET, 0), CONTAINER_PREFIX, Some(pub_ip), "eth0")
        .await?;
    step("external")?;
    h.sysctl("net.ipv4.ip_forward", "1")?;
    let server = at(CONTAINER_NET, 3).to_string();
    let ports = format!("{}:{}", d.ports.0, d.ports.1);
    let subnet = format!("{}/{CONTAINER_PREFIX}", at(CONTAINER_NET, 0));
    let pub_ip_s = pub_ip.to_string();
    netns::run_in(&h.name, move || {
        // Docker's -p: DNAT the published ports in, MASQUERADE containers going out.
        for proto in ["tcp", "udp"] {
            iptables(&[
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-d",
                &pub_ip_s,
                "-p",
                proto,
                "--dport",
                &ports,
                "-j",
                "DNAT",
                "--to-destination",
                &server,
            ])?;
        }
        iptables(&[
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            &subnet,
            "!",
            "-o",
            "br0",
            "-j",
            "MASQUERADE",
        ])
    })
    .context("setting the nat lab's firewall rules")?;
    step("nat")?;
    d.client = Endpoint {
        netns: c.name.clone(),
        addr: client_ip.into(),
    };
    d.server = Endpoint {
        netns: s.name.clone(),
        addr: at(CONTAINER_NET, 3).into(),
    };
    d.connect = pub_ip.into();
    Ok(())
}

/// The underlay veth between two hosts' namespaces (`ux` in hx, `uy` in hy), addressed and up;
/// returns the two ends' addresses.
async fn underlay(d: &mut Description, hx: &Ns, hy: &Ns) -> Result<(Ipv4Addr, Ipv4Addr)> {
    hx.add("veth", link::veth("ux", "uy")).await?;
    hx.move_to("uy", &hy.name).await?;
    let (lx, ly) = (at(UNDERLAY_NET, 1), at(UNDERLAY_NET, 2));
    for (h, u, ip) in [(hx, "ux", lx), (hy, "uy", ly)] {
        h.addr(u, ip, 24).await?;
        h.up(u).await?;
        dev(
            d,
            &h.name,
            u,
            "veth",
            Role::Underlay,
            Some(format!("{ip}/24")),
        );
    }
    step("underlay")?;
    Ok((lx, ly))
}

/// Two hosts joined by an underlay (their addresses on it last), a container on each.
async fn two_hosts(d: &mut Description) -> Result<(Ns, Ns, Ns, Ns, Ipv4Addr, Ipv4Addr)> {
    let [hx, hy, c, s] = <[Ns; 4]>::try_from(namespaces(d, &["hx", "hy", "c", "s"])?)
        .map_err(|_| anyhow!("namespaces"))?;
    step("namespaces")?;
    let (lx, ly) = underlay(d, &hx, &hy).await?;
    Ok((hx, hy, c, s, lx, ly))
}

/// The container's end gets the encapsulation's smaller MTU, in the lab and its description.
async fn container_mtu(d: &mut Description, ctr: &Ns, mtu: u32) -> Result<()> {
    ctr.mtu("eth0", mtu).await?;
    if let Some(dv) = d
        .devices
        .iter_mut()
        .rev()
        .find(|x| x.role == Role::ContainerEnd)
    {
        dv.mtu = Some(mtu);
    }
    Ok(())
}

/// `overlay` (VXLAN) or `geneve`: the containers bridged over an L2 encapsulation.
async fn overlay(d: &mut Description, mode: Mode) -> Result<()> {
    let (hx, hy, c, s, lx, ly) = two_hosts(d).await?;
    for (h, u, local, remote, ctr, tag, ip) in [
        (&hx, "ux", lx, ly, &c, "c", at(CONTAINER_NET, 2)),
        (&hy, "uy", ly, lx, &s, "s", at(CONTAINER_NET, 3)),
    ] {
        h.add("bridge", link::bridge("br0")).await?;
        dev(d, &h.name, "br0", "bridge", Role::Bridge, None);
        let under = h.index(u).await?;
        let (kind, name, mtu, msg) = if mode == Mode::Geneve {
            let msg = link::geneve("geneve0", plan::GENEVE_VNI, remote);
            ("geneve", "geneve0", plan::GENEVE_MTU, msg)
        } else {
            let msg = link::vxlan("vxlan0", plan::VXLAN_VNI, under, local, remote);
            ("vxlan", "vxlan0", plan::VXLAN_MTU, msg)
        };
        h.add(kind, msg).await?;
        h.master(name, "br0").await?;
        h.up(name).await?;
        dev(d, &h.name, name, kind, Role::Vxlan, None);
        step(kind)?;
        container(d, h, ctr, tag, ip, CONTAINER_PREFIX).await?;
        container_mtu(d, ctr, mtu).await?;
        h.master(&format!("veth-{tag}"), "br0").await?;
    }
    endpoints(d, &c, &s);
    step("containers")
}

/// The children a parent device hands out to containers.
#[derive(Clone, Copy, PartialEq)]
enum Child {
    Macvlan,
    IpvlanL2,
    IpvlanL3,
}

async fn macvlan(d: &mut Description, child: Child) -> Result<()> {
    let [h, c, s] =
        <[Ns; 3]>::try_from(namespaces(d, &["h", "c", "s"])?).map_err(|_| anyhow!("namespaces"))?;
    step("namespaces")?;
    // A veth stands for the host's NIC (dummy is not in every kernel; this one lacks it).
    h.add("veth", link::veth("eth0", "eth0-peer")).await?;
    h.up("eth0-peer").await?;
    h.up("eth0").await?;
    dev(d, &h.name, "eth0", "veth", Role::Parent, None);
    let parent = h.index("eth0").await?;
    for (ctr, tag, ip) in [
        (&c, "c", at(CONTAINER_NET, 2)),
        (&s, "s", at(CONTAINER_NET, 3)),
    ] {
        let (kind, name, msg) = match child {
            Child::Macvlan => (
                "macvlan",
                format!("mv-{tag}"),
                link::macvlan(&format!("mv-{tag}"), parent),
            ),
            Child::IpvlanL2 => (
                "ipvlan",
                format!("iv-{tag}"),
                link::ipvlan(&format!("iv-{tag}"), parent),
            ),
            Child::IpvlanL3 => (
                "ipvlan",
                format!("iv-{tag}"),
                link::ipvlan_l3(&format!("iv-{tag}"), parent),
            ),
        };
        h.add(kind, msg).await?;
        h.move_to(&name, &ctr.name).await?;
        ctr.addr(&name, ip, CONTAINER_PREFIX).await?;
        ctr.up(&name).await?;
        dev(
            d,
            &ctr.name,
            &name,
            kind,
            Role::ContainerEnd,
            Some(format!("{ip}/{CONTAINER_PREFIX}")),
        );
        step(kind)?;
    }
    endpoints(d, &c, &s);
    Ok(())
}

async fn routed(d: &mut Description) -> Result<()> {
    let [h, c, s] =
        <[Ns; 3]>::try_from(namespaces(d, &["h", "c", "s"])?).map_err(|_| anyhow!("namespaces"))?;
    step("namespaces")?;
    // Proxy ARP answers for the gateway only if the host routes it out another device.
    h.route(plan::ROUTED_GATEWAY, 32, None, "lo").await?;
    h.sysctl("net.ipv4.ip_forward", "1")?;
    for (ctr, tag, ip) in [
        (&c, "c", at(CONTAINER_NET, 2)),
        (&s, "s", at(CONTAINER_NET, 3)),
    ] {
        container(d, &h, ctr, tag, ip, 32).await?;
        route_container(&h, ctr, tag, ip).await?;
        step("routed")?;
    }
    endpoints(d, &c, &s);
    Ok(())
}

/// A container routed by its host: a /32 to its veth, proxy ARP there for the gateway, and the
/// container's default route through that gateway.
async fn route_container(h: &Ns, ctr: &Ns, tag: &str, ip: Ipv4Addr) -> Result<()> {
    let host_end = format!("veth-{tag}");
    h.route(ip, 32, None, &host_end).await?;
    h.sysctl(&format!("net.ipv4.conf.{host_end}.proxy_arp"), "1")?;
    ctr.route(Ipv4Addr::UNSPECIFIED, 0, Some(plan::ROUTED_GATEWAY), "eth0")
        .await
}

/// Calico's IPIP shape: each container routed (a /32 over its veth, proxy ARP for the
/// gateway) on its own host, the two hosts joined by an underlay, the other host's container
/// routed through the tunnel (`ipip`, or `gre`).
async fn tunnel(d: &mut Description, mode: Mode) -> Result<()> {
    let (hx, hy, c, s, lx, ly) = two_hosts(d).await?;
    let (cip, sip) = (at(CONTAINER_NET, 2), at(CONTAINER_NET, 3));
    for (h, local, remote, ctr, tag, ip, far) in [
        (&hx, lx, ly, &c, "c", cip, sip),
        (&hy, ly, lx, &s, "s", sip, cip),
    ] {
        let (kind, name, mtu, msg) = if mode == Mode::Gre {
            (
                "gre",
                "gre0x",
                plan::GRE_MTU,
                link::gre("gre0x", local, remote),
            )
        } else {
            (
                "ipip",
                "tun0",
                plan::IPIP_MTU,
                link::ipip("tun0", local, remote),
            )
        };
        h.add(kind, msg).await?;
        h.up(name).await?;
        dev(d, &h.name, name, kind, Role::Tunnel, None);
        step(kind)?;
        h.sysctl("net.ipv4.ip_forward", "1")?;
        h.route(plan::ROUTED_GATEWAY, 32, None, "lo").await?;
        container(d, h, ctr, tag, ip, 32).await?;
        container_mtu(d, ctr, mtu).await?;
        route_container(h, ctr, tag, ip).await?;
        h.route(far, 32, None, name).await?;
        step("routes")?;
    }
    endpoints(d, &c, &s);
    Ok(())
}

/// `nested`: the outer container `o` on the host's bridge holds its own bridge, with the inner
/// container `i` behind it. The outer container routes between its two networks (no NAT: the
/// host routes the inner subnet to it), so host to inner crosses two bridges and two veth
/// pairs, as Docker in Docker on Linux bridges does.
async fn nested(d: &mut Description) -> Result<()> {
    let [h, o, i] =
        <[Ns; 3]>::try_from(namespaces(d, &["h", "o", "i"])?).map_err(|_| anyhow!("namespaces"))?;
    step("namespaces")?;
    gateway_bridge(d, &h).await?;
    let outer = at(CONTAINER_NET, 2);
    container(d, &h, &o, "o", outer, CONTAINER_PREFIX).await?;
    h.master("veth-o", "br0").await?;
    o.route(Ipv4Addr::UNSPECIFIED, 0, Some(at(CONTAINER_NET, 1)), "eth0")
        .await?;
    step("outer")?;
    let gw = at(INNER_NET, 1);
    o.add("bridge", link::bridge("br1")).await?;
    o.addr("br1", gw, CONTAINER_PREFIX).await?;
    dev(
        d,
        &o.name,
        "br1",
        "bridge",
        Role::Bridge,
        Some(format!("{gw}/{CONTAINER_PREFIX}")),
    );
    o.sysctl("net.ipv4.ip_forward", "1")?;
    step("inner bridge")?;
    let inner = at(INNER_NET, 3);
    container(d, &o, &i, "i", inner, CONTAINER_PREFIX).await?;
    o.master("veth-i", "br1").await?;
    i.route(Ipv4Addr::UNSPECIFIED, 0, Some(gw), "eth0").await?;
    h.route(at(INNER_NET, 0), CONTAINER_PREFIX, Some(outer), "br0")
        .await?;
    step("inner")?;
    d.client = Endpoint {
        netns: h.name.clone(),
        addr: at(CONTAINER_NET, 1).into(),
    };
    d.server = Endpoint {
        netns: i.name.clone(),
        addr: inner.into(),
    };
    d.connect = d.server.addr;
    Ok(())
}

/// `ovs`: two containers on an Open vSwitch datapath (the kernel's openvswitch module): their
/// host ends are the datapath's ports 1 and 2, each forwarding to the other (see lab/ovs.rs).
async fn ovs(d: &mut Description) -> Result<()> {
    let [h, c, s] =
        <[Ns; 3]>::try_from(namespaces(d, &["h", "c", "s"])?).map_err(|_| anyhow!("namespaces"))?;
    step("namespaces")?;
    let dp = plan::OVS_DATAPATH;
    super::ovs::dpctl(&h.name, &["add-dp", dp])?;
    dev(d, &h.name, dp, "openvswitch", Role::Bridge, None);
    step("datapath")?;
    for (ctr, tag, ip, port) in [
        (&c, "c", at(CONTAINER_NET, 2), "1"),
        (&s, "s", at(CONTAINER_NET, 3), "2"),
    ] {
        container(d, &h, ctr, tag, ip, CONTAINER_PREFIX).await?;
        super::ovs::dpctl(
            &h.name,
            &["add-if", dp, &format!("veth-{tag},port_no={port}")],
        )?;
    }
    // What NORMAL learns for two ports: each one's Ethernet traffic out of the other.
    for (from, to) in [("1", "2"), ("2", "1")] {
        super::ovs::dpctl(
            &h.name,
            &["add-flow", dp, &format!("in_port({from}),eth()"), to],
        )?;
    }
    endpoints(d, &c, &s);
    step("flows")
}
