//! Names of exits: VMX basic exit reasons (arch/x86/include/uapi/asm/vmx.h), SVM exit codes
//! (arch/x86/include/uapi/asm/svm.h), KVM_EXIT_* (include/uapi/linux/kvm.h), and the
//! histogram slots the kernel side records them into. The kernel never names an exit.

use profiler_common::kvm::{EXIT_KEYS, EXIT_SLOTS, ISA_SVM, ISA_VMX, exit_key};

/// VMX basic exit reasons.
pub const VMX_REASONS: &[(u32, &str)] = &[
    (0, "EXCEPTION_NMI"),
    (1, "EXTERNAL_INTERRUPT"),
    (2, "TRIPLE_FAULT"),
    (3, "INIT_SIGNAL"),
    (4, "SIPI_SIGNAL"),
    (7, "INTERRUPT_WINDOW"),
    (8, "NMI_WINDOW"),
    (9, "TASK_SWITCH"),
    (10, "CPUID"),
    (12, "HLT"),
    (13, "INVD"),
    (14, "INVLPG"),
    (15, "RDPMC"),
    (16, "RDTSC"),
    (18, "VMCALL"),
    (19, "VMCLEAR"),
    (20, "VMLAUNCH"),
    (21, "VMPTRLD"),
    (22, "VMPTRST"),
    (23, "VMREAD"),
    (24, "VMRESUME"),
    (25, "VMWRITE"),
    (26, "VMOFF"),
    (27, "VMON"),
    (28, "CR_ACCESS"),
    (29, "DR_ACCESS"),
    (30, "IO_INSTRUCTION"),
    (31, "MSR_READ"),
    (32, "MSR_WRITE"),
    (33, "INVALID_STATE"),
    (34, "MSR_LOAD_FAIL"),
    (36, "MWAIT_INSTRUCTION"),
    (37, "MONITOR_TRAP_FLAG"),
    (39, "MONITOR_INSTRUCTION"),
    (40, "PAUSE_INSTRUCTION"),
    (41, "MCE_DURING_VMENTRY"),
    (43, "TPR_BELOW_THRESHOLD"),
    (44, "APIC_ACCESS"),
    (45, "EOI_INDUCED"),
    (46, "GDTR_IDTR"),
    (47, "LDTR_TR"),
    (48, "EPT_VIOLATION"),
    (49, "EPT_MISCONFIG"),
    (50, "INVEPT"),
    (51, "RDTSCP"),
    (52, "PREEMPTION_TIMER"),
    (53, "INVVPID"),
    (54, "WBINVD"),
    (55, "XSETBV"),
    (56, "APIC_WRITE"),
    (57, "RDRAND"),
    (58, "INVPCID"),
    (59, "VMFUNC"),
    (60, "ENCLS"),
    (61, "RDSEED"),
    (62, "PML_FULL"),
    (63, "XSAVES"),
    (64, "XRSTORS"),
    (67, "UMWAIT"),
    (68, "TPAUSE"),
    (74, "BUS_LOCK"),
    (75, "NOTIFY"),
    (76, "SEAMCALL"),
    (77, "TDCALL"),
    (84, "MSR_READ_IMM"),
    (85, "MSR_WRITE_IMM"),
];

/// SVM exit codes (`SVM_EXIT_*` without the prefix; exceptions as `EXCP_<vector>`).
pub const SVM_EXITS: &[(u32, &str)] = &[
    (0x000, "READ_CR0"),
    (0x002, "READ_CR2"),
    (0x003, "READ_CR3"),
    (0x004, "READ_CR4"),
    (0x008, "READ_CR8"),
    (0x010, "WRITE_CR0"),
    (0x012, "WRITE_CR2"),
    (0x013, "WRITE_CR3"),
    (0x014, "WRITE_CR4"),
    (0x018, "WRITE_CR8"),
    (0x020, "READ_DR0"),
    (0x021, "READ_DR1"),
    (0x022, "READ_DR2"),
    (0x023, "READ_DR3"),
    (0x024, "READ_DR4"),
    (0x025, "READ_DR5"),
    (0x026, "READ_DR6"),
    (0x027, "READ_DR7"),
    (0x030, "WRITE_DR0"),
    (0x031, "WRITE_DR1"),
    (0x032, "WRITE_DR2"),
    (0x033, "WRITE_DR3"),
    (0x034, "WRITE_DR4"),
    (0x035, "WRITE_DR5"),
    (0x036, "WRITE_DR6"),
    (0x037, "WRITE_DR7"),
    (0x040, "EXCP_DE"),
    (0x041, "EXCP_DB"),
    (0x042, "EXCP_NMI"),
    (0x043, "EXCP_BP"),
    (0x044, "EXCP_OF"),
    (0x045, "EXCP_BR"),
    (0x046, "EXCP_UD"),
    (0x047, "EXCP_NM"),
    (0x048, "EXCP_DF"),
    (0x04a, "EXCP_TS"),
    (0x04b, "EXCP_NP"),
    (0x04c, "EXCP_SS"),
    (0x04d, "EXCP_GP"),
    (0x04e, "EXCP_PF"),
    (0x050, "EXCP_MF"),
    (0x051, "EXCP_AC"),
    (0x052, "EXCP_MC"),
    (0x053, "EXCP_XF"),
    (0x054, "EXCP_VE"),
    (0x055, "EXCP_CP"),
    (0x05c, "EXCP_HV"),
    (0x05d, "EXCP_VC"),
    (0x05e, "EXCP_SX"),
    (0x060, "INTR"),
    (0x061, "NMI"),
    (0x062, "SMI"),
    (0x063, "INIT"),
    (0x064, "VINTR"),
    (0x065, "CR0_SEL_WRITE"),
    (0x066, "IDTR_READ"),
    (0x067, "GDTR_READ"),
    (0x068, "LDTR_READ"),
    (0x069, "TR_READ"),
    (0x06a, "IDTR_WRITE"),
    (0x06b, "GDTR_WRITE"),
    (0x06c, "LDTR_WRITE"),
    (0x06d, "TR_WRITE"),
    (0x06e, "RDTSC"),
    (0x06f, "RDPMC"),
    (0x070, "PUSHF"),
    (0x071, "POPF"),
    (0x072, "CPUID"),
    (0x073, "RSM"),
    (0x074, "IRET"),
    (0x075, "SWINT"),
    (0x076, "INVD"),
    (0x077, "PAUSE"),
    (0x078, "HLT"),
    (0x079, "INVLPG"),
    (0x07a, "INVLPGA"),
    (0x07b, "IOIO"),
    (0x07c, "MSR"),
    (0x07d, "TASK_SWITCH"),
    (0x07e, "FERR_FREEZE"),
    (0x07f, "SHUTDOWN"),
    (0x080, "VMRUN"),
    (0x081, "VMMCALL"),
    (0x082, "VMLOAD"),
    (0x083, "VMSAVE"),
    (0x084, "STGI"),
    (0x085, "CLGI"),
    (0x086, "SKINIT"),
    (0x087, "RDTSCP"),
    (0x088, "ICEBP"),
    (0x089, "WBINVD"),
    (0x08a, "MONITOR"),
    (0x08b, "MWAIT"),
    (0x08c, "MWAIT_COND"),
    (0x08d, "XSETBV"),
    (0x08e, "RDPRU"),
    (0x08f, "EFER_WRITE_TRAP"),
    (0x090, "CR0_WRITE_TRAP"),
    (0x091, "CR1_WRITE_TRAP"),
    (0x092, "CR2_WRITE_TRAP"),
    (0x093, "CR3_WRITE_TRAP"),
    (0x094, "CR4_WRITE_TRAP"),
    (0x095, "CR5_WRITE_TRAP"),
    (0x096, "CR6_WRITE_TRAP"),
    (0x097, "CR7_WRITE_TRAP"),
    (0x098, "CR8_WRITE_TRAP"),
    (0x099, "CR9_WRITE_TRAP"),
    (0x09a, "CR10_WRITE_TRAP"),
    (0x09b, "CR11_WRITE_TRAP"),
    (0x09c, "CR12_WRITE_TRAP"),
    (0x09d, "CR13_WRITE_TRAP"),
    (0x09e, "CR14_WRITE_TRAP"),
    (0x09f, "CR15_WRITE_TRAP"),
    (0x0a2, "INVPCID"),
    (0x0a5, "BUS_LOCK"),
    (0x0a6, "IDLE_HLT"),
    (0x400, "NPF"),
    (0x401, "AVIC_INCOMPLETE_IPI"),
    (0x402, "AVIC_UNACCELERATED_ACCESS"),
    (0x403, "VMGEXIT"),
    (0xf000_0000, "SW"),
    (0xffff_ffff, "ERR"),
];

/// KVM_EXIT_* of `struct kvm_run`: why KVM_RUN returned to the VMM.
pub const KVM_EXITS: &[&str] = &[
    "UNKNOWN",
    "EXCEPTION",
    "IO",
    "HYPERCALL",
    "DEBUG",
    "HLT",
    "MMIO",
    "IRQ_WINDOW_OPEN",
    "SHUTDOWN",
    "FAIL_ENTRY",
    "INTR",
    "SET_TPR",
    "TPR_ACCESS",
    "S390_SIEIC",
    "S390_RESET",
    "DCR",
    "NMI",
    "INTERNAL_ERROR",
    "OSI",
    "PAPR_HCALL",
    "S390_UCONTROL",
    "WATCHDOG",
    "S390_TSCH",
    "EPR",
    "SYSTEM_EVENT",
    "S390_STSI",
    "IOAPIC_EOI",
    "HYPERV",
    "ARM_NISV",
    "X86_RDMSR",
    "X86_WRMSR",
    "DIRTY_RING_FULL",
    "AP_RESET_HOLD",
    "X86_BUS_LOCK",
    "XEN",
    "RISCV_SBI",
    "RISCV_CSR",
    "NOTIFY",
    "LOONGARCH_IOCSR",
    "MEMORY_FAULT",
    "TDX",
];

fn lookup(table: &[(u32, &'static str)], code: u32) -> Option<&'static str> {
    table.iter().find(|(c, _)| *c == code).map(|(_, n)| *n)
}

/// The name of a VMX exit reason (flags in bits 16..31 ignored).
pub fn vmx_exit_name(reason: u32) -> Option<&'static str> {
    lookup(VMX_REASONS, reason & 0xffff)
}

pub fn svm_exit_name(code: u32) -> Option<&'static str> {
    lookup(SVM_EXITS, code)
}

/// The name of an exit of `isa` (`ISA_VMX` / `ISA_SVM`), or its number.
pub fn exit_name(isa: u32, reason: u32) -> String {
    let name = match isa {
        ISA_VMX => vmx_exit_name(reason),
        ISA_SVM => svm_exit_name(reason),
        _ => None,
    };
    match name {
        Some(n) => n.to_string(),
        None => format!("{reason:#x}"),
    }
}

pub fn kvm_exit_name(reason: u32) -> String {
    match KVM_EXITS.get(reason as usize) {
        Some(n) => (*n).to_string(),
        None => format!("KVM_EXIT_{reason}"),
    }
}

/// One histogram slot of per-reason exits: its name and the exit codes it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub name: String,
    pub codes: Vec<u32>,
}

/// Rare families that share a slot, so each ISA fits in `EXIT_SLOTS - 1` slots.
const VMX_GROUPS: &[(&str, &[u32])] = &[("VMX_INSTRUCTION", &[19, 20, 21, 22, 23, 24, 25, 26, 27])];

const SVM_GROUPS: &[(&str, &[u32])] = &[
    (
        "CR_OTHER",
        &[
            0x1, 0x2, 0x5, 0x6, 0x7, 0x9, 0xa, 0xb, 0xc, 0xd, 0xe, 0xf, 0x11, 0x12, 0x15, 0x16,
            0x17, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
        ],
    ),
    (
        "READ_DR",
        &[
            0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x2b, 0x2c, 0x2d,
            0x2e, 0x2f,
        ],
    ),
    (
        "WRITE_DR",
        &[
            0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x3b, 0x3c, 0x3d,
            0x3e, 0x3f,
        ],
    ),
    // Exceptions other than those with their own slot (below).
    (
        "EXCP_OTHER",
        &[
            0x40, 0x42, 0x44, 0x45, 0x48, 0x49, 0x4a, 0x4b, 0x4c, 0x4f, 0x50, 0x53, 0x54, 0x55,
            0x56, 0x57, 0x58, 0x59, 0x5a, 0x5b, 0x5c, 0x5d, 0x5e, 0x5f,
        ],
    ),
    (
        "DESCRIPTOR_TABLE",
        &[0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d],
    ),
    ("SVM_INSTRUCTION", &[0x82, 0x83, 0x84, 0x85, 0x86]),
    ("MWAIT", &[0x8b, 0x8c]),
    (
        "CR_WRITE_TRAP",
        &[
            0x90, 0x91, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0x9b, 0x9c, 0x9d,
            0x9e, 0x9f,
        ],
    ),
];

/// SVM codes with a slot of their own. The rest outside a group (RSM, SWINT, FERR_FREEZE,
/// ICEBP, SW, ERR, ...) share slot 0, "other".
const SVM_OWN: &[u32] = &[
    0x00, 0x03, 0x04, 0x08, 0x10, 0x13, 0x14, 0x18, 0x41, 0x43, 0x46, 0x47, 0x4d, 0x4e, 0x51, 0x52,
    0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x6e, 0x6f, 0x70, 0x71, 0x72, 0x74, 0x76, 0x77, 0x78, 0x79,
    0x7a, 0x7b, 0x7c, 0x7d, 0x7f, 0x80, 0x81, 0x87, 0x89, 0x8a, 0x8d, 0x8e, 0x8f, 0xa2, 0xa5, 0xa6,
    0x400, 0x401, 0x402, 0x403,
];

/// The slots of one ISA; slot `i + 1` is `slots()[i]` (slot 0 is "other").
pub fn slots(isa: u32) -> Vec<Slot> {
    let own = |code: u32, name: Option<&str>| Slot {
        name: name.map_or_else(|| format!("{code:#x}"), str::to_string),
        codes: vec![code],
    };
    let group = |(name, codes): &(&str, &[u32])| Slot {
        name: name.to_string(),
        codes: codes.to_vec(),
    };
    match isa {
        ISA_VMX => {
            let grouped: Vec<u32> = VMX_GROUPS
                .iter()
                .flat_map(|(_, c)| c.iter().copied())
                .collect();
            let mut v: Vec<Slot> = VMX_REASONS
                .iter()
                .filter(|(c, _)| !grouped.contains(c))
                .map(|&(c, n)| own(c, Some(n)))
                .collect();
            v.extend(VMX_GROUPS.iter().map(group));
            v
        }
        ISA_SVM => {
            let mut v: Vec<Slot> = SVM_OWN.iter().map(|&c| own(c, svm_exit_name(c))).collect();
            v.extend(SVM_GROUPS.iter().map(group));
            v
        }
        _ => vec![],
    }
}

/// The contents of the kernel's `KVM_EXIT_SLOT` map: exit key -> slot, for both ISAs (their
/// keys are disjoint; which ISA ran is told by the kernel's per-ISA exit counters).
pub fn key_table() -> Vec<u8> {
    let mut t = vec![0u8; EXIT_KEYS as usize];
    for isa in [ISA_VMX, ISA_SVM] {
        for (i, s) in slots(isa).iter().enumerate() {
            let slot = (i + 1) as u8;
            debug_assert!((slot as u32) < EXIT_SLOTS);
            for &code in &s.codes {
                let k = exit_key(isa, code);
                if k < EXIT_KEYS {
                    t[k as usize] = slot;
                }
            }
        }
    }
    t
}

/// The name of slot `slot` of `isa`.
pub fn slot_name(isa: u32, slot: u32) -> String {
    if slot == 0 {
        return "other".to_string();
    }
    slots(isa)
        .get(slot as usize - 1)
        .map_or_else(|| format!("slot {slot}"), |s| s.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmx_names() {
        assert_eq!(vmx_exit_name(1), Some("EXTERNAL_INTERRUPT"));
        assert_eq!(vmx_exit_name(2), Some("TRIPLE_FAULT"));
        assert_eq!(vmx_exit_name(10), Some("CPUID"));
        assert_eq!(vmx_exit_name(12), Some("HLT"));
        assert_eq!(vmx_exit_name(30), Some("IO_INSTRUCTION"));
        assert_eq!(vmx_exit_name(31), Some("MSR_READ"));
        assert_eq!(vmx_exit_name(32), Some("MSR_WRITE"));
        assert_eq!(vmx_exit_name(48), Some("EPT_VIOLATION"));
        assert_eq!(vmx_exit_name(49), Some("EPT_MISCONFIG"));
        assert_eq!(vmx_exit_name(75), Some("NOTIFY"));
        // Failed VM entry flag on top of a basic reason.
        assert_eq!(vmx_exit_name(0x8000_0021), Some("INVALID_STATE"));
        assert_eq!(vmx_exit_name(5), None);
        assert_eq!(exit_name(ISA_VMX, 11), "0xb");
    }

    #[test]
    fn svm_names() {
        assert_eq!(svm_exit_name(0x60), Some("INTR"));
        assert_eq!(svm_exit_name(0x72), Some("CPUID"));
        assert_eq!(svm_exit_name(0x78), Some("HLT"));
        assert_eq!(svm_exit_name(0x7b), Some("IOIO"));
        assert_eq!(svm_exit_name(0x7c), Some("MSR"));
        assert_eq!(svm_exit_name(0x400), Some("NPF"));
        assert_eq!(exit_name(ISA_SVM, u32::MAX), "ERR");
    }

    #[test]
    fn kvm_exit_names() {
        assert_eq!(kvm_exit_name(2), "IO");
        assert_eq!(kvm_exit_name(5), "HLT");
        assert_eq!(kvm_exit_name(6), "MMIO");
        assert_eq!(kvm_exit_name(39), "MEMORY_FAULT");
        assert_eq!(kvm_exit_name(99), "KVM_EXIT_99");
    }

    #[test]
    fn tables_are_sorted_and_unique() {
        for t in [VMX_REASONS, SVM_EXITS] {
            assert!(t.windows(2).all(|w| w[0].0 < w[1].0), "{:?}", t);
        }
    }

    #[test]
    fn slots_fit_and_cover_each_code_once() {
        for isa in [ISA_VMX, ISA_SVM] {
            let s = slots(isa);
            assert!(s.len() < EXIT_SLOTS as usize, "{isa}: {} slots", s.len());
            let mut seen = std::collections::HashSet::new();
            for slot in &s {
                for c in &slot.codes {
                    assert!(seen.insert(*c), "code {c:#x} in two slots");
                    assert!(exit_key(isa, *c) < EXIT_KEYS, "code {c:#x} has no key");
                }
            }
        }
        // Every VMX reason that has a name has a slot of its own or a group.
        let vmx = slots(ISA_VMX);
        for (c, _) in VMX_REASONS {
            assert!(vmx.iter().any(|s| s.codes.contains(c)), "{c}");
        }
    }

    #[test]
    fn key_table_round_trips_names() {
        let t = key_table();
        for (isa, code, want) in [
            (ISA_VMX, 30, "IO_INSTRUCTION"),
            (ISA_VMX, 12, "HLT"),
            (ISA_VMX, 48, "EPT_VIOLATION"),
            (ISA_VMX, 24, "VMX_INSTRUCTION"),
            (ISA_SVM, 0x7b, "IOIO"),
            (ISA_SVM, 0x400, "NPF"),
            (ISA_SVM, 0x78, "HLT"),
            (ISA_SVM, 0x2a, "READ_DR"),
        ] {
            let slot = t[exit_key(isa, code) as usize] as u32;
            assert_eq!(slot_name(isa, slot), want, "{isa} {code:#x}");
        }
        // Unknown codes fall into "other".
        assert_eq!(t[exit_key(ISA_VMX, 5) as usize], 0);
        assert_eq!(slot_name(ISA_VMX, 0), "other");
    }
}
