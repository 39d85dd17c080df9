//! `--vm micro`: the stages of bringing up the built-in micro-VM (the guest of
//! [`crate::kvm::microvm`]: a real-mode loop of port writes, then a write to its done port),
//! timed around each KVM ioctl. The first port write is the guest's first exit; the done port
//! is its "ready".

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use kvm_ioctls::VcpuExit;

use super::{Boot, Booted};
use crate::kvm::microvm::{self, Workload};
use crate::startup::{Laps, ns, phases};

pub const PHASES: [(&str, &str); 6] = [
    ("kvm_create_vm", "open /dev/kvm and KVM_CREATE_VM"),
    (
        "memory",
        "mmap guest RAM, KVM_SET_USER_MEMORY_REGION, copy the guest code",
    ),
    (
        "vcpu_setup",
        "KVM_CREATE_VCPU and real-mode segment and register setup",
    ),
    (
        "first_exit",
        "first KVM_RUN to the guest's first exit (its first port write)",
    ),
    (
        "guest_work",
        "the guest's loop of port writes to its write to the done port (ready)",
    ),
    (
        "teardown",
        "closing the vCPU and VM descriptors, unmapping guest RAM",
    ),
];

/// Port writes the guest makes before it is "ready".
const GUEST_OUTS: u32 = 16;
use crate::kvm::microvm::GuestMemory as GuestRam;

/// One micro-VM; `marks[i]` is when phase i ended.
fn boot(index: u32, deadline: Instant) -> Boot {
    let t0 = Instant::now();
    let mut marks: Vec<Instant> = Vec::new();
    let result = stages(&mut marks, deadline);
    let end = Instant::now();
    let offsets: Vec<Option<Duration>> = (0..PHASES.len() - 1)
        .map(|i| marks.get(i).map(|t| *t - t0))
        .collect();
    let names: Vec<&str> = PHASES.iter().map(|(n, _)| *n).collect();
    let ready = result.is_ok();
    Boot {
        index,
        accelerator: "kvm".into(),
        phases: phases(&names, &offsets, end - t0, ready),
        total_ns: ns(end - t0),
        ready,
        error: result.err().map(|e| format!("{e:#}")),
        ..Default::default()
    }
}

fn stages(marks: &mut Vec<Instant>, deadline: Instant) -> Result<()> {
    // Declared before the VM so that, on every path, the VM goes first and the RAM after it.
    let ram: GuestRam;
    let kvm = microvm::open()?;
    let vm = kvm.create_vm().context("KVM_CREATE_VM")?;
    marks.push(Instant::now());

    // SAFETY: `ram` is declared before `vm`, so it is dropped after it.
    ram = unsafe { microvm::guest_ram(&vm, &microvm::guest_code(Workload::Pio, GUEST_OUTS)) }?;
    marks.push(Instant::now());

    let mut vcpu = microvm::real_mode_vcpu(&vm, None)?;
    marks.push(Instant::now());

    let mut outs = 0u32;
    loop {
        let exit = vcpu.run().context("KVM_RUN")?;
        let now = Instant::now();
        match exit {
            VcpuExit::IoOut(microvm::DONE_PORT, _) => {
                if outs == 0 {
                    marks.push(now);
                }
                marks.push(now);
                break;
            }
            VcpuExit::IoOut(microvm::PIO_PORT, _) => {
                if outs == 0 {
                    marks.push(now);
                }
                outs += 1;
            }
            other => return Err(microvm::failed(&other)),
        }
        if now >= deadline {
            bail!("the micro-VM was not ready before the timeout");
        }
        if crate::cleanup::stop_requested() {
            bail!("{}", crate::cleanup::interrupted());
        }
    }
    if outs != GUEST_OUTS {
        bail!("the micro-VM made {outs} port writes, expected {GUEST_OUTS}");
    }
    drop(vcpu);
    drop(vm);
    drop(ram);
    drop(kvm);
    Ok(())
}

pub fn run(count: u32, timeout: Duration, laps: &mut Laps) -> Result<Booted> {
    let deadline = Instant::now() + timeout;
    let boots = super::all_at_once(count, |i| Ok(boot(i, deadline)))?;
    laps.instances();
    Ok(Booted {
        accelerator: "kvm".into(),
        accelerator_reason: "the micro-VM always runs on /dev/kvm".into(),
        boots,
        ..Default::default()
    })
}
