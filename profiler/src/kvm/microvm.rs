//! A tiny real-mode guest that performs exactly N exits of one kind, then reports done on
//! [`DONE_PORT`]. Its exit count is known, so the tracer's counts can be checked against it.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

/// Guest code lives here (guest physical); the data segment points at unbacked memory.
pub(crate) const CODE_ADDR: u64 = 0x1000;
pub(crate) const MEM_SIZE: usize = 0x4000;
/// Unbacked guest-physical address: stores there exit to user space as MMIO.
const MMIO_ADDR: u64 = 0x10000;
/// Port of the I/O loop.
pub const PIO_PORT: u16 = 0x3f8;
/// Port the guest writes once its loop is over.
pub const DONE_PORT: u16 = 0x501;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// `out dx, al` to port 0x3f8: KVM_EXIT_IO, served in user space.
    Pio,
    /// a store to unbacked guest memory: KVM_EXIT_MMIO, served in user space.
    Mmio,
    /// `hlt`: KVM_EXIT_HLT (no in-kernel irqchip), served in user space.
    Hlt,
    /// `cpuid`: handled inside KVM, no user-space exit.
    Cpuid,
}

/// The guest program: a loop of `count` iterations of one exiting instruction, then done.
pub fn guest_code(workload: Workload, count: u32) -> Vec<u8> {
    let mut code = Vec::new();
    let counter = count.to_le_bytes();
    // The loop counter: ESI for cpuid (which overwrites EAX..EDX), ECX otherwise.
    let (mov_imm32, dec) = match workload {
        Workload::Cpuid => (0xbe, 0x4e),
        _ => (0xb9, 0x49),
    };
    code.extend([0x66, mov_imm32]);
    code.extend(counter);
    let body: &[u8] = match workload {
        Workload::Pio => &[0xee],                           // out dx, al
        Workload::Mmio => &[0xa2, 0x00, 0x00],              // mov [ds:0], al
        Workload::Hlt => &[0xf4],                           // hlt
        Workload::Cpuid => &[0x66, 0x31, 0xc0, 0x0f, 0xa2], // xor eax,eax; cpuid
    };
    if workload == Workload::Pio {
        let [lo, hi] = PIO_PORT.to_le_bytes();
        code.extend([0xba, lo, hi]); // mov dx, PIO_PORT
    }
    code.extend(body);
    code.extend([0x66, dec]); // dec ecx / dec esi
    let back = -((body.len() + 4) as i8);
    code.extend([0x75, back as u8]); // jnz loop
    let [lo, hi] = DONE_PORT.to_le_bytes();
    code.extend([0xba, lo, hi, 0xee]); // mov dx, DONE_PORT; out dx, al
    code.push(0xf4); // never reached: the VMM stops at DONE_PORT
    code
}

/// What the VMM saw: exits that reached user space, by kind, and the time of the run.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RunReport {
    pub pio_exits: u64,
    pub mmio_exits: u64,
    pub hlt_exits: u64,
    pub other_exits: u64,
    /// From the first KVM_RUN to the done port.
    pub wall: Duration,
    /// Time spent in user space between a KVM_RUN return and the next KVM_RUN.
    pub vmm_time: Duration,
}

/// Runs one micro-VM with `count` iterations of `workload` on /dev/kvm.
pub fn run(workload: Workload, count: u32) -> Result<RunReport> {
    if count == 0 {
        bail!("--count must be at least 1");
    }
    // Declared before the VM so that, on every path, the VM goes first and the RAM after it.
    let mem: GuestMemory;
    let kvm = open()?;
    let vm = kvm.create_vm().context("KVM_CREATE_VM")?;
    // SAFETY: `mem` is declared before `vm`, so it is dropped after it.
    mem = unsafe { guest_ram(&vm, &guest_code(workload, count)) }?;
    let mut vcpu = real_mode_vcpu(&vm, Some(MMIO_ADDR))?;

    let mut report = RunReport::default();
    let start = Instant::now();
    let mut returned: Option<Instant> = None;
    loop {
        if let Some(t) = returned.take() {
            report.vmm_time += t.elapsed();
        }
        let exit = vcpu.run().context("KVM_RUN")?;
        returned = Some(Instant::now());
        match exit {
            VcpuExit::IoOut(DONE_PORT, _) => break,
            VcpuExit::IoOut(..) => report.pio_exits += 1,
            VcpuExit::MmioWrite(..) | VcpuExit::MmioRead(..) => report.mmio_exits += 1,
            VcpuExit::Hlt => report.hlt_exits += 1,
            e @ (VcpuExit::FailEntry(..) | VcpuExit::InternalError | VcpuExit::Shutdown) => {
                return Err(failed(&e));
            }
            _ => report.other_exits += 1,
        }
        if report.other_exits > 1000 {
            bail!("the micro-VM keeps exiting for unexpected reasons; giving up");
        }
    }
    report.wall = start.elapsed();
    drop(vcpu);
    drop(vm);
    drop(mem);
    Ok(report)
}

pub(crate) fn open() -> Result<Kvm> {
    Kvm::new().context("opening /dev/kvm (is KVM available and are you root?)")
}

/// Guest RAM of [`MEM_SIZE`] with `code` at [`CODE_ADDR`], registered as `vm`'s slot 0.
///
/// # Safety
/// The caller drops `vm` before the returned memory.
pub(crate) unsafe fn guest_ram(vm: &VmFd, code: &[u8]) -> Result<GuestMemory> {
    let mem = GuestMemory::new(MEM_SIZE)?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: mem.ptr as u64,
        flags: 0,
    };
    // SAFETY: MEM_SIZE bytes, and the caller keeps them mapped while the VM lives.
    unsafe { vm.set_user_memory_region(region) }.context("KVM_SET_USER_MEMORY_REGION")?;
    mem.write(CODE_ADDR as usize, code)?;
    Ok(mem)
}

/// vCPU 0 in real mode at [`CODE_ADDR`]; `ds`, the data segment's base when the guest stores.
pub(crate) fn real_mode_vcpu(vm: &VmFd, ds: Option<u64>) -> Result<VcpuFd> {
    let vcpu = vm.create_vcpu(0).context("KVM_CREATE_VCPU")?;
    let mut sregs = vcpu.get_sregs().context("KVM_GET_SREGS")?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    if let Some(base) = ds {
        sregs.ds.base = base;
        sregs.ds.selector = (base >> 4) as u16;
    }
    vcpu.set_sregs(&sregs).context("KVM_SET_SREGS")?;
    let mut regs = vcpu.get_regs().context("KVM_GET_REGS")?;
    regs.rip = CODE_ADDR;
    regs.rflags = 2;
    vcpu.set_regs(&regs).context("KVM_SET_REGS")?;
    Ok(vcpu)
}

/// The error for an exit that ends a micro-VM (it could not enter, or it broke).
pub(crate) fn failed(exit: &VcpuExit) -> anyhow::Error {
    match exit {
        VcpuExit::FailEntry(reason, cpu) => {
            anyhow::anyhow!("KVM could not enter the guest (reason {reason:#x} on cpu {cpu})")
        }
        VcpuExit::InternalError => anyhow::anyhow!("KVM internal error running the micro-VM"),
        VcpuExit::Shutdown => anyhow::anyhow!("the micro-VM shut down (triple fault)"),
        other => anyhow::anyhow!("the micro-VM exited unexpectedly: {other:?}"),
    }
}

/// Anonymous memory handed to KVM as guest RAM.
pub(crate) struct GuestMemory {
    pub(crate) ptr: *mut u8,
    len: usize,
}

impl GuestMemory {
    pub(crate) fn new(len: usize) -> Result<Self> {
        // SAFETY: a fresh anonymous mapping; checked for MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_ANONYMOUS | libc::MAP_SHARED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!("mmap of guest memory: {}", std::io::Error::last_os_error());
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }

    pub(crate) fn write(&self, at: usize, bytes: &[u8]) -> Result<()> {
        if at + bytes.len() > self.len {
            bail!("micro-VM guest code does not fit its memory");
        }
        // SAFETY: in bounds (checked) of a mapping we own.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(at), bytes.len()) }
        Ok(())
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_jumps_back_to_its_body() {
        for w in [
            Workload::Pio,
            Workload::Mmio,
            Workload::Hlt,
            Workload::Cpuid,
        ] {
            let code = guest_code(w, 7);
            let jnz = code.iter().position(|&b| b == 0x75).unwrap();
            let target = (jnz as isize + 2) + (code[jnz + 1] as i8) as isize;
            // The loop starts right after the counter set-up (and the port set-up for pio).
            let body_start = if w == Workload::Pio { 9 } else { 6 };
            assert_eq!(target, body_start, "{w:?}");
            assert_eq!(&code[2..6], &7u32.to_le_bytes());
        }
    }
}
