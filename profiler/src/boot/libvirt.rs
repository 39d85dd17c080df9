//! `--vm libvirt`: the `--vm qemu` guest as a transient libvirt domain, so the boot shows what
//! libvirt itself adds: connecting to libvirtd, preparing the domain and spawning QEMU (the
//! exec is stamped in the kernel by the exec tracer), QEMU's start under libvirt's control, then
//! the same console-marked guest phases as `--vm qemu`, and QEMU's exit (a pidfd).

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use virt::{connect::Connect, domain::Domain};

use super::{
    Boot, Booted, artefacts,
    console::{Console, READY, kill_reason},
    qemu::{self, Accel},
    serial::LineSplitter,
};
use crate::{
    cleanup::Owner,
    probes::exec::SharedExecs,
    startup::{Laps, ns, phases},
};

pub use crate::cleanup::libvirt::URI;
use crate::cleanup::libvirt::{LOG_DIR, RUN_DIR, SOCKET};
/// How long a destroyed domain's QEMU may take to go.
const DESTROY_GRACE: Duration = Duration::from_secs(30);

/// The libvirt-side phases; the guest's follow from [`qemu::PHASES`] (firmware on).
pub const PHASES: [(&str, &str); 5] = [
    (
        "connect",
        "virConnectOpen to libvirtd (the first connection after libvirtd starts also waits for its QEMU capability probe)",
    ),
    (
        "libvirt_prepare",
        "virDomainCreateXML to the exec of qemu-system-x86_64 (libvirtd parses the XML, sets up cgroups, labels and logs, forks QEMU)",
    ),
    (
        "qemu_init",
        "QEMU's exec to its first vCPU thread (`CPU 0/KVM|TCG`, task_rename): QEMU builds the machine, paused",
    ),
    (
        "qemu_qmp",
        "the vCPU thread to virDomainCreateXML's return (libvirtd configures the paused QEMU over QMP and resumes it)",
    ),
    (
        "firmware_start",
        "virDomainCreateXML's return (the vCPU resumed) to the firmware's first serial byte",
    ),
];

/// After QEMU's exit.
pub const CLEANUP: (&str, &str) = (
    "libvirt_cleanup",
    "QEMU's exit to libvirtd reporting the domain gone (it reaps QEMU, tears down its cgroup, labels and monitor)",
);

/// Phase names in order: libvirt's, the guest's from `qemu::PHASES[1..]`, libvirt's cleanup.
pub fn names() -> Vec<&'static str> {
    PHASES
        .iter()
        .chain(qemu::PHASES[1..].iter())
        .chain(std::iter::once(&CLEANUP))
        .map(|(n, _)| *n)
        .collect()
}

pub fn describe(name: &str) -> &'static str {
    if name == "shutdown" {
        return "poweroff -f to QEMU's exit (the domain is destroyed on power-off)";
    }
    PHASES
        .iter()
        .chain(qemu::PHASES.iter())
        .chain(std::iter::once(&CLEANUP))
        .find(|(n, _)| *n == name)
        .map_or("", |(_, w)| *w)
}

fn domain_name(owner: &Owner, index: u32) -> String {
    crate::cleanup::owner::name(owner, index)
}

/// The owner a domain name carries, if it is one of ours.
pub fn owner_of(name: &str) -> Option<Owner> {
    crate::cleanup::owner::of_name(name)
}

pub(crate) fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// A transient domain: direct kernel boot, the console on a file, no network, no disks. ACPI
/// is on, or the guest's `poweroff -f` only halts it and the domain never ends.
pub(crate) struct DomainSpec<'a> {
    pub name: &'a str,
    /// libvirt's domain type: `kvm`, or `qemu` (TCG).
    pub kind: &'a str,
    pub description: &'a str,
    pub memory_kib: u64,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub console: &'a Path,
    /// SeaBIOS writes to the serial port, so the firmware's phase is marked.
    pub bios_on_serial: bool,
}

impl DomainSpec<'_> {
    pub fn xml(&self) -> String {
        let e = |p: &Path| xml_escape(&p.to_string_lossy());
        format!(
            "<domain type='{kind}'>
  <name>{name}</name>
  <description>{description}</description>
  <memory unit='KiB'>{kib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>{bios}
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/{emulator}</emulator>
    <serial type='file'><source path='{console}'/><target port='0'/></serial>
  </devices>
</domain>
",
            kind = self.kind,
            name = self.name,
            description = xml_escape(self.description),
            kib = self.memory_kib,
            kernel = e(self.kernel),
            initrd = e(self.initrd),
            cmdline = xml_escape(qemu::APPEND),
            bios = if self.bios_on_serial {
                "\n    <bios useserial='yes'/>"
            } else {
                ""
            },
            emulator = qemu::QEMU,
            console = e(self.console),
        )
    }
}

/// `boot --vm libvirt`'s guest: `--vm qemu`'s kernel, initramfs and command line in 256 MiB.
pub fn domain_xml(name: &str, accel: Accel, a: &artefacts::Artefacts, console: &Path) -> String {
    DomainSpec {
        name,
        kind: match accel {
            Accel::Kvm => "kvm",
            Accel::Tcg => "qemu",
        },
        description: "profiler boot --vm libvirt",
        memory_kib: 256 * 1024,
        kernel: &a.kernel,
        initrd: &a.initramfs,
        console,
        bios_on_serial: true,
    }
    .xml()
}

pub(crate) fn connect() -> Result<Connect> {
    // The file outlives a killed libvirtd: ask whether anyone answers.
    if std::os::unix::net::UnixStream::connect(SOCKET).is_err() {
        bail!(
            "libvirtd is not running (nothing answers on {SOCKET}): start it with `virtlogd -d && libvirtd -d` (or `systemctl start libvirtd`)"
        );
    }
    Connect::open(Some(URI)).map_err(|e| anyhow::anyhow!("connecting to {URI}: {}", e.message()))
}

/// Destroys running domains whose owner is gone (a `kill -9` of an earlier run).
pub fn reap_stale(conn: &Connect) {
    crate::cleanup::libvirt::reap(conn);
}

/// Owns one running domain and its console file: destroyed and removed on drop and on a
/// signal (through `cleanup::on_signal`).
struct DomainGuard {
    name: String,
    console: PathBuf,
    domain: Option<Domain>,
}

impl DomainGuard {
    fn new(name: String, console: PathBuf) -> Self {
        let (n, c) = (name.clone(), console.clone());
        crate::cleanup::on_signal(&format!("libvirt:{name}"), move || {
            if let Ok(conn) = Connect::open(Some(URI))
                && let Ok(d) = Domain::lookup_by_name(&conn, &n)
            {
                let _ = d.destroy();
            }
            let _ = std::fs::remove_file(&c);
            let _ = std::fs::remove_file(log_path(&n));
        });
        Self {
            name,
            console,
            domain: None,
        }
    }
}

impl Drop for DomainGuard {
    fn drop(&mut self) {
        if let Some(d) = &self.domain
            && d.is_active().unwrap_or(false)
        {
            let _ = d.destroy();
        }
        let _ = std::fs::remove_file(&self.console);
        let _ = std::fs::remove_file(log_path(&self.name));
        crate::cleanup::forget(&format!("libvirt:{}", self.name));
    }
}

fn log_path(name: &str) -> PathBuf {
    Path::new(LOG_DIR).join(format!("{name}.log"))
}

/// QEMU's last words in libvirtd's log of the domain (read before the guard removes it).
fn last_log_line(name: &str) -> Option<String> {
    let log = std::fs::read_to_string(log_path(name)).ok()?;
    log.lines()
        .rev()
        .find(|l| l.contains("qemu-system") || l.contains("error"))
        .map(|l| l.trim().to_string())
}

/// QEMU's pid from libvirt's pid file.
fn qemu_pid(name: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/run/libvirt/qemu/{name}.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// QEMU execs other than the domain's own (`pid`) between `from` and `to` (offsets from
/// `t0_mono`): libvirtd probing QEMU's capabilities.
fn capability_probes(
    events: &[crate::probes::exec::Exec],
    pid: u32,
    t0_mono: u64,
    from: Duration,
    to: Duration,
) -> usize {
    let (from, to) = (t0_mono + ns(from), t0_mono + ns(to));
    events
        .iter()
        .filter(|e| {
            !e.renamed
                && e.pid != pid
                && e.comm.starts_with("qemu-system")
                && (from..to).contains(&e.ts)
        })
        .count()
}

/// A pidfd for `pid`, or None when it is already gone.
fn pidfd(pid: u32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: plain syscall; a non-negative return is a new descriptor we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: see above.
    (fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

fn exited(fd: &std::os::fd::OwnedFd) -> bool {
    use std::os::fd::AsRawFd as _;
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    unsafe { libc::poll(&mut p, 1, 0) > 0 }
}

fn boot(
    index: u32,
    a: &artefacts::Artefacts,
    accel: Accel,
    timeout: Duration,
    execs: Option<&SharedExecs>,
) -> Result<Boot> {
    let name = domain_name(&Owner::me(), index);
    std::fs::create_dir_all(RUN_DIR).with_context(|| format!("creating {RUN_DIR}"))?;
    let console = Path::new(RUN_DIR).join(format!("{name}.console"));
    let mut guard = DomainGuard::new(name.clone(), console.clone());
    std::fs::File::create(&console).with_context(|| format!("creating {}", console.display()))?;
    let xml = domain_xml(&name, accel, a, &console);

    let t0 = Instant::now();
    let t0_mono = crate::kernel::monotonic_ns();
    // Marks: connect, QEMU's exec, its vCPU thread, create returned, then the console's six
    // up to ready.
    let mut early: [Option<Duration>; 4] = [None; 4];
    let mut error = None;
    let conn = match connect() {
        Ok(c) => Some(c),
        Err(e) => {
            error = Some(format!("{e:#}"));
            None
        }
    };
    early[0] = Some(t0.elapsed());
    let mut console_lines = Console::new(false);
    let mut end = t0.elapsed();
    let mut qemu_exit = None;
    let mut notes = Vec::new();
    let mut ready = false;
    if let Some(conn) = &conn {
        match Domain::create_xml(conn, &xml, 0) {
            Ok(d) => {
                early[3] = Some(t0.elapsed());
                guard.domain = Some(d);
            }
            Err(e) => {
                error = Some(format!(
                    "creating domain {name}: {}{}",
                    e.message(),
                    last_log_line(&name).map_or(String::new(), |l| format!(" (QEMU: {l})"))
                ))
            }
        }
    }
    if guard.domain.is_some() {
        let pid = qemu_pid(&name);
        let fd = pid.and_then(pidfd);
        let mut file = std::fs::File::open(&console)
            .with_context(|| format!("opening {}", console.display()))?;
        let mut split = LineSplitter::new();
        let mut buf = [0u8; 8192];
        let mut killed: Option<String> = None;
        let mut killed_at: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let gone = match (&fd, &guard.domain) {
                (Some(fd), _) => exited(fd),
                (None, Some(d)) => !d.is_active().unwrap_or(false),
                (None, None) => true,
            };
            // Drain the console first: QEMU wrote all of it before it exited.
            loop {
                let n = file.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                for (t, l) in split.feed(&buf[..n], now) {
                    console_lines.line(t, l);
                }
            }
            if gone {
                if let Some((t, l)) = split.finish() {
                    console_lines.line(t, l);
                }
                qemu_exit = Some(now.saturating_duration_since(t0));
                break;
            }
            let why = kill_reason(now - t0, timeout, &console_lines.marks, false, "QEMU");
            if let Some((why, _)) = why {
                match killed_at {
                    None => {
                        if let Some(d) = &guard.domain {
                            let _ = d.destroy();
                        }
                        killed = Some(why);
                        killed_at = Some(now);
                    }
                    // QEMU did not go: stop waiting, and name the domain for the user.
                    Some(at) if now - at >= DESTROY_GRACE => {
                        killed = Some(format!(
                            "{}; the domain did not stop within {} s of virDomainDestroy: `virsh destroy {name}`",
                            killed.take().unwrap_or(why),
                            DESTROY_GRACE.as_secs()
                        ));
                        qemu_exit = Some(now.saturating_duration_since(t0));
                        break;
                    }
                    Some(_) => {}
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if let (Some(pid), Some(execs)) = (pid, execs) {
            let seen = execs.seen();
            let [exec, vcpu] = qemu::vmm_marks(&seen, pid, t0_mono);
            (early[1], early[2]) = (exec, vcpu);
            if let (Some(from), Some(to)) = (early[0], exec) {
                let probes = capability_probes(&seen, pid, t0_mono, from, to);
                if probes > 0 {
                    notes.push(format!(
                        "libvirtd ran QEMU {probes} more times while preparing this domain: capability probes, \
                         because its cache did not match (commonly: the QEMU user, libvirt-qemu, cannot open /dev/kvm)"
                    ));
                }
            }
        }
        // libvirtd's side of the exit: until it reports the domain inactive (or gone).
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Some(d) = &guard.domain
            && d.is_active().unwrap_or(false)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        end = t0.elapsed();
        ready = console_lines.ready() && killed.is_none();
        error = killed.or_else(|| {
            (!ready).then(|| {
                format!(
                    "QEMU exited before the guest was ready{}",
                    last_log_line(&name).map_or(String::new(), |l| format!(": {l}"))
                )
            })
        });
    }
    let offsets: Vec<Option<Duration>> = early
        .iter()
        .copied()
        .chain(console_lines.offsets(t0, READY + 1))
        .chain(std::iter::once(qemu_exit))
        .collect();
    if let Some(mut c) = conn {
        let _ = c.close();
    }
    let last = offsets.iter().flatten().max().copied().unwrap_or_default();
    let end = end.max(last);
    Ok(Boot {
        index,
        accelerator: accel.name().into(),
        phases: phases(&names(), &offsets, end, ready),
        total_ns: ns(end),
        ready,
        error,
        exit_code: None,
        console_tail: console_lines.tail(ready),
        guest_clock: console_lines.marks.guest,
        exits_by_phase: Vec::new(),
        notes,
    })
}

pub fn run(args: &super::BootArgs, laps: &mut Laps) -> Result<Booted> {
    let (count, choice, probe_again) = (args.count, args.accel, args.probe_again);
    let timeout = Duration::from_secs_f64(args.timeout);
    virt::error::clear_error_callback();
    let artefacts = artefacts::prepare()?;
    laps.lap(artefacts.lap_name());
    {
        let mut conn = connect()?;
        reap_stale(&conn);
        let _ = conn.close();
    }
    // One exec tracer for all boots: QEMU's exec and vCPU thread, stamped in the kernel.
    let execs = SharedExecs::start().ok();
    laps.lap("connect, reap, exec tracer");
    // The same choice as `--vm qemu` (a KVM probe under auto): domain type 'kvm' or 'qemu'.
    let (accel, reason, kvm_probe) = qemu::choose(choice, probe_again, &artefacts, timeout, None)?;
    if kvm_probe.is_some() {
        laps.lap("kvm probe (plain qemu)");
    }
    let boots = super::all_at_once(count, |i| {
        boot(i, &artefacts, accel, timeout, execs.as_ref())
    })?;
    Ok(Booted::vm(
        laps,
        execs,
        (accel, reason),
        kvm_probe,
        boots,
        artefacts,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_probes_are_other_qemus_before_the_domains() {
        use crate::probes::exec::Exec;
        let ev = |ts: u64, pid: u32, comm: &str| Exec {
            ts,
            pid,
            comm: comm.into(),
            renamed: false,
        };
        let events = [
            ev(1_500, 11, "qemu-system-x86"),
            ev(2_500, 12, "qemu-system-x86"),
            ev(2_600, 13, "dmidecode"),
            ev(3_000, 7, "qemu-system-x86"),  // the domain's own
            ev(9_000, 14, "qemu-system-x86"), // after: another boot's
        ];
        let d = Duration::from_nanos;
        assert_eq!(capability_probes(&events, 7, 1_000, d(0), d(2_000)), 2);
        assert_eq!(capability_probes(&events, 7, 1_000, d(1_000), d(2_000)), 1);
    }

    #[test]
    fn domain_names_carry_their_owner() {
        let o = Owner { pid: 42, start: 7 };
        let n = domain_name(&o, 3);
        assert_eq!(n, "profiler-42-7-3");
        assert_eq!(owner_of(&n), Some(o));
        assert_eq!(owner_of("profiler-42-7"), None);
        assert_eq!(owner_of("profiler-42-7-3-x"), None);
        assert_eq!(owner_of("debian12"), None);
    }

    #[test]
    fn phase_names_follow_libvirt_then_the_guest() {
        let n = names();
        assert_eq!(
            n,
            [
                "connect",
                "libvirt_prepare",
                "qemu_init",
                "qemu_qmp",
                "firmware_start",
                "firmware",
                "kernel_load",
                "kernel_decompress",
                "kernel_boot",
                "init",
                "shutdown",
                "libvirt_cleanup"
            ]
        );
        assert!(n.iter().all(|p| !describe(p).is_empty()));
    }

    #[test]
    fn the_domain_powers_off_and_escapes_paths() {
        let a = artefacts::Artefacts {
            dir: "/c".into(),
            kernel: "/c/vmlinuz".into(),
            kernel_package: "k".into(),
            initramfs: "/c/a&b.cpio".into(),
            busybox_from: String::new(),
            built: false,
        };
        let x = domain_xml("profiler-1-2-0", Accel::Tcg, &a, Path::new("/r/c"));
        assert!(x.starts_with("<domain type='qemu'>"));
        assert!(x.contains("<acpi/>") && x.contains("<on_poweroff>destroy</on_poweroff>"));
        assert!(x.contains("<initrd>/c/a&amp;b.cpio</initrd>"));
        assert!(
            domain_xml("n", Accel::Kvm, &a, Path::new("/r/c")).starts_with("<domain type='kvm'>")
        );
    }
}
