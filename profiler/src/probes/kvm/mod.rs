//! The KVM exit tracer (user side of profiler-ebpf/src/kvm.rs): reads the tracepoints' field
//! offsets from their format files, loads the programs with those as globals, attaches the
//! classic tracepoints that exist, and reads the maps into a [`Raw`].

use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, PerCpuHashMap},
};
use profiler_common::{
    hist::Hist,
    kvm::{EXIT_SLOTS, KvmConfig, RUN_HIST_SLOTS, USER_SLOTS, counter},
    names::{map, program as prog},
};

pub mod names;

use crate::attach::{self, Attached as Attach, Point, link::Link};

/// Which threads to follow; 0 = any.
#[derive(Clone, Copy, Debug, Default)]
pub struct Filter {
    pub tgid: u32,
    pub tid: u32,
    /// Print the kernel side's rare-condition messages (`--debug-bpf`).
    pub debug_bpf: bool,
}

/// ioctl(2)'s number as raw_syscalls reports it.
#[cfg(target_arch = "x86_64")]
const IOCTL_NR: u64 = 16;
#[cfg(target_arch = "aarch64")]
const IOCTL_NR: u64 = 29;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const IOCTL_NR: u64 = libc::SYS_ioctl as u64;

/// Where one format field's offset goes in `KvmConfig`.
type Slot = fn(&mut KvmConfig) -> &mut u32;

/// One classic tracepoint (its point) and the fields (config slot <- field) its program reads.
pub struct Hook {
    pub point: Point,
    fields: &'static [(Slot, &'static str)],
}

pub const HOOKS: &[Hook] = &[
    Hook {
        point: crate::point!(Tracepoint, "raw_syscalls", "sys_enter", prog::KVM_SYS_ENTER),
        fields: &[
            (|c| &mut c.off_sys_enter_id, "id"),
            (|c| &mut c.off_sys_enter_args, "args"),
        ],
    },
    Hook {
        point: crate::point!(Tracepoint, "raw_syscalls", "sys_exit", prog::KVM_SYS_EXIT),
        fields: &[(|c| &mut c.off_sys_exit_id, "id")],
    },
    Hook {
        point: crate::point!(Tracepoint, "kvm", "kvm_exit", prog::KVM_EXIT),
        fields: &[
            (|c| &mut c.off_exit_reason, "exit_reason"),
            (|c| &mut c.off_exit_isa, "isa"),
        ],
    },
    Hook {
        point: crate::point!(Tracepoint, "kvm", "kvm_entry", prog::KVM_ENTRY),
        fields: &[],
    },
    Hook {
        point: crate::point!(
            Tracepoint,
            "kvm",
            "kvm_userspace_exit",
            prog::KVM_USERSPACE_EXIT
        ),
        fields: &[(|c| &mut c.off_user_reason, "reason")],
    },
    Hook {
        point: crate::point!(Tracepoint, "kvm", "kvm_pio", prog::KVM_PIO),
        fields: &[
            (|c| &mut c.off_pio_rw, "rw"),
            (|c| &mut c.off_pio_port, "port"),
        ],
    },
    Hook {
        point: crate::point!(Tracepoint, "kvm", "kvm_mmio", prog::KVM_MMIO),
        fields: &[(|c| &mut c.off_mmio_type, "type")],
    },
    Hook {
        point: crate::point!(Tracepoint, "kvm", "kvm_msr", prog::KVM_MSR),
        fields: &[(|c| &mut c.off_msr_write, "write")],
    },
    Hook {
        point: crate::point!(Tracepoint, "kvm", "kvm_cpuid", prog::KVM_CPUID),
        fields: &[],
    },
    Hook {
        point: crate::point!(Tracepoint, "kvm", "kvm_hypercall", prog::KVM_HYPERCALL),
        fields: &[],
    },
    Hook {
        point: crate::point!(
            Tracepoint,
            "kvm",
            "kvm_emulate_insn",
            prog::KVM_EMULATE_INSN
        ),
        fields: &[(|c| &mut c.off_emul_failed, "failed")],
    },
];

/// The byte offset of `field` in a tracefs `format` file (`args[6]` is found as `args`).
pub fn field_offset(format: &str, field: &str) -> Option<u32> {
    for line in format.lines() {
        let Some(decl) = line.trim().strip_prefix("field:") else {
            continue;
        };
        let mut parts = decl.split(';');
        let name = parts.next()?.split_whitespace().last()?;
        let name = name.split('[').next()?;
        if name != field {
            continue;
        }
        return parts
            .find_map(|p| p.trim().strip_prefix("offset:"))
            .and_then(|o| o.trim().parse().ok());
    }
    None
}

pub struct KvmTracer {
    ebpf: Ebpf,
    links: Vec<Link>,
    pub attached: Vec<Attach>,
    /// The kernel's messages with `--debug-bpf`, printed until the tracer is dropped.
    _log: Option<crate::probes::log::KernelLog>,
}

impl KvmTracer {
    /// Loads and attaches every program whose tracepoint exists. Fails only when the KVM_RUN
    /// path (raw_syscalls) cannot attach: without it nothing is measured on any backend.
    pub fn start(filter: Filter) -> Result<KvmTracer> {
        let tracefs = crate::kernel::tracefs()?;
        let mut config = KvmConfig {
            tgid: filter.tgid,
            tid: filter.tid,
            ioctl_nr: IOCTL_NR,
            debug: filter.debug_bpf as u32,
            ..KvmConfig::default()
        };
        let mut usable = vec![];
        let mut attached = vec![];
        for h in HOOKS {
            let event = h.point.event();
            let file = tracefs
                .join("events")
                .join(event.replace(':', "/"))
                .join("format");
            match resolve(&file, h, &mut config) {
                Ok(()) => usable.push(h),
                Err(e) => attached.push(Attach {
                    event,
                    how: format!("not attached ({e:#})"),
                }),
            }
        }
        let mut l = crate::probes::loader(crate::probes::Subject::Kvm);
        if filter.debug_bpf {
            crate::probes::log::enable(&mut l);
        }
        let mut ebpf = l
            .override_global(map::KVM_CONFIG, &config, true)
            .load(crate::probes::OBJECT)
            .context("loading the KVM tracer's eBPF programs")?;
        let log = crate::probes::log::KernelLog::start(&mut ebpf, filter.debug_bpf)?;
        {
            let mut table: Array<_, u8> = Array::try_from(
                ebpf.map_mut(map::KVM_EXIT_SLOT)
                    .context("KVM_EXIT_SLOT missing")?,
            )?;
            for (k, &slot) in names::key_table().iter().enumerate() {
                if slot != 0 {
                    table.set(k as u32, slot, 0)?;
                }
            }
        }
        let mut links = vec![];
        for h in usable {
            let (link, how) = attach::link::attach_point(&mut ebpf, &h.point, None);
            links.extend(link);
            attached.push(how);
        }
        for must in ["raw_syscalls:sys_enter", "raw_syscalls:sys_exit"] {
            if let Some(a) = attached
                .iter()
                .find(|a| a.event == must && a.how != "tracepoint")
            {
                bail!("{must} {}: KVM_RUN cannot be timed without it", a.how);
            }
        }
        attached.sort_by(|a, b| a.event.cmp(&b.event));
        Ok(KvmTracer {
            ebpf,
            links,
            attached,
            _log: log,
        })
    }

    /// Whether `event` ("kvm:kvm_exit") is attached.
    pub fn is_attached(&self, event: &str) -> bool {
        self.attached
            .iter()
            .any(|a| a.event == event && a.how == "tracepoint")
    }

    /// Detaches every program; the maps stay readable.
    pub fn detach(&mut self) -> Result<()> {
        for l in std::mem::take(&mut self.links) {
            attach::link::detach(&mut self.ebpf, l)?;
        }
        Ok(())
    }

    /// Everything recorded since the start, summed over CPUs.
    pub fn read(&self) -> Result<Raw> {
        let map = |name: &str| {
            self.ebpf
                .map(name)
                .ok_or_else(|| anyhow!("map {name} missing"))
        };
        let hists = |name: &str, n: u32| -> Result<Vec<Box<Hist>>> {
            let m: Array<&MapData, Hist> = Array::try_from(map(name)?)?;
            (0..n).map(|i| Ok(Box::new(m.get(&i, 0)?))).collect()
        };
        let counts = |name: &str, n: u32| -> Result<Vec<u64>> {
            let m: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map(name)?)?;
            (0..n).map(|i| Ok(m.get(&i, 0)?.iter().sum())).collect()
        };
        let ports: PerCpuHashMap<&MapData, u32, u64> =
            PerCpuHashMap::try_from(map(map::KVM_PIO_PORTS)?)?;
        let mut pio_ports = vec![];
        for entry in ports.iter() {
            let (k, v) = entry?;
            pio_ports.push((k, v.iter().sum()));
        }
        pio_ports.sort_unstable();
        Ok(Raw {
            exit_hist: hists(map::KVM_EXIT_HIST, EXIT_SLOTS)?,
            exit_count: counts(map::KVM_EXIT_COUNT, EXIT_SLOTS)?,
            run_hist: hists(map::KVM_RUN_HIST, RUN_HIST_SLOTS)?,
            user_exits: counts(map::KVM_USER_EXITS, USER_SLOTS)?,
            counters: counts(map::KVM_COUNTERS, counter::COUNT)?,
            pio_ports,
        })
    }
}

/// Fills `config` with the offsets of `h`'s fields; on error `config` may be half-filled, but
/// the hook is then not attached and its fields are read by no attached program.
fn resolve(format_file: &Path, h: &Hook, config: &mut KvmConfig) -> Result<()> {
    let text = std::fs::read_to_string(format_file)
        .with_context(|| format!("tracepoint missing: no {}", format_file.display()))?;
    for (slot, field) in h.fields {
        *slot(config) = field_offset(&text, field)
            .ok_or_else(|| anyhow!("its format has no field `{field}`"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // As this kernel (6.18) prints them.
    const KVM_EXIT_FORMAT: &str = "name: kvm_exit
ID: 1234
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:unsigned int exit_reason;\toffset:8;\tsize:4;\tsigned:0;
\tfield:unsigned long guest_rip;\toffset:16;\tsize:8;\tsigned:0;
\tfield:u32 isa;\toffset:24;\tsize:4;\tsigned:0;
";
    const SYS_ENTER_FORMAT: &str = "format:
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;
\tfield:long id;\toffset:8;\tsize:8;\tsigned:1;
\tfield:unsigned long args[6];\toffset:16;\tsize:48;\tsigned:0;
";

    #[test]
    fn format_offsets() {
        assert_eq!(field_offset(KVM_EXIT_FORMAT, "exit_reason"), Some(8));
        assert_eq!(field_offset(KVM_EXIT_FORMAT, "isa"), Some(24));
        assert_eq!(field_offset(KVM_EXIT_FORMAT, "rip"), None);
        assert_eq!(field_offset(SYS_ENTER_FORMAT, "id"), Some(8));
        assert_eq!(field_offset(SYS_ENTER_FORMAT, "args"), Some(16));
    }

    #[test]
    fn every_hook_has_its_program_named_once() {
        let mut names: Vec<_> = HOOKS
            .iter()
            .map(|h| h.point.candidates[0].program)
            .collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), HOOKS.len());
    }
}

/// The kernel maps' contents, summed over CPUs.
#[derive(Clone)]
pub struct Raw {
    /// `KVM_EXIT_HIST` / `KVM_EXIT_COUNT`, per exit slot.
    pub exit_hist: Vec<Box<Hist>>,
    pub exit_count: Vec<u64>,
    /// `KVM_RUN_HIST`: `kind * USER_SLOTS + user slot`.
    pub run_hist: Vec<Box<Hist>>,
    /// `KVM_USER_EXITS`, per user slot.
    pub user_exits: Vec<u64>,
    /// `KVM_COUNTERS`.
    pub counters: Vec<u64>,
    /// `KVM_PIO_PORTS`: (`pio_key`, count), sorted by key.
    pub pio_ports: Vec<(u32, u64)>,
}

impl Raw {
    pub fn empty() -> Raw {
        Raw {
            exit_hist: (0..EXIT_SLOTS).map(|_| Box::new(Hist::ZERO)).collect(),
            exit_count: vec![0; EXIT_SLOTS as usize],
            run_hist: (0..2 * USER_SLOTS).map(|_| Box::new(Hist::ZERO)).collect(),
            user_exits: vec![0; USER_SLOTS as usize],
            counters: vec![0; counter::COUNT as usize],
            pio_ports: vec![],
        }
    }

    pub fn counter(&self, c: u32) -> u64 {
        self.counters.get(c as usize).copied().unwrap_or(0)
    }

    /// kvm:kvm_pio exits on one port and direction.
    pub fn pio_on(&self, port: u16, out: bool) -> u64 {
        let key = profiler_common::kvm::pio_key(port as u32, out);
        self.pio_ports
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(0, |(_, n)| *n)
    }
}
