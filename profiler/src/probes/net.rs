//! The packet-path tracer (user side): resolves the kernel offsets from BTF, loads and attaches
//! the programs of profiler-ebpf/src/net.rs through the attach plan's choices, fills the layer
//! table, and reads the per-CPU histograms into snapshots.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray},
};
use hdrhistogram::Histogram;
use profiler_common::{
    hist::Hist,
    names::{map, program as prog},
    net::{AppTime, Control, MAX_DROP_REASONS, NetConfig, SLOTS, STATE_SLOTS, SlotPos, counter},
};

use crate::{
    attach::{self, Attached, Candidate, Point, link::Link},
    kernel::btf::Btf,
    trace::layers,
};

/// What to follow.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Ports (source or destination) of followed packets, inclusive.
    pub ports: (u16, u16),
    /// Only packets whose first hook is on a device in this netns (inode), 0 = any.
    pub netns: u32,
    pub ifindex: u32,
    /// IPv4 address (source or destination), network byte order as in the header; 0 = any.
    pub host: u32,
    /// Packets born in this netns are requests (direction 0); others responses.
    pub client_netns: u32,
    /// With `client_netns`: follow only packets born in one of the two (a lab's own).
    pub server_netns: u32,
    /// Print the path of one followed packet in N (0 = none).
    pub print_every: u64,
    /// Attach only the empty program, on every hook (the floor, for the benchmark).
    pub empty_programs: bool,
    /// Per-skb state slots (a power of two, at most `STATE_SLOTS`; 0 = all).
    pub state_slots: u32,
    /// Attach net:net_dev_start_xmit, splitting a device's queue wait from its transmit. A lab
    /// has only noqueue devices, where the two hooks are back to back: one fewer program on
    /// every packet at every device.
    pub xmit_hook: bool,
    /// Attach no function probes (the tracepoints' segments stay whole).
    pub no_functions: bool,
    /// Also attach the tunnel route lookup's probes (`ROUTE_SPLIT`).
    pub split_route: bool,
    /// Print the kernel side's rare-condition messages (`--debug-bpf`).
    pub debug_bpf: bool,
}

/// The syscalls whose entry starts a send: this architecture's numbers.
const SEND_SYSCALLS: [libc::c_long; 4] = [
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
];

/// Packets whose state is this old were freed unseen; their address now names another packet.
const STALE_NS: u64 = 1_000_000_000;

/// The packet tracer's points; the softirq subject's follow (`softirq::POINTS`). Without the
/// first two there is nothing to trace.
pub const POINTS: &[Point] = &[
    crate::point!(RawTracepoint, "net", "net_dev_queue", prog::NET_QUEUE),
    crate::point!(RawTracepoint, "net", "netif_receive_skb", prog::NET_RECV),
    crate::point!(RawTracepoint, "net", XMIT, prog::NET_XMIT),
    crate::point!(RawTracepoint, "net", "netif_rx", prog::NET_RX),
    crate::point!(
        RawTracepoint,
        "net",
        "napi_gro_receive_entry",
        prog::NET_GRO
    ),
    crate::point!(
        RawTracepoint,
        "skb",
        "skb_copy_datagram_iovec",
        prog::NET_DELIVER
    ),
    crate::point!(RawTracepoint, "skb", "kfree_skb", prog::NET_DROP),
    crate::point!(RawTracepoint, "skb", "consume_skb", prog::NET_CONSUME),
    // The round trip's socket and task stages around the packet path (see
    // profiler-ebpf/src/net.rs): data-ready, the reader's wake-up and switch-in, the
    // receive's return, the next send's entry and return.
    crate::point!(RawTracepoint, "sock", "sk_data_ready", prog::NET_READY),
    crate::point!(RawTracepoint, "sched", "sched_waking", prog::NET_WAKING),
    crate::point!(RawTracepoint, "sched", "sched_wakeup", prog::NET_WAKEUP),
    crate::point!(RawTracepoint, "sched", "sched_switch", prog::NET_SWITCH),
    crate::point!(
        RawTracepoint,
        "sock",
        "sock_recv_length",
        prog::NET_RECV_RET
    ),
    crate::point!(
        RawTracepoint,
        "sock",
        "sock_send_length",
        prog::NET_SEND_RET
    ),
    crate::point!(RawTracepoint, "raw_syscalls", "sys_enter", prog::NET_SEND),
    // Function probes where the kernel has them (a stock kernel; not this host's): the
    // attach plan's ways, fentry/fexit first (vmlinux), kprobe/kretprobe otherwise (modules).
    Point {
        candidates: attach::LOCAL_OUT,
    },
    Point {
        candidates: attach::FORWARD,
    },
    Point {
        candidates: attach::CONNTRACK_ENTRY,
    },
    Point {
        candidates: attach::CONNTRACK_EXIT,
    },
    Point {
        candidates: attach::NAT_ENTRY,
    },
    Point {
        candidates: attach::NAT_EXIT,
    },
    // A tunnel's route lookup, cut from its encapsulation: the tunnel's transmit (the lab's
    // tunnel only: the others' modules are not loaded) and the lookup's two returns.
    Point {
        candidates: attach::VXLAN_XMIT,
    },
    Point {
        candidates: attach::GENEVE_XMIT,
    },
    Point {
        candidates: attach::IPIP_XMIT,
    },
    Point {
        candidates: attach::GRE_XMIT,
    },
    Point {
        candidates: attach::ROUTE_CACHE,
    },
    Point {
        candidates: attach::ROUTE_OUTPUT,
    },
];
const MUST: usize = 2;
/// Attached only where a device on the path may have a queue (see `Filter::xmit_hook`).
const XMIT: &str = "net_dev_start_xmit";
const NO_XMIT: &str = "not attached: every device on the lab's path is noqueue, so net_dev_queue and start_xmit are back to back (each device's queue step is in its layer; --split-tx-queue attaches it)";
const NO_FUNCTIONS: &str =
    "not attached: --no-function-probes (or --ablation, which measures the whole segment)";
/// The programs that cut a tunnel's route lookup from its encapsulation: only with
/// `--split-route`, as they cost every tunnel packet two more programs.
const ROUTE_SPLIT: &[&str] = &[
    prog::NET_K_VXLAN_XMIT,
    prog::NET_K_GENEVE_XMIT,
    prog::NET_K_IPIP_XMIT,
    prog::NET_K_GRE_XMIT,
    prog::NET_FX_ROUTE_CACHE,
    prog::NET_FX_ROUTE_OUTPUT,
];
const NO_ROUTE_SPLIT: &str =
    "not attached: without --split-route a tunnel's route lookup stays in its encap row";

fn is_function(p: &Point) -> bool {
    matches!(p.candidates[0].target, attach::Target::Function { .. })
}

/// The empty program of the same type (the floor), attached on the first point's tracepoint.
pub const FLOOR: &str = prog::NET_FLOOR;

/// Every point the tracer attaches, in order.
fn points() -> impl Iterator<Item = &'static Point> {
    POINTS.iter().chain(crate::probes::softirq::POINTS)
}

/// Run count and run time of one program from the kernel's BPF statistics.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProgStats {
    pub runs: u64,
    pub ns: u64,
}

pub struct NetTracer {
    ebpf: Ebpf,
    pub table: layers::Table,
    /// How each point was attached, or why it was not.
    pub attached: Vec<Attached>,
    /// The ways that attached at start, to make again after a gap.
    ways: Vec<Candidate>,
    links: Vec<Link>,
    floor_link: Option<Link>,
    /// The kernel's messages with `--debug-bpf`, printed until the tracer is dropped.
    _log: Option<crate::probes::log::KernelLog>,
    /// What `NET_CONTROL` holds.
    control: Control,
}

/// The offsets the kernel side needs, from this kernel's BTF; the filter left empty.
pub fn config(btf: &Btf) -> Result<NetConfig> {
    let off = |path: &str| {
        btf.offset(path)
            .with_context(|| format!("offset of {path}"))
    };
    Ok(NetConfig {
        off_skb_dev: off("sk_buff.dev")?,
        off_skb_sk: off("sk_buff.sk")?,
        off_skb_len: off("sk_buff.len")?,
        off_skb_head: off("sk_buff.head")?,
        off_skb_network_header: off("sk_buff.network_header")?,
        off_skb_transport_header: off("sk_buff.transport_header")?,
        off_dev_ifindex: off("net_device.ifindex")?,
        off_dev_name: off("net_device.name")?,
        off_dev_priv_flags: off("net_device.priv_flags")?,
        off_dev_link_ops: off("net_device.rtnl_link_ops")?,
        off_ops_kind: off("rtnl_link_ops.kind")?,
        off_dev_nd_net: off("net_device.nd_net")?,
        off_net_inum: off("net.ns.inum")?,
        iff_bridge_port: btf.enum_value("IFF_BRIDGE_PORT")? as u32,
        ..NetConfig::default()
    })
}

impl NetTracer {
    /// Loads the programs and attaches them, following nothing until `set_follow`.
    pub fn start(filter: &Filter) -> Result<NetTracer> {
        // Parsed BTF is large: keep only the offsets before aya parses its own copy.
        let state_mask = match filter.state_slots {
            0 => STATE_SLOTS - 1,
            n if n.is_power_of_two() && n <= STATE_SLOTS => n - 1,
            n => anyhow::bail!("--state-slots {n}: a power of two up to {STATE_SLOTS}"),
        };
        let config = NetConfig {
            port_lo: filter.ports.0,
            port_hi: filter.ports.1,
            host: filter.host,
            netns: filter.netns,
            ifindex: filter.ifindex,
            client_netns: filter.client_netns,
            server_netns: filter.server_netns,
            print_every: filter.print_every,
            stale_ns: STALE_NS,
            sys_send: SEND_SYSCALLS.map(|n| n as u32),
            xmit_hook: filter.xmit_hook as u32,
            state_mask,
            debug: filter.debug_bpf as u32,
            ..config(&Btf::vmlinux()?)?
        };
        let mut l = crate::probes::loader(crate::probes::Subject::Net);
        if filter.debug_bpf {
            crate::probes::log::enable(&mut l);
        }
        l.override_global(map::NET_CONFIG, &config, true);
        let mut ebpf = l
            .load(crate::probes::OBJECT)
            .context("loading the tracer's eBPF programs")?;
        let log = crate::probes::log::KernelLog::start(&mut ebpf, filter.debug_bpf)?;
        let table = layers::table();
        {
            let mut seg: Array<_, u8> = Array::try_from(
                ebpf.map_mut(map::SEG_SLOT)
                    .ok_or_else(|| anyhow!("SEG_SLOT missing"))?,
            )?;
            for (i, &slot) in table.seg_slot.iter().enumerate() {
                if slot != 0 {
                    seg.set(i as u32, slot, 0)?;
                }
            }
        }
        let floor = Self::floor_way();
        attach::link::load(&mut ebpf, &floor, None)?;
        let mut t = NetTracer {
            ebpf,
            table,
            attached: vec![],
            ways: vec![],
            links: vec![],
            floor_link: None,
            _log: log,
            control: Control::default(),
        };
        t.set_follow(0, 0)?;
        // fentry and fexit load against vmlinux BTF: parsed once for all of them, not per way.
        let btf = (!filter.no_functions && !filter.empty_programs)
            .then(|| aya::Btf::from_sys_fs().ok())
            .flatten();
        for (i, point) in points().enumerate() {
            if point.event().ends_with(XMIT) && !filter.xmit_hook {
                t.attached.push(Attached {
                    event: point.event(),
                    how: NO_XMIT.to_string(),
                });
                continue;
            }
            if filter.no_functions && is_function(point) {
                t.attached.push(Attached {
                    event: point.event(),
                    how: NO_FUNCTIONS.to_string(),
                });
                continue;
            }
            if !filter.split_route
                && point.candidates[0]
                    .program
                    .is_some_and(|p| ROUTE_SPLIT.contains(&p))
            {
                t.attached.push(Attached {
                    event: point.event(),
                    how: NO_ROUTE_SPLIT.to_string(),
                });
                continue;
            }
            let (link, how) = if filter.empty_programs {
                // The floor on every point: what merely running a program costs (the benchmark).
                let way = Candidate {
                    program: Some(FLOOR),
                    ..point.candidates[0]
                };
                match attach::link::attach(&mut t.ebpf, &way) {
                    Ok(l) => (Some(l), Attached::by(&way)),
                    Err(e) => (None, Attached::failed(point, &[format!("{e:#}")])),
                }
            } else {
                attach::link::attach_point(&mut t.ebpf, point, btf.as_ref())
            };
            match link {
                Some(l) => {
                    t.ways.push(l.way);
                    t.links.push(l);
                }
                None if i < MUST => {
                    anyhow::bail!("{}: {}: nothing to trace without it", how.event, how.how)
                }
                None => {}
            }
            t.attached.push(how);
        }
        drop(btf);
        Ok(t)
    }

    fn floor_way() -> Candidate {
        Candidate {
            program: Some(FLOOR),
            ..POINTS[0].candidates[0]
        }
    }

    /// Whether the hooks are attached now (windows detach them between).
    pub fn is_attached(&self) -> bool {
        !self.links.is_empty()
    }

    /// Detaches every hook: a detached tracer costs nothing.
    pub fn detach(&mut self) -> Result<()> {
        for l in std::mem::take(&mut self.links) {
            attach::link::detach(&mut self.ebpf, l)?;
        }
        self.set_floor(false)
    }

    /// Attaches again the ways that attached at start.
    pub fn reattach(&mut self) -> Result<()> {
        for way in self.ways.clone() {
            let l = attach::link::attach(&mut self.ebpf, &way)?;
            self.links.push(l);
        }
        Ok(())
    }

    /// The empty program beside the first hook, for the floor's cost under bpf_stats.
    pub fn set_floor(&mut self, on: bool) -> Result<()> {
        match (on, self.floor_link.take()) {
            (true, None) => {
                self.floor_link = Some(attach::link::attach(&mut self.ebpf, &Self::floor_way())?)
            }
            (false, Some(l)) => attach::link::detach(&mut self.ebpf, l)?,
            (_, l) => self.floor_link = l,
        }
        Ok(())
    }

    /// Follows packets drawn with probability `follow_below / 2^32` from now on; state from
    /// before `epoch_ns` (ktime) counts as stale.
    pub fn set_follow(&mut self, follow_below: u64, epoch_ns: u64) -> Result<()> {
        self.control.follow_below = follow_below;
        self.control.epoch_ns = epoch_ns;
        self.write_control()
    }

    /// Packets to or from this port are not followed from now on (0: none).
    pub fn skip_port(&mut self, port: u16) -> Result<()> {
        self.control.skip_port = port as u64;
        self.write_control()
    }

    fn write_control(&mut self) -> Result<()> {
        let mut ctl: Array<_, Control> = Array::try_from(
            self.ebpf
                .map_mut(map::NET_CONTROL)
                .ok_or_else(|| anyhow!("NET_CONTROL missing"))?,
        )?;
        ctl.set(0, self.control, 0)?;
        Ok(())
    }

    /// Each program's run count and run time so far (counted while bpf_stats are enabled).
    pub fn prog_stats(&self) -> BTreeMap<&'static str, ProgStats> {
        points()
            .filter_map(|p| p.candidates[0].program)
            .chain([FLOOR])
            .filter_map(|name| {
                let info = self.ebpf.program(name)?.info().ok()?;
                Some((
                    name,
                    ProgStats {
                        runs: info.run_count(),
                        ns: info.run_time().as_nanos() as u64,
                    },
                ))
            })
            .collect()
    }

    pub fn snapshot(&self) -> Result<Snapshot> {
        let map = |name: &str| {
            self.ebpf
                .map(name)
                .ok_or_else(|| anyhow!("map {name} missing"))
        };
        let hist: Array<&MapData, Hist> = Array::try_from(map(map::NET_HIST)?)?;
        let pos: PerCpuArray<&MapData, SlotPos> = PerCpuArray::try_from(map(map::NET_POS)?)?;
        let counters: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map(map::NET_COUNTERS)?)?;
        let drops: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map(map::NET_DROPS)?)?;
        let unknown: HashMap<&MapData, u32, u64> = HashMap::try_from(map(map::NET_UNKNOWN)?)?;
        let mut slots = BTreeMap::new();
        for slot in 0..SLOTS {
            let h = crate::hist::to_histogram(&hist.get(&slot, 0)?);
            if h.is_empty() {
                continue;
            }
            let p = pos.get(&slot, 0)?;
            let off = p
                .iter()
                .filter(|x| x.count > 0)
                .map(|x| x.min_offset)
                .min()
                .unwrap_or(0);
            slots.insert(slot, (h, off as f64));
        }
        let sum = |v: aya::maps::PerCpuValues<u64>| v.iter().sum::<u64>();
        let mut c = [0u64; counter::COUNT as usize];
        for (i, v) in c.iter_mut().enumerate() {
            *v = sum(counters.get(&(i as u32), 0)?);
        }
        let mut drop_reasons = BTreeMap::new();
        for r in 0..MAX_DROP_REASONS {
            let n = sum(drops.get(&r, 0)?);
            if n > 0 {
                drop_reasons.insert(r, n);
            }
        }
        let mut unnamed: Vec<(String, u64)> = unknown
            .iter()
            .filter_map(|r| r.ok())
            .map(|(seg, n)| {
                (
                    format!(
                        "{} -> {}",
                        layers::describe((seg >> 8) as u8),
                        layers::describe(seg as u8)
                    ),
                    n,
                )
            })
            .collect();
        unnamed.sort_by_key(|u| std::cmp::Reverse(u.1));
        Ok(Snapshot {
            slots,
            counters: c,
            drop_reasons,
            unnamed,
        })
    }

    /// State slots holding a packet now (tagged): followed packets in flight, or left by one
    /// whose end no hook saw.
    pub fn state_in_use(&self) -> Result<u64> {
        let m: Array<&MapData, [u64; 4]> = Array::try_from(
            self.ebpf
                .map(map::NET_SKB)
                .ok_or_else(|| anyhow!("NET_SKB missing"))?,
        )?;
        Ok(m.iter()
            .filter_map(|v| v.ok())
            .filter(|v| v[0] != 0)
            .count() as u64)
    }

    /// Application time per process (tgid) and direction received, from `NET_APPS`.
    pub fn apps(&self) -> Result<Vec<(u32, AppTime)>> {
        let m: HashMap<&MapData, u64, AppTime> = HashMap::try_from(
            self.ebpf
                .map(map::NET_APPS)
                .ok_or_else(|| anyhow!("NET_APPS missing"))?,
        )?;
        Ok(m.iter()
            .filter_map(|r| r.ok())
            .map(|(k, a)| ((k >> 8) as u32, a))
            .collect())
    }

    /// One of the `NET_COUNTERS`, summed over CPUs.
    pub fn counter(&self, i: u32) -> Result<u64> {
        let counters: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(map::NET_COUNTERS)
                .ok_or_else(|| anyhow!("NET_COUNTERS missing"))?,
        )?;
        Ok(counters.get(&i, 0)?.iter().sum())
    }

    /// The ring buffer of sampled events (`--sample N`).
    pub fn events(&mut self) -> Result<aya::maps::RingBuf<&mut MapData>> {
        Ok(aya::maps::RingBuf::try_from(
            self.ebpf
                .map_mut(map::NET_EVENTS)
                .ok_or_else(|| anyhow!("NET_EVENTS missing"))?,
        )?)
    }

    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }
}

/// One reading of every histogram and counter.
pub struct Snapshot {
    /// slot -> (histogram, smallest offset of the segment's end from the packet's first hook)
    pub slots: BTreeMap<u32, (Histogram<u64>, f64)>,
    pub counters: [u64; counter::COUNT as usize],
    pub drop_reasons: BTreeMap<u32, u64>,
    pub unnamed: Vec<(String, u64)>,
}
