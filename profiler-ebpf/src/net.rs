//! The packet-path tracer (kernel side). Each net/skb tracepoint calls `on_hook`: a followed
//! packet (state keyed by its skb address) closes the segment since its previous hook, and the
//! delta goes into the histogram slot `SEG_SLOT` names for that pair. Unfollowed packets cost
//! one hash lookup (plus a header parse at a transmit queue, where packets are born).
//! User space reads the per-CPU histograms on an interval; see profiler/src/trace/net.rs.

use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use profiler_common::{
    hist::Hist,
    net::{
        Event, MAX_DROP_REASONS, SLOT_BIRTH, SLOT_ONE_WAY, SLOT_UNKNOWN, SLOTS, SLOTS_PER_DIR,
        SlotPos, class, counter, hook, pair, point, point_hook,
    },
};

use crate::hist::record;

/// Load-time constants: struct offsets from the running kernel's BTF and the packet filter.
/// Read through `read_volatile` so the compiler keeps them as loads of .rodata, which the
/// loader fills (`EbpfLoader::set_global`).
macro_rules! globals {
    ($($name:ident: $ty:ty),* $(,)?) => {
        $(#[unsafe(no_mangle)] static $name: $ty = 0;)*
    };
}
globals! {
    OFF_SKB_DEV: u32, OFF_SKB_SK: u32, OFF_SKB_LEN: u32, OFF_SKB_HEAD: u32, OFF_SKB_NETWORK_HEADER: u32,
    OFF_SKB_TRANSPORT_HEADER: u32, OFF_DEV_IFINDEX: u32, OFF_DEV_NAME: u32,
    OFF_DEV_PRIV_FLAGS: u32, OFF_DEV_LINK_OPS: u32, OFF_OPS_KIND: u32, OFF_DEV_ND_NET: u32,
    OFF_NET_INUM: u32, IFF_BRIDGE_PORT: u32,
    FILTER_PORT_LO: u16, FILTER_PORT_HI: u16, FILTER_HOST: u32, FILTER_NETNS: u32,
    FILTER_IFINDEX: u32, CLIENT_NETNS: u32, SAMPLE_EVERY: u64, STALE_NS: u64, FOLLOW_EVERY: u64,
}

#[inline(always)]
fn g<T: Copy>(v: &'static T) -> T {
    // SAFETY: reading a static.
    unsafe { core::ptr::read_volatile(v) }
}

#[repr(C)]
#[derive(Clone, Copy)]
struct SkbState {
    first_ts: u64,
    last_ts: u64,
    point: u8,
    dir: u8,
    encap: u8,
    sampled: u8,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct DevInfo {
    /// The net_device this describes (the cache slot's tag).
    dev: u64,
    ifindex: u32,
    netns: u32,
    class: u8,
    port: u8,
    _pad: [u8; 6],
    name: [u8; 16],
}

impl DevInfo {
    const NONE: DevInfo = DevInfo {
        dev: 0,
        ifindex: 0,
        netns: 0,
        class: class::OTHER,
        port: 0,
        _pad: [0; 6],
        name: [0; 16],
    };
}

#[map]
static NET_SKB: LruHashMap<u64, SkbState> = LruHashMap::with_max_entries(65536, 0);
/// A direct-mapped, per-CPU cache of device facts, indexed by the net_device address: an
/// array lookup instead of a hash lookup on every hook.
const DEV_CACHE: u32 = 1024;
#[map]
static NET_DEV: PerCpuArray<DevInfo> = PerCpuArray::with_max_entries(DEV_CACHE, 0);
#[map]
static SEG_SLOT: Array<u8> = Array::with_max_entries(65536, 0);
#[map]
static NET_HIST: PerCpuArray<Hist> = PerCpuArray::with_max_entries(SLOTS, 0);
#[map]
static NET_POS: PerCpuArray<SlotPos> = PerCpuArray::with_max_entries(SLOTS, 0);
#[map]
static NET_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);
#[map]
static NET_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_DROP_REASONS, 0);
#[map]
static NET_UNKNOWN: LruHashMap<u32, u64> = LruHashMap::with_max_entries(1024, 0);
#[map]
static NET_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

#[inline(always)]
fn count(i: u32) -> u64 {
    match NET_COUNTERS.get_ptr_mut(i) {
        // SAFETY: per-CPU value, this CPU only.
        Some(p) => unsafe {
            *p += 1;
            *p
        },
        None => 0,
    }
}

#[inline(always)]
fn read<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel tolerates any address.
    unsafe { bpf_probe_read_kernel(addr as *const T).ok() }
}

/// The first 8 bytes of a link kind string, as a little-endian u64, NUL-padded.
const fn kind8(s: &[u8]) -> u64 {
    let mut v = 0u64;
    let mut i = 0;
    while i < s.len() && i < 8 {
        v |= (s[i] as u64) << (8 * i);
        i += 1;
    }
    v
}

/// Whether the 8 bytes read from a kind string hold `s` and its NUL (bytes past it may be
/// anything: the read can run beyond the string).
#[inline(always)]
fn is_kind(kind: u64, s: &[u8]) -> bool {
    let bytes = s.len() + 1;
    let mask = if bytes >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * bytes)) - 1
    };
    kind & mask == kind8(s)
}

fn dev_info(dev: u64) -> Option<DevInfo> {
    if dev == 0 {
        return None;
    }
    // `dev` comes from a probe read (a plain number, which the verifier lets us shift): slot
    // by address bits above net_device's alignment; ifindex alone collides across namespaces.
    let cached = NET_DEV.get_ptr_mut(((dev >> 10) as u32) & (DEV_CACHE - 1));
    if let Some(c) = cached
        // SAFETY: per-CPU value, this CPU only.
        && unsafe { (*c).dev } == dev
    {
        // SAFETY: as above.
        return Some(unsafe { *c });
    }
    let ifindex: u32 = read(dev + g(&OFF_DEV_IFINDEX) as u64)?;
    let flags: u32 = read(dev + g(&OFF_DEV_PRIV_FLAGS) as u64).unwrap_or(0);
    let name: [u8; 16] = read(dev + g(&OFF_DEV_NAME) as u64).unwrap_or([0; 16]);
    let net: u64 = read(dev + g(&OFF_DEV_ND_NET) as u64).unwrap_or(0);
    let netns: u32 = if net == 0 {
        0
    } else {
        read(net + g(&OFF_NET_INUM) as u64).unwrap_or(0)
    };
    let ops: u64 = read(dev + g(&OFF_DEV_LINK_OPS) as u64).unwrap_or(0);
    let kind: u64 = if ops == 0 {
        0
    } else {
        match read::<u64>(ops + g(&OFF_OPS_KIND) as u64) {
            Some(p) if p != 0 => read(p).unwrap_or(0),
            _ => 0,
        }
    };
    let class = if is_kind(kind, b"veth") {
        class::VETH
    } else if is_kind(kind, b"bridge") {
        class::BRIDGE
    } else if is_kind(kind, b"vxlan") {
        class::VXLAN
    } else if is_kind(kind, b"ipip") {
        class::IPIP
    } else if is_kind(kind, b"macvlan") {
        class::MACVLAN
    } else if is_kind(kind, b"ipvlan") {
        class::IPVLAN
    } else if ops == 0 && name[0] == b'l' && name[1] == b'o' && name[2] == 0 {
        class::LOOPBACK
    } else {
        class::OTHER
    };
    let info = DevInfo {
        dev,
        ifindex,
        netns,
        class,
        port: (flags & g(&IFF_BRIDGE_PORT) != 0) as u8,
        _pad: [0; 6],
        name,
    };
    if let Some(c) = cached {
        // SAFETY: per-CPU value, this CPU only.
        unsafe { *c = info };
    }
    Some(info)
}

/// At a packet's first hook: IPv4 TCP/UDP with a port in range, on the chosen netns/device.
/// Returns whether the destination port is the one in range (the packet goes to the service).
fn matches(skb: u64, dev: &DevInfo) -> Option<bool> {
    let ns = g(&FILTER_NETNS);
    if ns != 0 && ns != dev.netns {
        return None;
    }
    let ifindex = g(&FILTER_IFINDEX);
    if ifindex != 0 && ifindex != dev.ifindex {
        return None;
    }
    let head = read::<u64>(skb + g(&OFF_SKB_HEAD) as u64)?;
    let nh: u16 = read(skb + g(&OFF_SKB_NETWORK_HEADER) as u64).unwrap_or(0xffff);
    let th: u16 = read(skb + g(&OFF_SKB_TRANSPORT_HEADER) as u64).unwrap_or(0xffff);
    if nh == 0xffff || th == 0xffff {
        return None;
    }
    // version/ihl .. protocol (byte 9) .. saddr (12) daddr (16)
    let ip = read::<[u8; 20]>(head + nh as u64)?;
    if ip[0] >> 4 != 4 || (ip[9] != 6 && ip[9] != 17) {
        return None;
    }
    let host = g(&FILTER_HOST);
    if host != 0 {
        let s = u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]);
        let d = u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]);
        if s != host && d != host {
            return None;
        }
    }
    let ports = read::<[u8; 4]>(head + th as u64)?;
    let sport = u16::from_be_bytes([ports[0], ports[1]]);
    let dport = u16::from_be_bytes([ports[2], ports[3]]);
    let (lo, hi) = (g(&FILTER_PORT_LO), g(&FILTER_PORT_HI));
    let to = dport >= lo && dport <= hi;
    (to || (sport >= lo && sport <= hi)).then_some(to)
}

fn emit(skb: u64, now: u64, h: u8, d: &DevInfo, dir: u8, slot: u8) {
    let Some(mut e) = NET_EVENTS.reserve::<Event>(0) else {
        count(counter::SAMPLES_LOST);
        return;
    };
    let len: u32 = read(skb + g(&OFF_SKB_LEN) as u64).unwrap_or(0);
    e.write(Event {
        skb,
        ts: now,
        netns: d.netns,
        ifindex: d.ifindex,
        len,
        // SAFETY: helper without preconditions.
        cpu: unsafe { bpf_get_smp_processor_id() },
        hook: h,
        class: d.class,
        dir,
        slot,
        name: d.name,
        _pad: [0; 4],
    });
    e.submit(0);
}

fn record_slot(slot: u32, delta: u64, offset: u64) {
    record(&NET_HIST, slot, delta);
    if let Some(p) = NET_POS.get_ptr_mut(slot) {
        // SAFETY: per-CPU value, this CPU only.
        unsafe {
            (*p).count += 1;
            if (*p).min_offset == 0 || offset < (*p).min_offset {
                (*p).min_offset = offset;
            }
        }
    }
}

/// A packet seen at hook `h` on device `dev` (0: read it from the skb, as every hook does).
/// Returns (first hook's time, direction, now) when it closed a segment of a followed packet.
fn on_hook(skb: u64, dev: u64, h: u8) -> Option<(u64, u8, u64)> {
    count(counter::EVENTS);
    if h == hook::RECV {
        crate::softirq::packet_received();
    }
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // At delivery the device no longer matters: skip the read.
    let dev = if dev != 0 || h == hook::DELIVER {
        dev
    } else {
        read(skb + g(&OFF_SKB_DEV) as u64).unwrap_or(0)
    };
    let Some(st) = NET_SKB.get_ptr_mut(skb) else {
        if h == hook::QUEUE {
            birth(skb, dev, now);
        }
        return None;
    };
    // SAFETY: a live LRU map value; only this packet's hooks touch it, one at a time.
    let st = unsafe { &mut *st };
    if now.wrapping_sub(st.last_ts) > g(&STALE_NS) {
        // Its skb was freed unseen and the address reused: this is another packet.
        let _ = NET_SKB.remove(skb);
        count(counter::STALE);
        if h == hook::QUEUE {
            birth(skb, dev, now);
        }
        return None;
    }
    // At delivery the skb's device no longer matters (and may be gone).
    let d = if h == hook::DELIVER {
        DevInfo::NONE
    } else {
        dev_info(dev)?
    };
    // Decapsulated: the inner packet re-enters on the tunnel device (netif_rx, GRO or receive).
    if h != hook::QUEUE && h != hook::XMIT && (d.class == class::VXLAN || d.class == class::IPIP) {
        st.encap = 0;
    }
    let cur = point(h, d.class, d.port != 0, st.encap != 0);
    let seg = pair(st.point, cur);
    let slot = match SEG_SLOT.get(seg) {
        Some(&s) if s != 0 => s as u32,
        _ => SLOT_UNKNOWN,
    };
    // A received packet that reaches a transmit queue owned by a local socket is a new packet:
    // forwarded ones carry no socket (crossing a namespace orphans them).
    let local_again = h == hook::QUEUE
        && matches!(point_hook(st.point), hook::RECV | hook::GRO)
        && read::<u64>(skb + g(&OFF_SKB_SK) as u64).unwrap_or(0) != 0;
    if (slot == SLOT_UNKNOWN || local_again) && h == hook::QUEUE {
        // No path continues into a transmit queue this way: the skb was freed unseen (e.g.
        // kfree_skb_partial) and its address now carries a new packet.
        let _ = NET_SKB.remove(skb);
        count(counter::STALE);
        birth(skb, dev, now);
        return None;
    }
    if slot == SLOT_UNKNOWN {
        count(counter::UNKNOWN_SEGMENTS);
        match NET_UNKNOWN.get_ptr_mut(seg) {
            // SAFETY: racy increments are fine for a diagnostic count.
            Some(c) => unsafe { *c += 1 },
            None => {
                let _ = NET_UNKNOWN.insert(seg, 1, 0);
            }
        }
    }
    let base = st.dir as u32 * SLOTS_PER_DIR;
    record_slot(base + slot, now - st.last_ts, now - st.first_ts);
    if h == hook::XMIT && (d.class == class::VXLAN || d.class == class::IPIP) {
        st.encap = 1;
    }
    st.point = cur;
    st.last_ts = now;
    if st.sampled != 0 {
        emit(skb, now, h, &d, st.dir, slot as u8);
    }
    Some((st.first_ts, st.dir, now))
}

fn birth(skb: u64, dev: u64, now: u64) {
    let Some(d) = dev_info(dev) else {
        return;
    };
    let Some(to_port) = matches(skb, &d) else {
        return;
    };
    // Following one packet in N keeps the per-hook cost of the others to one hash miss.
    let follow = g(&FOLLOW_EVERY);
    if follow > 1 && !count(counter::MATCHED).is_multiple_of(follow) {
        return;
    }
    let n = count(counter::BIRTHS);
    let every = g(&SAMPLE_EVERY);
    let sampled = every != 0 && n.is_multiple_of(every);
    // Requests come from the client's namespace; without one (attach-only), go to the port.
    let client = g(&CLIENT_NETNS);
    let request = if client != 0 {
        d.netns == client
    } else {
        to_port
    };
    let dir = if request { 0 } else { 1 };
    let st = SkbState {
        first_ts: now,
        last_ts: now,
        point: point(hook::QUEUE, d.class, d.port != 0, false),
        dir,
        encap: 0,
        sampled: sampled as u8,
        _pad: 0,
    };
    let _ = NET_SKB.insert(skb, st, 0);
    if sampled {
        emit(skb, now, hook::QUEUE, &d, dir, SLOT_BIRTH);
    }
}

/// Copied to the application: the last segment, and the one-way time.
fn on_deliver(skb: u64) {
    // One state lookup: the last segment's hook hands back what the one-way time needs.
    let Some((first, dir, now)) = on_hook(skb, 0, hook::DELIVER) else {
        return;
    };
    let slot = dir as u32 * SLOTS_PER_DIR + SLOT_ONE_WAY;
    record_slot(slot, now - first, now - first);
    count(counter::DELIVERED);
    let _ = NET_SKB.remove(skb);
}

fn on_free(skb: u64, reason: Option<u32>) {
    if NET_SKB.get_ptr(skb).is_none() {
        return;
    }
    let _ = NET_SKB.remove(skb);
    match reason {
        Some(r) => {
            count(counter::DROPPED);
            if let Some(p) = NET_DROPS.get_ptr_mut(r.min(MAX_DROP_REASONS - 1)) {
                // SAFETY: per-CPU value, this CPU only.
                unsafe { *p += 1 };
            }
        }
        None => {
            count(counter::CONSUMED);
        }
    }
}

/// Each hook twice: tp_btf where BTF tracepoints attach, raw tracepoint elsewhere; the attach
/// plan picks one. Both receive the tracepoint's raw arguments.
macro_rules! hook_programs {
    ($tp:literal, $btf:ident, $raw:ident, |$a0:ident, $a1:ident, $a2:ident| $body:expr) => {
        #[btf_tracepoint(function = $tp)]
        pub fn $btf(ctx: BtfTracePointContext) -> i32 {
            let ($a0, $a1, $a2): (u64, u64, u64) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
            let _ = ($a1, $a2);
            $body;
            0
        }

        #[raw_tracepoint(tracepoint = $tp)]
        pub fn $raw(ctx: RawTracePointContext) -> i32 {
            let ($a0, $a1, $a2): (u64, u64, u64) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
            let _ = ($a1, $a2);
            $body;
            0
        }
    };
}

hook_programs!(
    "net_dev_queue",
    net_queue_btf,
    net_queue_raw,
    |skb, _a, _b| on_hook(skb, 0, hook::QUEUE)
);
// The device argument is skb->dev: read from the skb it is a plain number (see dev_info).
hook_programs!(
    "net_dev_start_xmit",
    net_xmit_btf,
    net_xmit_raw,
    |skb, _dev, _b| on_hook(skb, 0, hook::XMIT)
);
hook_programs!("netif_rx", net_rx_btf, net_rx_raw, |skb, _a, _b| on_hook(
    skb,
    0,
    hook::RX
));
hook_programs!(
    "netif_receive_skb",
    net_recv_btf,
    net_recv_raw,
    |skb, _a, _b| on_hook(skb, 0, hook::RECV)
);
hook_programs!(
    "napi_gro_receive_entry",
    net_gro_btf,
    net_gro_raw,
    |skb, _a, _b| on_hook(skb, 0, hook::GRO)
);
hook_programs!(
    "skb_copy_datagram_iovec",
    net_deliver_btf,
    net_deliver_raw,
    |skb, _a, _b| { on_deliver(skb) }
);
hook_programs!(
    "kfree_skb",
    net_drop_btf,
    net_drop_raw,
    |skb, _loc, reason| on_free(skb, Some(reason as u32))
);
hook_programs!(
    "consume_skb",
    net_consume_btf,
    net_consume_raw,
    |skb, _a, _b| on_free(skb, None)
);
