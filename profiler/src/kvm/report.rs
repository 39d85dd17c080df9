//! The KVM report: a pure function from what the kernel recorded ([`Raw`]: per-slot bucket
//! arrays and counters, CPU-summed) to rows with names and percentiles, so the same code runs
//! over the live maps and over a recorded trace in the tests.

use profiler_common::{
    hist::Hist,
    kvm::{EXIT_SLOTS, ISA_SVM, ISA_VMX, RUN_IN_KVM, RUN_IN_VMM, USER_OTHER, USER_SLOTS, counter},
};
use serde::Serialize;

use super::microvm;
pub use crate::attach::Attached as Attach;
use crate::probes::kvm::{Raw, names};

use crate::{
    hist::{Summary, fmt_ns, to_histogram},
    kernel::KvmBackend,
};

/// What was measured, as far as the backend allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MeasuredPath {
    /// kvm_exit -> kvm_entry per exit reason (VMX/SVM), plus the KVM_RUN split.
    PerReasonExits,
    /// Only KVM_RUN round trips by KVM_EXIT_* reason (kvm_exit does not fire, e.g. PVM).
    KvmRunRoundTrips,
}

/// One exit reason (or group) of the VMX/SVM path: time from kvm_exit to the next kvm_entry.
#[derive(Clone, Debug, Serialize)]
pub struct ExitRow {
    pub name: String,
    pub codes: Vec<u32>,
    pub count: u64,
    pub handling: Summary,
    pub handling_total_ns: u64,
}

/// One KVM_EXIT_* reason of KVM_RUN returns.
#[derive(Clone, Debug, Serialize)]
pub struct RunRow {
    /// KVM_EXIT_* number; `None` for the shared "other" slot.
    pub reason: Option<u32>,
    pub name: String,
    /// kvm:kvm_userspace_exit events of this reason.
    pub returns: u64,
    /// ioctl(KVM_RUN) entry -> this return: guest + in-kernel exit handling.
    pub in_kvm: Summary,
    /// this return -> the next KVM_RUN entry: the VMM in user space.
    pub in_vmm: Summary,
}

/// Where the vCPU threads' time went, from KVM_RUN round trips (any backend).
#[derive(Clone, Debug, Serialize)]
pub struct RunSplit {
    pub round_trips: u64,
    pub in_kvm_ns: u64,
    pub in_vmm_ns: u64,
    /// in_vmm / (in_kvm + in_vmm).
    pub vmm_share: f64,
    pub in_kvm: Summary,
    pub in_vmm: Summary,
    pub by_reason: Vec<RunRow>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PortCount {
    pub port: u16,
    pub out: bool,
    pub count: u64,
}

/// Counts of the kvm: events.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Events {
    pub kvm_exit: u64,
    pub kvm_entry: u64,
    pub kvm_pio_in: u64,
    pub kvm_pio_out: u64,
    pub kvm_pio_ports: Vec<PortCount>,
    pub kvm_mmio_read: u64,
    pub kvm_mmio_read_unsatisfied: u64,
    pub kvm_mmio_write: u64,
    pub kvm_msr_read: u64,
    pub kvm_msr_write: u64,
    pub kvm_cpuid: u64,
    pub kvm_hypercall: u64,
    pub kvm_emulate_insn: u64,
    pub kvm_emulate_insn_failed: u64,
    pub kvm_userspace_exit: u64,
}

/// The micro-VM's own count of its exits against the tracer's.
#[derive(Clone, Debug, Serialize)]
pub struct MicroVmCheck {
    pub workload: microvm::Workload,
    /// Loop iterations: the exits the guest performs.
    pub count: u32,
    /// What the VMM saw (user-space exits by kind; cpuid never reaches it).
    pub vmm: microvm::RunReport,
    /// Exits of the workload's kind the VMM counted.
    pub vmm_exits: u64,
    /// The tracepoint compared, and its count.
    pub traced_event: String,
    pub traced: u64,
    /// traced == count (== vmm_exits where the VMM sees them).
    pub exact: bool,
}

/// Context the maps do not hold.
#[derive(Clone, Debug)]
pub struct Context {
    pub backend: KvmBackend,
    pub pid: Option<u32>,
    pub seconds: f64,
    pub attached: Vec<Attach>,
}

#[derive(Clone, Debug, Serialize)]
pub struct KvmReport {
    pub backend: KvmBackend,
    pub path: MeasuredPath,
    /// "vmx" or "svm" when kvm_exit fired.
    pub isa: Option<&'static str>,
    pub pid: Option<u32>,
    pub seconds: f64,
    pub attached: Vec<Attach>,
    /// Per exit reason, most frequent first (VMX/SVM only).
    pub exits: Vec<ExitRow>,
    pub run: RunSplit,
    pub events: Events,
    pub micro_vm: Option<MicroVmCheck>,
    pub notes: Vec<String>,
    /// What `--hdr-log` writes: `exit/<reason>` (exit to entry), `run_in_kvm/<reason>` and
    /// `run_in_vmm/<reason>` (KVM_RUN round trips), and each side's `all`; ns.
    #[serde(skip)]
    pub histograms: Vec<(String, hdrhistogram::Histogram<u64>)>,
}

fn total_ns(h: &Hist) -> u64 {
    h.buckets
        .iter()
        .enumerate()
        .map(|(i, &n)| n.saturating_mul(profiler_common::hist::bucket_value(i as u32)))
        .fold(0u64, u64::saturating_add)
}

fn summary(h: &Hist) -> Summary {
    Summary::of(&to_histogram(h))
}

fn add_into(total: &mut Hist, h: &Hist) {
    for (t, c) in total.buckets.iter_mut().zip(h.buckets.iter()) {
        *t = t.saturating_add(*c);
    }
}

/// The report from the maps' contents.
/// Exits by name: per VMX/SVM reason where `kvm_exit` fired, and the `kvm:` events by kind
/// (which fire on every backend). Zero counts are left out.
pub fn exit_counts(raw: &Raw) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    let (vmx, svm) = (
        raw.counter(counter::EXIT_VMX),
        raw.counter(counter::EXIT_SVM),
    );
    if vmx + svm > 0 {
        let isa = if vmx >= svm { ISA_VMX } else { ISA_SVM };
        for (slot, &n) in raw.exit_count.iter().enumerate() {
            if n > 0 {
                out.insert(format!("exit {}", names::slot_name(isa, slot as u32)), n);
            }
        }
    }
    for (c, name) in [
        (counter::PIO_IN, "kvm_pio in"),
        (counter::PIO_OUT, "kvm_pio out"),
        (counter::MMIO_READ, "kvm_mmio read"),
        (counter::MMIO_WRITE, "kvm_mmio write"),
        (counter::MSR_READ, "kvm_msr read"),
        (counter::MSR_WRITE, "kvm_msr write"),
        (counter::CPUID, "kvm_cpuid"),
        (counter::HYPERCALL, "kvm_hypercall"),
        (counter::EMULATE_INSN, "kvm_emulate_insn"),
        (counter::USERSPACE_EXIT, "kvm_userspace_exit"),
    ] {
        let n = raw.counter(c);
        if n > 0 {
            out.insert(name.to_string(), n);
        }
    }
    out
}

/// `later - earlier`, per name (counters only grow).
pub fn counts_between(
    earlier: &std::collections::BTreeMap<String, u64>,
    later: &std::collections::BTreeMap<String, u64>,
) -> std::collections::BTreeMap<String, u64> {
    later
        .iter()
        .filter_map(|(k, &v)| {
            let d = v.saturating_sub(earlier.get(k).copied().unwrap_or(0));
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

pub fn build(raw: &Raw, ctx: &Context) -> KvmReport {
    let (vmx, svm) = (
        raw.counter(counter::EXIT_VMX),
        raw.counter(counter::EXIT_SVM),
    );
    let isa = match (vmx, svm) {
        (0, 0) => None,
        (v, s) if v >= s => Some(ISA_VMX),
        _ => Some(ISA_SVM),
    };
    let mut exits = vec![];
    let mut histograms = vec![];
    let mut keep = |tag: String, h: &Hist| {
        if h.buckets.iter().any(|&b| b != 0) {
            histograms.push((crate::export::hdr_log::tag(&tag), to_histogram(h)));
        }
    };
    if let Some(isa) = isa {
        let slots = names::slots(isa);
        for slot in 0..EXIT_SLOTS {
            let count = raw.exit_count.get(slot as usize).copied().unwrap_or(0);
            let Some(h) = raw.exit_hist.get(slot as usize) else {
                continue;
            };
            if count == 0 && h.buckets.iter().all(|&b| b == 0) {
                continue;
            }
            let codes = match slot {
                0 => vec![],
                s => slots
                    .get(s as usize - 1)
                    .map_or(vec![], |s| s.codes.clone()),
            };
            keep(format!("exit/{}", names::slot_name(isa, slot)), h);
            exits.push(ExitRow {
                name: names::slot_name(isa, slot),
                codes,
                count,
                handling: summary(h),
                handling_total_ns: total_ns(h),
            });
        }
        exits.sort_by(|a, b| b.count.cmp(&a.count).then(a.name.cmp(&b.name)));
    }

    let zero = Hist::ZERO;
    let hist = |kind: u32, slot: u32| {
        raw.run_hist
            .get((kind * USER_SLOTS + slot) as usize)
            .map_or(&zero, |h| &**h)
    };
    let mut all_kvm = Box::new(Hist::ZERO);
    let mut all_vmm = Box::new(Hist::ZERO);
    let mut by_reason = vec![];
    for slot in 0..USER_SLOTS {
        let (k, v) = (hist(RUN_IN_KVM, slot), hist(RUN_IN_VMM, slot));
        add_into(&mut all_kvm, k);
        add_into(&mut all_vmm, v);
        let returns = raw.user_exits.get(slot as usize).copied().unwrap_or(0);
        let (in_kvm, in_vmm) = (summary(k), summary(v));
        if returns == 0 && in_kvm.count == 0 && in_vmm.count == 0 {
            continue;
        }
        let other = slot == USER_OTHER;
        let name = if other {
            "other".to_string()
        } else {
            names::kvm_exit_name(slot)
        };
        keep(format!("run_in_kvm/{name}"), k);
        keep(format!("run_in_vmm/{name}"), v);
        by_reason.push(RunRow {
            reason: (!other).then_some(slot),
            name,
            returns,
            in_kvm,
            in_vmm,
        });
    }
    by_reason.sort_by(|a, b| {
        b.in_kvm
            .count
            .cmp(&a.in_kvm.count)
            .then(a.name.cmp(&b.name))
    });
    keep("run_in_kvm/all".into(), &all_kvm);
    keep("run_in_vmm/all".into(), &all_vmm);
    let (in_kvm_ns, in_vmm_ns) = (raw.counter(counter::RUN_NS), raw.counter(counter::VMM_NS));
    let run = RunSplit {
        round_trips: raw.counter(counter::RUN_EXIT),
        in_kvm_ns,
        in_vmm_ns,
        vmm_share: if in_kvm_ns + in_vmm_ns == 0 {
            0.0
        } else {
            in_vmm_ns as f64 / (in_kvm_ns + in_vmm_ns) as f64
        },
        in_kvm: summary(&all_kvm),
        in_vmm: summary(&all_vmm),
        by_reason,
    };

    let events = Events {
        kvm_exit: vmx + svm + raw.counter(counter::EXIT_OTHER_ISA),
        kvm_entry: raw.counter(counter::ENTRY),
        kvm_pio_in: raw.counter(counter::PIO_IN),
        kvm_pio_out: raw.counter(counter::PIO_OUT),
        kvm_pio_ports: raw
            .pio_ports
            .iter()
            .map(|&(k, count)| PortCount {
                port: (k & 0xffff) as u16,
                out: k >> 16 != 0,
                count,
            })
            .collect(),
        kvm_mmio_read: raw.counter(counter::MMIO_READ),
        kvm_mmio_read_unsatisfied: raw.counter(counter::MMIO_READ_UNSATISFIED),
        kvm_mmio_write: raw.counter(counter::MMIO_WRITE),
        kvm_msr_read: raw.counter(counter::MSR_READ),
        kvm_msr_write: raw.counter(counter::MSR_WRITE),
        kvm_cpuid: raw.counter(counter::CPUID),
        kvm_hypercall: raw.counter(counter::HYPERCALL),
        kvm_emulate_insn: raw.counter(counter::EMULATE_INSN),
        kvm_emulate_insn_failed: raw.counter(counter::EMULATE_FAILED),
        kvm_userspace_exit: raw.counter(counter::USERSPACE_EXIT),
    };

    let mut notes = vec![];
    let exit_attached = ctx
        .attached
        .iter()
        .any(|a| a.event == "kvm:kvm_exit" && a.how == "tracepoint");
    let path = if isa.is_some() {
        MeasuredPath::PerReasonExits
    } else {
        let why = if !exit_attached {
            "kvm:kvm_exit could not be attached"
        } else if matches!(ctx.backend, KvmBackend::Pvm) {
            "the PVM backend does not fire kvm:kvm_exit/kvm_entry"
        } else {
            "kvm:kvm_exit did not fire (no guest ran?)"
        };
        notes.push(format!(
            "no per-reason exits: {why}; measured KVM_RUN round trips by KVM_EXIT_* reason"
        ));
        MeasuredPath::KvmRunRoundTrips
    };
    if run.round_trips == 0 {
        notes.push("no KVM_RUN returned while tracing".to_string());
    }
    KvmReport {
        backend: ctx.backend,
        path,
        isa: isa.map(|i| if i == ISA_VMX { "vmx" } else { "svm" }),
        pid: ctx.pid,
        seconds: ctx.seconds,
        attached: ctx.attached.clone(),
        exits,
        run,
        events,
        micro_vm: None,
        notes,
        histograms,
    }
}

/// Compares the micro-VM's own count with the tracepoint that counts the same exits.
pub fn micro_vm_check(
    raw: &Raw,
    workload: microvm::Workload,
    count: u32,
    vmm: microvm::RunReport,
) -> MicroVmCheck {
    use microvm::Workload::*;
    let (vmm_exits, traced_event, traced) = match workload {
        // The done-port OUT is one more kvm_pio, on another port: count the loop's port only.
        Pio => (
            vmm.pio_exits,
            format!("kvm:kvm_pio out port {:#x}", microvm::PIO_PORT),
            raw.pio_on(microvm::PIO_PORT, true),
        ),
        Mmio => (
            vmm.mmio_exits,
            "kvm:kvm_mmio write".to_string(),
            raw.counter(counter::MMIO_WRITE),
        ),
        Hlt => (
            vmm.hlt_exits,
            "kvm:kvm_userspace_exit HLT".to_string(),
            raw.user_exits
                .get(profiler_common::kvm::user_slot(kvm_bindings::KVM_EXIT_HLT) as usize)
                .copied()
                .unwrap_or(0),
        ),
        // Served inside KVM: the VMM sees none.
        Cpuid => (
            vmm.other_exits,
            "kvm:kvm_cpuid".to_string(),
            raw.counter(counter::CPUID),
        ),
    };
    let exact = traced == count as u64 && (workload == Cpuid || vmm_exits == count as u64);
    MicroVmCheck {
        workload,
        count,
        vmm,
        vmm_exits,
        traced_event,
        traced,
        exact,
    }
}

fn backend_name(b: KvmBackend) -> &'static str {
    match b {
        KvmBackend::Vmx => "VMX (kvm_intel)",
        KvmBackend::Svm => "SVM (kvm_amd)",
        KvmBackend::Pvm => "PVM (kvm_pvm)",
        KvmBackend::Unknown => "unknown",
        KvmBackend::None => "none",
    }
}

fn row(name: &str, count: u64, s: &Summary) -> String {
    format!(
        "  {:<26} {:>9} {:>10} {:>10} {:>10} {:>10}",
        name,
        count,
        fmt_ns(s.p50 as f64),
        fmt_ns(s.p90 as f64),
        fmt_ns(s.p99 as f64),
        fmt_ns(s.max as f64)
    )
}

fn header(first: &str) -> String {
    format!(
        "  {:<26} {:>9} {:>10} {:>10} {:>10} {:>10}",
        first, "count", "p50", "p90", "p99", "max"
    )
}

pub fn print(r: &KvmReport) {
    let who = match r.pid {
        Some(p) => format!("pid {p}"),
        None => "all VMs".to_string(),
    };
    println!(
        "KVM exits: backend {}, {}, {:.2} s, path: {}",
        backend_name(r.backend),
        who,
        r.seconds,
        match r.path {
            MeasuredPath::PerReasonExits => "per-reason exits (kvm_exit -> kvm_entry)",
            MeasuredPath::KvmRunRoundTrips => "KVM_RUN round trips",
        }
    );
    if !r.exits.is_empty() {
        println!();
        println!(
            "{}",
            header(&format!("exit reason ({})", r.isa.unwrap_or("?")))
        );
        for e in &r.exits {
            println!("{}", row(&e.name, e.count, &e.handling));
        }
    }
    println!();
    println!("{}", header("KVM_RUN returns by reason"));
    for x in &r.run.by_reason {
        println!(
            "{}",
            row(&format!("{} in KVM", x.name), x.in_kvm.count, &x.in_kvm)
        );
        if x.in_vmm.count > 0 {
            println!(
                "{}",
                row(&format!("{} in VMM", x.name), x.in_vmm.count, &x.in_vmm)
            );
        }
    }
    println!("{}", row("all, in KVM", r.run.in_kvm.count, &r.run.in_kvm));
    println!("{}", row("all, in VMM", r.run.in_vmm.count, &r.run.in_vmm));
    println!();
    println!(
        "  time split: guest + in-kernel (inside KVM_RUN) {}, VMM user space (between KVM_RUNs) {} ({:.1}%)",
        fmt_ns(r.run.in_kvm_ns as f64),
        fmt_ns(r.run.in_vmm_ns as f64),
        r.run.vmm_share * 100.0
    );
    let e = &r.events;
    println!(
        "  kvm events: exit {} entry {} pio in/out {}/{} mmio r/w {}/{} msr r/w {}/{} cpuid {} hypercall {} emulate_insn {} (failed {}) userspace_exit {}",
        e.kvm_exit,
        e.kvm_entry,
        e.kvm_pio_in,
        e.kvm_pio_out,
        e.kvm_mmio_read,
        e.kvm_mmio_write,
        e.kvm_msr_read,
        e.kvm_msr_write,
        e.kvm_cpuid,
        e.kvm_hypercall,
        e.kvm_emulate_insn,
        e.kvm_emulate_insn_failed,
        e.kvm_userspace_exit
    );
    if !e.kvm_pio_ports.is_empty() {
        let ports: Vec<String> = e
            .kvm_pio_ports
            .iter()
            .map(|p| {
                format!(
                    "{:#x} {} {}",
                    p.port,
                    if p.out { "out" } else { "in" },
                    p.count
                )
            })
            .collect();
        println!("  pio by port: {}", ports.join(", "));
    }
    if let Some(m) = &r.micro_vm {
        println!();
        println!(
            "  micro-VM {:?} x{}: VMM saw {} exits of its kind (pio {}, mmio {}, hlt {}, other {}; its own clock between KVM_RUNs, without the syscall boundary: {}), {} = {} -> {}",
            m.workload,
            m.count,
            m.vmm_exits,
            m.vmm.pio_exits,
            m.vmm.mmio_exits,
            m.vmm.hlt_exits,
            m.vmm.other_exits,
            fmt_ns(m.vmm.vmm_time.as_nanos() as f64),
            m.traced_event,
            m.traced,
            if m.exact { "exact" } else { "MISMATCH" }
        );
    }
    let missing: Vec<&Attach> = r
        .attached
        .iter()
        .filter(|a| a.how != "tracepoint")
        .collect();
    for a in missing {
        println!("  {} {}", a.event, a.how);
    }
    for n in &r.notes {
        println!("  note: {n}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use profiler_common::{
        hist::bucket_index,
        kvm::{exit_key, user_slot},
    };
    use std::collections::HashMap;

    /// An event as a tracepoint would deliver it.
    #[derive(Clone, Copy, Debug)]
    enum Event {
        Exit { isa: u32, reason: u32 },
        Entry,
        RunEnter,
        UserspaceExit { reason: u32 },
        RunExit,
    }

    /// FAKE, recorded by hand (this machine's PVM backend never fires kvm_exit): a plausible
    /// VMX guest on two vCPU threads. Thread 101 does 4 port writes (IO_INSTRUCTION, each a
    /// KVM_RUN return with KVM_EXIT_IO), 3 in-kernel EPT_MISCONFIG (MMIO fast path) and one
    /// EXTERNAL_INTERRUPT; thread 102 does 5 CPUID and a HLT that returns to user space.
    fn recorded_vmx_trace() -> Vec<(u64, u32, Event)> {
        use Event::*;
        let vmx = |reason| Exit {
            isa: ISA_VMX,
            reason,
        };
        let mut v = vec![];
        let mut t = 1_000_000u64;
        // Thread 101.
        v.push((t, 101, RunEnter));
        t += 500;
        v.push((t, 101, Entry));
        for i in 0..4 {
            t += 2_000; // guest runs
            v.push((t, 101, vmx(30)));
            t += 300; // KVM decodes the port access, goes out
            v.push((t, 101, UserspaceExit { reason: 2 }));
            v.push((t + 100, 101, RunExit));
            t += 100 + 5_000 + i * 1_000; // VMM serves the port
            v.push((t, 101, RunEnter));
            t += 400;
            v.push((t, 101, Entry));
        }
        for _ in 0..3 {
            t += 1_000;
            v.push((t, 101, vmx(49)));
            t += 800;
            v.push((t, 101, Entry));
        }
        t += 1_000;
        v.push((t, 101, vmx(1)));
        t += 1_500;
        v.push((t, 101, Entry));
        // Thread 102, interleaved in time with its own clock.
        let mut u = 1_000_000u64;
        v.push((u, 102, RunEnter));
        u += 600;
        v.push((u, 102, Entry));
        for _ in 0..5 {
            u += 700;
            v.push((u, 102, vmx(10)));
            u += 90;
            v.push((u, 102, Entry));
        }
        u += 700;
        v.push((u, 102, vmx(12)));
        v.push((u + 200, 102, UserspaceExit { reason: 5 }));
        v.push((u + 250, 102, RunExit));
        v.sort_by_key(|e| e.0);
        v
    }

    /// A software model of profiler-ebpf/src/kvm.rs's pairing, for tests only: per thread,
    /// exit -> entry into the exit slot, KVM_RUN enter -> return and return -> enter by the
    /// reason of the return.
    fn replay(trace: &[(u64, u32, Event)]) -> Raw {
        #[derive(Default)]
        struct Thread {
            exit: Option<(u64, u32)>,
            reason: Option<u32>,
            run_enter: Option<u64>,
            run_exit: Option<u64>,
        }
        let table = names::key_table();
        let mut raw = Raw::empty();
        let mut threads: HashMap<u32, Thread> = HashMap::new();
        let bump = |raw: &mut Raw, c: u32, n: u64| raw.counters[c as usize] += n;
        for &(ts, tid, ev) in trace {
            let th = threads.entry(tid).or_default();
            match ev {
                Event::Exit { isa, reason } => {
                    bump(
                        &mut raw,
                        if isa == ISA_VMX {
                            counter::EXIT_VMX
                        } else {
                            counter::EXIT_SVM
                        },
                        1,
                    );
                    let slot = table
                        .get(exit_key(isa, reason) as usize)
                        .map_or(0, |&s| s as u32);
                    raw.exit_count[slot as usize] += 1;
                    th.exit = Some((ts, slot));
                }
                Event::Entry => {
                    bump(&mut raw, counter::ENTRY, 1);
                    if let Some((t0, slot)) = th.exit.take() {
                        raw.exit_hist[slot as usize].buckets[bucket_index(ts - t0) as usize] += 1;
                        bump(&mut raw, counter::ENTRY_PAIRED, 1);
                    }
                }
                Event::RunEnter => {
                    bump(&mut raw, counter::RUN_ENTER, 1);
                    if let Some(t0) = th.run_exit {
                        let s = user_slot(th.reason.unwrap_or(u32::MAX));
                        raw.run_hist[(RUN_IN_VMM * USER_SLOTS + s) as usize].buckets
                            [bucket_index(ts - t0) as usize] += 1;
                        bump(&mut raw, counter::VMM_NS, ts - t0);
                    }
                    th.run_enter = Some(ts);
                    th.reason = None;
                }
                Event::UserspaceExit { reason } => {
                    bump(&mut raw, counter::USERSPACE_EXIT, 1);
                    raw.user_exits[user_slot(reason) as usize] += 1;
                    th.reason = Some(reason);
                }
                Event::RunExit => {
                    if let Some(t0) = th.run_enter.take() {
                        let s = user_slot(th.reason.unwrap_or(u32::MAX));
                        raw.run_hist[(RUN_IN_KVM * USER_SLOTS + s) as usize].buckets
                            [bucket_index(ts - t0) as usize] += 1;
                        bump(&mut raw, counter::RUN_NS, ts - t0);
                        bump(&mut raw, counter::RUN_EXIT, 1);
                        th.run_exit = Some(ts);
                    }
                }
            }
        }
        raw
    }

    /// Within the histograms' resolution (1/256).
    fn near(got: u64, want: u64) -> bool {
        got.abs_diff(want) * 256 <= want
    }

    fn ctx(backend: KvmBackend) -> Context {
        Context {
            backend,
            pid: None,
            seconds: 1.0,
            attached: vec![Attach {
                event: "kvm:kvm_exit".into(),
                how: "tracepoint".into(),
            }],
        }
    }

    #[test]
    fn per_reason_report_from_recorded_vmx_trace() {
        let raw = replay(&recorded_vmx_trace());
        let r = build(&raw, &ctx(KvmBackend::Vmx));
        assert_eq!(r.path, MeasuredPath::PerReasonExits);
        assert_eq!(r.isa, Some("vmx"));
        let by = |n: &str| r.exits.iter().find(|e| e.name == n).unwrap();
        let names: Vec<&str> = r.exits.iter().map(|e| e.name.as_str()).collect();
        // Most frequent first, ties by name.
        assert_eq!(
            names,
            [
                "CPUID",
                "IO_INSTRUCTION",
                "EPT_MISCONFIG",
                "EXTERNAL_INTERRUPT",
                "HLT"
            ]
        );
        assert_eq!(by("CPUID").count, 5);
        assert_eq!(by("CPUID").handling.count, 5);
        assert_eq!(by("CPUID").handling.p50, 90);
        assert_eq!(by("CPUID").codes, vec![10]);
        // exit -> entry of a port write includes the VMM: 300 + 100 + 5000 + i*1000 + 400.
        let io = by("IO_INSTRUCTION");
        assert_eq!(io.count, 4);
        assert_eq!(io.handling.count, 4);
        let want = [5_800u64, 6_800, 7_800, 8_800];
        for (got, want) in [(io.handling.min, want[0]), (io.handling.max, want[3])] {
            assert!(near(got, want), "{got} vs {want}");
        }
        assert!(near(by("EPT_MISCONFIG").handling.p99, 800));
        // The HLT went to user space and never re-entered: counted, no latency sample.
        assert_eq!(by("HLT").count, 1);
        assert_eq!(by("HLT").handling.count, 0);
        assert_eq!(r.events.kvm_exit, 14);
        assert_eq!(r.events.kvm_entry, 15);

        // KVM_RUN split by KVM_EXIT_* reason.
        let io = r.run.by_reason.iter().find(|x| x.name == "IO").unwrap();
        assert_eq!(
            (io.reason, io.returns, io.in_kvm.count, io.in_vmm.count),
            (Some(2), 4, 4, 4)
        );
        let hlt = r.run.by_reason.iter().find(|x| x.name == "HLT").unwrap();
        assert_eq!((hlt.returns, hlt.in_kvm.count, hlt.in_vmm.count), (1, 1, 0));
        assert_eq!(r.run.round_trips, 5);
        let vmm: u64 = (0..4).map(|i| 5_000 + i * 1_000).sum();
        assert_eq!(r.run.in_vmm_ns, vmm);
        assert!(r.run.vmm_share > 0.0 && r.run.vmm_share < 1.0);
        assert!(r.notes.is_empty(), "{:?}", r.notes);
    }

    #[test]
    fn exit_counts_name_reasons_and_events_and_subtract() {
        let raw = replay(&recorded_vmx_trace());
        let c = exit_counts(&raw);
        assert_eq!(c["exit IO_INSTRUCTION"], 4);
        assert_eq!(c["exit EPT_MISCONFIG"], 3);
        assert_eq!(c["exit CPUID"], 5);
        assert_eq!(c["exit EXTERNAL_INTERRUPT"], 1);
        assert!(c.values().all(|&n| n > 0));
        let mut earlier = c.clone();
        earlier.insert("exit CPUID".into(), 2);
        earlier.remove("exit HLT");
        let d = counts_between(&earlier, &c);
        assert_eq!(d.get("exit CPUID"), Some(&3));
        assert_eq!(d.get("exit HLT"), c.get("exit HLT"));
        assert_eq!(d.get("exit IO_INSTRUCTION"), None);
        let mut pio = Raw::empty();
        pio.counters[counter::PIO_OUT as usize] = 7;
        assert_eq!(
            exit_counts(&pio).into_iter().collect::<Vec<_>>(),
            [("kvm_pio out".to_string(), 7)]
        );
    }

    #[test]
    fn svm_codes_land_in_their_slots() {
        use Event::*;
        let svm = |reason| Exit {
            isa: ISA_SVM,
            reason,
        };
        let trace = vec![
            (10, 7, svm(0x7b)),
            (20, 7, Entry),
            (30, 7, svm(0x400)),
            (45, 7, Entry),
            (50, 7, svm(0x2a)),
            (60, 7, Entry),
            (70, 7, svm(0xf000_0000)),
            (71, 7, Entry),
        ];
        let r = build(&replay(&trace), &ctx(KvmBackend::Svm));
        assert_eq!(r.isa, Some("svm"));
        let mut names: Vec<(String, u64)> = r
            .exits
            .iter()
            .map(|e| (e.name.clone(), e.handling.p50))
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                ("IOIO".to_string(), 10),
                ("NPF".to_string(), 15),
                ("READ_DR".to_string(), 10),
                ("other".to_string(), 1)
            ]
        );
    }

    #[test]
    fn kvm_run_path_without_kvm_exit() {
        use Event::*;
        // PVM: only the syscall and userspace_exit events.
        let mut trace = vec![];
        let mut t = 0;
        for _ in 0..3 {
            trace.push((t, 1, RunEnter));
            trace.push((t + 1_000, 1, UserspaceExit { reason: 6 }));
            trace.push((t + 1_010, 1, RunExit));
            t += 3_010;
        }
        let r = build(&replay(&trace), &ctx(KvmBackend::Pvm));
        assert_eq!(r.path, MeasuredPath::KvmRunRoundTrips);
        assert!(r.exits.is_empty());
        assert_eq!(r.run.round_trips, 3);
        assert_eq!(r.run.in_kvm_ns, 3 * 1_010);
        assert_eq!(r.run.in_vmm_ns, 2 * 2_000);
        let mmio = &r.run.by_reason[0];
        assert_eq!(mmio.name, "MMIO");
        assert!(near(mmio.in_kvm.p50, 1_010) && near(mmio.in_vmm.p50, 2_000));
        assert!(r.notes[0].contains("PVM"), "{:?}", r.notes);
        // And it serialises.
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["path"], "kvm_run_round_trips");
        assert_eq!(json["backend"], "pvm");
    }

    #[test]
    fn micro_vm_check_counts_only_the_loop_port() {
        let mut raw = Raw::empty();
        raw.pio_ports = vec![
            (
                profiler_common::kvm::pio_key(microvm::PIO_PORT as u32, true),
                10,
            ),
            (
                profiler_common::kvm::pio_key(microvm::DONE_PORT as u32, true),
                1,
            ),
        ];
        let vmm = microvm::RunReport {
            pio_exits: 10,
            ..Default::default()
        };
        let c = micro_vm_check(&raw, microvm::Workload::Pio, 10, vmm.clone());
        assert!(c.exact);
        assert_eq!(c.traced, 10);
        let c = micro_vm_check(&raw, microvm::Workload::Pio, 11, vmm);
        assert!(!c.exact);
    }
}
