//! KVM exits (kernel side of profiler/src/kvm/). Classic tracepoints only: the kvm events may
//! live in a module, out of reach of tp_btf, and kvm_exit's reason is a field of the classic
//! event but not a raw argument. Field offsets come from the format files, as load-time globals.
//!
//! - VMX/SVM: kvm_exit -> kvm_entry of the same thread, into `KVM_EXIT_HIST[slot of reason]`.
//! - Any backend (PVM too): ioctl(KVM_RUN) entry -> return (guest + in-kernel handling) and
//!   return -> next entry (the VMM in user space), by the KVM_EXIT_* of the return.
//! - A counter per kvm event (pio, mmio, msr, cpuid, hypercall, emulate_insn, userspace_exit).

use aya_ebpf::{
    Global,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::{Array, LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::TracePointContext,
};
use profiler_common::{
    hist::Hist,
    kvm::{
        EXIT_KEYS, EXIT_OTHER, EXIT_SLOTS, ISA_SVM, ISA_VMX, KVM_RUN, KvmConfig, RUN_HIST_SLOTS,
        RUN_IN_KVM, RUN_IN_VMM, USER_OTHER, USER_SLOTS, VcpuThread, counter, exit_key, pio_key,
        user_slot,
    },
};

use crate::hist::record_shared;

/// Filter and field offsets, set by the loader (profiler/src/probes/kvm/).
#[unsafe(no_mangle)]
static KVM_CONFIG: Global<KvmConfig> = Global::new(KvmConfig {
    tgid: 0,
    tid: 0,
    ioctl_nr: 0,
    off_exit_reason: 0,
    off_exit_isa: 0,
    off_pio_rw: 0,
    off_pio_port: 0,
    off_mmio_type: 0,
    off_msr_write: 0,
    off_emul_failed: 0,
    off_user_reason: 0,
    off_sys_enter_id: 0,
    off_sys_enter_args: 0,
    off_sys_exit_id: 0,
    debug: 0,
});

/// One field of `KVM_CONFIG`, as one volatile load.
macro_rules! cfg {
    ($f:ident) => {
        // SAFETY: `Global<T>` is `repr(transparent)` over an initialised `T`.
        unsafe {
            core::ptr::read_volatile(core::ptr::addr_of!(
                (*(&KVM_CONFIG as *const Global<KvmConfig> as *const KvmConfig)).$f
            ))
        }
    };
}

/// A rare condition, logged through aya-log with `--debug-bpf` (`when` first, so a counter can
/// thin it to its powers of two); the flag is read on the rare branch only.
macro_rules! rare {
    ($when:expr; $($msg:tt)+) => {
        if cfg!(debug) != 0 && $when {
            aya_log_ebpf::warn!(&(), $($msg)+);
        }
    };
}

/// This CPU's count in a per-CPU array (for thinning a rare message).
#[inline(always)]
fn seen(map: &PerCpuArray<u64>, i: u32) -> u64 {
    map.get(i).copied().unwrap_or(0)
}

#[map]
static KVM_THREADS: LruHashMap<u64, VcpuThread> = LruHashMap::with_max_entries(16384, 0);
#[map]
static KVM_EXIT_SLOT: Array<u8> = Array::with_max_entries(EXIT_KEYS, 0);
#[map]
static KVM_EXIT_HIST: Array<Hist> = Array::with_max_entries(EXIT_SLOTS, 0);
#[map]
static KVM_EXIT_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(EXIT_SLOTS, 0);
#[map]
static KVM_RUN_HIST: Array<Hist> = Array::with_max_entries(RUN_HIST_SLOTS, 0);
#[map]
static KVM_USER_EXITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(USER_SLOTS, 0);
#[map]
static KVM_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);
#[map]
static KVM_PIO_PORTS: PerCpuHashMap<u32, u64> = PerCpuHashMap::with_max_entries(1024, 0);

#[inline(always)]
fn add(map: &PerCpuArray<u64>, i: u32, n: u64) {
    if let Some(p) = map.get_ptr_mut(i) {
        // SAFETY: per-CPU value, this CPU only.
        unsafe { *p += n };
    }
}

#[inline(always)]
fn count(i: u32) {
    add(&KVM_COUNTERS, i, 1);
}

/// The current pid_tgid if it passes the TGID/TID filters.
#[inline(always)]
fn followed() -> Option<u64> {
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    let (want_tgid, want_tid) = (cfg!(tgid), cfg!(tid));
    if (want_tgid != 0 && want_tgid != tgid) || (want_tid != 0 && want_tid != tid) {
        return None;
    }
    Some(id)
}

#[inline(always)]
fn field<T: Default>(ctx: &TracePointContext, off: u32) -> T {
    // SAFETY: bpf_probe_read_kernel of the event record; a bad offset reads as an error.
    match unsafe { ctx.read_at::<T>(off as usize) } {
        Ok(v) => v,
        Err(_) => {
            rare!(true; "kvm: event field at +{} unreadable: a format-file offset that does not hold?", off);
            T::default()
        }
    }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn thread(id: u64) -> Option<&'static mut VcpuThread> {
    if KVM_THREADS.get_ptr_mut(id).is_none() {
        let fresh = VcpuThread {
            user_reason: u32::MAX,
            ..VcpuThread::default()
        };
        let failed = KVM_THREADS.insert(id, fresh, 0).is_err();
        rare!(failed; "kvm: KVM_THREADS insert for thread {} failed", id as u32);
    }
    // SAFETY: a live LRU value; only its own thread touches it, one event at a time.
    KVM_THREADS.get_ptr_mut(id).map(|p| unsafe { &mut *p })
}

#[tracepoint]
pub fn kvm_tp_exit(ctx: TracePointContext) -> u32 {
    let Some(id) = followed() else { return 0 };
    let t = now();
    let reason: u32 = field(&ctx, cfg!(off_exit_reason));
    let isa: u32 = field(&ctx, cfg!(off_exit_isa));
    count(match isa {
        ISA_VMX => counter::EXIT_VMX,
        ISA_SVM => counter::EXIT_SVM,
        _ => counter::EXIT_OTHER_ISA,
    });
    let key = exit_key(isa, reason);
    let slot = match KVM_EXIT_SLOT.get(key) {
        Some(&s) if (s as u32) < EXIT_SLOTS => s as u32,
        _ => EXIT_OTHER,
    };
    add(&KVM_EXIT_COUNT, slot, 1);
    if key == EXIT_KEYS {
        rare!(seen(&KVM_EXIT_COUNT, EXIT_OTHER).is_power_of_two(); "kvm: kvm_exit reason {:x} (isa {}) out of range", reason, isa);
    }
    if let Some(st) = thread(id) {
        st.exit_ts = t;
        st.exit_slot = slot;
    }
    0
}

#[tracepoint]
pub fn kvm_tp_entry(_ctx: TracePointContext) -> u32 {
    let Some(id) = followed() else { return 0 };
    count(counter::ENTRY);
    let Some(p) = KVM_THREADS.get_ptr_mut(id) else {
        return 0;
    };
    // SAFETY: a live LRU value of this thread.
    let st = unsafe { &mut *p };
    if st.exit_ts != 0 {
        record_shared(&KVM_EXIT_HIST, st.exit_slot, now() - st.exit_ts);
        count(counter::ENTRY_PAIRED);
        st.exit_ts = 0;
    }
    0
}

#[tracepoint]
pub fn kvm_sys_enter(ctx: TracePointContext) -> u32 {
    let nr: u64 = field(&ctx, cfg!(off_sys_enter_id));
    if nr != cfg!(ioctl_nr) {
        return 0;
    }
    // args[1]: the ioctl request.
    let off = cfg!(off_sys_enter_args) as usize + 8;
    // SAFETY: bpf_probe_read_kernel of the event record.
    let req: u64 = unsafe { ctx.read_at::<u64>(off) }.unwrap_or(0);
    if req & 0xffff_ffff != KVM_RUN {
        return 0;
    }
    let Some(id) = followed() else { return 0 };
    let t = now();
    count(counter::RUN_ENTER);
    let Some(st) = thread(id) else { return 0 };
    if st.run_exit != 0 {
        let d = t - st.run_exit;
        record_shared(
            &KVM_RUN_HIST,
            RUN_IN_VMM * USER_SLOTS + user_slot(st.user_reason),
            d,
        );
        add(&KVM_COUNTERS, counter::VMM_NS, d);
    }
    st.run_enter = t;
    st.user_reason = u32::MAX;
    0
}

#[tracepoint]
pub fn kvm_sys_exit(ctx: TracePointContext) -> u32 {
    let nr: u64 = field(&ctx, cfg!(off_sys_exit_id));
    if nr != cfg!(ioctl_nr) {
        return 0;
    }
    let Some(id) = followed() else { return 0 };
    let Some(p) = KVM_THREADS.get_ptr_mut(id) else {
        return 0;
    };
    // SAFETY: a live LRU value of this thread.
    let st = unsafe { &mut *p };
    if st.run_enter == 0 {
        // Another ioctl on a vCPU thread.
        return 0;
    }
    let t = now();
    let d = t - st.run_enter;
    record_shared(
        &KVM_RUN_HIST,
        RUN_IN_KVM * USER_SLOTS + user_slot(st.user_reason),
        d,
    );
    add(&KVM_COUNTERS, counter::RUN_NS, d);
    count(counter::RUN_EXIT);
    st.run_enter = 0;
    st.run_exit = t;
    0
}

#[tracepoint]
pub fn kvm_tp_userspace_exit(ctx: TracePointContext) -> u32 {
    let Some(id) = followed() else { return 0 };
    let reason: u32 = field(&ctx, cfg!(off_user_reason));
    count(counter::USERSPACE_EXIT);
    add(&KVM_USER_EXITS, user_slot(reason), 1);
    if user_slot(reason) == USER_OTHER {
        rare!(seen(&KVM_USER_EXITS, USER_OTHER).is_power_of_two(); "kvm: KVM_EXIT_* reason {} out of range", reason);
    }
    if let Some(p) = KVM_THREADS.get_ptr_mut(id) {
        // SAFETY: a live LRU value of this thread.
        unsafe { (*p).user_reason = reason };
    }
    0
}

#[tracepoint]
pub fn kvm_tp_pio(ctx: TracePointContext) -> u32 {
    if followed().is_none() {
        return 0;
    }
    let rw: u32 = field(&ctx, cfg!(off_pio_rw));
    let port: u32 = field(&ctx, cfg!(off_pio_port));
    let out = rw != 0;
    count(if out {
        counter::PIO_OUT
    } else {
        counter::PIO_IN
    });
    let key = pio_key(port, out);
    match KVM_PIO_PORTS.get_ptr_mut(key) {
        // SAFETY: per-CPU value, this CPU only.
        Some(p) => unsafe { *p += 1 },
        None => {
            let failed = KVM_PIO_PORTS.insert(key, 1, 0).is_err();
            rare!(failed; "kvm: KVM_PIO_PORTS insert of port {:x} failed (map full)", key);
        }
    }
    0
}

#[tracepoint]
pub fn kvm_tp_mmio(ctx: TracePointContext) -> u32 {
    if followed().is_none() {
        return 0;
    }
    // KVM_TRACE_MMIO_READ_UNSATISFIED 0, READ 1, WRITE 2.
    let ty: u32 = field(&ctx, cfg!(off_mmio_type));
    count(match ty {
        0 => counter::MMIO_READ_UNSATISFIED,
        1 => counter::MMIO_READ,
        _ => counter::MMIO_WRITE,
    });
    0
}

#[tracepoint]
pub fn kvm_tp_msr(ctx: TracePointContext) -> u32 {
    if followed().is_none() {
        return 0;
    }
    let write: u32 = field(&ctx, cfg!(off_msr_write));
    count(if write != 0 {
        counter::MSR_WRITE
    } else {
        counter::MSR_READ
    });
    0
}

#[tracepoint]
pub fn kvm_tp_emulate_insn(ctx: TracePointContext) -> u32 {
    if followed().is_none() {
        return 0;
    }
    count(counter::EMULATE_INSN);
    let failed: u8 = field(&ctx, cfg!(off_emul_failed));
    if failed != 0 {
        count(counter::EMULATE_FAILED);
    }
    0
}

macro_rules! counting_programs {
    ($($name:ident => $counter:expr),* $(,)?) => {
        $(
            #[tracepoint]
            pub fn $name(_ctx: TracePointContext) -> u32 {
                if followed().is_some() {
                    count($counter);
                }
                0
            }
        )*
    };
}

counting_programs! {
    kvm_tp_cpuid => counter::CPUID,
    kvm_tp_hypercall => counter::HYPERCALL,
}
