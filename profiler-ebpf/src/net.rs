//! The packet-path tracer (kernel side). Each net/skb tracepoint calls `on_hook`: a followed
//! packet (state keyed by its skb address) closes the segment since its previous hook, and the
//! delta goes into the histogram slot `SEG_SLOT` names for that pair. Unfollowed packets cost
//! one hash lookup (plus a header parse at a transmit queue, where packets are born).
//! User space reads the per-CPU histograms on an interval; see profiler/src/probes/net.rs.

use aya_ebpf::{
    Global,
    helpers::{
        bpf_get_prandom_u32, bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{map, raw_tracepoint},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::RawTracePointContext,
};
use profiler_common::{
    hist::Hist,
    net::{
        Control, Event, MAX_DROP_REASONS, NetConfig, SLOT_BIRTH, SLOT_ONE_WAY, SLOT_UNKNOWN, SLOTS,
        SLOTS_PER_DIR, STATE_SLOTS, SlotPos, class, counter, hook, pair, point, point_hook,
        state_slot,
    },
};

use crate::hist::record_shared;

/// Offsets and filter, set by the loader (profiler/src/probes/net.rs).
#[unsafe(no_mangle)]
static NET_CONFIG: Global<NetConfig> = Global::new(NetConfig {
    off_skb_dev: 0,
    off_skb_sk: 0,
    off_skb_len: 0,
    off_skb_head: 0,
    off_skb_network_header: 0,
    off_skb_transport_header: 0,
    off_dev_ifindex: 0,
    off_dev_name: 0,
    off_dev_priv_flags: 0,
    off_dev_link_ops: 0,
    off_ops_kind: 0,
    off_dev_nd_net: 0,
    off_net_inum: 0,
    iff_bridge_port: 0,
    port_lo: 0,
    port_hi: 0,
    host: 0,
    netns: 0,
    xmit_hook: 0,
    ifindex: 0,
    client_netns: 0,
    state_mask: 0,
    debug: 0,
    print_every: 0,
    stale_ns: 0,
});

/// One field of `NET_CONFIG`, read as a single volatile load (`Global::load` would copy the
/// whole struct on every hook).
macro_rules! cfg {
    ($f:ident) => {
        // SAFETY: `Global<T>` is `repr(transparent)` over an initialised `T`.
        unsafe {
            core::ptr::read_volatile(core::ptr::addr_of!(
                (*(&NET_CONFIG as *const Global<NetConfig> as *const NetConfig)).$f
            ))
        }
    };
}

/// A rare condition, logged through aya-log with `--debug-bpf` (`when` first, so a counter can
/// thin it to its powers of two). Only ever on a rare branch: the flag is read there, not on
/// the hook's common path.
macro_rules! rare {
    ($when:expr; $($msg:tt)+) => {
        if cfg!(debug) != 0 && $when {
            aya_log_ebpf::warn!(&(), $($msg)+);
        }
    };
}

/// A followed packet. `skb` is the slot's tag: 0 = free.
#[repr(C)]
#[derive(Clone, Copy)]
struct SkbState {
    skb: u64,
    first_ts: u64,
    last_ts: u64,
    point: u8,
    dir: u8,
    encap: u8,
    print: u8,
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

/// Direct-mapped per-skb state, shared by all CPUs (a packet crosses CPUs): one inlined array
/// lookup and a tag compare per hook, where a hash map would take a lock.
#[map]
static NET_SKB: Array<SkbState> = Array::with_max_entries(STATE_SLOTS, 0);
#[map]
static NET_CONTROL: Array<Control> = Array::with_max_entries(1, 0);
/// A direct-mapped, per-CPU cache of device facts, indexed by the net_device address: an
/// array lookup instead of a hash lookup on every hook.
const DEV_CACHE: u32 = 256;
#[map]
static NET_DEV: PerCpuArray<DevInfo> = PerCpuArray::with_max_entries(DEV_CACHE, 0);
#[map]
static SEG_SLOT: Array<u8> = Array::with_max_entries(65536, 0);
#[map]
static NET_HIST: Array<Hist> = Array::with_max_entries(SLOTS, 0);
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
    // `dev` comes from a probe read (a plain number, which the verifier lets us hash): slot by
    // a multiplicative hash of the address (net_devices are page-aligned slab objects, so a
    // few address bits alone would crowd a few slots); ifindex alone collides across
    // namespaces.
    let slot = (dev.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u32 & (DEV_CACHE - 1);
    let cached = NET_DEV.get_ptr_mut(slot);
    if let Some(c) = cached
        // SAFETY: per-CPU value, this CPU only.
        && unsafe { (*c).dev } == dev
    {
        // SAFETY: as above.
        return Some(unsafe { *c });
    }
    let Some(ifindex) = read::<u32>(dev + cfg!(off_dev_ifindex) as u64) else {
        rare!(true; "net: net_device {:x} +{} (ifindex) unreadable: a BTF offset that does not hold here?", dev, cfg!(off_dev_ifindex));
        return None;
    };
    let flags: u32 = read(dev + cfg!(off_dev_priv_flags) as u64).unwrap_or(0);
    let name: [u8; 16] = read(dev + cfg!(off_dev_name) as u64).unwrap_or([0; 16]);
    let net: u64 = read(dev + cfg!(off_dev_nd_net) as u64).unwrap_or(0);
    let netns: u32 = if net == 0 {
        0
    } else {
        read(net + cfg!(off_net_inum) as u64).unwrap_or(0)
    };
    let ops: u64 = read(dev + cfg!(off_dev_link_ops) as u64).unwrap_or(0);
    let kind: u64 = if ops == 0 {
        0
    } else {
        match read::<u64>(ops + cfg!(off_ops_kind) as u64) {
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
        port: (flags & cfg!(iff_bridge_port) != 0) as u8,
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
    let ns = cfg!(netns);
    if ns != 0 && ns != dev.netns {
        return None;
    }
    let ifindex = cfg!(ifindex);
    if ifindex != 0 && ifindex != dev.ifindex {
        return None;
    }
    let head = read::<u64>(skb + cfg!(off_skb_head) as u64)?;
    let (off_th, off_nh) = (cfg!(off_skb_transport_header), cfg!(off_skb_network_header));
    // Adjacent in sk_buff on the kernels seen (transport_header, network_header): one read.
    let (th, nh) = if off_nh == off_th + 2 {
        let both: [u16; 2] = read(skb + off_th as u64)?;
        (both[0], both[1])
    } else {
        (read(skb + off_th as u64)?, read(skb + off_nh as u64)?)
    };
    if nh == 0xffff || th == 0xffff {
        return None;
    }
    // version/ihl .. protocol (byte 9) .. saddr (12) daddr (16), and the ports right after
    // an option-less header: one read.
    let hdr = read::<[u8; 24]>(head + nh as u64)?;
    let ip = &hdr;
    if ip[0] >> 4 != 4 || (ip[9] != 6 && ip[9] != 17) {
        return None;
    }
    let host = cfg!(host);
    if host != 0 {
        let s = u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]);
        let d = u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]);
        if s != host && d != host {
            return None;
        }
    }
    let ports = if ip[0] & 0xf == 5 && th == nh.wrapping_add(20) {
        [hdr[20], hdr[21], hdr[22], hdr[23]]
    } else {
        read::<[u8; 4]>(head + th as u64)?
    };
    let sport = u16::from_be_bytes([ports[0], ports[1]]);
    let dport = u16::from_be_bytes([ports[2], ports[3]]);
    let (lo, hi) = (cfg!(port_lo), cfg!(port_hi));
    let to = dport >= lo && dport <= hi;
    (to || (sport >= lo && sport <= hi)).then_some(to)
}

// Six arguments: BPF calls take five, so it must stay inlined.
#[inline(always)]
fn emit(skb: u64, now: u64, h: u8, d: &DevInfo, dir: u8, slot: u8) {
    let Some(mut e) = NET_EVENTS.reserve::<Event>(0) else {
        let n = count(counter::SAMPLES_LOST);
        rare!(n.is_power_of_two(); "net: sample ring buffer full: {} samples lost on this CPU", n);
        return;
    };
    let len: u32 = read(skb + cfg!(off_skb_len) as u64).unwrap_or(0);
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
    record_shared(&NET_HIST, slot, delta);
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

#[inline(always)]
fn state(skb: u64) -> Option<&'static mut SkbState> {
    // SAFETY: an array value; only this packet's hooks touch a slot whose tag is its address.
    NET_SKB
        .get_ptr_mut(state_slot(skb) & cfg!(state_mask))
        .map(|p| unsafe { &mut *p })
}

#[inline(always)]
fn control() -> Control {
    match NET_CONTROL.get(0) {
        Some(c) => *c,
        None => Control::default(),
    }
}

/// A packet seen at hook `h`. A packet that isn't followed costs one array lookup and a tag
/// compare here (plus one random draw at a transmit queue): no clock, no counter, no read.
#[inline(always)]
fn on_hook(skb: u64, h: u8) {
    let Some(st) = state(skb) else { return };
    if st.skb != skb {
        if h == hook::QUEUE {
            draw(skb, st);
        }
        return;
    }
    followed(skb, h, st);
}

fn followed(skb: u64, h: u8, st: &mut SkbState) {
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(st.last_ts) > cfg!(stale_ns) || st.first_ts < control().epoch_ns {
        // Its skb was freed unseen (or the window it was born in ended) and the address reused.
        st.skb = 0;
        count(counter::STALE);
        if h == hook::QUEUE {
            draw(skb, st);
        }
        return;
    }
    count(counter::FOLLOWED_HOOKS);
    // At delivery the skb's device no longer matters (and may be gone): no read.
    let d = if h == hook::DELIVER {
        DevInfo::NONE
    } else {
        match dev_info(read(skb + cfg!(off_skb_dev) as u64).unwrap_or(0)) {
            Some(d) => d,
            None => return,
        }
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
        && read::<u64>(skb + cfg!(off_skb_sk) as u64).unwrap_or(0) != 0;
    if (slot == SLOT_UNKNOWN || local_again) && h == hook::QUEUE {
        // No path continues into a transmit queue this way: the skb was freed unseen (e.g.
        // kfree_skb_partial) and its address now carries a new packet.
        st.skb = 0;
        count(counter::STALE);
        draw(skb, st);
        return;
    }
    if slot == SLOT_UNKNOWN {
        let n = count(counter::UNKNOWN_SEGMENTS);
        rare!(n.is_power_of_two(); "net: unexpected hook order: point {:x} -> {:x} is no segment of the layer model ({} on this CPU)", st.point, cur, n);
        match NET_UNKNOWN.get_ptr_mut(seg) {
            // SAFETY: racy increments are fine for a diagnostic count.
            Some(c) => unsafe { *c += 1 },
            None => {
                let failed = NET_UNKNOWN.insert(seg, 1, 0).is_err();
                rare!(failed; "net: NET_UNKNOWN insert of segment {:x} failed", seg);
            }
        }
    }
    let base = st.dir as u32 * SLOTS_PER_DIR;
    record_slot(base + slot, now - st.last_ts, now - st.first_ts);
    // Encapsulated from here on: after the tunnel device's start_xmit, or its queue when
    // start_xmit is not attached.
    let tx = if cfg!(xmit_hook) != 0 {
        hook::XMIT
    } else {
        hook::QUEUE
    };
    if h == tx && (d.class == class::VXLAN || d.class == class::IPIP) {
        st.encap = 1;
    }
    if st.print != 0 {
        emit(skb, now, h, &d, st.dir, slot as u8);
    }
    if h == hook::DELIVER {
        // Copied to the application: the one-way time, and the slot is free again.
        let one_way = st.dir as u32 * SLOTS_PER_DIR + SLOT_ONE_WAY;
        record_slot(one_way, now - st.first_ts, now - st.first_ts);
        count(counter::DELIVERED);
        st.skb = 0;
        return;
    }
    st.point = cur;
    st.last_ts = now;
}

/// A packet at a transmit queue with no state: the one-in-N draw comes first, so the packets
/// not drawn never pay for the filter's reads.
#[inline(always)]
fn draw(skb: u64, st: &mut SkbState) {
    // SAFETY: helper without preconditions.
    if (unsafe { bpf_get_prandom_u32() } as u64) >= control().follow_below {
        return;
    }
    birth(skb, st);
}

fn birth(skb: u64, st: &mut SkbState) {
    count(counter::DRAWN);
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if st.skb != 0
        && now.wrapping_sub(st.last_ts) <= cfg!(stale_ns)
        && st.first_ts >= control().epoch_ns
    {
        // The slot holds another live packet: this one is lost, the other kept.
        let n = count(counter::COLLISIONS);
        rare!(n.is_power_of_two(); "net: state slot collision (map full): skb {:x} lost to a live packet, {} on this CPU", skb, n);
        return;
    }
    let Some(d) = dev_info(read(skb + cfg!(off_skb_dev) as u64).unwrap_or(0)) else {
        return;
    };
    let Some(to_port) = matches(skb, &d) else {
        return;
    };
    let n = count(counter::BIRTHS);
    let print = cfg!(print_every) != 0 && n.is_multiple_of(cfg!(print_every));
    // Requests come from the client's namespace; without one (attach-only), go to the port.
    let request = if cfg!(client_netns) != 0 {
        d.netns == cfg!(client_netns)
    } else {
        to_port
    };
    let dir = if request { 0 } else { 1 };
    *st = SkbState {
        skb,
        first_ts: now,
        last_ts: now,
        point: point(hook::QUEUE, d.class, d.port != 0, false),
        dir,
        encap: 0,
        print: print as u8,
        _pad: 0,
    };
    if print {
        emit(skb, now, hook::QUEUE, &d, dir, SLOT_BIRTH);
    }
}

#[inline(always)]
fn on_free(skb: u64, reason: Option<u32>) {
    let Some(st) = state(skb) else { return };
    if st.skb != skb {
        return;
    }
    st.skb = 0;
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

/// Raw tracepoints only: the skb argument is a plain number there, so it can be hashed without
/// a probe read (tp_btf would need one to turn the BTF pointer into a scalar: 112 against 75 ns
/// per miss, measured on this project's VM). See docs/benchmarks/trace.md.
macro_rules! hook_program {
    ($tp:literal, $raw:ident, |$a0:ident, $a2:ident| $body:expr) => {
        #[raw_tracepoint(tracepoint = $tp)]
        pub fn $raw(ctx: RawTracePointContext) -> i32 {
            let ($a0, $a2): (u64, u64) = (ctx.arg(0), ctx.arg(2));
            let _ = $a2;
            $body;
            0
        }
    };
}

hook_program!("net_dev_queue", net_queue, |skb, _b| on_hook(
    skb,
    hook::QUEUE
));
hook_program!("net_dev_start_xmit", net_xmit, |skb, _b| on_hook(
    skb,
    hook::XMIT
));
hook_program!("netif_rx", net_rx, |skb, _b| on_hook(skb, hook::RX));
hook_program!("netif_receive_skb", net_recv, |skb, _b| on_hook(
    skb,
    hook::RECV
));
hook_program!("napi_gro_receive_entry", net_gro, |skb, _b| on_hook(
    skb,
    hook::GRO
));
hook_program!("skb_copy_datagram_iovec", net_deliver, |skb, _b| on_hook(
    skb,
    hook::DELIVER
));
hook_program!("kfree_skb", net_drop, |skb, reason| on_free(
    skb,
    Some(reason as u32)
));
hook_program!("consume_skb", net_consume, |skb, _b| on_free(skb, None));

/// The floor: an empty program of the same type, attached beside the tracer's on the same
/// tracepoint, so its cost can be stated against what merely running a program costs here.
#[raw_tracepoint]
pub fn net_floor(_ctx: RawTracePointContext) -> i32 {
    0
}
