//! `profiler doctor`: what this kernel allows, found by loading and attaching tiny programs,
//! and the attach plan that follows from it.
//!
//! JSON schema (`--json`), all keys always present:
//! - `kernel`: release string; `btf`: bool (vmlinux BTF present); `tracefs`: mount path or null;
//!   `lockdown`: "none" | "integrity" | "confidentiality" | null; `bpf_stats_enabled`: bool | null
//! - `mechanisms`: { name: { loaded, attached, fired, usable, error } } for kprobe, kretprobe,
//!   fentry, fexit, tp_btf, raw_tracepoint, tracepoint, tc, xdp
//! - `kvm`: { backend: "vmx"|"svm"|"pvm"|"unknown"|"none", kvm_exit_exists, kvm_exit_fires,
//!   micro_vm_pio_exits, error }
//! - `docker_socket`, `libvirt_socket`: { path, reachable, detail }
//! - `lab_modes`: { mode: { buildable: bool, why_not: string|null } }, found by creating each
//!   mode's device kinds in a throwaway namespace
//! - `bpf_map_memory`: { total_bytes, maps: [{name, bytes}] } of the tracer's object on this
//!   machine with every map at full size (per-CPU maps scale with the CPU count)
//! - `map_memory_model`: [ { subject, by_cpus: [ { cpus, bytes, read_bytes } ] } ]: what each
//!   command's load allocates (its own maps at full size, the rest shrunk to one entry),
//!   computed from the object's map definitions for 2 to 256 CPUs
//! - `hooks`: [ { hook, label, mechanism, target, precision, fallback, passed_over: [{mechanism, target, why}] } ]
//!   which point measures each layer, and how precisely
//! - `attach`: { subject: [ { event, how } ] }: how each subject's tracer attaches each of its
//!   points on this kernel, planned from the same table the tracers attach with

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::Result;
use serde::Serialize;

use crate::{
    attach::{self, Attached, Hook, KernelView, Mechanism},
    kernel::{self, Kallsyms, KvmBackend, SymbolHome},
    probes::probe as probes,
};

#[derive(Debug, Serialize)]
pub struct MechanismReport {
    pub loaded: bool,
    pub attached: bool,
    pub fired: bool,
    pub usable: bool,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct KvmReport {
    pub backend: KvmBackend,
    #[serde(flatten)]
    pub probe: probes::KvmProbe,
}

#[derive(Debug, Serialize)]
pub struct SocketReport {
    pub path: String,
    pub reachable: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct PassedOver {
    pub mechanism: &'static str,
    pub target: String,
    pub why: String,
}

#[derive(Debug, Serialize)]
pub struct HookReport {
    pub hook: Hook,
    pub label: &'static str,
    pub mechanism: Option<&'static str>,
    pub target: Option<String>,
    pub precision: Option<&'static str>,
    pub fallback: Option<&'static str>,
    pub passed_over: Vec<PassedOver>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub kernel: String,
    pub btf: bool,
    pub tracefs: Option<String>,
    pub lockdown: Option<String>,
    pub bpf_stats_enabled: Option<bool>,
    pub mechanisms: BTreeMap<&'static str, MechanismReport>,
    pub kvm: KvmReport,
    pub docker_socket: SocketReport,
    pub libvirt_socket: SocketReport,
    pub lab_modes: BTreeMap<&'static str, ModeReport>,
    pub bpf_map_memory: MapMemory,
    pub map_memory_model: Vec<crate::probes::MemoryModel>,
    pub hooks: Vec<HookReport>,
    pub attach: BTreeMap<&'static str, Vec<Attached>>,
}

#[derive(Debug, Serialize)]
pub struct MapMemory {
    pub total_bytes: u64,
    pub maps: Vec<MapBytes>,
}

#[derive(Debug, Serialize)]
pub struct MapBytes {
    pub name: String,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct ModeReport {
    pub buildable: bool,
    pub why_not: Option<String>,
}

/// The kernel as the doctor found it, for the attach plan.
struct Found {
    attempts: BTreeMap<Mechanism, probes::Attempt>,
    kallsyms: Option<Kallsyms>,
    btf_bytes: Vec<u8>,
    kvm_exit_fires: Option<bool>,
}

impl KernelView for Found {
    fn mechanism_works(&self, m: Mechanism) -> bool {
        self.attempts.get(&m).is_some_and(|a| a.usable())
    }
    fn symbol_home(&self, func: &str) -> SymbolHome {
        self.kallsyms
            .as_ref()
            .map_or(SymbolHome::Absent, |k| k.home(func))
    }
    fn tracepoint_exists(&self, category: &str, name: &str) -> bool {
        kernel::tracepoint_exists(category, name)
    }
    fn tracepoint_in_vmlinux_btf(&self, name: &str) -> bool {
        // The typedef `btf_trace_<name>` names the tracepoint's BTF prototype; its name sits in
        // the BTF string table, NUL-terminated.
        let needle = format!("btf_trace_{name}\0");
        self.btf_bytes
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }
    fn tracepoint_fires(&self, category: &str, name: &str) -> Option<bool> {
        (category == "kvm" && name == "kvm_exit")
            .then_some(self.kvm_exit_fires)
            .flatten()
    }
}

pub fn run() -> Result<Report> {
    kernel::require_root("profiler doctor")?;
    let tracefs = kernel::tracefs().ok();
    let attempts = probes::attach_mechanisms()?;
    let kvm_probe = probes::kvm();
    let found = Found {
        attempts,
        kallsyms: Kallsyms::read().ok(),
        btf_bytes: std::fs::read(kernel::BTF_VMLINUX).unwrap_or_default(),
        kvm_exit_fires: kvm_probe.kvm_exit_fires,
    };
    let hooks = attach::plan(&found)
        .into_values()
        .map(|c| HookReport {
            hook: c.hook,
            label: c.hook.label(),
            mechanism: c.chosen.map(|x| x.mechanism.name()),
            target: c.chosen.map(|x| x.target.to_string()),
            precision: c.chosen.map(|x| x.precision),
            fallback: c.fallback,
            passed_over: c
                .passed_over
                .into_iter()
                .map(|(cand, why)| PassedOver {
                    mechanism: cand.mechanism.name(),
                    target: cand.target.to_string(),
                    why,
                })
                .collect(),
        })
        .collect();
    let mechanisms = found
        .attempts
        .iter()
        .map(|(m, a)| {
            (
                m.name(),
                MechanismReport {
                    loaded: a.loaded,
                    attached: a.attached,
                    fired: a.fired,
                    usable: a.usable(),
                    error: a.error.clone(),
                },
            )
        })
        .collect();
    Ok(Report {
        kernel: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        btf: kernel::has_btf(),
        tracefs: tracefs.map(|p| p.display().to_string()),
        lockdown: kernel::lockdown(),
        bpf_stats_enabled: kernel::bpf_stats_enabled(),
        mechanisms,
        kvm: KvmReport {
            backend: kernel::kvm_backend(),
            probe: kvm_probe,
        },
        docker_socket: docker_socket("/var/run/docker.sock"),
        libvirt_socket: plain_socket("/var/run/libvirt/libvirt-sock"),
        lab_modes: crate::lab::Mode::ALL
            .iter()
            .map(|m| {
                let r = crate::lab::check_kernel(*m);
                (
                    m.name(),
                    ModeReport {
                        buildable: r.is_ok(),
                        why_not: r.err().map(|e| format!("{e:#}")),
                    },
                )
            })
            .collect(),
        bpf_map_memory: {
            let maps = probes::map_memory().unwrap_or_default();
            MapMemory {
                total_bytes: maps.iter().map(|m| m.1).sum(),
                maps: maps
                    .into_iter()
                    .map(|(name, bytes)| MapBytes { name, bytes })
                    .collect(),
            }
        },
        map_memory_model: crate::probes::memory_model().unwrap_or_default(),
        hooks,
        attach: crate::probes::points()
            .into_iter()
            .map(|(subject, points)| {
                let planned = points
                    .iter()
                    .map(|p| attach::plan_point(p, &found))
                    .collect();
                (subject, planned)
            })
            .collect(),
    })
}

/// Docker answers `GET /_ping` with `OK` when the daemon is alive.
fn docker_socket(path: &str) -> SocketReport {
    let detail = (|| -> std::io::Result<String> {
        let mut s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        Ok(reply.lines().next().unwrap_or("").to_string())
    })();
    match detail {
        Ok(line) => SocketReport {
            path: path.into(),
            reachable: line.contains(" 200 "),
            detail: line,
        },
        Err(e) => SocketReport {
            path: path.into(),
            reachable: false,
            detail: e.to_string(),
        },
    }
}

fn plain_socket(path: &str) -> SocketReport {
    let (reachable, detail) = match UnixStream::connect(path) {
        Ok(_) => (true, "connected".to_string()),
        Err(e) if !Path::new(path).exists() => (false, format!("absent ({e})")),
        Err(e) => (false, e.to_string()),
    };
    SocketReport {
        path: path.into(),
        reachable,
        detail,
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

pub fn print(r: &Report) {
    println!("profiler doctor — kernel {}", r.kernel);
    println!();
    println!("  BTF (/sys/kernel/btf/vmlinux)  {}", yes(r.btf));
    println!(
        "  tracefs                        {}",
        r.tracefs.as_deref().unwrap_or("not mounted (mount failed)")
    );
    println!(
        "  lockdown                       {}",
        r.lockdown.as_deref().unwrap_or("no lockdown LSM")
    );
    println!(
        "  bpf_stats_enabled              {}",
        r.bpf_stats_enabled.map_or("unknown", yes)
    );
    println!();
    println!(
        "  {:<15} {:<7} {:<9} {:<6} why not",
        "mechanism", "loads", "attaches", "fires"
    );
    for (name, m) in &r.mechanisms {
        println!(
            "  {:<15} {:<7} {:<9} {:<6} {}",
            name,
            yes(m.loaded),
            yes(m.attached),
            yes(m.fired),
            m.error.as_deref().unwrap_or("")
        );
    }
    println!();
    let k = &r.kvm;
    println!("  KVM backend                    {:?}", k.backend);
    println!(
        "  kvm:kvm_exit                   {}",
        match (k.probe.kvm_exit_exists, k.probe.kvm_exit_fires) {
            (false, _) => "absent".to_string(),
            (true, Some(true)) => "exists, fires".to_string(),
            (true, Some(false)) => "exists, does not fire".to_string(),
            (true, None) => "exists, not tested".to_string(),
        }
    );
    if let Some(n) = k.probe.micro_vm_pio_exits {
        println!(
            "  micro-VM                       ran: {n} of {} port-I/O exits seen by the VMM",
            probes::micro_vm_exits_asked()
        );
    }
    if let Some(e) = &k.probe.error {
        println!("  micro-VM                       failed: {e}");
    }
    for s in [&r.docker_socket, &r.libvirt_socket] {
        println!(
            "  {:<30} {} ({})",
            s.path,
            if s.reachable {
                "reachable"
            } else {
                "unreachable"
            },
            s.detail
        );
    }
    println!();
    let m = &r.bpf_map_memory;
    let top: Vec<String> = m
        .maps
        .iter()
        .take(4)
        .map(|m| format!("{} {:.1} MiB", m.name, m.bytes as f64 / 1048576.0))
        .collect();
    println!(
        "  BPF map memory (tracer object)  {:.1} MiB: {}",
        m.total_bytes as f64 / 1048576.0,
        top.join(", ")
    );
    let at256: Vec<String> = r
        .map_memory_model
        .iter()
        .filter_map(|m| {
            let a = m.by_cpus.iter().find(|a| a.cpus == 256)?;
            Some(format!(
                "{} {:.1} MiB",
                m.subject,
                a.bytes as f64 / 1048576.0
            ))
        })
        .collect();
    println!(
        "  per command at 256 CPUs        {} (computed from the map definitions)",
        at256.join(", ")
    );
    let buildable: Vec<&str> = r
        .lab_modes
        .iter()
        .filter(|(_, m)| m.buildable)
        .map(|(n, _)| *n)
        .collect();
    println!("  lab modes buildable here       {}", buildable.join(", "));
    for (name, m) in r.lab_modes.iter().filter(|(_, m)| !m.buildable) {
        println!(
            "  lab mode {name:<21} {}",
            m.why_not.as_deref().unwrap_or("")
        );
    }
    println!();
    println!(
        "  {:<20} {:<15} {:<28} precision",
        "hook", "mechanism", "target"
    );
    for h in &r.hooks {
        match (h.mechanism, &h.target) {
            (Some(m), Some(t)) => println!(
                "  {:<20} {:<15} {:<28} {}",
                h.label,
                m,
                t,
                h.precision.unwrap_or("")
            ),
            _ => println!(
                "  {:<20} {:<15} {:<28} {}",
                h.label,
                "-",
                "-",
                h.fallback.unwrap_or("")
            ),
        }
    }
    println!();
    println!("  tracer points (what each subject attaches here)");
    for (subject, points) in &r.attach {
        let mut by: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for a in points {
            by.entry(a.how.as_str()).or_default().push(a.event.as_str());
        }
        for (how, events) in by {
            println!("  {subject:<6} {how}: {}", events.join(", "));
        }
    }
}
