//! The layer model: which layer a segment (previous point -> current point) belongs to.
//! The kernel only sees the pair; this table names it, from the hooks and the kinds of the
//! devices involved, so the same model explains any host, not only the lab. Segments that the
//! available hooks cannot split are named for everything they contain.

use profiler_common::net::{
    POINTS, SLOT_ONE_WAY, SLOT_UNKNOWN, SLOTS_PER_DIR, class, func, hook, pair, point_class,
    point_encap, point_hook, point_port, stage, stage_point,
};

pub const UNKNOWN: &str = "other (unnamed segment)";
pub const ONE_WAY: &str = "one-way total";
/// Layers the commands single out (ablation, self-check, compare): named once, here.
pub const BRIDGE: &str = "bridge";
pub const IP_FORWARD: &str = "ip forward + netfilter";
pub const SOCKET: &str = "ip/transport receive + socket queue";
pub const VXLAN_DECAP: &str = "vxlan decap + ip/udp receive + netfilter in";
/// Rows of the function probes (a stock kernel's fentry/kprobe): the tunnel's transmit split at
/// ip_local_out, and netfilter's conntrack and NAT each timed from entry to exit.
pub const VXLAN_ENCAP: &str = "vxlan encap + route lookup";
/// With the tunnel's route lookup probed too (its transmit function and the lookup's
/// return): the route lookup, then the encapsulation alone.
pub const VXLAN_ROUTE: &str = "vxlan fdb + route lookup";
pub const VXLAN_ENCAP_ONLY: &str = "vxlan encap";
pub const IP_OUTPUT: &str = "ip output + netfilter out";
pub const CONNTRACK: &str = "conntrack (nf_conntrack_in)";
pub const NAT: &str = "NAT (nf_nat_inet_fn)";
/// The receive row split by the socket and task stages (data-ready, wake-up, switch-in).
pub const RECEIVE: &str = "ip/tcp receive up to data-ready";
pub const WAKE_UP: &str = "wake-up (data-ready to sched_wakeup)";
pub const RUN_QUEUE: &str = "run-queue wait (wakeup to switch-in)";
pub const READER: &str = "reader: switch-in to the copy";
/// The round trip's segments outside a packet's one-way time (before its birth, after its
/// copy): the sender's syscall and output, the reader's return, the application between.
pub const SEND_OUTPUT: &str = "send syscall + TCP/IP output";
pub const COPY_RETURN: &str = "copy to user + receive return";
pub const APPLICATION: &str = "application (receive return to next send)";

/// Whether a layer is a device or stack layer of the network path, not the receiving
/// socket's or its reader's time (what "largest network layer" may name).
pub fn is_network(layer: &str) -> bool {
    in_one_way(layer) && !(layer == SOCKET || stage_layer_names().contains(&layer))
}

fn stage_layer_names() -> Vec<&'static str> {
    use profiler_common::net::point;
    let stages = [
        stage::READY,
        stage::WAKEUP,
        stage::RUN,
        stage::RETURN,
        stage::SEND,
    ];
    let mut points: Vec<u8> = stages.iter().map(|&s| stage_point(s)).collect();
    points.push(point(hook::DELIVER, class::OTHER, false, false));
    points.push(point(hook::RECV, class::VETH, false, false));
    let mut out = vec![];
    for &a in &points {
        for &b in &points {
            if let Some(n) = stage_layer(a, b)
                && n != RECEIVE
            {
                out.push(n);
            }
        }
    }
    out
}

/// Whether a layer is part of a packet's one-way time (birth to copy).
pub fn in_one_way(layer: &str) -> bool {
    ![SEND_OUTPUT, COPY_RETURN, APPLICATION].contains(&layer)
}

/// Segments that end or start at a socket/task stage. A stage point has no device: its class
/// bits are the stage, its port and encap bits clear.
fn stage_layer(prev: u8, cur: u8) -> Option<&'static str> {
    let st = |p: u8| {
        (point_hook(p) == hook::STAGE && p == stage_point(point_class(p))).then(|| point_class(p))
    };
    let deliver = |p: u8| point_hook(p) == hook::DELIVER;
    Some(match (st(prev), st(cur)) {
        (None, Some(stage::READY)) if matches!(point_hook(prev), hook::RECV | hook::GRO) => RECEIVE,
        (Some(stage::READY), Some(stage::WAKEUP)) => WAKE_UP,
        (Some(stage::WAKEUP), Some(stage::RUN)) => RUN_QUEUE,
        (Some(stage::READY), Some(stage::RUN)) => "wake-up + run-queue wait (sched_wakeup unseen)",
        (Some(stage::RUN), None) if deliver(cur) => READER,
        (Some(stage::READY), None) if deliver(cur) => "data-ready to the copy (reader not asleep)",
        (Some(stage::WAKEUP), None) if deliver(cur) => "wake-up to the copy (switch-in unseen)",
        (None, Some(stage::RETURN)) if deliver(prev) => COPY_RETURN,
        (Some(stage::RETURN), Some(stage::SEND)) => APPLICATION,
        (Some(stage::SEND), None) if point_hook(cur) == hook::QUEUE && !point_encap(cur) => {
            SEND_OUTPUT
        }
        _ => return None,
    })
}
/// A bridge port's veth to its container, its egress qdisc included (netem's place).
pub const VETH_TO_CONTAINER: &str = "veth (host to container)";

fn tx_queue(class: u8, port: bool, encap: bool) -> &'static str {
    match class {
        _ if encap => "tx queue (underlay)",
        class::VETH if port => "tx queue (bridge port veth)",
        class::VETH => "tx queue (container veth)",
        class::BRIDGE => "tx queue (bridge)",
        class::VXLAN => "tx queue (vxlan)",
        class::IPIP => "tx queue (ipip)",
        class::MACVLAN => "tx queue (macvlan)",
        class::IPVLAN => "tx queue (ipvlan)",
        class::LOOPBACK => "tx queue (loopback)",
        _ => "tx queue (nic)",
    }
}

/// Where a packet waits between netif_rx and its NET_RX softirq, by the receiving device.
fn backlog(class: u8, port: bool, encap: bool) -> &'static str {
    match class {
        _ if encap => "backlog + NET_RX softirq (underlay)",
        class::VXLAN | class::IPIP => "backlog + NET_RX softirq (after decap)",
        _ if port => "backlog + NET_RX softirq (bridge port)",
        class::LOOPBACK => "backlog + NET_RX softirq (loopback)",
        _ => "backlog + NET_RX softirq (container)",
    }
}

/// Layers the kernel names by the class geneve shares with vxlan, and gre with ipip (the
/// class field is full): in a geneve or gre lab, the lab's own names.
const RENAMED: &[(&str, &str, &str)] = &[
    ("tx queue (vxlan)", "tx queue (geneve)", ""),
    (
        VXLAN_DECAP,
        "geneve decap + ip/udp receive + netfilter in",
        "",
    ),
    (
        "vxlan encap + route + netfilter out",
        "geneve encap + route + netfilter out",
        "",
    ),
    ("tx queue (ipip)", "", "tx queue (gre)"),
    (
        "ipip decap + ip receive + netfilter in",
        "",
        "gre decap + ip receive + netfilter in",
    ),
    (
        "ipip encap + route + netfilter out",
        "",
        "gre encap + route + netfilter out",
    ),
    (VXLAN_ENCAP, "geneve encap + route lookup", ""),
    ("ipip encap + route lookup", "", "gre encap + route lookup"),
    (VXLAN_ROUTE, "geneve route lookup", ""),
    (VXLAN_ENCAP_ONLY, "geneve encap", ""),
    ("ipip route lookup", "", "gre route lookup"),
    ("ipip encap", "", "gre encap"),
];

/// Segments that start or end at a kernel function's entry or exit (`hook::FUNC`: the class
/// bits are the function, the port bit the exit).
fn func_layer(prev: u8, cur: u8) -> Option<&'static str> {
    let f = |p: u8| (point_hook(p) == hook::FUNC).then(|| (point_class(p), point_port(p)));
    let (ph, pc) = (point_hook(prev), point_class(prev));
    let ch = point_hook(cur);
    const ENTRY: bool = false;
    const EXIT: bool = true;
    Some(match (f(prev), f(cur)) {
        (None, Some((func::LOCAL_OUT, ENTRY))) if matches!(ph, hook::QUEUE | hook::XMIT) => {
            match pc {
                class::VXLAN => VXLAN_ENCAP,
                class::IPIP => "ipip encap + route lookup",
                // ipvlan L3 routes its packets out through the host's IP output.
                class::IPVLAN => "to parent device",
                _ => return None,
            }
        }
        (Some((func::LOCAL_OUT, ENTRY)), None) if ch == hook::QUEUE => IP_OUTPUT,
        // The tunnel's route lookup returned: the device's transmit up to it, then the
        // encapsulation up to ip_local_out.
        (None, Some((func::ROUTE_UDP, EXIT)))
            if matches!(ph, hook::QUEUE | hook::XMIT) && pc == class::VXLAN =>
        {
            VXLAN_ROUTE
        }
        (None, Some((func::ROUTE_IP, EXIT)))
            if matches!(ph, hook::QUEUE | hook::XMIT) && pc == class::IPIP =>
        {
            "ipip route lookup"
        }
        (Some((func::ROUTE_UDP, EXIT)), Some((func::LOCAL_OUT, ENTRY))) => VXLAN_ENCAP_ONLY,
        (Some((func::ROUTE_IP, EXIT)), Some((func::LOCAL_OUT, ENTRY))) => "ipip encap",
        // A routed packet: ip_forward's entry splits the receive and route lookup from the
        // forward hook and the output.
        (None, Some((func::FORWARD, ENTRY))) if matches!(ph, hook::RECV | hook::GRO) => {
            "ip receive + route lookup"
        }
        (Some((func::CONNTRACK | func::NAT, EXIT)), Some((func::FORWARD, ENTRY))) => "route lookup",
        (Some((func::FORWARD, ENTRY)), Some((func::NAT, ENTRY))) => {
            "ip forward + netfilter forward (to NAT)"
        }
        (Some((func::FORWARD, ENTRY)), None) if ch == hook::QUEUE => "ip forward + netfilter out",
        (None, Some((func::CONNTRACK, ENTRY))) if matches!(ph, hook::RECV | hook::GRO) => {
            "ip receive to conntrack"
        }
        (None, Some((func::NAT, ENTRY))) if matches!(ph, hook::RECV | hook::GRO) => {
            "ip receive to NAT"
        }
        (Some((func::CONNTRACK, ENTRY)), Some((func::CONNTRACK, EXIT))) => CONNTRACK,
        (Some((func::NAT, ENTRY)), Some((func::NAT, EXIT))) => NAT,
        (Some((func::CONNTRACK, EXIT)), Some((func::NAT, ENTRY))) => "netfilter (conntrack to NAT)",
        (Some((func::NAT, EXIT)), Some((func::NAT, ENTRY))) => {
            "route + forward (between NAT hooks)"
        }
        (Some((func::NAT, EXIT)), None) if ch == hook::QUEUE => "ip output (after NAT)",
        (Some((func::CONNTRACK, EXIT)), None) if ch == hook::QUEUE => "route + forward + ip output",
        (Some((func::CONNTRACK | func::NAT, EXIT)), None) if ch == hook::DELIVER => SOCKET,
        _ => return None,
    })
}

/// In an ovs lab nothing routes: a port's receive to the other port's queue, which the model
/// calls forwarding, is the OVS datapath's flow lookup and output action.
pub const OVS_DATAPATH: &str = "ovs datapath (flow lookup + output)";

/// `layer` as a lab of `mode` calls it (geneve and gre share vxlan's and ipip's classes; the
/// OVS datapath's ports are plain veths to the tracer).
pub fn in_mode(layer: &'static str, mode: crate::lab::Mode) -> &'static str {
    use crate::lab::Mode;
    if mode == Mode::Ovs && layer == IP_FORWARD {
        return OVS_DATAPATH;
    }
    RENAMED
        .iter()
        .find(|(from, _, _)| *from == layer)
        .map(|(_, geneve, gre)| match mode {
            Mode::Geneve if !geneve.is_empty() => *geneve,
            Mode::Gre if !gre.is_empty() => *gre,
            _ => layer,
        })
        .unwrap_or(layer)
}

/// The layer of the segment from point `prev` to point `cur`, if the model knows it.
pub fn layer(prev: u8, cur: u8) -> Option<&'static str> {
    let (ph, pc, pport, pencap) = (
        point_hook(prev),
        point_class(prev),
        point_port(prev),
        point_encap(prev),
    );
    let (ch, cc, cport, cencap) = (
        point_hook(cur),
        point_class(cur),
        point_port(cur),
        point_encap(cur),
    );
    let decap = |cc: u8| match cc {
        class::VXLAN => Some(VXLAN_DECAP),
        class::IPIP => Some("ipip decap + ip receive + netfilter in"),
        _ => None,
    };
    if ph == hook::FUNC || ch == hook::FUNC {
        return func_layer(prev, cur);
    }
    if ph == hook::STAGE || ch == hook::STAGE {
        return stage_layer(prev, cur);
    }
    // Without net_dev_start_xmit (every device noqueue) a device's transmit starts at its
    // queue: the same layers, each holding its device's queue step.
    Some(match (ph, ch) {
        (hook::QUEUE, hook::XMIT) if pc == cc => tx_queue(pc, pport, pencap),
        (hook::XMIT | hook::QUEUE, hook::RX) => match pc {
            class::VETH if pencap => "underlay link (veth)",
            class::VETH if pport => VETH_TO_CONTAINER,
            class::VETH => "veth (container to host)",
            class::LOOPBACK => "loopback",
            class::MACVLAN => "macvlan (bridge mode)",
            class::IPVLAN => "ipvlan",
            _ => return None,
        },
        (hook::XMIT | hook::QUEUE, hook::QUEUE) => match pc {
            class::VXLAN => "vxlan encap + route + netfilter out",
            class::IPIP => "ipip encap + route + netfilter out",
            class::BRIDGE => "bridge (host stack to port)",
            class::MACVLAN | class::IPVLAN => "to parent device",
            _ => return None,
        },
        // Decapsulated: the inner packet re-enters the stack on the tunnel device.
        (hook::RECV | hook::GRO, hook::RX | hook::GRO | hook::RECV) if pencap && !cencap => {
            decap(cc)?
        }
        (hook::RX, hook::RECV | hook::GRO) => backlog(cc, cport, cencap),
        (hook::GRO, hook::RECV) => "gro",
        (hook::RECV, hook::RECV) if pport && cc == class::BRIDGE => "bridge (port to host stack)",
        (hook::RECV | hook::GRO, hook::QUEUE) if pport => BRIDGE,
        (hook::RECV | hook::GRO, hook::QUEUE) => IP_FORWARD,
        (hook::RECV | hook::GRO, hook::DELIVER) => SOCKET,
        _ => return None,
    })
}

/// The kernel's `SEG_SLOT` table and the layer name of each slot (per direction).
pub struct Table {
    pub seg_slot: Vec<u8>,
    pub names: Vec<&'static str>,
}

pub fn table() -> Table {
    let mut names: Vec<&'static str> = vec![UNKNOWN];
    let mut seg_slot = vec![0u8; (POINTS * POINTS) as usize];
    // A function point names one of `func`; point 0 names nothing.
    let valid = |p: u8| point_hook(p) != hook::FUNC || (1..func::COUNT).contains(&point_class(p));
    for prev in (0..POINTS).map(|p| p as u8).filter(|&p| valid(p)) {
        for cur in (0..POINTS).map(|p| p as u8).filter(|&p| valid(p)) {
            let Some(name) = layer(prev, cur) else {
                continue;
            };
            let slot = match names.iter().position(|n| *n == name) {
                Some(s) => s,
                None => {
                    names.push(name);
                    names.len() - 1
                }
            };
            seg_slot[pair(prev, cur) as usize] = slot as u8;
        }
    }
    assert!(
        names.len() < SLOT_ONE_WAY as usize,
        "more layers than histogram slots"
    );
    names.resize(SLOTS_PER_DIR as usize, "");
    names[SLOT_ONE_WAY as usize] = ONE_WAY;
    names[SLOT_UNKNOWN as usize] = UNKNOWN;
    Table { seg_slot, names }
}

pub fn hook_name(h: u8) -> &'static str {
    match h {
        hook::FUNC => "function",
        hook::QUEUE => "net_dev_queue",
        hook::XMIT => "net_dev_start_xmit",
        hook::RX => "netif_rx",
        hook::RECV => "netif_receive_skb",
        hook::GRO => "napi_gro_receive",
        hook::DELIVER => "skb_copy_datagram",
        hook::STAGE => "stage",
        _ => "?",
    }
}

pub fn stage_name(s: u8) -> &'static str {
    match s {
        stage::READY => "sk_data_ready",
        stage::WAKEUP => "sched_wakeup",
        stage::RUN => "sched_switch",
        stage::RETURN => "sock_recv_length",
        stage::SEND => "send syscall",
        _ => "?",
    }
}

/// Human-readable point, for unnamed segments.
pub fn describe(p: u8) -> String {
    if point_hook(p) == hook::FUNC {
        let at = if point_port(p) { "exit" } else { "entry" };
        return format!("{}@{at}", func_name(point_class(p)));
    }
    if point_hook(p) == hook::STAGE {
        return format!("{}@socket", stage_name(point_class(p)));
    }
    format!(
        "{}@{}{}{}",
        hook_name(point_hook(p)),
        class_name(point_class(p)),
        if point_port(p) { "(port)" } else { "" },
        if point_encap(p) { "(encap)" } else { "" }
    )
}

pub fn func_name(f: u8) -> &'static str {
    match f {
        func::LOCAL_OUT => "ip_local_out",
        func::CONNTRACK => "nf_conntrack_in",
        func::NAT => "nf_nat_inet_fn",
        func::FORWARD => "ip_forward",
        func::ROUTE_UDP => "udp tunnel route lookup",
        func::ROUTE_IP => "ip tunnel route lookup",
        _ => "?",
    }
}

pub fn class_name(c: u8) -> &'static str {
    match c {
        class::VETH => "veth",
        class::BRIDGE => "bridge",
        class::VXLAN => "vxlan",
        class::IPIP => "ipip",
        class::MACVLAN => "macvlan",
        class::LOOPBACK => "loopback",
        class::IPVLAN => "ipvlan",
        _ => "nic",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use profiler_common::net::point;

    #[test]
    fn geneve_and_gre_labs_name_the_shared_classes_their_own_way() {
        use crate::lab::Mode;
        use hook::*;
        let encap = |c| {
            layer(
                point(QUEUE, c, true, false),
                point(QUEUE, class::VETH, false, true),
            )
        };
        let vx = encap(class::VXLAN).unwrap();
        let ip = layer(
            point(QUEUE, class::IPIP, false, false),
            point(QUEUE, class::VETH, false, true),
        )
        .unwrap();
        assert_eq!(
            in_mode(vx, Mode::Overlay),
            "vxlan encap + route + netfilter out"
        );
        assert_eq!(
            in_mode(vx, Mode::Geneve),
            "geneve encap + route + netfilter out"
        );
        assert_eq!(
            in_mode(ip, Mode::Ipip),
            "ipip encap + route + netfilter out"
        );
        assert_eq!(in_mode(ip, Mode::Gre), "gre encap + route + netfilter out");
        assert_eq!(in_mode(VXLAN_DECAP, Mode::Gre), VXLAN_DECAP);
        assert_eq!(in_mode(BRIDGE, Mode::Geneve), BRIDGE);
        assert_eq!(in_mode(IP_FORWARD, Mode::Ovs), OVS_DATAPATH);
        assert_eq!(in_mode(IP_FORWARD, Mode::Routed), IP_FORWARD);
        // Every renamed layer is one the model can produce.
        let all: Vec<&str> = (0..POINTS as u16)
            .flat_map(|a| (0..POINTS as u16).map(move |b| (a as u8, b as u8)))
            .filter_map(|(a, b)| layer(a, b))
            .collect();
        for (from, _, _) in RENAMED {
            assert!(all.contains(from), "{from}");
        }
    }

    /// Each segment's layer along a path of points; a segment the model does not name panics.
    fn names_of(path: &[u8]) -> Vec<&'static str> {
        path.windows(2)
            .map(|w| {
                layer(w[0], w[1])
                    .unwrap_or_else(|| panic!("{} -> {}", describe(w[0]), describe(w[1])))
            })
            .collect()
    }

    /// The overlay path seen on this machine (cf. overlay-ping-path.txt), point by point. On
    /// decap, vxlan hands the inner packet to netif_rx (gro_cells without NAPI).
    #[test]
    fn function_points_split_the_tunnel_and_the_nat_path() {
        use class::*;
        use hook::*;
        use profiler_common::net::func_point as f;
        let p = |h, c, port, encap| point(h, c, port, encap);
        // Overlay (noqueue devices: no start_xmit): the vxlan device's queue, ip_local_out
        // with the packet encapsulated, the underlay's queue.
        let tunnel = [
            p(RECV, VETH, true, false),
            p(QUEUE, VXLAN, true, false),
            f(func::LOCAL_OUT, false, true),
            p(QUEUE, VETH, false, true),
        ];
        assert_eq!(names_of(&tunnel), ["bridge", VXLAN_ENCAP, IP_OUTPUT]);
        // With the tunnel's route lookup probed: route, encap and output, each its own row,
        // in each tunnel's own names (start_xmit attached or not).
        use crate::lab::Mode;
        for (mode, c, r, route, encap) in [
            (
                Mode::Overlay,
                VXLAN,
                func::ROUTE_UDP,
                VXLAN_ROUTE,
                VXLAN_ENCAP_ONLY,
            ),
            (
                Mode::Geneve,
                VXLAN,
                func::ROUTE_UDP,
                "geneve route lookup",
                "geneve encap",
            ),
            (
                Mode::Ipip,
                IPIP,
                func::ROUTE_IP,
                "ipip route lookup",
                "ipip encap",
            ),
            (
                Mode::Gre,
                IPIP,
                func::ROUTE_IP,
                "gre route lookup",
                "gre encap",
            ),
        ] {
            for start in [QUEUE, XMIT] {
                let names = names_of(&[
                    p(start, c, false, start == XMIT),
                    f(r, true, true),
                    f(func::LOCAL_OUT, false, true),
                    p(QUEUE, VETH, false, true),
                ]);
                let named: Vec<&str> = names.iter().map(|n| in_mode(n, mode)).collect();
                assert_eq!(named, [route, encap, IP_OUTPUT], "{mode}");
            }
        }
        // Another tunnel's lookup is no segment: a UDP tunnel's stash never closes at an IP
        // tunnel's device.
        assert_eq!(
            layer(p(QUEUE, IPIP, false, false), f(func::ROUTE_UDP, true, true)),
            None
        );
        // nat's forwarded request: conntrack and NAT at prerouting, ip_forward, NAT at
        // postrouting, the bridge's queue.
        let nat = [
            p(RECV, VETH, false, false),
            f(func::CONNTRACK, false, false),
            f(func::CONNTRACK, true, false),
            f(func::NAT, false, false),
            f(func::NAT, true, false),
            f(func::FORWARD, false, false),
            f(func::NAT, false, false),
            f(func::NAT, true, false),
            p(QUEUE, BRIDGE, false, false),
        ];
        assert_eq!(
            names_of(&nat),
            [
                "ip receive to conntrack",
                CONNTRACK,
                "netfilter (conntrack to NAT)",
                NAT,
                "route lookup",
                "ip forward + netfilter forward (to NAT)",
                NAT,
                "ip output (after NAT)",
            ]
        );
        // A function no path reaches from where the packet was (a reused address) is no
        // segment: the kernel side drops the state there.
        assert_eq!(
            layer(
                p(DELIVER, OTHER, false, false),
                f(func::LOCAL_OUT, false, false)
            ),
            None
        );
        // Every function point is in the kernel's table, and point 0 (no function) is not.
        let t = table();
        assert_eq!(
            t.seg_slot[pair(0, p(QUEUE, VETH, false, false)) as usize],
            0
        );
        let ct = pair(
            f(func::CONNTRACK, false, false),
            f(func::CONNTRACK, true, false),
        );
        assert_eq!(t.names[t.seg_slot[ct as usize] as usize], CONNTRACK);
    }

    #[test]
    fn overlay_request_path_is_fully_named() {
        use class::*;
        use hook::*;
        let p = |h, c, port, encap| point(h, c, port, encap);
        let path = [
            p(QUEUE, VETH, false, false), // container eth0
            p(XMIT, VETH, false, false),
            p(RX, VETH, true, false), // host-side veth (bridge port)
            p(RECV, VETH, true, false),
            p(QUEUE, VXLAN, true, false), // vxlan0 (bridge port)
            p(XMIT, VXLAN, true, false),
            p(QUEUE, VETH, false, true), // underlay ux, encapsulated
            p(XMIT, VETH, false, true),
            p(RX, VETH, false, true), // far underlay uy
            p(RECV, VETH, false, true),
            p(RX, VXLAN, true, false), // far vxlan0, decapsulated
            p(RECV, VXLAN, true, false),
            p(QUEUE, VETH, true, false), // far bridge port veth
            p(XMIT, VETH, true, false),
            p(RX, VETH, false, false), // far container eth0
            p(RECV, VETH, false, false),
            p(DELIVER, OTHER, false, false),
        ];
        let names = names_of(&path);
        assert_eq!(
            names,
            [
                "tx queue (container veth)",
                "veth (container to host)",
                "backlog + NET_RX softirq (bridge port)",
                "bridge",
                "tx queue (vxlan)",
                "vxlan encap + route + netfilter out",
                "tx queue (underlay)",
                "underlay link (veth)",
                "backlog + NET_RX softirq (underlay)",
                "vxlan decap + ip/udp receive + netfilter in",
                "backlog + NET_RX softirq (after decap)",
                "bridge",
                "tx queue (bridge port veth)",
                "veth (host to container)",
                "backlog + NET_RX softirq (container)",
                "ip/transport receive + socket queue",
            ]
        );
    }

    /// The same path without net_dev_start_xmit: every segment still named, the queue steps
    /// folded into the device they belong to.
    #[test]
    fn overlay_request_path_without_start_xmit_is_fully_named() {
        use class::*;
        use hook::*;
        let p = |h, c, port, encap| point(h, c, port, encap);
        let path = [
            p(QUEUE, VETH, false, false),
            p(RX, VETH, true, false),
            p(RECV, VETH, true, false),
            p(QUEUE, VXLAN, true, false),
            p(QUEUE, VETH, false, true),
            p(RX, VETH, false, true),
            p(RECV, VETH, false, true),
            p(RX, VXLAN, true, false),
            p(RECV, VXLAN, true, false),
            p(QUEUE, VETH, true, false),
            p(RX, VETH, false, false),
            p(RECV, VETH, false, false),
            p(DELIVER, OTHER, false, false),
        ];
        let names = names_of(&path);
        assert_eq!(
            names,
            [
                "veth (container to host)",
                "backlog + NET_RX softirq (bridge port)",
                "bridge",
                "vxlan encap + route + netfilter out",
                "underlay link (veth)",
                "backlog + NET_RX softirq (underlay)",
                "vxlan decap + ip/udp receive + netfilter in",
                "backlog + NET_RX softirq (after decap)",
                "bridge",
                "veth (host to container)",
                "backlog + NET_RX softirq (container)",
                "ip/transport receive + socket queue",
            ]
        );
        // A veth queue followed by its own queue again is no path: the tracer restarts there.
        assert!(layer(p(QUEUE, VETH, false, false), p(QUEUE, VETH, false, false)).is_none());
    }

    #[test]
    fn table_has_room_and_reserved_slots() {
        let t = table();
        assert_eq!(t.names[SLOT_UNKNOWN as usize], UNKNOWN);
        assert_eq!(t.names[SLOT_ONE_WAY as usize], ONE_WAY);
        let named = t.seg_slot.iter().filter(|&&s| s != 0).count();
        assert!(named > 100, "{named}");
    }
}
