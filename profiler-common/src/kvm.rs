//! KVM exit tracing shared layout (profiler-ebpf/src/kvm.rs, profiler/src/kvm/).
//!
//! Two paths. Per-reason exits (VMX/SVM): kvm:kvm_exit -> kvm:kvm_entry per vCPU thread into
//! `KVM_EXIT_HIST[slot]`, the slot named by user space through `KVM_EXIT_SLOT[exit_key(..)]`.
//! Any backend: ioctl(KVM_RUN) enter/exit per thread into `KVM_RUN_HIST`, split by the
//! KVM_EXIT_* reason kvm:kvm_userspace_exit reported for that return.

/// `isa` of kvm:kvm_exit (arch/x86/kvm/trace.h).
pub const ISA_VMX: u32 = 1;
pub const ISA_SVM: u32 = 2;

/// Histogram slots of per-reason exits; slot 0 is "other".
pub const EXIT_SLOTS: u32 = 64;
pub const EXIT_OTHER: u32 = 0;
/// Keys of `KVM_EXIT_SLOT`: VMX basic reasons 0..128, SVM codes 0..0x100 at 128, 0x400..0x410 at 384.
pub const EXIT_KEYS: u32 = 512;
const VMX_KEYS: u32 = 128;
const SVM_LOW: u32 = 0x100;
const SVM_HIGH: u32 = 0x400;
const SVM_HIGH_KEYS: u32 = 0x10;

/// The key of an exit in `KVM_EXIT_SLOT`, or `EXIT_KEYS` for exits that have none ("other").
#[inline(always)]
pub fn exit_key(isa: u32, reason: u32) -> u32 {
    if isa == ISA_VMX {
        // Bits 16..31 are flags (failed entry, from enclave): the basic reason is the low half.
        let basic = reason & 0xffff;
        if basic < VMX_KEYS {
            return basic;
        }
    } else if isa == ISA_SVM {
        if reason < SVM_LOW {
            return VMX_KEYS + reason;
        }
        let high = reason.wrapping_sub(SVM_HIGH);
        if high < SVM_HIGH_KEYS {
            return VMX_KEYS + SVM_LOW + high;
        }
    }
    EXIT_KEYS
}

/// KVM_EXIT_* reasons (include/uapi/linux/kvm.h) below this get their own slot of
/// `KVM_RUN_HIST`; the rest share the last one.
pub const USER_SLOTS: u32 = 42;
pub const USER_OTHER: u32 = USER_SLOTS - 1;
/// `KVM_RUN_HIST` index: `kind * USER_SLOTS + user_slot(reason)`.
pub const RUN_IN_KVM: u32 = 0;
pub const RUN_IN_VMM: u32 = 1;
pub const RUN_HIST_SLOTS: u32 = 2 * USER_SLOTS;

#[inline(always)]
pub fn user_slot(reason: u32) -> u32 {
    if reason < USER_OTHER {
        reason
    } else {
        USER_OTHER
    }
}

/// ioctl(2) request that runs a vCPU: `_IO(KVMIO, 0x80)`, the same on every architecture.
pub const KVM_RUN: u64 = 0xae80;

/// Counters of `KVM_COUNTERS` (per CPU).
pub mod counter {
    pub const PIO_IN: u32 = 0;
    pub const PIO_OUT: u32 = 1;
    pub const MMIO_READ_UNSATISFIED: u32 = 2;
    pub const MMIO_READ: u32 = 3;
    pub const MMIO_WRITE: u32 = 4;
    pub const MSR_READ: u32 = 5;
    pub const MSR_WRITE: u32 = 6;
    pub const CPUID: u32 = 7;
    pub const HYPERCALL: u32 = 8;
    pub const EMULATE_INSN: u32 = 9;
    pub const EMULATE_FAILED: u32 = 10;
    pub const USERSPACE_EXIT: u32 = 11;
    pub const EXIT_VMX: u32 = 12;
    pub const EXIT_SVM: u32 = 13;
    pub const EXIT_OTHER_ISA: u32 = 14;
    pub const ENTRY: u32 = 15;
    /// Entries that closed an exit of the same thread (samples in `KVM_EXIT_HIST`).
    pub const ENTRY_PAIRED: u32 = 16;
    pub const RUN_ENTER: u32 = 17;
    pub const RUN_EXIT: u32 = 18;
    /// Exact sums in ns: inside KVM_RUN, and between a KVM_RUN return and the next entry.
    pub const RUN_NS: u32 = 19;
    pub const VMM_NS: u32 = 20;
    pub const COUNT: u32 = 21;
}

/// Key of `KVM_PIO_PORTS`: port and direction (kvm:kvm_pio `rw`: 1 = out).
#[inline(always)]
pub const fn pio_key(port: u32, out: bool) -> u32 {
    (port & 0xffff) | ((out as u32) << 16)
}

/// Per vCPU thread state, keyed by pid_tgid in `KVM_THREADS`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct VcpuThread {
    /// kvm_exit time (0: none pending) and its slot.
    pub exit_ts: u64,
    pub exit_slot: u32,
    /// KVM_EXIT_* of the last KVM_RUN return (`u32::MAX` until kvm_userspace_exit reports).
    pub user_reason: u32,
    /// ioctl(KVM_RUN) entry time while inside it, else 0.
    pub run_enter: u64,
    /// Time the last KVM_RUN returned, 0 before the first.
    pub run_exit: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_disjoint_and_bounded() {
        assert_eq!(exit_key(ISA_VMX, 30), 30);
        assert_eq!(
            exit_key(ISA_VMX, 0x8000_0021),
            0x21,
            "failed-entry flag dropped"
        );
        assert_eq!(exit_key(ISA_VMX, 200), EXIT_KEYS);
        assert_eq!(exit_key(ISA_SVM, 0x7b), 128 + 0x7b);
        assert_eq!(exit_key(ISA_SVM, 0x400), 384);
        assert_eq!(exit_key(ISA_SVM, 0x403), 387);
        assert_eq!(exit_key(ISA_SVM, u32::MAX), EXIT_KEYS);
        assert_eq!(exit_key(ISA_SVM, 0xf000_0000), EXIT_KEYS);
        assert_eq!(exit_key(7, 1), EXIT_KEYS);
        for r in 0..0x500 {
            for isa in [ISA_VMX, ISA_SVM] {
                assert!(exit_key(isa, r) <= EXIT_KEYS);
            }
        }
    }

    #[test]
    fn user_slots() {
        assert_eq!(user_slot(2), 2);
        assert_eq!(user_slot(40), 40);
        assert_eq!(user_slot(41), USER_OTHER);
        assert_eq!(user_slot(u32::MAX), USER_OTHER);
    }
}

/// `KVM_CONFIG`: the filter and the classic tracepoints' field offsets (from their format files),
/// set by the loader (profiler/src/probes/kvm/).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KvmConfig {
    /// Threads to follow, 0 = any.
    pub tgid: u32,
    pub tid: u32,
    /// ioctl's syscall number on this architecture.
    pub ioctl_nr: u64,
    pub off_exit_reason: u32,
    pub off_exit_isa: u32,
    pub off_pio_rw: u32,
    pub off_pio_port: u32,
    pub off_mmio_type: u32,
    pub off_msr_write: u32,
    pub off_emul_failed: u32,
    pub off_user_reason: u32,
    pub off_sys_enter_id: u32,
    pub off_sys_enter_args: u32,
    pub off_sys_exit_id: u32,
    /// 1 with `--debug-bpf`: a field read failing and exit reasons out of range are logged
    /// through aya-log, on those rare branches only.
    pub debug: u32,
}

#[cfg(feature = "user")]
// SAFETY: plain old data, `#[repr(C)]`, no implicit padding (8 + 8 + 12 * 4 bytes).
unsafe impl aya::Pod for KvmConfig {}
