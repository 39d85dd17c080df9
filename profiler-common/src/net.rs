//! The packet-path tracer's shared vocabulary: hooks, device classes, the "point" a packet is
//! at (hook x device class x bridge port x encapsulated), segment slots and sampled events.
//!
//! A segment is the pair (previous point, current point). The kernel looks the pair up in
//! `SEG_SLOT` (filled by user space from its layer model) and records the delta into that
//! slot's histogram; the kernel never names layers.

/// Where a packet was seen. Values are stable: they are part of the map layout.
pub mod hook {
    /// A kernel function's entry or exit (fentry/kprobe, fexit/kretprobe), where the attach
    /// plan gives one: the class bits carry the `func`, the port bit the exit.
    pub const FUNC: u8 = 0;
    /// net:net_dev_queue — entering a device's transmit path (qdisc).
    pub const QUEUE: u8 = 1;
    /// net:net_dev_start_xmit — handed to the driver.
    pub const XMIT: u8 = 2;
    /// net:netif_rx — queued to the per-CPU backlog (veth, loopback).
    pub const RX: u8 = 3;
    /// net:netif_receive_skb — taken by the stack in NET_RX softirq.
    pub const RECV: u8 = 4;
    /// net:napi_gro_receive_entry — NAPI/GRO receive.
    pub const GRO: u8 = 5;
    /// skb:skb_copy_datagram_iovec — copied to the application: delivered.
    pub const DELIVER: u8 = 6;
    /// A socket or task stage of the round trip (not a device): the class bits carry the
    /// `stage`, so the point stays 8 bits and `SEG_SLOT` keeps its shape.
    pub const STAGE: u8 = 7;
    pub const COUNT: u8 = 8;
}

/// The stages of a round trip around the packet path, in a `hook::STAGE` point's class bits.
pub mod stage {
    /// sock:sk_data_ready — the socket is told data is queued (before the reader's wake-up).
    pub const READY: u8 = 0;
    /// sched:sched_wakeup of the reader the data-ready woke (sched_waking, synchronous
    /// inside the data-ready on the same CPU, names it).
    pub const WAKEUP: u8 = 1;
    /// sched:sched_switch to that reader.
    pub const RUN: u8 = 2;
    /// sock:sock_recv_length — the receive that copied a followed packet returns.
    pub const RETURN: u8 = 3;
    /// raw_syscalls:sys_enter of a send (sendto, sendmsg, write, writev) by a task that
    /// received a followed packet before.
    pub const SEND: u8 = 4;
}

/// Kernel functions that split segments the net tracepoints leave merged (the class bits of a
/// `hook::FUNC` point). 0 is none: point 0 never names a place.
pub mod func {
    /// ip_local_out: a tunnel's encapsulated packet handed to IP output (after its route
    /// lookup and headers); entry only.
    pub const LOCAL_OUT: u8 = 1;
    /// nf_conntrack_in: entry and exit, the lookup/insert's cost per packet.
    pub const CONNTRACK: u8 = 2;
    /// nf_nat_inet_fn: entry and exit, NAT's cost per packet and hook.
    pub const NAT: u8 = 3;
    /// ip_forward: a routed packet after its route lookup, before the forward hook; entry only.
    pub const FORWARD: u8 = 4;
    /// A UDP tunnel's (vxlan, geneve) route lookup returned (a dst cache hit or the FIB's
    /// answer) for the skb its transmit function took; exit only.
    pub const ROUTE_UDP: u8 = 5;
    /// The same for an IP tunnel (ipip, gre).
    pub const ROUTE_IP: u8 = 6;
    pub const COUNT: u8 = 7;
}

/// The point of a function's entry (`exit` false) or exit.
#[inline(always)]
pub const fn func_point(f: u8, exit: bool, encap: bool) -> u8 {
    point(hook::FUNC, f, exit, encap)
}

/// The point of a stage.
#[inline(always)]
pub const fn stage_point(s: u8) -> u8 {
    point(hook::STAGE, s, false, false)
}

/// A device's kind, from its `rtnl_link_ops->kind`.
pub mod class {
    /// No link ops (a physical NIC) or a kind not listed here.
    pub const OTHER: u8 = 0;
    pub const VETH: u8 = 1;
    pub const BRIDGE: u8 = 2;
    pub const VXLAN: u8 = 3;
    pub const IPIP: u8 = 4;
    pub const MACVLAN: u8 = 5;
    pub const LOOPBACK: u8 = 6;
    pub const IPVLAN: u8 = 7;
    pub const COUNT: u8 = 8;
}

/// Bits of a point: hook (3), class (3), bridge port (1), encapsulated (1).
pub const POINTS: u32 = 256;

#[inline(always)]
pub const fn point(hook: u8, class: u8, port: bool, encap: bool) -> u8 {
    (hook & 7) | ((class & 7) << 3) | ((port as u8) << 6) | ((encap as u8) << 7)
}

#[inline(always)]
pub const fn point_hook(p: u8) -> u8 {
    p & 7
}
#[inline(always)]
pub const fn point_class(p: u8) -> u8 {
    (p >> 3) & 7
}
#[inline(always)]
pub const fn point_port(p: u8) -> bool {
    (p >> 6) & 1 == 1
}
#[inline(always)]
pub const fn point_encap(p: u8) -> bool {
    p >> 7 == 1
}

/// Index into `SEG_SLOT` of the segment (prev, cur).
#[inline(always)]
pub const fn pair(prev: u8, cur: u8) -> u32 {
    ((prev as u32) << 8) | cur as u32
}

/// Histogram slots per direction; the second direction starts at `SLOTS_PER_DIR`.
pub const SLOTS_PER_DIR: u32 = 64;
pub const SLOTS: u32 = 2 * SLOTS_PER_DIR;
/// Slot 0 of a direction: a segment the layer model does not name.
pub const SLOT_UNKNOWN: u32 = 0;
/// Last slot of a direction: birth to delivery, the one-way time.
pub const SLOT_ONE_WAY: u32 = SLOTS_PER_DIR - 1;
/// `Event::slot` of a packet's first hook (no segment closes there).
pub const SLOT_BIRTH: u8 = u8::MAX;
/// Direction 0: from the client's namespace (requests; with no client namespace, packets to the
/// followed port); 1: everything else (responses).
pub const DIR_REQUEST: u8 = 0;
pub const DIR_RESPONSE: u8 = 1;

/// A task that took part in a followed round trip (`NET_TASK`, a direct-mapped array tagged
/// by the task_struct address): the packet whose wake-up it is in, or the one it received.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TaskState {
    /// The task_struct address (the slot's tag): 0 = free.
    pub task: u64,
    /// The followed skb this task was woken for (`task_stage::WOKEN`).
    pub skb: u64,
    /// When the last stage of this task happened (a copy, a receive's return).
    pub ts: u64,
    /// Birth of the packet it received (the offset of later segments from it).
    pub first_ts: u64,
    /// Entry of the send syscall the task is in (0: not in one).
    pub send_ts: u64,
    pub stage: u8,
    /// Direction of the packet it received.
    pub dir: u8,
    pub _pad: [u8; 6],
}

/// `TaskState::stage`.
pub mod task_stage {
    pub const NONE: u8 = 0;
    /// Woken by a followed packet's data-ready: `skb` names it.
    pub const WOKEN: u8 = 1;
    /// Switched in after that wake-up.
    pub const RUNNING: u8 = 2;
    /// Copied a followed packet; its receive has not returned yet.
    pub const COPIED: u8 = 3;
    /// Its receive returned: the next send closes the application segment.
    pub const RETURNED: u8 = 4;
}

pub const TASK_BITS: u32 = 10;
pub const TASK_SLOTS: u32 = 1 << TASK_BITS;

/// The `NET_TASK` slot of a task_struct address.
#[inline(always)]
pub const fn task_slot(task: u64) -> u32 {
    (task.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - TASK_BITS)) as u32
}

/// Per-CPU links between a packet and the socket and task stages that follow it on the same
/// CPU (`NET_CPU[0]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuLink {
    /// The followed skb last taken by netif_receive_skb on this CPU (0: none): the one a
    /// data-ready right after it is about.
    pub recv_skb: u64,
    /// Set at a correlated data-ready, taken by the next sched_waking on this CPU.
    pub wake_skb: u64,
    pub wake_ts: u64,
    /// The task current at that data-ready: a waking in another context is not its.
    pub wake_current: u64,
}

/// Time spent in the application between its receive's return and its next send, per process
/// and direction received (`NET_APPS`, key: tgid << 8 | direction): the application segments
/// of `--attach-only`, named by process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AppTime {
    pub count: u64,
    pub sum_ns: u64,
    /// Direction of the packet the process received before.
    pub dir: u32,
    pub _pad: u32,
}

/// Indexes of the `NET_COUNTERS` per-CPU array. Only followed packets (and packets drawn at
/// birth) touch them: a hook on a packet that isn't followed counts nothing.
pub mod counter {
    /// Packets that matched the filter at their first hook and are now followed.
    pub const BIRTHS: u32 = 0;
    /// Followed packets delivered to a socket.
    pub const DELIVERED: u32 = 1;
    /// Followed packets freed as dropped (skb:kfree_skb).
    pub const DROPPED: u32 = 2;
    /// Followed packets freed as consumed without a delivery hook (e.g. TCP coalescing).
    pub const CONSUMED: u32 = 3;
    /// State found too old (or from an earlier window), or continued into a transmit queue no
    /// path leads to: its skb was freed unseen and the address reused by a new packet.
    pub const STALE: u32 = 4;
    /// Sampled events the ring buffer had no room for.
    pub const SAMPLES_LOST: u32 = 5;
    /// Segments whose pair the layer model does not name.
    pub const UNKNOWN_SEGMENTS: u32 = 6;
    /// Hooks run on followed packets (each closes a segment or starts one).
    pub const FOLLOWED_HOOKS: u32 = 7;
    /// Packets drawn at a transmit queue by the one-in-N decision, before the filter.
    pub const DRAWN: u32 = 8;
    /// Drawn packets whose state slot held another live packet: not followed (lost), never
    /// silently overwritten.
    pub const COLLISIONS: u32 = 9;
    pub const COUNT: u32 = 10;
}

/// Per-skb state slots (`NET_SKB`, a direct-mapped array tagged by the skb address): a power
/// of two, so the slot is the top bits of a multiplicative hash.
pub const STATE_BITS: u32 = 16;
pub const STATE_SLOTS: u32 = 1 << STATE_BITS;

/// The state slot of an skb address (Fibonacci hashing: sk_buffs are 256-byte slab objects, so
/// the low bits alone would crowd a few slots).
#[inline(always)]
pub const fn state_slot(skb: u64) -> u32 {
    (skb.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - STATE_BITS)) as u32
}

/// Load-time configuration of the packet tracer (`NET_CONFIG`, one `Global`): struct offsets
/// from the running kernel's BTF and the packet filter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NetConfig {
    pub off_skb_dev: u32,
    pub off_skb_sk: u32,
    pub off_skb_len: u32,
    pub off_skb_head: u32,
    pub off_skb_network_header: u32,
    pub off_skb_transport_header: u32,
    pub off_dev_ifindex: u32,
    pub off_dev_name: u32,
    pub off_dev_priv_flags: u32,
    pub off_dev_link_ops: u32,
    pub off_ops_kind: u32,
    pub off_dev_nd_net: u32,
    pub off_net_inum: u32,
    pub iff_bridge_port: u32,
    /// Ports (source or destination) of followed packets, inclusive.
    pub port_lo: u16,
    pub port_hi: u16,
    /// IPv4 address, network byte order; 0 = any.
    pub host: u32,
    /// Netns inode of the first hook's device; 0 = any.
    pub netns: u32,
    /// This architecture's numbers of the send syscalls (write, writev, sendto, sendmsg): a
    /// send's entry starts a round trip's first segment.
    pub sys_send: [u32; 4],
    /// 1 when net:net_dev_start_xmit is attached; 0 when its queue wait is folded into what
    /// follows (every device noqueue, so net_dev_queue and start_xmit are back to back).
    pub xmit_hook: u32,
    pub ifindex: u32,
    /// Packets born in this netns are requests.
    pub client_netns: u32,
    /// State slots in use minus one (a power of two minus one; tests shrink it to force
    /// collisions).
    pub state_mask: u32,
    /// 1 with `--debug-bpf`: rare conditions (a read at an offset failing, a state slot taken,
    /// a full ring buffer, a segment no layer names) are logged through aya-log. Read only on
    /// those rare branches.
    pub debug: u32,
    /// With `client_netns`: packets are born only in these two (a lab's own traffic; another
    /// lab on the same ports is not followed). 0 = anywhere.
    pub server_netns: u32,
    pub _pad: u32,
    /// Print one followed packet in N (0 = none).
    pub print_every: u64,
    /// State older than this was left by an skb freed unseen.
    pub stale_ns: u64,
}

/// Run-time control of the packet tracer (`NET_CONTROL[0]`, written by user space between
/// and during windows).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Control {
    /// A packet at a transmit queue is followed when `bpf_get_prandom_u32() < follow_below`:
    /// `2^32 / N` follows one in N; 0 follows none (a window draining); `2^32` all.
    pub follow_below: u64,
    /// Start of the current window (ktime ns): state from before it is stale.
    pub epoch_ns: u64,
    /// A port whose packets are not followed (0: none): the workload's control connection,
    /// which shares the service port and whose STOP waits for the server's idle tick.
    pub skip_port: u64,
}

/// `Control::follow_below` for one packet in `n`.
pub const fn follow_below(n: u64) -> u64 {
    if n <= 1 { 1 << 32 } else { (1 << 32) / n }
}

/// Per-slot position on the path: count, and the smallest (segment end - packet birth) in ns.
/// The minimum orders layers along the path; a mean would follow the rare packet that waited
/// 100 ms for ARP.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct SlotPos {
    pub count: u64,
    pub min_offset: u64,
}

/// One hook on a sampled packet (`--sample N`), for the pwru-style path print.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub skb: u64,
    pub ts: u64,
    pub netns: u32,
    pub ifindex: u32,
    pub len: u32,
    pub cpu: u32,
    pub hook: u8,
    pub class: u8,
    pub dir: u8,
    pub slot: u8,
    pub name: [u8; 16],
    pub _pad: [u8; 4],
}

/// A drop of a followed packet: `skb:kfree_skb`'s reason, counted in `NET_DROPS`.
pub const MAX_DROP_REASONS: u32 = 256;

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::SlotPos {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::NetConfig {}
    unsafe impl aya::Pod for super::Control {}
    unsafe impl aya::Pod for super::TaskState {}
    unsafe impl aya::Pod for super::AppTime {}
}
