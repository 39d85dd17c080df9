//! The packet-path tracer (kernel side). Each net/skb tracepoint calls `on_hook`: a followed
//! packet (state keyed by its skb address) closes the segment since its previous hook, and the
//! delta goes into the histogram slot `SEG_SLOT` names for that pair. Unfollowed packets cost
//! one hash lookup (plus a header parse at a transmit queue, where packets are born).
//! User space reads the per-CPU histograms on an interval; see profiler/src/probes/net.rs.

use aya_ebpf::{
    Global,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_prandom_u32,
        bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{fentry, fexit, kprobe, kretprobe, map, raw_tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{FEntryContext, FExitContext, ProbeContext, RawTracePointContext, RetProbeContext},
};
use profiler_common::{
    hist::Hist,
    net::{
        AppTime, Control, CpuLink, Event, MAX_DROP_REASONS, NetConfig, SLOT_BIRTH, SLOT_ONE_WAY,
        SLOT_UNKNOWN, SLOTS, SLOTS_PER_DIR, STATE_SLOTS, SlotPos, TASK_SLOTS, TaskState, class,
        counter, func, func_point, hook, pair, point, point_hook, stage, stage_point, state_slot,
        task_slot, task_stage,
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
    sys_send: [0; 4],
    xmit_hook: 0,
    ifindex: 0,
    client_netns: 0,
    state_mask: 0,
    debug: 0,
    server_netns: 0,
    _pad: 0,
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
    /// The sending socket at birth (skb->sk folded to 32 bits; 0: none).
    sk: u32,
}

/// A socket address folded to 32 bits: enough to tell the sender's socket from another.
#[inline(always)]
fn fold(sk: u64) -> u32 {
    (sk ^ (sk >> 32)) as u32
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
    } else if is_kind(kind, b"vxlan") || is_kind(kind, b"geneve") {
        // The class field is full: a UDP overlay shares vxlan's, an IP tunnel ipip's; user
        // space names them by the lab's mode (trace/layers.rs).
        class::VXLAN
    } else if is_kind(kind, b"ipip") || is_kind(kind, b"gre") {
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
    let server_ns = cfg!(server_netns);
    if server_ns != 0 && dev.netns != server_ns && dev.netns != cfg!(client_netns) {
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
    let skip = control().skip_port as u16;
    if skip != 0 && (sport == skip || dport == skip) {
        return None;
    }
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
    // The new packet's draw happens here, not inside `followed`: nested, their frames and
    // `birth`'s exceeded 6.1's 512-byte combined stack (544, seen in a Debian 6.1 guest).
    if followed(skb, h, st) {
        draw(skb, st);
    }
}

/// Closes the followed packet's segment at hook `h`; true when its state turned out stale at a
/// transmit queue, where the skb now carries a new packet to draw.
fn followed(skb: u64, h: u8, st: &mut SkbState) -> bool {
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(st.last_ts) > cfg!(stale_ns) || st.first_ts < control().epoch_ns {
        // Its skb was freed unseen (or the window it was born in ended) and the address reused.
        st.skb = 0;
        count(counter::STALE);
        return h == hook::QUEUE;
    }
    count(counter::FOLLOWED_HOOKS);
    // At delivery the skb's device no longer matters (and may be gone): no read.
    let d = if h == hook::DELIVER {
        DevInfo::NONE
    } else {
        match dev_info(read(skb + cfg!(off_skb_dev) as u64).unwrap_or(0)) {
            Some(d) => d,
            None => return false,
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
    // A received packet that reaches a transmit queue owned by another socket than its sender
    // is a new packet under a reused address. Forwarded ones carry no socket (6.18 orphans
    // them crossing a namespace) or still their sender's (6.1 and 6.12 keep it across a
    // bridge, where testing for any socket cut every bridged trace at the port).
    let local_again = h == hook::QUEUE
        && matches!(point_hook(st.point), hook::RECV | hook::GRO)
        && match read::<u64>(skb + cfg!(off_skb_sk) as u64).unwrap_or(0) {
            0 => false,
            sk => fold(sk) != st.sk,
        };
    if (slot == SLOT_UNKNOWN || local_again) && h == hook::QUEUE {
        // No path continues into a transmit queue this way: the skb was freed unseen (e.g.
        // kfree_skb_partial) and its address now carries a new packet.
        st.skb = 0;
        count(counter::STALE);
        return true;
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
        copied(st, now);
        st.skb = 0;
        return false;
    }
    st.point = cur;
    st.last_ts = now;
    if h == hook::RECV || h == hook::GRO {
        received(skb);
    }
    false
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
        sk: fold(read(skb + cfg!(off_skb_sk) as u64).unwrap_or(0)),
    };
    if print {
        emit(skb, now, hook::QUEUE, &d, dir, SLOT_BIRTH);
    }
    sent(dir, st.point, now);
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

// ---- Round-trip stages: the socket and the tasks around a followed packet's path ----------
//
// Keys: the skb on the packet's path (as above); the CPU from a receive to its data-ready
// and on to the wake-up inside it; the task_struct address from the wake-up to the reader's
// copy, its receive's return and its next send. A stage hook on a task or socket no followed
// packet touched costs one array lookup and a compare, like a packet hook.

/// Tasks in a followed round trip, direct-mapped by task_struct address (a hash map update
/// costs ~420 ns here).
#[map]
static NET_TASK: Array<TaskState> = Array::with_max_entries(TASK_SLOTS, 0);
#[map]
static NET_CPU: PerCpuArray<CpuLink> = PerCpuArray::with_max_entries(1, 0);
/// Application time per process and direction (key: tgid << 8 | direction received), once
/// per followed transaction.
#[map]
static NET_APPS: HashMap<u64, AppTime> = HashMap::with_max_entries(256, 0);

/// sched_waking runs synchronously inside the data-ready: a waking later than this is
/// another one's.
const WAKE_WITHIN_NS: u64 = 20_000;

#[inline(always)]
fn task_rec(task: u64) -> Option<&'static mut TaskState> {
    // SAFETY: an array value; a slot is only used while its tag names the task.
    NET_TASK
        .get_ptr_mut(task_slot(task))
        .map(|p| unsafe { &mut *p })
}

#[inline(always)]
fn cpu_link() -> Option<&'static mut CpuLink> {
    // SAFETY: per-CPU value, this CPU only.
    NET_CPU.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

#[inline(always)]
fn current_task() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_get_current_task() }
}

fn now_ns() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// The slot of segment (prev, cur); an unnamed one is counted as on the packet path.
fn slot_of(prev: u8, cur: u8) -> u32 {
    let seg = pair(prev, cur);
    match SEG_SLOT.get(seg) {
        Some(&s) if s != 0 => s as u32,
        _ => {
            count(counter::UNKNOWN_SEGMENTS);
            match NET_UNKNOWN.get_ptr_mut(seg) {
                // SAFETY: racy increments are fine for a diagnostic count.
                Some(c) => unsafe { *c += 1 },
                None => {
                    let _ = NET_UNKNOWN.insert(seg, 1, 0);
                }
            }
            SLOT_UNKNOWN
        }
    }
}

/// One stage segment into direction `dir`'s histograms; its slot.
fn record_stage(dir: u8, prev: u8, cur: u8, delta: u64, offset: u64) -> u32 {
    count(counter::FOLLOWED_HOOKS);
    let slot = slot_of(prev, cur);
    record_slot(dir as u32 * SLOTS_PER_DIR + slot, delta, offset);
    slot
}

/// A followed skb reaches stage `s`: closes the segment since its last point.
fn skb_stage(skb: u64, st: &mut SkbState, s: u8, now: u64) -> bool {
    if now.wrapping_sub(st.last_ts) > cfg!(stale_ns) || st.first_ts < control().epoch_ns {
        return false;
    }
    let cur = stage_point(s);
    let slot = record_stage(st.dir, st.point, cur, now - st.last_ts, now - st.first_ts);
    if st.print != 0 {
        let d = DevInfo {
            class: s,
            ..DevInfo::NONE
        };
        emit(skb, now, hook::STAGE, &d, st.dir, slot as u8);
    }
    st.point = cur;
    st.last_ts = now;
    true
}

/// A followed skb taken by the stack on this CPU: a data-ready right after it is its.
#[inline(always)]
fn received(skb: u64) {
    if let Some(c) = cpu_link() {
        c.recv_skb = skb;
    }
}

/// sock:sk_data_ready. The followed skb last received on this CPU is the one queued when it
/// is still at its receive point and owned by this socket (or by none: UDP steals it).
#[inline(always)]
fn on_ready(sk: u64) {
    let Some(c) = cpu_link() else { return };
    let skb = c.recv_skb;
    if skb == 0 {
        return;
    }
    let Some(st) = state(skb) else { return };
    if st.skb != skb || !matches!(point_hook(st.point), hook::RECV | hook::GRO) {
        c.recv_skb = 0;
        return;
    }
    let owner: u64 = read(skb + cfg!(off_skb_sk) as u64).unwrap_or(0);
    if owner != 0 && owner != sk {
        return;
    }
    c.recv_skb = 0;
    let now = now_ns();
    if skb_stage(skb, st, stage::READY, now) {
        c.wake_skb = skb;
        c.wake_ts = now;
        c.wake_current = current_task();
    }
}

/// sched:sched_waking of `task`: inside a correlated data-ready, the reader it wakes.
#[inline(always)]
fn on_waking(task: u64) {
    let Some(c) = cpu_link() else { return };
    let skb = c.wake_skb;
    if skb == 0 {
        return;
    }
    c.wake_skb = 0;
    if current_task() != c.wake_current || now_ns().wrapping_sub(c.wake_ts) > WAKE_WITHIN_NS {
        return;
    }
    if let Some(r) = task_rec(task) {
        *r = TaskState {
            task,
            skb,
            stage: task_stage::WOKEN,
            ..TaskState::default()
        };
    }
}

/// The record of `task` woken for a followed skb and not yet switched in, and that skb.
#[inline(always)]
fn woken_for(task: u64) -> Option<(&'static mut TaskState, u64)> {
    let r = task_rec(task)?;
    if r.task != task || r.stage != task_stage::WOKEN {
        return None;
    }
    let skb = r.skb;
    Some((r, skb))
}

/// sched:sched_wakeup: the woken reader is on a run queue.
#[inline(always)]
fn on_wakeup(task: u64) {
    let Some((_, skb)) = woken_for(task) else {
        return;
    };
    let Some(st) = state(skb) else { return };
    if st.skb == skb && st.point == stage_point(stage::READY) {
        skb_stage(skb, st, stage::WAKEUP, now_ns());
    }
}

/// sched:sched_switch to `next`: the woken reader runs.
#[inline(always)]
fn on_switch(next: u64) {
    let Some((r, skb)) = woken_for(next) else {
        return;
    };
    r.stage = task_stage::RUNNING;
    let Some(st) = state(skb) else { return };
    if st.skb == skb
        && (st.point == stage_point(stage::WAKEUP) || st.point == stage_point(stage::READY))
    {
        skb_stage(skb, st, stage::RUN, now_ns());
    }
}

/// At the copy of a followed packet: the current task holds it until its receive returns.
fn copied(st: &SkbState, now: u64) {
    let task = current_task();
    if let Some(r) = task_rec(task) {
        *r = TaskState {
            task,
            ts: now,
            first_ts: st.first_ts,
            stage: task_stage::COPIED,
            dir: st.dir,
            ..TaskState::default()
        };
    }
}

/// sock:sock_recv_length: the receive that copied a followed packet returns.
#[inline(always)]
fn on_recv_ret() {
    let task = current_task();
    let Some(r) = task_rec(task) else { return };
    if r.task != task || r.stage != task_stage::COPIED {
        return;
    }
    let now = now_ns();
    let deliver = point(hook::DELIVER, class::OTHER, false, false);
    record_stage(
        r.dir,
        deliver,
        stage_point(stage::RETURN),
        now - r.ts,
        now - r.first_ts,
    );
    r.stage = task_stage::RETURNED;
    r.ts = now;
}

/// raw_syscalls:sys_enter of a send by a task in a round trip: its application time since
/// its receive returned ends, and its send starts.
#[inline(always)]
fn on_send(id: u64) {
    let s = cfg!(sys_send);
    let id = id as u32;
    if id != s[0] && id != s[1] && id != s[2] && id != s[3] {
        return;
    }
    let task = current_task();
    let Some(r) = task_rec(task) else { return };
    if r.task != task {
        return;
    }
    let now = now_ns();
    if r.stage == task_stage::RETURNED && r.first_ts >= control().epoch_ns {
        let delta = now - r.ts;
        record_stage(
            r.dir,
            stage_point(stage::RETURN),
            stage_point(stage::SEND),
            delta,
            now - r.first_ts,
        );
        app_time(r.dir, delta);
    }
    r.stage = task_stage::NONE;
    r.send_ts = now;
}

fn app_time(dir: u8, delta: u64) {
    let key = (bpf_get_current_pid_tgid() >> 32) << 8 | dir as u64;
    match NET_APPS.get_ptr_mut(key) {
        // SAFETY: racy adds from two CPUs of one process are rare and only skew a mean.
        Some(a) => unsafe {
            (*a).count += 1;
            (*a).sum_ns += delta;
        },
        None => {
            let _ = NET_APPS.insert(
                key,
                AppTime {
                    count: 1,
                    sum_ns: delta,
                    dir: dir as u32,
                    _pad: 0,
                },
                0,
            );
        }
    }
}

/// sock:sock_send_length: the send returned; a packet born later is not its.
#[inline(always)]
fn on_send_ret() {
    let task = current_task();
    if let Some(r) = task_rec(task)
        && r.task == task
    {
        r.send_ts = 0;
    }
}

/// At a followed packet's birth: born inside a send of a task in a round trip (TCP transmits
/// in the sender's context unless it defers), the send's first segment.
fn sent(dir: u8, at: u8, now: u64) {
    let task = current_task();
    let Some(r) = task_rec(task) else { return };
    if r.task != task || r.send_ts == 0 {
        return;
    }
    record_stage(dir, stage_point(stage::SEND), at, now - r.send_ts, 0);
    r.send_ts = 0;
}

#[raw_tracepoint(tracepoint = "sk_data_ready")]
pub fn net_ready(ctx: RawTracePointContext) -> i32 {
    on_ready(ctx.arg(0));
    0
}

#[raw_tracepoint(tracepoint = "sched_waking")]
pub fn net_waking(ctx: RawTracePointContext) -> i32 {
    on_waking(ctx.arg(0));
    0
}

#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn net_wakeup(ctx: RawTracePointContext) -> i32 {
    on_wakeup(ctx.arg(0));
    0
}

/// (preempt, prev, next, prev_state): the task switched in is arg 2.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn net_switch(ctx: RawTracePointContext) -> i32 {
    on_switch(ctx.arg(2));
    0
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn net_recv_ret(_ctx: RawTracePointContext) -> i32 {
    on_recv_ret();
    0
}

#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn net_send_ret(_ctx: RawTracePointContext) -> i32 {
    on_send_ret();
    0
}

/// (regs, id): every syscall's entry; anything but a send returns after one compare.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn net_send(ctx: RawTracePointContext) -> i32 {
    on_send(ctx.arg(1));
    0
}

// ---- Function probes: kernel functions inside segments the net tracepoints leave merged ---
//
// The attach plan gives each function fentry/fexit where the kernel allows it (vmlinux
// functions; aya reaches no module BTF) and kprobe/kretprobe otherwise (modules); on a kernel
// with neither they do not attach and cost nothing. An unfollowed packet costs one array
// lookup and a tag compare, as at a tracepoint.

/// The followed skb inside each function, per CPU, from a kprobe to its kretprobe (which has
/// no arguments); 0: none.
#[map]
static NET_FUNC: PerCpuArray<u64> = PerCpuArray::with_max_entries(func::COUNT as u32, 0);

/// A followed packet at function `f`'s entry or exit: closes the segment since its last
/// point. Whether it was followed.
fn on_func(skb: u64, f: u8, exit: bool) -> bool {
    on_func_at(skb, f, exit, true)
}

/// `reused`: a segment the layer model lacks means the skb's address carries a new packet
/// (the function takes skbs); false where the skb came from a stash, not the function.
#[inline(always)]
fn on_func_at(skb: u64, f: u8, exit: bool, reused: bool) -> bool {
    let Some(st) = state(skb) else { return false };
    if st.skb != skb {
        return false;
    }
    let now = now_ns();
    if now.wrapping_sub(st.last_ts) > cfg!(stale_ns) || st.first_ts < control().epoch_ns {
        return false;
    }
    let cur = func_point(f, exit, st.encap != 0);
    let slot = match SEG_SLOT.get(pair(st.point, cur)) {
        Some(&s) if s != 0 => s as u32,
        _ if !reused => return false,
        _ => {
            // No path reaches this function this way: the skb was freed unseen and its
            // address now carries a new packet (a local one, born at its transmit queue).
            st.skb = 0;
            let n = count(counter::STALE);
            rare!(n.is_power_of_two(); "net: function {} from point {:x}: no segment of the layer model, taken as a reused address ({} stale on this CPU)", f, st.point, n);
            return false;
        }
    };
    count(counter::FOLLOWED_HOOKS);
    record_slot(
        st.dir as u32 * SLOTS_PER_DIR + slot,
        now - st.last_ts,
        now - st.first_ts,
    );
    if st.print != 0 {
        let d = DevInfo {
            class: f,
            port: exit as u8,
            ..DevInfo::NONE
        };
        emit(skb, now, hook::FUNC, &d, st.dir, slot as u8);
    }
    st.point = cur;
    st.last_ts = now;
    true
}

/// A kprobe's entry: a followed skb is kept for the kretprobe on this CPU.
#[inline(always)]
fn func_entry(skb: u64, f: u8) {
    if on_func(skb, f, false)
        && let Some(p) = NET_FUNC.get_ptr_mut(f as u32)
    {
        // SAFETY: per-CPU value, this CPU only.
        unsafe { *p = skb };
    }
}

/// A kretprobe: the skb its kprobe kept on this CPU, if any. Forwarded packets run these
/// functions in softirq, entry and exit on one CPU with nothing between. A local output's call
/// (process context) could be interrupted by a softirq's call, whose exit would then close
/// the outer one early, or migrate and leave its slot to the next exit here: only for a
/// followed packet's own output through conntrack, which no lab mode has.
#[inline(always)]
fn func_return(f: u8) {
    let Some(p) = NET_FUNC.get_ptr_mut(f as u32) else {
        return;
    };
    // SAFETY: per-CPU value, this CPU only.
    let skb = unsafe { core::ptr::replace(p, 0) };
    if skb != 0 {
        on_func(skb, f, true);
    }
}

/// Argument `n` of a BTF-typed program (fentry) as a plain number: read from the context
/// so the verifier lets it be hashed (a direct load would be a pointer).
#[inline(always)]
fn btf_arg(ctx: &impl aya_ebpf::EbpfContext, n: usize) -> u64 {
    // SAFETY: the context holds the function's arguments as 8-byte slots.
    unsafe { bpf_probe_read_kernel((ctx.as_ptr() as *const u64).add(n)).unwrap_or(0) }
}

/// ip_local_out(net, sk, skb).
#[fentry(function = "ip_local_out")]
pub fn net_f_local_out(ctx: FEntryContext) -> i32 {
    on_func(btf_arg(&ctx, 2), func::LOCAL_OUT, false);
    0
}

#[kprobe]
pub fn net_k_local_out(ctx: ProbeContext) -> u32 {
    on_func(ctx.arg::<u64>(2).unwrap_or(0), func::LOCAL_OUT, false);
    0
}

/// ip_forward(skb).
#[fentry(function = "ip_forward")]
pub fn net_f_forward(ctx: FEntryContext) -> i32 {
    on_func(btf_arg(&ctx, 0), func::FORWARD, false);
    0
}

#[kprobe]
pub fn net_k_forward(ctx: ProbeContext) -> u32 {
    on_func(ctx.arg::<u64>(0).unwrap_or(0), func::FORWARD, false);
    0
}

/// nf_conntrack_in(skb, state): a module function (nf_conntrack), so a kprobe.
#[kprobe]
pub fn net_k_conntrack(ctx: ProbeContext) -> u32 {
    func_entry(ctx.arg::<u64>(0).unwrap_or(0), func::CONNTRACK);
    0
}

#[kretprobe]
pub fn net_kr_conntrack(_ctx: RetProbeContext) -> u32 {
    func_return(func::CONNTRACK);
    0
}

/// nf_nat_inet_fn(priv, skb, state): in module nf_nat.
#[kprobe]
pub fn net_k_nat(ctx: ProbeContext) -> u32 {
    func_entry(ctx.arg::<u64>(1).unwrap_or(0), func::NAT);
    0
}

#[kretprobe]
pub fn net_kr_nat(_ctx: RetProbeContext) -> u32 {
    func_return(func::NAT);
    0
}

// A tunnel's route lookup (vxlan, geneve, ipip, gre): the tunnel's transmit function keeps its
// skb on this CPU, and the lookup's return (a dst cache hit, or the FIB's answer) closes the
// segment "route lookup" for it; from there to ip_local_out is the encapsulation. Tunnels
// transmit with bottom halves off, so nothing else runs on the CPU between the two.

#[inline(always)]
fn tunnel_xmit(skb: u64, f: u8) {
    if let Some(p) = NET_FUNC.get_ptr_mut(f as u32) {
        // SAFETY: per-CPU value, this CPU only.
        unsafe { *p = skb };
    }
}

/// The route lookup returned `rt` (0: a cache miss, the FIB lookup follows).
#[inline(always)]
fn route_found(rt: u64) {
    if rt == 0 {
        return;
    }
    for f in [func::ROUTE_UDP, func::ROUTE_IP] {
        if let Some(p) = NET_FUNC.get_ptr_mut(f as u32) {
            // SAFETY: per-CPU value, this CPU only.
            let skb = unsafe { core::ptr::replace(p, 0) };
            if skb != 0 {
                on_func_at(skb, f, true, false);
            }
        }
    }
}

/// vxlan_xmit(skb, dev): module vxlan.
#[kprobe]
pub fn net_k_vxlan_xmit(ctx: ProbeContext) -> u32 {
    tunnel_xmit(ctx.arg::<u64>(0).unwrap_or(0), func::ROUTE_UDP);
    0
}

/// geneve_xmit(skb, dev): module geneve.
#[kprobe]
pub fn net_k_geneve_xmit(ctx: ProbeContext) -> u32 {
    tunnel_xmit(ctx.arg::<u64>(0).unwrap_or(0), func::ROUTE_UDP);
    0
}

/// ipip_tunnel_xmit(skb, dev): module ipip.
#[kprobe]
pub fn net_k_ipip_xmit(ctx: ProbeContext) -> u32 {
    tunnel_xmit(ctx.arg::<u64>(0).unwrap_or(0), func::ROUTE_IP);
    0
}

/// ipgre_xmit(skb, dev): module ip_gre.
#[kprobe]
pub fn net_k_gre_xmit(ctx: ProbeContext) -> u32 {
    tunnel_xmit(ctx.arg::<u64>(0).unwrap_or(0), func::ROUTE_IP);
    0
}

/// dst_cache_get_ip4(cache, saddr) returned: the tunnel's cached route (vmlinux).
#[fexit(function = "dst_cache_get_ip4")]
pub fn net_fx_route_cache(ctx: FExitContext) -> i32 {
    route_found(btf_arg(&ctx, 2));
    0
}

#[kretprobe]
pub fn net_kr_route_cache(ctx: RetProbeContext) -> u32 {
    route_found(ctx.ret::<u64>());
    0
}

/// ip_route_output_flow(net, fl4, sk) returned: a FIB lookup (the cache missed).
#[fexit(function = "ip_route_output_flow")]
pub fn net_fx_route_output(ctx: FExitContext) -> i32 {
    route_found(btf_arg(&ctx, 3));
    0
}

#[kretprobe]
pub fn net_kr_route_output(ctx: RetProbeContext) -> u32 {
    route_found(ctx.ret::<u64>());
    0
}
