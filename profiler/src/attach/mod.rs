//! The attach plan and the one attach path.
//!
//! Each subject (`probes/*`) declares its [`Point`]s: the ways to reach each, best first, each
//! way naming the program of the object that implements it. The tracers attach them through
//! [`link::attach_point`] (the kernel's answer is the attach itself); the doctor plans the same
//! table with [`choose`] from what its real attempts found. So the doctor's table is what the
//! tracers do. The layers ([`Hook`]) say which point measures each layer and how precisely.

pub mod link;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::kernel::SymbolHome;

/// A way of attaching a BPF program to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mechanism {
    Fentry,
    Fexit,
    Kprobe,
    Kretprobe,
    TpBtf,
    RawTracepoint,
    Tracepoint,
    Tc,
    Xdp,
}

impl Mechanism {
    pub const ALL: [Mechanism; 9] = [
        Mechanism::Kprobe,
        Mechanism::Kretprobe,
        Mechanism::Fentry,
        Mechanism::Fexit,
        Mechanism::TpBtf,
        Mechanism::RawTracepoint,
        Mechanism::Tracepoint,
        Mechanism::Tc,
        Mechanism::Xdp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Fentry => "fentry",
            Mechanism::Fexit => "fexit",
            Mechanism::Kprobe => "kprobe",
            Mechanism::Kretprobe => "kretprobe",
            Mechanism::TpBtf => "tp_btf",
            Mechanism::RawTracepoint => "raw_tracepoint",
            Mechanism::Tracepoint => "tracepoint",
            Mechanism::Tc => "tc",
            Mechanism::Xdp => "xdp",
        }
    }
}

/// What a mechanism is pointed at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// A kernel function (fentry/fexit/kprobe/kretprobe).
    Function { name: &'static str },
    /// A tracepoint `category:name` (tp_btf, raw and classic tracepoints).
    Tracepoint {
        category: &'static str,
        name: &'static str,
    },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Function { name } => write!(f, "{name}"),
            Target::Tracepoint { category, name } => write!(f, "{category}:{name}"),
        }
    }
}

/// One way of reaching a logical hook, and what precision it gives.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Candidate {
    pub mechanism: Mechanism,
    pub target: Target,
    /// What this way can and cannot tell apart, for the report.
    pub precision: &'static str,
    /// The object's program for this way; `None` where none is built yet.
    pub program: Option<&'static str>,
}

/// One point a subject attaches to: its ways, best first.
#[derive(Clone, Copy, Debug)]
pub struct Point {
    pub candidates: &'static [Candidate],
}

impl Point {
    /// The point's name in reports: its best way's target.
    pub fn event(&self) -> String {
        self.candidates[0].target.to_string()
    }
}

/// A point reached by one program on one tracepoint: `point!(RawTracepoint, "net",
/// "net_dev_queue", program)`.
#[macro_export]
macro_rules! point {
    ($mechanism:ident, $category:literal, $name:expr, $program:expr) => {
        $crate::attach::Point {
            candidates: const {
                &[$crate::attach::tracepoint(
                    $crate::attach::Mechanism::$mechanism,
                    $category,
                    $name,
                    $program,
                )]
            },
        }
    };
}

/// One program on one tracepoint.
pub const fn tracepoint(
    mechanism: Mechanism,
    category: &'static str,
    name: &'static str,
    program: &'static str,
) -> Candidate {
    Candidate {
        mechanism,
        target: Target::Tracepoint { category, name },
        precision: "",
        program: Some(program),
    }
}

/// A point on a packet's (or a VM's) path the tracer wants to observe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    VethXmit,
    BridgeForward,
    VxlanEncap,
    VxlanDecap,
    Conntrack,
    Nat,
    Softirq,
    KvmExit,
}

/// A function probe no program implements yet (the stock-kernel work adds them).
const fn func(mechanism: Mechanism, name: &'static str, precision: &'static str) -> Candidate {
    Candidate {
        mechanism,
        target: Target::Function { name },
        precision,
        program: None,
    }
}

const fn tp(
    mechanism: Mechanism,
    category: &'static str,
    name: &'static str,
    program: &'static str,
    precision: &'static str,
) -> Candidate {
    Candidate {
        mechanism,
        target: Target::Tracepoint { category, name },
        precision,
        program: Some(program),
    }
}

use Mechanism::*;
use profiler_common::names::program as prog;

const EXACT: &str = "exact: the layer's own function";
const SOFTIRQ: &str = "exact: raise, entry and exit of each softirq";
const BY_DEVICE: &str = "by device kind: the per-device net tracepoint on this layer's device";
// The packet tracer's tracepoints are raw tracepoints: the skb argument is a plain number there,
// hashed without a probe read (profiler-ebpf/src/net.rs), so tp_btf is not its candidate.

const fn way(
    mechanism: Mechanism,
    name: &'static str,
    program: &'static str,
    precision: &'static str,
) -> Candidate {
    Candidate {
        mechanism,
        target: Target::Function { name },
        precision,
        program: Some(program),
    }
}

const LOCAL_OUT_SPLIT: &str =
    "exact: a tunnel's encap + route lookup, then ip output + netfilter out";
const FORWARD_SPLIT: &str = "exact: ip receive + route lookup, then forward + netfilter out";
const PER_PACKET: &str = "exact: entry to exit, per packet";

// The packet tracer's function probes (probes::net::POINTS), the ways built, best first: fentry
// and fexit reach vmlinux functions only (aya loads them against vmlinux BTF), so a module's
// function (nf_conntrack, nf_nat) is a kprobe.
/// ip_local_out: where a tunnel hands its encapsulated packet to IP output.
pub const LOCAL_OUT: &[Candidate] = &[
    way(
        Fentry,
        "ip_local_out",
        prog::NET_F_LOCAL_OUT,
        LOCAL_OUT_SPLIT,
    ),
    way(
        Kprobe,
        "ip_local_out",
        prog::NET_K_LOCAL_OUT,
        LOCAL_OUT_SPLIT,
    ),
];
/// ip_forward: a routed packet between its route lookup and the forward hook.
pub const FORWARD: &[Candidate] = &[
    way(Fentry, "ip_forward", prog::NET_F_FORWARD, FORWARD_SPLIT),
    way(Kprobe, "ip_forward", prog::NET_K_FORWARD, FORWARD_SPLIT),
];
pub const CONNTRACK_ENTRY: &[Candidate] = &[way(
    Kprobe,
    "nf_conntrack_in",
    prog::NET_K_CONNTRACK,
    PER_PACKET,
)];
pub const CONNTRACK_EXIT: &[Candidate] = &[way(
    Kretprobe,
    "nf_conntrack_in",
    prog::NET_KR_CONNTRACK,
    PER_PACKET,
)];
pub const NAT_ENTRY: &[Candidate] = &[way(Kprobe, "nf_nat_inet_fn", prog::NET_K_NAT, PER_PACKET)];
pub const NAT_EXIT: &[Candidate] = &[way(
    Kretprobe,
    "nf_nat_inet_fn",
    prog::NET_KR_NAT,
    PER_PACKET,
)];

const TUNNEL_XMIT: &str = "exact: keeps the tunnel's skb for its route lookup's return";
const ROUTE_RETURN: &str =
    "exact: a tunnel's route lookup returned (fdb + route lookup, then encap alone)";
// A tunnel's route lookup: its transmit function (a module's, so a kprobe) keeps the skb, the
// lookup's return closes the segment: a dst cache hit, or the FIB's answer after a miss.
pub const VXLAN_XMIT: &[Candidate] = &[way(
    Kprobe,
    "vxlan_xmit",
    prog::NET_K_VXLAN_XMIT,
    TUNNEL_XMIT,
)];
pub const GENEVE_XMIT: &[Candidate] = &[way(
    Kprobe,
    "geneve_xmit",
    prog::NET_K_GENEVE_XMIT,
    TUNNEL_XMIT,
)];
pub const IPIP_XMIT: &[Candidate] = &[way(
    Kprobe,
    "ipip_tunnel_xmit",
    prog::NET_K_IPIP_XMIT,
    TUNNEL_XMIT,
)];
pub const GRE_XMIT: &[Candidate] = &[way(Kprobe, "ipgre_xmit", prog::NET_K_GRE_XMIT, TUNNEL_XMIT)];
pub const ROUTE_CACHE: &[Candidate] = &[
    way(
        Fexit,
        "dst_cache_get_ip4",
        prog::NET_FX_ROUTE_CACHE,
        ROUTE_RETURN,
    ),
    way(
        Kretprobe,
        "dst_cache_get_ip4",
        prog::NET_KR_ROUTE_CACHE,
        ROUTE_RETURN,
    ),
];
pub const ROUTE_OUTPUT: &[Candidate] = &[
    way(
        Fexit,
        "ip_route_output_flow",
        prog::NET_FX_ROUTE_OUTPUT,
        ROUTE_RETURN,
    ),
    way(
        Kretprobe,
        "ip_route_output_flow",
        prog::NET_KR_ROUTE_OUTPUT,
        ROUTE_RETURN,
    ),
];

/// A layer's function (fentry, then kprobe) and the per-device net tracepoint that cuts it
/// where no function probe works.
macro_rules! ways {
    ($func:literal, $tp:literal, $program:expr, $precision:expr) => {
        const {
            &[
                func(Fentry, $func, EXACT),
                func(Kprobe, $func, EXACT),
                tp(RawTracepoint, "net", $tp, $program, $precision),
            ]
        }
    };
}

impl Hook {
    pub const ALL: [Hook; 8] = [
        Hook::VethXmit,
        Hook::BridgeForward,
        Hook::VxlanEncap,
        Hook::VxlanDecap,
        Hook::Conntrack,
        Hook::Nat,
        Hook::Softirq,
        Hook::KvmExit,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Hook::VethXmit => "veth transmit",
            Hook::BridgeForward => "bridge forward",
            Hook::VxlanEncap => "vxlan encap",
            Hook::VxlanDecap => "vxlan decap",
            Hook::Conntrack => "netfilter conntrack",
            Hook::Nat => "netfilter nat",
            Hook::Softirq => "softirq",
            Hook::KvmExit => "kvm exit",
        }
    }

    /// The ways to reach this hook, best first.
    pub fn candidates(self) -> &'static [Candidate] {
        match self {
            Hook::VethXmit => {
                ways!("veth_xmit", "net_dev_queue", prog::NET_QUEUE, BY_DEVICE)
            }
            Hook::BridgeForward => {
                ways!("br_forward", "net_dev_queue", prog::NET_QUEUE, BY_DEVICE)
            }
            Hook::VxlanEncap => {
                const {
                    &[
                        LOCAL_OUT[0],
                        LOCAL_OUT[1],
                        tp(
                            RawTracepoint,
                            "net",
                            "net_dev_queue",
                            prog::NET_QUEUE,
                            "by device kind: vxlan encap + route + netfilter out in one segment",
                        ),
                    ]
                }
            }
            Hook::VxlanDecap => ways!(
                "vxlan_rcv",
                "netif_receive_skb",
                prog::NET_RECV,
                "by device kind: ip/udp receive + netfilter in + vxlan decap in one segment"
            ),
            Hook::Conntrack => {
                const { &[func(Fentry, "nf_conntrack_in", EXACT), CONNTRACK_ENTRY[0]] }
            }
            Hook::Nat => const { &[func(Fentry, "nf_nat_inet_fn", EXACT), NAT_ENTRY[0]] },
            Hook::Softirq => {
                const {
                    &[tp(
                        RawTracepoint,
                        "irq",
                        "softirq_entry",
                        prog::SOFTIRQ_ENTRY,
                        SOFTIRQ,
                    )]
                }
            }
            Hook::KvmExit => {
                const {
                    &[
                        tp(
                            Tracepoint,
                            "kvm",
                            "kvm_exit",
                            prog::KVM_EXIT,
                            "exact: exit reason, exit-to-entry time per reason",
                        ),
                        tp(
                            Tracepoint,
                            "kvm",
                            "kvm_userspace_exit",
                            prog::KVM_USERSPACE_EXIT,
                            "no exit reasons (kvm_exit silent): KVM_RUN return-to-reentry time and exit counts by kind",
                        ),
                    ]
                }
            }
        }
    }

    /// What the tracer does when no candidate is usable.
    pub fn fallback(self) -> &'static str {
        match self {
            Hook::Conntrack | Hook::Nat => {
                "no function probes: measured by ablation (the same run without the rule)"
            }
            _ => "not observed: the neighbouring segments absorb it",
        }
    }
}

/// What the running kernel allowed, as found by real load/attach attempts.
pub trait KernelView {
    /// The mechanism loaded, attached and fired.
    fn mechanism_works(&self, m: Mechanism) -> bool;
    fn symbol_home(&self, func: &str) -> SymbolHome;
    fn tracepoint_exists(&self, category: &str, name: &str) -> bool;
    /// tp_btf needs the tracepoint's `btf_trace_*` type in vmlinux BTF.
    fn tracepoint_in_vmlinux_btf(&self, name: &str) -> bool;
    /// The tracepoint was seen to fire (for those that may exist but stay silent, e.g. kvm_exit).
    fn tracepoint_fires(&self, category: &str, name: &str) -> Option<bool>;
}

/// The choice for one hook, with the reason each better candidate was passed over.
#[derive(Clone, Debug, Serialize)]
pub struct Choice {
    pub hook: Hook,
    pub chosen: Option<Candidate>,
    pub passed_over: Vec<(Candidate, String)>,
    pub fallback: Option<&'static str>,
}

/// The first usable way, and why each better one was passed over.
pub fn choose(
    candidates: &[Candidate],
    k: &dyn KernelView,
) -> (Option<Candidate>, Vec<(Candidate, String)>) {
    choose_by(candidates, k, true)
}

/// `needs_fire`: a way that attaches but stays silent (kvm_exit on PVM) is passed over for a
/// layer, which it would leave empty, but a tracer still attaches it.
fn choose_by(
    candidates: &[Candidate],
    k: &dyn KernelView,
    needs_fire: bool,
) -> (Option<Candidate>, Vec<(Candidate, String)>) {
    let mut passed_over = Vec::new();
    for c in candidates {
        match why_unusable(c, k, needs_fire) {
            None => return (Some(*c), passed_over),
            Some(why) => passed_over.push((*c, why)),
        }
    }
    (None, passed_over)
}

fn choose_hook(hook: Hook, k: &dyn KernelView) -> Choice {
    let (chosen, passed_over) = choose(hook.candidates(), k);
    Choice {
        hook,
        chosen,
        passed_over,
        fallback: chosen.is_none().then(|| hook.fallback()),
    }
}

/// What a tracer will report for `point` on this kernel, as `link::attach_point` words it.
pub fn plan_point(point: &Point, k: &dyn KernelView) -> Attached {
    let (chosen, passed_over) = choose_by(point.candidates, k, false);
    match chosen {
        Some(c) => Attached::by(&c),
        None => Attached::failed(
            point,
            &passed_over
                .into_iter()
                .map(|(_, why)| why)
                .collect::<Vec<_>>(),
        ),
    }
}

fn why_unusable(c: &Candidate, k: &dyn KernelView, needs_fire: bool) -> Option<String> {
    // What the kernel refuses first: a program built later would not change it.
    if let (Target::Function { name }, Fentry | Fexit) = (c.target, c.mechanism)
        && let SymbolHome::Module(m) = k.symbol_home(name)
    {
        return Some(format!(
            "{name} is in module {m}; fentry through aya reaches vmlinux only"
        ));
    }
    if c.program.is_none() {
        return Some(format!(
            "no {} program for {} is built yet",
            c.mechanism.name(),
            c.target
        ));
    }
    if !k.mechanism_works(c.mechanism) {
        return Some(format!(
            "{} does not work on this kernel",
            c.mechanism.name()
        ));
    }
    match c.target {
        Target::Function { name } => match (k.symbol_home(name), c.mechanism) {
            (SymbolHome::Absent, _) => Some(format!("{name} is not in kallsyms")),
            (SymbolHome::Module(m), Fentry | Fexit) => Some(format!(
                "{name} is in module {m}; fentry through aya reaches vmlinux only"
            )),
            _ => None,
        },
        Target::Tracepoint { category, name } => {
            if !k.tracepoint_exists(category, name) {
                return Some(format!("{category}:{name} does not exist"));
            }
            if c.mechanism == TpBtf && !k.tracepoint_in_vmlinux_btf(name) {
                return Some(format!("{category}:{name} is not in vmlinux BTF (module)"));
            }
            if needs_fire && k.tracepoint_fires(category, name) == Some(false) {
                return Some(format!("{category}:{name} exists but does not fire here"));
            }
            None
        }
    }
}

/// The whole plan: one choice per hook.
pub fn plan(k: &dyn KernelView) -> BTreeMap<Hook, Choice> {
    Hook::ALL.iter().map(|&h| (h, choose_hook(h, k))).collect()
}

/// How one hook was attached, or why it was not: what a tracer reports and the doctor plans.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Attached {
    pub event: String,
    pub how: String,
}

impl Attached {
    /// Attached by `way`: its target, and its mechanism by name.
    pub fn by(way: &Candidate) -> Attached {
        Attached {
            event: way.target.to_string(),
            how: way.mechanism.name().to_string(),
        }
    }

    /// No way of `point` attached, for these reasons.
    pub fn failed(point: &Point, why: &[String]) -> Attached {
        Attached {
            event: point.event(),
            how: format!("not attached ({})", why.join("; ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake kernel view, for worlds this machine is not (a stock distribution host).
    struct FakeKernel {
        works: Vec<Mechanism>,
        modules: Vec<(&'static str, &'static str)>,
        kvm_exit_fires: bool,
    }

    impl KernelView for FakeKernel {
        fn mechanism_works(&self, m: Mechanism) -> bool {
            self.works.contains(&m)
        }
        fn symbol_home(&self, func: &str) -> SymbolHome {
            match self.modules.iter().find(|(f, _)| *f == func) {
                Some((_, m)) => SymbolHome::Module(m.to_string()),
                None => SymbolHome::Vmlinux,
            }
        }
        fn tracepoint_exists(&self, _: &str, _: &str) -> bool {
            true
        }
        fn tracepoint_in_vmlinux_btf(&self, _: &str) -> bool {
            true
        }
        fn tracepoint_fires(&self, _: &str, name: &str) -> Option<bool> {
            (name == "kvm_exit").then_some(self.kvm_exit_fires)
        }
    }

    fn mech(p: &BTreeMap<Hook, Choice>, h: Hook) -> Option<Mechanism> {
        p[&h].chosen.map(|c| c.mechanism)
    }

    #[test]
    fn tracepoint_only_kernel_uses_tracepoints_and_ablation() {
        let k = FakeKernel {
            works: vec![TpBtf, RawTracepoint, Tracepoint, Tc, Xdp],
            modules: vec![],
            kvm_exit_fires: false,
        };
        let p = plan(&k);
        assert_eq!(mech(&p, Hook::VethXmit), Some(RawTracepoint));
        assert_eq!(mech(&p, Hook::VxlanEncap), Some(RawTracepoint));
        assert_eq!(mech(&p, Hook::Softirq), Some(RawTracepoint));
        assert_eq!(mech(&p, Hook::Conntrack), None);
        assert!(p[&Hook::Nat].fallback.unwrap().contains("ablation"));
        let kvm = p[&Hook::KvmExit].chosen.unwrap();
        assert_eq!(
            kvm.target,
            Target::Tracepoint {
                category: "kvm",
                name: "kvm_userspace_exit"
            }
        );
    }

    #[test]
    fn stock_host_says_which_function_probes_are_not_built() {
        let k = FakeKernel {
            works: Mechanism::ALL.to_vec(),
            modules: vec![],
            kvm_exit_fires: true,
        };
        let p = plan(&k);
        // No fentry/kprobe program exists yet: the plan says so instead of promising one.
        assert_eq!(mech(&p, Hook::VethXmit), Some(RawTracepoint));
        let passed = &p[&Hook::VethXmit].passed_over;
        assert!(passed[0].1.contains("no fentry program"), "{passed:?}");
        // Built: conntrack's and NAT's kprobes, the tunnel split's fentry.
        assert_eq!(mech(&p, Hook::Conntrack), Some(Kprobe));
        assert_eq!(mech(&p, Hook::Nat), Some(Kprobe));
        assert_eq!(mech(&p, Hook::VxlanEncap), Some(Fentry));
        assert_eq!(
            p[&Hook::KvmExit].chosen.unwrap().target,
            Target::Tracepoint {
                category: "kvm",
                name: "kvm_exit"
            }
        );
    }

    #[test]
    fn module_functions_fall_back_from_fentry_to_kprobe() {
        const WAYS: &[Candidate] = &[
            Candidate {
                program: Some("f"),
                ..func(Fentry, "vxlan_xmit", EXACT)
            },
            Candidate {
                program: Some("k"),
                ..func(Kprobe, "vxlan_xmit", EXACT)
            },
        ];
        let stock = FakeKernel {
            works: Mechanism::ALL.to_vec(),
            modules: vec![("vxlan_xmit", "vxlan")],
            kvm_exit_fires: true,
        };
        let (chosen, passed) = choose(WAYS, &stock);
        assert_eq!(chosen.unwrap().mechanism, Kprobe);
        assert!(passed[0].1.contains("module vxlan"), "{passed:?}");
        let built_in = FakeKernel {
            modules: vec![],
            ..stock
        };
        assert_eq!(choose(WAYS, &built_in).0.unwrap().mechanism, Fentry);
        let no_kprobes = FakeKernel {
            works: vec![RawTracepoint],
            modules: vec![],
            kvm_exit_fires: false,
        };
        let (none, why) = choose(WAYS, &no_kprobes);
        assert!(none.is_none());
        assert_eq!(why.len(), 2);
    }

    #[test]
    fn a_point_plans_as_the_tracer_words_it() {
        let k = FakeKernel {
            works: vec![RawTracepoint],
            modules: vec![],
            kvm_exit_fires: false,
        };
        let p = crate::point!(RawTracepoint, "net", "net_dev_queue", "net_queue");
        assert_eq!(
            plan_point(&p, &k),
            Attached {
                event: "net:net_dev_queue".into(),
                how: "raw_tracepoint".into()
            }
        );
        let t = crate::point!(TpBtf, "sched", "sched_switch", "sched_switch");
        assert!(
            plan_point(&t, &k)
                .how
                .starts_with("not attached (tp_btf does not work")
        );
    }
}
