//! The lab's address plan. Every lab lives in its own namespaces, so all labs share this plan
//! without clashing, and none of it is ever visible in the host's root namespace.

use std::net::Ipv4Addr;

/// Every lab namespace is named `pf-<id>-<role>`.
pub const PREFIX: &str = "pf";
/// Container subnet (bridge, nat, overlay, macvlan, routed): .1 gateway, .2 client, .3 server;
/// in a bridge lab, [`VM_HOST`] is a VM's NIC on a tap (the experiments' VM-H placement).
pub const CONTAINER_NET: [u8; 3] = [10, 200, 0];
pub const CONTAINER_PREFIX: u8 = 24;
pub const VM_HOST: u8 = 4;
/// A VM's tap on the bridge lab's bridge.
pub const VM_TAP: &str = "tap-vm";
/// The `nested` lab's inner network, inside the outer container: .1 its bridge, .3 the server.
pub const INNER_NET: [u8; 3] = [10, 201, 0];
/// Underlay between the two emulated hosts of `overlay` and `ipip`.
pub const UNDERLAY_NET: [u8; 3] = [192, 168, 77];
/// The `nat` lab's external network: the client outside, the host's published address .1.
pub const EXTERNAL_NET: [u8; 3] = [192, 168, 79];
/// Calico's link-local next hop for `routed` containers (answered by proxy ARP).
pub const ROUTED_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
pub const VXLAN_VNI: u32 = 42;
pub const VXLAN_PORT: u16 = 4789;
/// 1500 minus VXLAN's 50 bytes of outer headers.
pub const VXLAN_MTU: u32 = 1450;
pub const GENEVE_VNI: u32 = 43;
/// Geneve without options: the same 50 bytes of outer headers as VXLAN.
pub const GENEVE_MTU: u32 = 1450;
/// GRE: a 20-byte outer IP header and a 4-byte GRE header.
pub const GRE_MTU: u32 = 1476;
/// IP-in-IP adds a 20-byte outer header.
pub const IPIP_MTU: u32 = 1480;
/// The `ovs` lab's datapath (and its local port).
pub const OVS_DATAPATH: &str = "ovs-pf";
/// Ports published by the `nat` lab (DNAT to the server) and used by the workloads.
pub const PORTS: (u16, u16) = (20000, 20999);

pub fn at(net: [u8; 3], host: u8) -> Ipv4Addr {
    Ipv4Addr::new(net[0], net[1], net[2], host)
}
