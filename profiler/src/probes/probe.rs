//! Real load/attach/fire attempts, one per mechanism. Everything happens in a throwaway network
//! namespace (its loopback carries the test datagram and the TC/XDP programs), so the host's own
//! network is never touched; the namespace dies with the thread.

use std::{collections::BTreeMap, net::UdpSocket, path::Path, time::Duration};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Btf, Ebpf,
    maps::Array,
    programs::{
        BtfTracePoint, FEntry, FExit, KProbe, RawTracePoint, SchedClassifier, TcAttachType,
        TracePoint, Xdp, XdpMode,
    },
};
use profiler_common::{
    names::{map, program as prog},
    probe::ProbeSlot,
};
use serde::Serialize;

use crate::{attach::Mechanism, kvm::microvm};

/// The outcome of trying one mechanism.
#[derive(Clone, Debug, Serialize)]
pub struct Attempt {
    pub loaded: bool,
    pub attached: bool,
    /// The program ran when the test datagram crossed its hook.
    pub fired: bool,
    /// Why it failed, in the kernel's words plus what that usually means.
    pub error: Option<String>,
}

impl Attempt {
    pub fn usable(&self) -> bool {
        self.loaded && self.attached && self.fired
    }
}

/// The traced kernel function for kprobe/fentry attempts: on every packet's transmit path.
const PROBE_FUNCTION: &str = "__dev_queue_xmit";

fn slot(m: Mechanism) -> ProbeSlot {
    match m {
        Mechanism::Kprobe => ProbeSlot::Kprobe,
        Mechanism::Kretprobe => ProbeSlot::Kretprobe,
        Mechanism::Fentry => ProbeSlot::Fentry,
        Mechanism::Fexit => ProbeSlot::Fexit,
        Mechanism::TpBtf => ProbeSlot::TpBtf,
        Mechanism::RawTracepoint => ProbeSlot::RawTracepoint,
        Mechanism::Tracepoint => ProbeSlot::Tracepoint,
        Mechanism::Tc => ProbeSlot::Tc,
        Mechanism::Xdp => ProbeSlot::Xdp,
    }
}

/// Stage of an attempt that failed, with the error.
enum Failed {
    Load(anyhow::Error),
    Attach(anyhow::Error),
}

/// Tries every mechanism; returns one attempt per mechanism.
pub fn attach_mechanisms() -> Result<BTreeMap<Mechanism, Attempt>> {
    std::thread::spawn(|| -> Result<BTreeMap<Mechanism, Attempt>> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .context("creating a scratch network namespace")?;
        // SAFETY: plain netlink request; ifindex 1 is the new namespace's loopback.
        unsafe { aya::netlink_set_link_up(1) }
            .map_err(|e| anyhow!("bringing up loopback in the scratch namespace: {e}"))?;
        let mut bpf = crate::probes::load()?;
        let btf = Btf::from_sys_fs().ok();
        let mut staged = BTreeMap::new();
        for m in Mechanism::ALL {
            staged.insert(m, try_attach(&mut bpf, m, btf.as_ref()));
        }
        send_datagram()?;
        std::thread::sleep(Duration::from_millis(50));
        let hits: Array<_, u64> = Array::try_from(
            bpf.map(map::PROBE_HITS)
                .ok_or_else(|| anyhow!("PROBE_HITS map missing from the eBPF object"))?,
        )?;
        let mut out = BTreeMap::new();
        for (m, r) in staged {
            let fired = hits.get(&(slot(m) as u32), 0).unwrap_or(0) > 0;
            let attempt = match r {
                Ok(()) => Attempt {
                    loaded: true,
                    attached: true,
                    fired,
                    error: (!fired).then(|| "attached but never fired".to_string()),
                },
                Err(Failed::Load(e)) => Attempt {
                    loaded: false,
                    attached: false,
                    fired: false,
                    error: Some(explain(m, "load", &e)),
                },
                Err(Failed::Attach(e)) => Attempt {
                    loaded: true,
                    attached: false,
                    fired: false,
                    error: Some(explain(m, "attach", &e)),
                },
            };
            out.insert(m, attempt);
        }
        Ok(out)
    })
    .join()
    .map_err(|_| anyhow!("the probe thread panicked"))?
}

fn try_attach(bpf: &mut Ebpf, m: Mechanism, btf: Option<&Btf>) -> Result<(), Failed> {
    let name = match m {
        Mechanism::Kprobe => prog::DOCTOR_KPROBE,
        Mechanism::Kretprobe => prog::DOCTOR_KRETPROBE,
        Mechanism::Fentry => prog::DOCTOR_FENTRY,
        Mechanism::Fexit => prog::DOCTOR_FEXIT,
        Mechanism::TpBtf => prog::DOCTOR_TP_BTF,
        Mechanism::RawTracepoint => prog::DOCTOR_RAW_TP,
        Mechanism::Tracepoint => prog::DOCTOR_TRACEPOINT,
        Mechanism::Tc => prog::DOCTOR_TC,
        Mechanism::Xdp => prog::DOCTOR_XDP,
    };
    let prog = bpf
        .program_mut(name)
        .ok_or_else(|| Failed::Load(anyhow!("program {name} missing from the eBPF object")))?;
    let no_btf = || Failed::Load(anyhow!("no BTF at {}", crate::kernel::BTF_VMLINUX));
    let load = |r: Result<(), aya::programs::ProgramError>| r.map_err(|e| Failed::Load(e.into()));
    let attach =
        |r: Result<(), aya::programs::ProgramError>| r.map_err(|e| Failed::Attach(e.into()));
    let conv = |e: aya::programs::ProgramError| Failed::Load(e.into());
    match m {
        Mechanism::Kprobe | Mechanism::Kretprobe => {
            let p: &mut KProbe = prog.try_into().map_err(conv)?;
            load(p.load())?;
            attach(p.attach(PROBE_FUNCTION, 0).map(drop))
        }
        Mechanism::Fentry => {
            let p: &mut FEntry = prog.try_into().map_err(conv)?;
            load(p.load(PROBE_FUNCTION, btf.ok_or_else(no_btf)?))?;
            attach(p.attach().map(drop))
        }
        Mechanism::Fexit => {
            let p: &mut FExit = prog.try_into().map_err(conv)?;
            load(p.load(PROBE_FUNCTION, btf.ok_or_else(no_btf)?))?;
            attach(p.attach().map(drop))
        }
        Mechanism::TpBtf => {
            let p: &mut BtfTracePoint = prog.try_into().map_err(conv)?;
            load(p.load("net_dev_queue", btf.ok_or_else(no_btf)?))?;
            attach(p.attach().map(drop))
        }
        Mechanism::RawTracepoint => {
            let p: &mut RawTracePoint = prog.try_into().map_err(conv)?;
            load(p.load())?;
            attach(p.attach("net_dev_queue").map(drop))
        }
        Mechanism::Tracepoint => {
            let p: &mut TracePoint = prog.try_into().map_err(conv)?;
            load(p.load())?;
            attach(p.attach("net", "net_dev_queue").map(drop))
        }
        Mechanism::Tc => {
            let p: &mut SchedClassifier = prog.try_into().map_err(conv)?;
            load(p.load())?;
            // Kernels before 6.6 need the clsact qdisc; tcx does not. Either way only the
            // scratch namespace's loopback is touched.
            let _ = aya::programs::tc::qdisc_add_clsact("lo");
            attach(p.attach("lo", TcAttachType::Egress).map(drop))
        }
        Mechanism::Xdp => {
            let p: &mut Xdp = prog.try_into().map_err(conv)?;
            load(p.load())?;
            attach(p.attach("lo", XdpMode::Skb).map(drop))
        }
    }
}

/// One UDP datagram over the scratch namespace's loopback: crosses every probed hook.
fn send_datagram() -> Result<()> {
    let sock = UdpSocket::bind("127.0.0.1:0").context("binding a UDP socket on loopback")?;
    sock.send_to(b"profiler doctor", "127.0.0.1:9")
        .context("sending the test datagram")?;
    Ok(())
}

/// The error chain, plus what it usually means on this kind of kernel.
fn explain(m: Mechanism, stage: &str, e: &anyhow::Error) -> String {
    let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    let text = chain.join(": ");
    let hint = match m {
        Mechanism::Kprobe | Mechanism::Kretprobe
            if !Path::new("/sys/bus/event_source/devices/kprobe").exists() =>
        {
            " (no kprobe PMU in /sys/bus/event_source/devices: kernel built without CONFIG_KPROBES)"
        }
        Mechanism::Fentry | Mechanism::Fexit
            if text.contains("EPERM") || text.contains("not permitted") =>
        {
            " (the kernel refuses BPF trampolines here: lockdown, or no trampoline support)"
        }
        _ => "",
    };
    format!("{stage} failed: {text}{hint}")
}

/// Whether `kvm:kvm_exit` fires, found by running the micro-VM with a counter attached.
#[derive(Clone, Debug, Serialize)]
pub struct KvmProbe {
    pub kvm_exit_exists: bool,
    pub kvm_exit_fires: Option<bool>,
    /// Port-I/O exits the micro-VM's VMM saw (it asked for `MICRO_VM_EXITS`).
    pub micro_vm_pio_exits: Option<u64>,
    pub error: Option<String>,
}

const MICRO_VM_EXITS: u32 = 64;

pub fn kvm() -> KvmProbe {
    let kvm_exit_exists = crate::kernel::tracepoint_exists("kvm", "kvm_exit");
    let mut probe = KvmProbe {
        kvm_exit_exists,
        kvm_exit_fires: None,
        micro_vm_pio_exits: None,
        error: None,
    };
    if !Path::new("/dev/kvm").exists() {
        probe.error = Some("no /dev/kvm".into());
        return probe;
    }
    let result = (|| -> Result<(Option<bool>, u64)> {
        let mut bpf = crate::probes::load()?;
        let mut attached = false;
        if kvm_exit_exists {
            let p: &mut TracePoint = bpf
                .program_mut(prog::DOCTOR_KVM_EXIT)
                .ok_or_else(|| anyhow!("doctor_kvm_exit missing"))?
                .try_into()?;
            p.load()?;
            p.attach("kvm", "kvm_exit")?;
            attached = true;
        }
        let run = microvm::run(microvm::Workload::Pio, MICRO_VM_EXITS)?;
        let fires = if attached {
            let hits: Array<_, u64> = Array::try_from(
                bpf.map(map::PROBE_HITS)
                    .ok_or_else(|| anyhow!("no PROBE_HITS"))?,
            )?;
            Some(hits.get(&(ProbeSlot::KvmExit as u32), 0)? > 0)
        } else {
            None
        };
        Ok((fires, run.pio_exits))
    })();
    match result {
        Ok((fires, exits)) => {
            probe.kvm_exit_fires = fires;
            probe.micro_vm_pio_exits = Some(exits);
        }
        Err(e) => probe.error = Some(format!("{e:#}")),
    }
    probe
}

pub fn micro_vm_exits_asked() -> u64 {
    MICRO_VM_EXITS as u64
}

/// Kernel memory of every map of the profiler's object, from /proc/self/fdinfo (`memlock`),
/// with the object loaded as the tracer loads it. Per-CPU maps scale with the CPU count.
pub fn map_memory() -> Result<Vec<(String, u64)>> {
    use std::collections::HashSet;
    let ids = || -> HashSet<u32> {
        aya::maps::loaded_maps()
            .filter_map(|m| m.ok().map(|m| m.id()))
            .collect()
    };
    let before = ids();
    let bpf = crate::probes::load()?;
    let mut out = vec![];
    for info in aya::maps::loaded_maps().filter_map(|m| m.ok()) {
        if before.contains(&info.id()) {
            continue;
        }
        let name = info.name_as_str().unwrap_or("?").to_string();
        let fd = info.fd()?;
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let raw = fd.as_fd().as_raw_fd();
        let memlock = std::fs::read_to_string(format!("/proc/self/fdinfo/{raw}"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("memlock:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0);
        out.push((name, memlock));
    }
    drop(bpf);
    out.sort_by_key(|m| std::cmp::Reverse(m.1));
    Ok(out)
}
