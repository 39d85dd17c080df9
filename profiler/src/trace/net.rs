//! The packet-path tracer (user side): resolves the kernel offsets from BTF, loads and attaches
//! the programs of profiler-ebpf/src/net.rs through the attach plan's choices, fills the layer
//! table, and reads the per-CPU histograms into snapshots.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Btf as AyaBtf, Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{BtfTracePoint, RawTracePoint},
};
use hdrhistogram::Histogram;
use profiler_common::{
    hist::Hist,
    net::{MAX_DROP_REASONS, SLOTS, SlotPos, counter},
};

use super::layers;
use crate::btf::Btf;

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
    /// Sample one packet in N for the path print (0 = none).
    pub sample_every: u64,
    /// Follow one matching packet in N (0 or 1 = all): less overhead, fewer samples.
    pub follow_every: u64,
}

/// Packets whose state is this old were freed unseen; their address now names another packet.
const STALE_NS: u64 = 1_000_000_000;

/// The tracepoints, with the program for each mechanism.
const HOOKS: &[(&str, &str, &str)] = &[
    ("net_dev_queue", "net_queue_btf", "net_queue_raw"),
    ("net_dev_start_xmit", "net_xmit_btf", "net_xmit_raw"),
    ("netif_rx", "net_rx_btf", "net_rx_raw"),
    ("netif_receive_skb", "net_recv_btf", "net_recv_raw"),
    ("napi_gro_receive_entry", "net_gro_btf", "net_gro_raw"),
    (
        "skb_copy_datagram_iovec",
        "net_deliver_btf",
        "net_deliver_raw",
    ),
    ("kfree_skb", "net_drop_btf", "net_drop_raw"),
    ("consume_skb", "net_consume_btf", "net_consume_raw"),
];

pub struct NetTracer {
    ebpf: Ebpf,
    pub table: layers::Table,
    /// How each tracepoint was attached, or why it was not.
    pub attached: Vec<(String, String)>,
}

/// The offsets the kernel side needs, from this kernel's BTF.
pub fn offsets(btf: &Btf) -> Result<Vec<(&'static str, u32)>> {
    let mut out = vec![];
    for (global, path) in [
        ("OFF_SKB_DEV", "sk_buff.dev"),
        ("OFF_SKB_SK", "sk_buff.sk"),
        ("OFF_SKB_LEN", "sk_buff.len"),
        ("OFF_SKB_HEAD", "sk_buff.head"),
        ("OFF_SKB_NETWORK_HEADER", "sk_buff.network_header"),
        ("OFF_SKB_TRANSPORT_HEADER", "sk_buff.transport_header"),
        ("OFF_DEV_IFINDEX", "net_device.ifindex"),
        ("OFF_DEV_NAME", "net_device.name"),
        ("OFF_DEV_PRIV_FLAGS", "net_device.priv_flags"),
        ("OFF_DEV_LINK_OPS", "net_device.rtnl_link_ops"),
        ("OFF_OPS_KIND", "rtnl_link_ops.kind"),
        ("OFF_DEV_ND_NET", "net_device.nd_net"),
        ("OFF_NET_INUM", "net.ns.inum"),
    ] {
        out.push((
            global,
            btf.offset(path)
                .with_context(|| format!("offset of {path}"))?,
        ));
    }
    out.push(("IFF_BRIDGE_PORT", btf.enum_value("IFF_BRIDGE_PORT")? as u32));
    Ok(out)
}

impl NetTracer {
    pub fn start(filter: &Filter) -> Result<NetTracer> {
        // Parsed BTF is large: keep only the offsets before aya parses its own copy.
        let offsets = offsets(&Btf::vmlinux()?)?;
        let (lo, hi) = filter.ports;
        let mut l = aya::EbpfLoader::new();
        for (name, v) in &offsets {
            l.override_global(name, v, true);
        }
        l.override_global("FILTER_PORT_LO", &lo, true)
            .override_global("FILTER_PORT_HI", &hi, true)
            .override_global("FILTER_HOST", &filter.host, true)
            .override_global("FILTER_NETNS", &filter.netns, true)
            .override_global("FILTER_IFINDEX", &filter.ifindex, true)
            .override_global("CLIENT_NETNS", &filter.client_netns, true)
            .override_global("SAMPLE_EVERY", &filter.sample_every, true)
            .override_global("STALE_NS", &STALE_NS, true)
            .override_global("FOLLOW_EVERY", &filter.follow_every, true);
        let mut ebpf = l
            .load(crate::ebpf::OBJECT)
            .context("loading the tracer's eBPF programs")?;
        let table = layers::table();
        {
            let mut seg: Array<_, u8> = Array::try_from(
                ebpf.map_mut("SEG_SLOT")
                    .ok_or_else(|| anyhow!("SEG_SLOT missing"))?,
            )?;
            for (i, &slot) in table.seg_slot.iter().enumerate() {
                if slot != 0 {
                    seg.set(i as u32, slot, 0)?;
                }
            }
        }
        let mut attached = vec![];
        let aya_btf = AyaBtf::from_sys_fs().ok();
        for (tp, btf_prog, raw_prog) in HOOKS {
            attached.push((
                tp.to_string(),
                attach_one(&mut ebpf, tp, btf_prog, raw_prog, aya_btf.as_ref()),
            ));
        }
        attached.extend(super::softirq::attach(&mut ebpf, aya_btf.as_ref()));
        drop(aya_btf);
        let must = ["net_dev_queue", "net_dev_start_xmit", "netif_receive_skb"];
        for (tp, how) in &attached {
            if must.contains(&tp.as_str()) && how.starts_with("not attached") {
                return Err(anyhow!(
                    "tracepoint net:{tp} {how}: nothing to trace without it"
                ));
            }
        }
        Ok(NetTracer {
            ebpf,
            table,
            attached,
        })
    }

    pub fn snapshot(&self) -> Result<Snapshot> {
        let map = |name: &str| {
            self.ebpf
                .map(name)
                .ok_or_else(|| anyhow!("map {name} missing"))
        };
        let hist: PerCpuArray<&MapData, Hist> = PerCpuArray::try_from(map("NET_HIST")?)?;
        let pos: PerCpuArray<&MapData, SlotPos> = PerCpuArray::try_from(map("NET_POS")?)?;
        let counters: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map("NET_COUNTERS")?)?;
        let drops: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map("NET_DROPS")?)?;
        let unknown: HashMap<&MapData, u32, u64> = HashMap::try_from(map("NET_UNKNOWN")?)?;
        let mut slots = BTreeMap::new();
        for slot in 0..SLOTS {
            let per_cpu = hist.get(&slot, 0)?;
            let h = crate::hist::merge(&per_cpu);
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

    /// The ring buffer of sampled events (`--sample N`).
    pub fn events(&mut self) -> Result<aya::maps::RingBuf<&mut MapData>> {
        Ok(aya::maps::RingBuf::try_from(
            self.ebpf
                .map_mut("NET_EVENTS")
                .ok_or_else(|| anyhow!("NET_EVENTS missing"))?,
        )?)
    }

    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }
}

/// tp_btf where it loads and attaches, else the raw tracepoint; the reason when neither does.
pub(crate) fn attach_one(
    ebpf: &mut Ebpf,
    tp: &str,
    btf_prog: &str,
    raw_prog: &str,
    btf: Option<&AyaBtf>,
) -> String {
    let mut why = String::new();
    if let Some(btf) = btf {
        let r = (|| -> Result<()> {
            let p: &mut BtfTracePoint = ebpf
                .program_mut(btf_prog)
                .ok_or_else(|| anyhow!("{btf_prog} missing"))?
                .try_into()?;
            p.load(tp, btf)?;
            p.attach()?;
            Ok(())
        })();
        match r {
            Ok(()) => return "tp_btf".into(),
            Err(e) => why = format!("tp_btf: {e:#}; "),
        }
    }
    let r = (|| -> Result<()> {
        let p: &mut RawTracePoint = ebpf
            .program_mut(raw_prog)
            .ok_or_else(|| anyhow!("{raw_prog} missing"))?
            .try_into()?;
        p.load()?;
        p.attach(tp)?;
        Ok(())
    })();
    match r {
        Ok(()) => "raw_tracepoint".into(),
        Err(e) => format!("not attached ({why}raw_tracepoint: {e:#})"),
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
