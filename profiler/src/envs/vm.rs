//! `run --env vm`: the workload in a qemu guest that carries this binary (the `boot --vm qemu`
//! kernel, an initramfs per workload), its result read off the serial console.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use serde::Serialize;

use crate::startup::Laps;

/// How a workload's VM went: what ran before it, its phases from qemu's spawn to its exit
/// (start-up up to `init`, the run in `workload`), and its KVM exits.
#[derive(Debug, Serialize)]
pub struct VmRun {
    /// `shutdown` includes printing the result on the console.
    pub phases: Vec<crate::startup::Phase>,
    /// qemu's spawn to its exit: the sum of `phases`.
    pub total_ns: u64,
    /// The guest kernel's clock (s) at its markers.
    pub guest_clock: std::collections::BTreeMap<String, f64>,
    pub memory_mb: u64,
    pub smp: u32,
    pub initramfs_bytes: u64,
    /// KVM exits of qemu's threads while it ran; null under TCG.
    pub vm_exits: Option<crate::kvm::report::KvmReport>,
    pub notes: Vec<String>,
}

/// The accelerator for workload VMs, chosen once per process (density starts many); auto
/// probes KVM with the stock guest.
pub(super) fn vm_accelerator(
    a: &crate::boot::artefacts::Artefacts,
    timeout: Duration,
    choice: crate::boot::AccelChoice,
) -> Result<(crate::boot::qemu::Accel, String, bool)> {
    use crate::boot::AccelChoice;
    type Chosen = (AccelChoice, crate::boot::qemu::Accel, String);
    static CHOSEN: std::sync::Mutex<Option<Chosen>> = std::sync::Mutex::new(None);
    let mut chosen = CHOSEN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((asked, accel, why)) = chosen.as_ref()
        && *asked == choice
    {
        return Ok((*accel, why.clone(), false));
    }
    let (accel, mut why, probe) = crate::boot::qemu::choose(choice, false, a, timeout, None)?;
    if choice != AccelChoice::Auto {
        why = format!("--accel {}", accel.name());
    }
    if !crate::cleanup::stop_requested() {
        *chosen = Some((choice, accel, why.clone()));
    }
    Ok((accel, why, probe.is_some()))
}

/// `--threads N` of the workload: the guest's vCPUs (1 without it), at most the host's CPUs.
pub fn vm_smp(args: &[String]) -> u32 {
    let threads = args.iter().enumerate().find_map(|(i, a)| match a.as_str() {
        "--threads" => args.get(i + 1).and_then(|v| v.parse::<u32>().ok()),
        _ => a.strip_prefix("--threads=").and_then(|v| v.parse().ok()),
    });
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    threads.unwrap_or(1).clamp(1, cpus.max(1))
}

/// Guest memory: the kernel and user space, plus the initramfs twice (the image qemu loads and
/// the files it unpacks to).
pub fn vm_memory_mb(initramfs_bytes: u64) -> u64 {
    (256 + 2 * initramfs_bytes.div_ceil(1 << 20)).max(512)
}

/// The workload in a qemu guest that carries this binary: boots it, reads the result off the
/// serial console, and returns the workload's stdout with how the VM went.
pub(super) fn vm(
    args: &[String],
    timeout: Duration,
    laps: &mut Laps,
    watch: &mut dyn FnMut(u32),
    accel: crate::boot::AccelChoice,
) -> Result<(String, (crate::boot::qemu::Accel, String, VmRun))> {
    use crate::boot::{artefacts, qemu};
    crate::kernel::require_root("profiler run --env vm")?;
    // Ctrl-C: the boot loop sees it, kills qemu, and the temp initramfs goes with this frame.
    crate::cleanup::set_interruptible();
    let a = artefacts::prepare()?;
    laps.lap("artefacts");
    let image = shared_image(&a, args)?;
    laps.lap("workload initramfs");
    let (accel, reason, probed) = vm_accelerator(&a, timeout, accel)?;
    if probed {
        laps.lap("kvm probe");
    }
    if crate::cleanup::stop_requested() {
        bail!("{} before the VM started", crate::cleanup::interrupted());
    }
    let guest = qemu::Guest {
        kernel: &a.kernel,
        initramfs: &image.path,
        memory_mb: vm_memory_mb(image.bytes),
        smp: vm_smp(args),
        append: "",
        workload: true,
        cpu_max: false,
        tap: None,
        icount: false,
    };
    let mut notes = Vec::new();
    if image.stripped {
        notes.push("this program went into the guest without its debug sections (objcopy)".into());
    }
    let mut kvm: Option<(crate::probes::kvm::KvmTracer, u32, Instant)> = None;
    let mut kvm_error = None;
    let run = qemu::run_guest(&guest, accel, timeout, &mut |pid| {
        watch(pid);
        if accel == qemu::Accel::Kvm {
            let filter = crate::probes::kvm::Filter {
                tgid: pid,
                ..Default::default()
            };
            match crate::probes::kvm::KvmTracer::start(filter) {
                Ok(t) => kvm = Some((t, pid, Instant::now())),
                Err(e) => kvm_error = Some(format!("{e:#}")),
            }
        }
    })?;
    laps.instances();
    let vm_exits = match kvm {
        Some((mut t, pid, since)) => {
            let seconds = since.elapsed().as_secs_f64();
            t.detach()?;
            let ctx = crate::kvm::report::Context {
                backend: crate::kernel::kvm_backend(),
                pid: Some(pid),
                seconds,
                attached: t.attached.clone(),
            };
            notes.push(
                "KVM exits from the tracer's attach (after qemu's spawn) to qemu's exit".into(),
            );
            Some(crate::kvm::report::build(&t.read()?, &ctx))
        }
        None => {
            notes.push(match (accel, kvm_error) {
                (qemu::Accel::Tcg, _) => "TCG: no KVM exits".to_string(),
                (qemu::Accel::Kvm, Some(e)) => format!("KVM exit tracer: {e}"),
                (qemu::Accel::Kvm, None) => "KVM exit tracer not started".to_string(),
            });
            None
        }
    };
    laps.lap("vm exits read");
    let b = &run.boot;
    if !b.ready || b.error.is_some() {
        let why = b.error.as_deref().unwrap_or("not ready");
        let last = b
            .console_tail
            .last()
            .map(|l| format!(" (console: {l})"))
            .unwrap_or_default();
        if run.timed_out || crate::cleanup::stop_requested() {
            bail!("the workload's VM ({}) was killed: {why}", accel.name());
        }
        bail!("the workload's VM ({}) failed: {why}{last}", accel.name());
    }
    let out = artefacts::parse_guest_output(&run.console);
    match out.exit {
        Some(0) => {}
        Some(code) => {
            let err = out
                .stderr
                .as_deref()
                .and_then(|e| e.lines().map(str::trim).find(|l| !l.is_empty()))
                .unwrap_or("no stderr");
            bail!("the workload failed in the VM (exit status {code}): {err}");
        }
        None => bail!(
            "the workload's VM printed no exit status (console: {})",
            run.console.last().map_or("empty", String::as_str)
        ),
    }
    let stdout = out
        .stdout
        .ok_or_else(|| anyhow!("the workload's VM printed no result block"))?;
    let vm = VmRun {
        phases: b.phases.clone(),
        total_ns: b.total_ns,
        guest_clock: b.guest_clock.clone(),
        memory_mb: guest.memory_mb,
        smp: guest.smp,
        initramfs_bytes: image.bytes,
        vm_exits,
        notes,
    };
    drop(image);
    laps.lap("initramfs released");
    Ok((stdout, (accel, reason, vm)))
}

/// What a command printed in a stock-kernel guest (`run --env vm --kernel`), and how it ended.
#[derive(Debug)]
pub struct StockRun {
    pub stdout: String,
    pub stderr: String,
    pub exit: i32,
    /// The kernel's package (or path).
    pub kernel: String,
    pub accel: crate::boot::qemu::Accel,
    /// qemu's spawn to its exit.
    pub total_ns: u64,
    pub notes: Vec<String>,
}

/// A stock guest's NIC: virtio-net on `tap` (a tap device in the lab namespace `netns`, on a
/// lab bridge), addressed `addr/prefix` in the guest before its command runs.
pub struct GuestNet {
    pub netns: String,
    pub tap: String,
    pub addr: std::net::Ipv4Addr,
    pub prefix: u8,
}

/// The console line of a guest whose NIC could not be set up.
const NET_FAILED: &str = "PROFILER_GUEST_NET_FAILED";

/// Any profiler command (`args`) in a guest on a stock kernel: its modules (what the command
/// needs, plus `modules`) and the lab's tools go in its initramfs; `-cpu max` so KVM loads
/// in it. The command's failure is its exit status, not an error here; a guest that does not
/// boot or prints no status is. With `net`, the guest has a NIC on a lab's tap.
pub fn stock(
    kernel: &crate::boot::stock::KernelChoice,
    args: &[String],
    modules: &[String],
    timeout: Duration,
    accel: crate::boot::AccelChoice,
    net: Option<&GuestNet>,
    icount: bool,
) -> Result<StockRun> {
    use crate::boot::{artefacts, qemu, stock};
    crate::kernel::require_root("profiler run --env vm --kernel")?;
    crate::cleanup::set_interruptible();
    let a = artefacts::prepare()?;
    let k = stock::kernel(kernel)?;
    let mut needed = stock::modules_for(args);
    for m in modules {
        if !needed.iter().any(|n| n == m) {
            needed.push(m.as_str());
        }
    }
    if net.is_some() {
        // Both modules on Debian's cloud kernels; virtio_net does not depend on the PCI transport.
        needed.extend(["virtio_pci", "virtio_net"]);
    }
    let mut extra = stock::extra(&k, &needed)?;
    if let Some(n) = net {
        // The kernel names the only NIC eth0 (no udev in the guest); its probe may trail insmod.
        extra.init.push_str(&format!(
            "for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /sys/class/net/eth0 ] && break; $bb sleep 0.2; done\n\
             {{ ip link set eth0 up && ip addr add {}/{} dev eth0; }} || echo {NET_FAILED}\n",
            n.addr, n.prefix
        ));
    }
    let image = artefacts::workload_initramfs_with(&a, args, Some(&extra))?;
    let (accel, _, _) = vm_accelerator(&a, timeout, accel)?;
    if crate::cleanup::stop_requested() {
        bail!("{} before the VM started", crate::cleanup::interrupted());
    }
    let guest = qemu::Guest {
        kernel: &k.vmlinuz,
        initramfs: &image.path,
        memory_mb: vm_memory_mb(image.bytes).max(1024),
        smp: vm_smp(args),
        append: "",
        workload: true,
        cpu_max: true,
        tap: net.map(|n| n.tap.as_str()),
        icount,
    };
    let run = match net {
        // qemu opens the tap in its own namespace: spawned from a thread in the lab's.
        Some(n) => std::thread::scope(|s| {
            s.spawn(|| {
                crate::lab::netns::enter(&n.netns)?;
                qemu::run_guest(&guest, accel, timeout, &mut |_| {})
            })
            .join()
            .map_err(|_| anyhow!("the guest's thread panicked"))?
        })?,
        None => qemu::run_guest(&guest, accel, timeout, &mut |_| {})?,
    };
    drop(image);
    let mut notes = extra.notes;
    if icount && accel == qemu::Accel::Tcg {
        notes.push(
            "the guest's clock was QEMU's instruction counter (--icount): 1 ns an instruction, \
             idle time skipped"
                .into(),
        );
    }
    for l in &run.console {
        if l.contains(NET_FAILED) {
            notes.push("the guest could not set up its NIC (eth0)".into());
        }
        if let Some(at) = l.find(stock::INSMOD_FAILED) {
            notes.push(format!(
                "the guest could not load {}",
                l[at + stock::INSMOD_FAILED.len()..].trim()
            ));
        }
    }
    let b = &run.boot;
    let out = artefacts::parse_guest_output(&run.console);
    let Some(exit) = out.exit else {
        let why = b.error.as_deref().unwrap_or("no exit status printed");
        let tail = run
            .console
            .iter()
            .rev()
            .take(3)
            .rev()
            .cloned()
            .collect::<Vec<_>>();
        if run.timed_out || crate::cleanup::stop_requested() {
            bail!("the {} guest ({}) was killed: {why}", k.label, accel.name());
        }
        bail!(
            "the {} guest ({}) failed: {why} (console: {})",
            k.label,
            accel.name(),
            tail.join(" | ")
        );
    };
    Ok(StockRun {
        stdout: out.stdout.unwrap_or_default(),
        stderr: out.stderr.unwrap_or_default(),
        exit,
        kernel: k.label.clone(),
        accel,
        total_ns: b.total_ns,
        notes,
    })
}

/// The workload's initramfs, shared by the instances that run the same arguments at once
/// (density): built once, removed when the last of them lets go of it.
fn shared_image(
    a: &crate::boot::artefacts::Artefacts,
    args: &[String],
) -> Result<std::sync::Arc<crate::boot::artefacts::WorkloadImage>> {
    use std::sync::{Arc, Mutex, Weak};
    type Last = Option<(Vec<String>, Weak<crate::boot::artefacts::WorkloadImage>)>;
    static LAST: Mutex<Last> = Mutex::new(None);
    // Held while building: the other instances wait for this one image.
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((built_for, image)) = last.as_ref()
        && built_for == args
        && let Some(image) = image.upgrade()
    {
        return Ok(image);
    }
    let image = Arc::new(crate::boot::artefacts::workload_initramfs(a, args)?);
    *last = Some((args.to_vec(), Arc::downgrade(&image)));
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn smp_follows_threads_capped_at_the_host() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        assert_eq!(vm_smp(&args(&["sysbench", "cpu", "--time", "1"])), 1);
        assert_eq!(vm_smp(&args(&["sysbench", "cpu", "--threads", "1"])), 1);
        assert_eq!(
            vm_smp(&args(&["sysbench", "cpu", "--threads=2"])),
            2.min(cpus)
        );
        assert_eq!(
            vm_smp(&args(&["sysbench", "cpu", "--threads", "999"])),
            cpus
        );
        assert_eq!(vm_smp(&args(&["sysbench", "cpu", "--threads", "0"])), 1);
        assert_eq!(vm_smp(&args(&["sysbench", "cpu", "--threads", "x"])), 1);
        assert_eq!(vm_smp(&args(&["sysbench", "cpu", "--threads"])), 1);
    }

    #[test]
    fn memory_grows_with_the_initramfs() {
        assert_eq!(vm_memory_mb(0), 512);
        assert_eq!(vm_memory_mb(35 << 20), 512);
        assert_eq!(vm_memory_mb(135 << 20), 526);
        assert_eq!(vm_memory_mb((135 << 20) + 1), 528);
    }
}
