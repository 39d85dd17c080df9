//! The attach plan: each logical hook the tracer needs lists the ways to reach it, best first,
//! and the choice is made at run time from what this kernel actually allowed (see `doctor`).
//! Nothing else in the profiler names a mechanism for a hook directly.

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

const fn func(mechanism: Mechanism, name: &'static str, precision: &'static str) -> Candidate {
    Candidate {
        mechanism,
        target: Target::Function { name },
        precision,
    }
}

const fn tp(
    mechanism: Mechanism,
    category: &'static str,
    name: &'static str,
    precision: &'static str,
) -> Candidate {
    Candidate {
        mechanism,
        target: Target::Tracepoint { category, name },
        precision,
    }
}

use Mechanism::*;

const EXACT: &str = "exact: the layer's own function";
const SOFTIRQ: &str = "exact: raise, entry and exit of each softirq";
const BY_DEVICE: &str = "by device kind: the per-device net tracepoint on this layer's device";
// The packet tracer's tracepoints are raw tracepoints: the skb argument is a plain number there,
// hashed without a probe read (profiler-ebpf/src/net.rs), so tp_btf is not its candidate.

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
                const {
                    &[
                        func(Fentry, "veth_xmit", EXACT),
                        func(Kprobe, "veth_xmit", EXACT),
                        tp(RawTracepoint, "net", "net_dev_queue", BY_DEVICE),
                    ]
                }
            }
            Hook::BridgeForward => {
                const {
                    &[
                        func(Fentry, "br_forward", EXACT),
                        func(Kprobe, "br_forward", EXACT),
                        tp(RawTracepoint, "net", "net_dev_queue", BY_DEVICE),
                    ]
                }
            }
            Hook::VxlanEncap => {
                const {
                    &[
                        func(Fentry, "vxlan_xmit", EXACT),
                        func(Kprobe, "vxlan_xmit", EXACT),
                        tp(
                            RawTracepoint,
                            "net",
                            "net_dev_queue",
                            "by device kind: vxlan encap + route + netfilter out in one segment",
                        ),
                    ]
                }
            }
            Hook::VxlanDecap => {
                const {
                    &[
                        func(Fentry, "vxlan_rcv", EXACT),
                        func(Kprobe, "vxlan_rcv", EXACT),
                        tp(
                            RawTracepoint,
                            "net",
                            "netif_receive_skb",
                            "by device kind: ip/udp receive + netfilter in + vxlan decap in one segment",
                        ),
                    ]
                }
            }
            Hook::Conntrack => {
                const {
                    &[
                        func(Fentry, "nf_conntrack_in", EXACT),
                        func(Kprobe, "nf_conntrack_in", EXACT),
                    ]
                }
            }
            Hook::Nat => {
                const {
                    &[
                        func(Fentry, "nf_nat_inet_fn", EXACT),
                        func(Kprobe, "nf_nat_inet_fn", EXACT),
                    ]
                }
            }
            Hook::Softirq => const { &[tp(RawTracepoint, "irq", "softirq_entry", SOFTIRQ)] },
            Hook::KvmExit => {
                const {
                    &[
                        tp(
                            Tracepoint,
                            "kvm",
                            "kvm_exit",
                            "exact: exit reason, exit-to-entry time per reason",
                        ),
                        tp(
                            Tracepoint,
                            "kvm",
                            "kvm_userspace_exit",
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

pub fn choose(hook: Hook, k: &dyn KernelView) -> Choice {
    let mut passed_over = Vec::new();
    for c in hook.candidates() {
        match why_unusable(c, k) {
            None => {
                return Choice {
                    hook,
                    chosen: Some(*c),
                    passed_over,
                    fallback: None,
                };
            }
            Some(why) => passed_over.push((*c, why)),
        }
    }
    Choice {
        hook,
        chosen: None,
        passed_over,
        fallback: Some(hook.fallback()),
    }
}

fn why_unusable(c: &Candidate, k: &dyn KernelView) -> Option<String> {
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
            if k.tracepoint_fires(category, name) == Some(false) {
                return Some(format!("{category}:{name} exists but does not fire here"));
            }
            None
        }
    }
}

/// The whole plan: one choice per hook.
pub fn plan(k: &dyn KernelView) -> BTreeMap<Hook, Choice> {
    Hook::ALL.iter().map(|&h| (h, choose(h, k))).collect()
}

/// How one hook was attached, or why it was not: what a tracer reports and the doctor plans.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Attached {
    pub event: String,
    pub how: String,
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
    fn stock_host_prefers_fentry_but_kprobes_module_functions() {
        let k = FakeKernel {
            works: Mechanism::ALL.to_vec(),
            modules: vec![("vxlan_xmit", "vxlan"), ("nf_conntrack_in", "nf_conntrack")],
            kvm_exit_fires: true,
        };
        let p = plan(&k);
        assert_eq!(mech(&p, Hook::VethXmit), Some(Fentry));
        assert_eq!(mech(&p, Hook::VxlanEncap), Some(Kprobe));
        assert_eq!(mech(&p, Hook::Conntrack), Some(Kprobe));
        let passed = &p[&Hook::VxlanEncap].passed_over;
        assert!(passed[0].1.contains("module vxlan"), "{passed:?}");
        assert_eq!(
            p[&Hook::KvmExit].chosen.unwrap().target,
            Target::Tracepoint {
                category: "kvm",
                name: "kvm_exit"
            }
        );
    }
}
