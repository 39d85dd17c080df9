//! The container's network, CNI style: name its namespace, a veth pair with `eth0` inside and
//! the host end on the lab's br0, address and route; `nat` adds a published port (DNAT).

use std::{
    io::Read as _,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::{
    mount::{MsFlags, mount},
    unistd::Pid,
};

use super::{Marks, NetMode, PAYLOAD_PORT, PUBLISHED_BASE, Phase};
use crate::lab::{
    self, Description,
    link::{self, Ns},
    netns,
    plan::{CONTAINER_NET, CONTAINER_PREFIX, VXLAN_MTU, at},
};

pub fn container_ip(index: usize) -> Ipv4Addr {
    at(CONTAINER_NET, super::FIRST_HOST + index as u8)
}

/// Binds the child's network namespace to /run/netns/`name`; `slot` records it for teardown
/// as soon as the file exists.
pub fn bind_netns(pid: Pid, name: &str, slot: &mut Option<String>) -> Result<()> {
    std::fs::create_dir_all(netns::NETNS_DIR)?;
    let target = netns::path(name);
    std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(&target)
        .with_context(|| format!("creating {} (name taken?)", target.display()))?;
    *slot = Some(name.to_string());
    let src = format!("/proc/{pid}/ns/net");
    mount(
        Some(src.as_str()),
        &target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .with_context(|| format!("bind-mounting {src} onto {}", target.display()))
}

/// Where the readiness client runs and what it dials.
#[derive(Clone, Debug)]
pub struct Probe {
    pub netns: String,
    pub addr: SocketAddr,
}

/// One container's network, decided before the clock starts.
pub struct Plan {
    ip: Ipv4Addr,
    host_end: String,
    mtu: Option<u32>,
    gateway: Option<Ipv4Addr>,
    /// nat: (published address, port).
    publish: Option<(Ipv4Addr, u16)>,
    pub probe: Probe,
}

impl Plan {
    pub fn new(net: NetMode, index: usize, lab: &Description, bridge_ns: &str) -> Plan {
        let ip = container_ip(index);
        let direct = SocketAddr::from((ip, PAYLOAD_PORT));
        let (mtu, gateway, publish, probe) = match net {
            // The client is the host (br0's address), as `curl <container ip>` on a Docker host.
            NetMode::None | NetMode::Bridge => (
                None,
                Some(at(CONTAINER_NET, 1)),
                None,
                Probe {
                    netns: bridge_ns.to_string(),
                    addr: direct,
                },
            ),
            // The client is outside, through the published port: DNAT in PREROUTING only
            // sees packets that arrive from outside the host.
            NetMode::Nat => {
                let public = match lab.connect {
                    std::net::IpAddr::V4(a) => a,
                    std::net::IpAddr::V6(_) => at(CONTAINER_NET, 1),
                };
                let port = PUBLISHED_BASE + index as u16;
                (
                    None,
                    Some(at(CONTAINER_NET, 1)),
                    Some((public, port)),
                    Probe {
                        netns: lab.client.netns.clone(),
                        addr: SocketAddr::from((public, port)),
                    },
                )
            }
            // No gateway on the overlay; the client is the container on the other host (hy),
            // so the answer crosses VXLAN and the underlay.
            NetMode::Overlay => (
                Some(VXLAN_MTU),
                None,
                None,
                Probe {
                    netns: lab.server.netns.clone(),
                    addr: direct,
                },
            ),
        };
        Plan {
            ip,
            host_end: format!("veth-k{index}"),
            mtu,
            gateway,
            publish,
            probe,
        }
    }
}

/// A published port's DNAT rule, removed at teardown (the lab's namespace would take it too).
pub struct Dnat {
    netns: String,
    rule: Vec<String>,
}

impl Dnat {
    fn args(&self, op: &str) -> Vec<String> {
        let mut a = vec!["-t".to_string(), "nat".into(), op.into()];
        a.extend(self.rule.iter().cloned());
        a
    }

    fn apply(&self, op: &str) -> Result<()> {
        let a = self.args(op);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        lab::iptables_in(&self.netns, &a)
    }

    pub fn remove(&self) -> Result<()> {
        if !netns::exists(&self.netns) {
            return Ok(());
        }
        self.apply("-D")
    }
}

/// Phases 4-6: veth, bridge, addressing. Marks each phase's end.
pub async fn attach(
    plan: &Plan,
    host: &Ns,
    container_ns: &str,
    marks: &mut Marks,
    dnat: &mut Option<Dnat>,
) -> Result<()> {
    // 4. veth: created inside the container (eth0), its peer moved to the bridge's namespace.
    let c = Ns::open(container_ns)?;
    c.add("veth", link::veth("eth0", &plan.host_end)).await?;
    c.move_to(&plan.host_end, &host.name).await?;
    marks.mark(Phase::Veth);

    // 5. bridge.
    host.master(&plan.host_end, "br0").await?;
    host.up(&plan.host_end).await?;
    marks.mark(Phase::Bridge);

    // 6. addressing.
    if let Some(mtu) = plan.mtu {
        c.mtu("eth0", mtu).await?;
    }
    c.addr("eth0", plan.ip, CONTAINER_PREFIX).await?;
    c.up("eth0").await?;
    c.up("lo").await?;
    if let Some(gw) = plan.gateway {
        c.route(Ipv4Addr::UNSPECIFIED, 0, Some(gw), "eth0").await?;
    }
    if let Some((public, port)) = plan.publish {
        let d = Dnat {
            netns: host.name.clone(),
            rule: [
                "PREROUTING",
                "-d",
                &public.to_string(),
                "-p",
                "tcp",
                "--dport",
                &port.to_string(),
                "-j",
                "DNAT",
                "--to-destination",
                &format!("{}:{PAYLOAD_PORT}", plan.ip),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        };
        d.apply("-A")
            .with_context(|| format!("publishing port {port}"))?;
        *dnat = Some(d);
    }
    marks.mark(Phase::Addr);
    Ok(())
}

/// Phase 8 (networked): dials until the payload answers with its byte. Returns when it did.
pub fn probe(p: &Probe, pid: Pid, timeout: Duration) -> Result<Instant> {
    let addr = p.addr;
    netns::run_in(&p.netns, move || {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            if crate::cleanup::stop_requested() {
                bail!("interrupted");
            }
            if let Some(why) = super::spawn::exited(pid) {
                bail!("the payload is gone before it answered on {addr}: {why}");
            }
            if Instant::now() >= deadline {
                bail!("no answer from the payload on {addr} within {timeout:?} ({last})");
            }
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(mut s) => {
                    s.set_read_timeout(Some(Duration::from_secs(2)))?;
                    let mut b = [0u8; 1];
                    match s.read(&mut b) {
                        Ok(1) => return Ok(Instant::now()),
                        Ok(_) => last = "connection closed without an answer".into(),
                        Err(e) => last = e.to_string(),
                    }
                }
                // Refused until the payload listens: a reset comes back in microseconds.
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    })
    .map_err(|e| anyhow!("{e:#}"))
}
