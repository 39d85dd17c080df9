//! Whether a request fits this machine, checked before anything starts: N instances of
//! something (VMs, containers, workload threads) against the memory the kernel says is
//! available, the tasks the kernel will still create (pid_max, threads-max, RLIMIT_NPROC) and,
//! for VMs, the CPUs. A request that cannot fit is one line saying what fits; `--force` skips
//! the check (as Docker refuses what cannot fit unless told otherwise).

use anyhow::{Result, bail};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// vCPUs that may run at once per host CPU: past this, boots only time out.
pub const VCPUS_PER_CPU: u64 = 16;
/// QEMU's own memory next to the guest's (its RSS with a 256 MiB TCG guest is ~60 MiB here).
pub const QEMU_OVERHEAD: u64 = 64 * MIB;
/// Threads of one qemu-system-x86_64 (main, RCU, vCPUs, I/O workers), and the 4 of ours
/// that follow each boot (boot, console and stderr readers, waiter).
pub const QEMU_TASKS: u64 = 8 + 4;

/// What this machine has left, read from the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Machine {
    pub cpus: u64,
    /// MemAvailable, bytes.
    pub mem_available: u64,
    /// Tasks (threads) that can still be created.
    pub tasks_free: u64,
}

impl Machine {
    pub fn now() -> Machine {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_available = mem_available(&meminfo).unwrap_or(u64::MAX);
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
        };
        let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let running = tasks_now(&loadavg).unwrap_or(0);
        let mut limit = read("/proc/sys/kernel/pid_max")
            .unwrap_or(u64::MAX)
            .min(read("/proc/sys/kernel/threads-max").unwrap_or(u64::MAX));
        // The kernel does not hold root to RLIMIT_NPROC.
        if !nix::unistd::geteuid().is_root() {
            let mut r = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit fills the struct it is given.
            if unsafe { libc::getrlimit(libc::RLIMIT_NPROC, &mut r) } == 0 {
                limit = limit.min(r.rlim_cur);
            }
        }
        Machine {
            cpus,
            mem_available,
            tasks_free: limit.saturating_sub(running),
        }
    }
}

/// MemAvailable from /proc/meminfo, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The tasks that exist now: the 4th field of /proc/loadavg, "running/total".
fn tasks_now(loadavg: &str) -> Option<u64> {
    loadavg
        .split_whitespace()
        .nth(3)?
        .split_once('/')?
        .1
        .parse()
        .ok()
}

/// What one instance of a request takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Each {
    /// What an instance is, for the message: "VM", "container", "instance".
    pub what: &'static str,
    /// Bytes it needs resident.
    pub memory: u64,
    /// Tasks (processes and threads, ours and its own).
    pub tasks: u64,
    /// vCPUs, for VMs (0: not held to the CPU count).
    pub vcpus: u64,
}

impl Each {
    /// One qemu guest of `guest_mb` MiB and `smp` vCPUs.
    pub fn qemu(guest_mb: u64, smp: u64) -> Each {
        Each {
            what: "VM",
            memory: guest_mb * MIB + QEMU_OVERHEAD,
            tasks: QEMU_TASKS + smp,
            vcpus: smp,
        }
    }

    /// One built-in micro-VM: a thread and 16 KiB of guest memory (KVM's own structures are
    /// the bulk).
    pub fn micro_vm() -> Each {
        Each {
            what: "VM",
            memory: MIB,
            tasks: 1,
            vcpus: 0,
        }
    }

    /// One native container of `boot --container native`: our thread and the payload.
    pub fn native_container() -> Each {
        Each {
            what: "container",
            memory: 16 * MIB,
            tasks: 3,
            vcpus: 0,
        }
    }

    /// One Docker container: containerd-shim's threads and the payload.
    pub fn docker_container() -> Each {
        Each {
            what: "container",
            memory: 32 * MIB,
            tasks: 12,
            vcpus: 0,
        }
    }

    /// One workload process (this binary) with `threads` threads using `memory` bytes, in an
    /// environment that costs `env` more (a container's or VM's own).
    pub fn workload(threads: u64, memory: u64, env: Each) -> Each {
        Each {
            what: "instance",
            // The process itself, its threads' stacks touched lightly.
            memory: 16 * MIB + memory + env.memory,
            // Ours per instance: its thread and the waiter; the process's signal thread.
            tasks: 3 + threads + env.tasks,
            vcpus: env.vcpus,
        }
    }

    /// Nothing beyond the workload (the host).
    pub const NONE: Each = Each {
        what: "instance",
        memory: 0,
        tasks: 0,
        vcpus: 0,
    };
}

/// How many instances of `each` fit: the tightest of memory (90% of what is available, the
/// rest for the host), tasks (less 256 for everything else) and vCPUs.
pub fn most(m: &Machine, each: &Each) -> u64 {
    let memory = (m.mem_available / 10 * 9)
        .checked_div(each.memory)
        .unwrap_or(u64::MAX);
    let tasks = m
        .tasks_free
        .saturating_sub(256)
        .checked_div(each.tasks)
        .unwrap_or(u64::MAX);
    let cpus = (m.cpus * VCPUS_PER_CPU)
        .checked_div(each.vcpus)
        .unwrap_or(u64::MAX);
    memory.min(tasks).min(cpus)
}

/// Refuses `n` instances of `each` that do not fit `m`, in one line naming the request
/// (`asked`, e.g. "--count 100000"), the tightest bound it passes and what fits.
pub fn check(m: &Machine, asked: &str, n: u64, each: &Each) -> Result<()> {
    let fit = most(m, each);
    if n <= fit {
        return Ok(());
    }
    let memory = (m.mem_available / 10 * 9)
        .checked_div(each.memory)
        .unwrap_or(u64::MAX);
    let cpus = (m.cpus * VCPUS_PER_CPU)
        .checked_div(each.vcpus)
        .unwrap_or(u64::MAX);
    let why = if fit == memory {
        format!(
            "needs {} of memory ({} per {}); this machine has {} available",
            size(n.saturating_mul(each.memory)),
            size(each.memory),
            each.what,
            size(m.mem_available)
        )
    } else if fit == cpus {
        format!(
            "needs {} vCPUs; this machine has {} CPUs (at most {VCPUS_PER_CPU} vCPUs each)",
            n.saturating_mul(each.vcpus),
            m.cpus
        )
    } else {
        format!(
            "needs {} tasks ({} per {}); the kernel allows {} more (pid_max, threads-max, RLIMIT_NPROC)",
            n.saturating_mul(each.tasks),
            each.tasks,
            each.what,
            m.tasks_free
        )
    };
    if n == 1 {
        bail!("{asked} {why}: ask for less, or pass --force");
    }
    bail!("{asked} {why}: at most {fit} fit, or pass --force")
}

/// The check against this machine now, unless `force`.
pub fn require(force: bool, asked: &str, n: u64, each: &Each) -> Result<()> {
    if force {
        return Ok(());
    }
    check(&Machine::now(), asked, n, each)
}

/// Bytes for a message: GiB from 1 GiB up, else MiB.
pub fn size(b: u64) -> String {
    if b >= GIB {
        let g = b as f64 / GIB as f64;
        if g >= 100.0 {
            format!("{g:.0} GiB")
        } else {
            format!("{g:.1} GiB")
        }
    } else {
        format!("{} MiB", b.div_ceil(MIB))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HERE: Machine = Machine {
        cpus: 2,
        mem_available: 22 * GIB,
        tasks_free: 32_000,
    };

    #[test]
    fn reads_meminfo_and_loadavg() {
        let meminfo = "MemTotal:       24683584 kB\nMemAvailable:   24222052 kB\n";
        assert_eq!(mem_available(meminfo), Some(24_222_052 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(tasks_now("0.52 0.58 0.59 2/312 12345\n"), Some(312));
        assert_eq!(tasks_now("garbage"), None);
        let m = Machine::now();
        assert!(
            m.cpus >= 1 && m.mem_available > 0 && m.tasks_free > 0,
            "{m:?}"
        );
    }

    #[test]
    fn memory_bounds_many_vms() {
        let vm = Each::qemu(256, 1);
        let many_cpus = Machine { cpus: 64, ..HERE };
        // 90% of 22 GiB over 320 MiB each.
        assert_eq!(most(&many_cpus, &vm), 63);
        assert!(check(&many_cpus, "--count 63", 63, &vm).is_ok());
        let e = check(&many_cpus, "--count 100000", 100_000, &vm)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "--count 100000 needs 31250 GiB of memory (320 MiB per VM); this machine has \
             22.0 GiB available: at most 63 fit, or pass --force"
        );
        assert_eq!(e.lines().count(), 1);
        // On 2 CPUs the vCPUs bind first, and the line names them.
        assert_eq!(most(&HERE, &vm), 32);
        let e = check(&HERE, "--count 33", 33, &vm).unwrap_err().to_string();
        assert!(
            e.starts_with("--count 33 needs 33 vCPUs; this machine has 2 CPUs"),
            "{e}"
        );
    }

    #[test]
    fn vcpus_bound_vms_where_memory_does_not() {
        let big = Machine {
            mem_available: 1 << 50,
            ..HERE
        };
        let vm = Each::qemu(256, 2);
        assert_eq!(most(&big, &vm), 16);
        let e = check(&big, "--count 17", 17, &vm).unwrap_err().to_string();
        assert!(e.contains("needs 34 vCPUs; this machine has 2 CPUs"), "{e}");
        assert!(e.ends_with("at most 16 fit, or pass --force"), "{e}");
    }

    #[test]
    fn tasks_bound_what_needs_no_memory() {
        let threads = Each {
            what: "instance",
            memory: 0,
            tasks: 100,
            vcpus: 0,
        };
        assert_eq!(most(&HERE, &threads), 317);
        let e = check(&HERE, "--instances 400", 400, &threads)
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs 40000 tasks (100 per instance)"), "{e}");
        assert!(e.contains("at most 317 fit"), "{e}");
        let none = Machine {
            tasks_free: 10,
            ..HERE
        };
        assert_eq!(most(&none, &threads), 0);
    }

    #[test]
    fn one_run_too_big_says_so() {
        let w = Each::workload(1, 30 * GIB, Each::NONE);
        let e = check(&HERE, "--memory-block-size 30G", 1, &w)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "--memory-block-size 30G needs 30.0 GiB of memory (30.0 GiB per instance); this \
             machine has 22.0 GiB available: ask for less, or pass --force"
        );
    }

    #[test]
    fn force_skips_the_check() {
        assert!(require(true, "--count 100000000", 100_000_000, &Each::qemu(256, 1)).is_ok());
        assert!(require(false, "--count 100000000", 100_000_000, &Each::qemu(256, 1)).is_err());
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(size(320 * MIB), "320 MiB");
        assert_eq!(size(22 * GIB), "22.0 GiB");
        assert_eq!(size(30518 * GIB), "30518 GiB");
        assert_eq!(size(1), "1 MiB");
    }
}
