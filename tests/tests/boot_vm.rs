//! `profiler boot`: real VMs, real timings. Needs qemu-system-x86 and busybox-static installed
//! and Debian's kernel package downloadable (apt); without them these tests fail, loudly.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use profiler::boot::{self, BootArgs, BootReport, Vm};
use profiler_tests::require_root;

/// One boot at a time: the timings are the test's subject, and the /proc check must not see
/// another test's VM.
static SERIAL: Mutex<()> = Mutex::new(());

fn require_tools() {
    require_root();
    let qemu = std::process::Command::new(boot::qemu::QEMU)
        .arg("--version")
        .output();
    assert!(
        qemu.is_ok_and(|o| o.status.success()),
        "{} is missing: `apt-get install qemu-system-x86` (cargo xtask setup)",
        boot::qemu::QEMU
    );
    let static_busybox =
        std::fs::read("/bin/busybox").is_ok_and(|b| boot::artefacts::is_static_x86_64(&b));
    assert!(
        static_busybox,
        "/bin/busybox is missing or not static: `apt-get install busybox-static` (cargo xtask setup)"
    );
}

/// Our qemu processes (by the cache dir on their command line; `migrate`'s VMs, named
/// `profiler-migrate`, are another command's) still alive.
fn our_qemus() -> Vec<String> {
    let cache = boot::artefacts::cache_dir();
    let cache = cache.to_string_lossy();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(boot::qemu::QEMU) && c.contains(cache.as_ref()))
        .filter(|c| !c.contains("-name profiler-migrate"))
        .collect()
}

fn boot(vm: Vm, count: u32) -> (BootReport, Duration) {
    boot_with(vm, count, false)
}

/// `probe_again`: `--accel auto` probes KVM even when the last probe's answer is kept.
fn boot_with(vm: Vm, count: u32, probe_again: bool) -> (BootReport, Duration) {
    let args = BootArgs {
        vm: Some(vm),
        count,
        timeout: 120.0,
        probe_again,
        ..Default::default()
    };
    let t = Instant::now();
    let r = boot::run(&args).unwrap_or_else(|e| panic!("profiler boot --vm {vm:?}: {e:#}"));
    let wall = t.elapsed();
    boot::print(&r);
    assert!(r.ok, "boot failed: {:?}", r.error);
    assert!(
        our_qemus().is_empty(),
        "qemu left running: {:?}",
        our_qemus()
    );
    assert!(
        our_domains().is_empty(),
        "libvirt domains left: {:?}",
        our_domains()
    );
    (r, wall)
}

/// A boot killed at its time limit: a failed report (not an error), its phases so far adding
/// up to its total.
fn timed_out(args: &BootArgs) -> BootReport {
    let r = boot::run(args).expect("a timed-out boot is a report");
    boot::print(&r);
    assert!(!r.ok);
    let error = r.error.as_deref().unwrap_or("");
    assert!(error.contains("not ready within"), "{error}");
    let b = &r.boots[0];
    assert!(!b.ready);
    assert_eq!(b.phases.iter().map(|p| p.ns).sum::<u64>(), b.total_ns);
    r
}

/// libvirtd must be running (`cargo xtask test` starts it); without it the libvirt tests fail.
fn require_libvirtd() {
    require_tools();
    assert!(
        std::path::Path::new("/run/libvirt/libvirt-sock").exists(),
        "libvirtd is not running: `cargo xtask test` starts it (virtlogd -d && libvirtd -d)"
    );
}

/// Running libvirt domains this tool names as its own.
fn our_domains() -> Vec<String> {
    let out = std::process::Command::new("virsh")
        .args(["-c", "qemu:///system", "list", "--name"])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.starts_with("profiler-"))
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

fn console_files() -> Vec<String> {
    std::fs::read_dir("/run/profiler/libvirt")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Setup, the one boot's phases and teardown: the whole run.
fn sum(r: &BootReport) -> u64 {
    r.wall.setup_ns() + r.phase_sum_ns(0) + r.wall.teardown_ns()
}

/// One boot: every phase in `want` seen, complete and positive, adding up to the boot's total;
/// setup and phases account for the wall clock the test measured around the call within 5%.
fn assert_every_phase_adds_up(r: &BootReport, wall: Duration, want: &[&str]) {
    let b = &r.boots[0];
    let names: Vec<&str> = b.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, want, "a marker was missed: {b:#?}");
    for p in &b.phases {
        assert!(
            p.complete && p.ns > 0,
            "phase {} not positive: {p:?}",
            p.name
        );
    }
    assert_eq!(r.phase_sum_ns(0), b.total_ns);
    let wall_ns = wall.as_nanos() as f64;
    let off = (sum(r) as f64 - wall_ns).abs() / wall_ns;
    assert!(
        off < 0.05,
        "phases add up to {} ns, the test measured {} ns ({:.1}% apart)",
        sum(r),
        wall_ns,
        off * 100.0
    );
}

#[test]
fn qemu_boot_has_every_phase_and_adds_up() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_tools();
    // Warm the cache, so the measured run's setup is the cache check and the KVM probe only
    // (probed again: its exits are read below, and a kept answer would skip it).
    let _ = boot(Vm::Qemu, 1);
    let (r, wall) = boot_with(Vm::Qemu, 1, true);
    assert_eq!(r.boots.len(), 1);
    let b = &r.boots[0];
    // QEMU's exec and vCPU thread from the exec tracer, then the console's marks.
    assert_every_phase_adds_up(&r, wall, &boot::qemu::names(true, false));
    assert!(
        ["kvm", "tcg"].contains(&r.accelerator.as_str()),
        "{}",
        r.accelerator
    );
    assert!(!r.accelerator_reason.is_empty());
    assert!(
        b.guest_clock.contains_key("init") && b.guest_clock.contains_key("ready"),
        "{:?}",
        b.guest_clock
    );
    assert!(r.wall.setup.iter().any(|p| p.name == "artefacts (cached)"));
    // Where KVM ran the guest (the probe, or the boot itself when the probe was it): its
    // exits per phase; SeaBIOS's banner alone is port writes to the serial port.
    if std::path::Path::new("/dev/kvm").exists() {
        let on_kvm = r.kvm_probe.as_ref().unwrap_or(b);
        let e = &on_kvm.exits_by_phase;
        assert_eq!(e.len(), on_kvm.phases.len(), "{e:#?}");
        let firmware = e.iter().find(|p| p.phase == "firmware").expect("firmware");
        assert!(
            firmware.exits.get("kvm_pio out").is_some_and(|&n| n > 0),
            "{firmware:?}"
        );
    }
}

#[test]
fn a_warm_auto_boot_uses_the_kept_probe_answer_until_its_key_changes() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_tools();
    let kept = |r: &BootReport| r.accelerator_reason.contains("kept in");
    let probed = |r: &BootReport| {
        r.kvm_probe.is_some() || r.wall.setup.iter().any(|l| l.name == "kvm probe")
            // One VM that KVM booted: the probe was the boot.
            || (r.accelerator == "kvm" && !kept(r))
    };
    let (fresh, _) = boot_with(Vm::Qemu, 1, true);
    assert!(
        probed(&fresh) && !kept(&fresh),
        "{}",
        fresh.accelerator_reason
    );
    let (warm, _) = boot(Vm::Qemu, 1);
    assert!(
        kept(&warm),
        "not the kept answer: {}",
        warm.accelerator_reason
    );
    assert!(warm.kvm_probe.is_none());
    assert!(
        !warm.wall.setup.iter().any(|l| l.name == "kvm probe"),
        "{:?}",
        warm.wall.setup
    );
    assert_eq!(warm.accelerator, fresh.accelerator);
    // Another kernel build (as after an upgrade): the kept answer no longer applies.
    let file = boot::probe_cache::path();
    let mut entry: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("the kept answer")).unwrap();
    assert_eq!(
        entry["key"],
        serde_json::to_value(boot::probe_cache::Key::now()).unwrap()
    );
    entry["key"]["kernel"] = "6.18.0 #1 SMP another build".into();
    std::fs::write(&file, serde_json::to_vec(&entry).unwrap()).unwrap();
    let (again, _) = boot(Vm::Qemu, 1);
    assert!(
        probed(&again) && !kept(&again),
        "{}",
        again.accelerator_reason
    );
    let rewritten: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(
        rewritten["key"],
        serde_json::to_value(boot::probe_cache::Key::now()).unwrap()
    );
}

#[test]
fn qemu_count_four_reports_four_boots() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_tools();
    let (r, _) = boot(Vm::Qemu, 4);
    assert_eq!(r.boots.len(), 4);
    assert!(r.boots.iter().all(|b| b.ready));
    let total = r.summary.iter().find(|s| s.name == "total").expect("total");
    assert_eq!(total.count, 4);
    assert!(total.min_ns <= total.p50_ns && total.p50_ns <= total.max_ns);
    for b in &r.boots {
        assert_eq!(b.phases.iter().map(|p| p.ns).sum::<u64>(), b.total_ns);
    }
}

#[test]
fn qemu_timeout_kills_and_reports_the_phases_so_far() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_tools();
    let args = BootArgs {
        vm: Some(Vm::Qemu),
        timeout: 0.3,
        accel: boot::AccelChoice::Tcg,
        ..Default::default()
    };
    let t = Instant::now();
    let r = timed_out(&args);
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    let b = &r.boots[0];
    assert!(!b.phases.last().expect("a phase").complete);
    assert!(
        our_qemus().is_empty(),
        "qemu left running: {:?}",
        our_qemus()
    );
}

#[test]
fn libvirt_boot_has_every_phase_and_adds_up() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_libvirtd();
    let _ = boot(Vm::Libvirt, 1);
    let (r, wall) = boot(Vm::Libvirt, 1);
    assert_every_phase_adds_up(&r, wall, &boot::libvirt::names());
    // With /dev/kvm open to libvirt's QEMU user (setup), libvirtd's capability cache holds: no
    // QEMU re-probes inside the create (they cost 44 s per boot here when it did not).
    assert!(r.boots[0].notes.is_empty(), "{:?}", r.boots[0].notes);
    assert!(console_files().is_empty(), "{:?}", console_files());
}

#[test]
fn libvirt_count_two_boots_two_domains_at_once() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_libvirtd();
    let args = BootArgs {
        vm: Some(Vm::Libvirt),
        count: 2,
        timeout: 120.0,
        accel: boot::AccelChoice::Tcg,
        ..Default::default()
    };
    let r = boot::run(&args).unwrap_or_else(|e| panic!("profiler boot --vm libvirt: {e:#}"));
    boot::print(&r);
    assert!(r.ok, "{:?}", r.error);
    assert_eq!(r.boots.len(), 2);
    for b in &r.boots {
        let names: Vec<&str> = b.phases.iter().map(|p| p.name.as_str()).collect();
        // Both find their own QEMU's exec and vCPU thread in the one shared exec tracer.
        assert_eq!(names, boot::libvirt::names(), "{b:#?}");
        assert_eq!(b.phases.iter().map(|p| p.ns).sum::<u64>(), b.total_ns);
    }
    let total = r.summary.iter().find(|s| s.name == "total").expect("total");
    assert_eq!(total.count, 2);
    assert!(our_domains().is_empty(), "{:?}", our_domains());
    assert!(console_files().is_empty(), "{:?}", console_files());
}

#[test]
fn libvirt_timeout_destroys_the_domain_and_reports_the_phases_so_far() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_libvirtd();
    let args = BootArgs {
        vm: Some(Vm::Libvirt),
        // Before any guest could be ready, even on KVM (and before the KVM probe's end).
        timeout: 0.3,
        ..Default::default()
    };
    let r = timed_out(&args);
    let b = &r.boots[0];
    assert_eq!(b.phases[0].name, "connect");
    assert!(b.phases.iter().any(|p| !p.complete), "{:#?}", b.phases);
    assert_eq!(b.phases.iter().map(|p| p.ns).sum::<u64>(), b.total_ns);
    assert!(our_domains().is_empty(), "{:?}", our_domains());
    assert!(console_files().is_empty(), "{:?}", console_files());
}

#[test]
fn libvirt_domain_left_by_kill_9_is_destroyed_by_the_next_run() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_libvirtd();
    let mut child = profiler_tests::profiler()
        .args([
            "boot",
            "--vm",
            "libvirt",
            "--accel",
            "tcg",
            "--timeout",
            "120",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawning profiler");
    // Killed while libvirtd is still starting the domain, the start is aborted with us; so
    // wait until the guest runs (its console has output).
    let t = Instant::now();
    while !console_files()
        .iter()
        .any(|f| std::fs::metadata(format!("/run/profiler/libvirt/{f}")).is_ok_and(|m| m.len() > 0))
    {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no guest console output"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Paused, the guest cannot power off (and its domain go) before the next run looks.
    let name = our_domains().pop().expect("the domain");
    let paused = std::process::Command::new("virsh")
        .args(["-c", "qemu:///system", "suspend", &name])
        .output()
        .expect("virsh");
    assert!(paused.status.success(), "{paused:?}");
    child.kill().expect("kill -9");
    child.wait().expect("reaping");
    // QEMU is libvirtd's child, so the domain outlives us; the next run reaps it.
    let left = our_domains();
    assert_eq!(left.len(), 1, "{left:?}");
    let out = profiler_tests::run_ok(
        profiler_tests::profiler().args(["boot", "--vm", "libvirt", "--accel", "tcg"]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("destroyed libvirt domain {}", left[0])),
        "{stderr}"
    );
    assert!(our_domains().is_empty(), "{:?}", our_domains());
    assert!(console_files().is_empty(), "{:?}", console_files());
    let log = format!("/var/log/libvirt/qemu/{}.log", left[0]);
    assert!(!std::path::Path::new(&log).exists(), "{log} left");
}

#[test]
fn micro_vm_boots_in_phases() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root();
    let (r, _) = boot(Vm::Micro, 3);
    assert_eq!(r.boots.len(), 3);
    let want: Vec<&str> = boot::micro::PHASES.iter().map(|(n, _)| *n).collect();
    for b in &r.boots {
        let names: Vec<&str> = b.phases.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, want);
        assert!(b.phases.iter().all(|p| p.complete && p.ns > 0), "{b:#?}");
        assert_eq!(b.phases.iter().map(|p| p.ns).sum::<u64>(), b.total_ns);
    }
    assert_eq!(r.accelerator, "kvm");
}

#[test]
fn vm_is_required() {
    let e = boot::run(&BootArgs::default()).unwrap_err();
    assert_eq!(e.to_string(), "profiler boot needs --vm qemu|libvirt|micro");
}

#[test]
fn a_boot_that_cannot_fit_is_refused_in_one_line_with_nothing_started() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_tools();
    // Anything a refused run started and left comes here (not to init) once it exits.
    profiler_tests::become_subreaper();
    let me = std::process::id();
    let cgroups = profiler_tests::profiler_cgroups();
    for (args, needle) in [
        (
            &["boot", "--vm", "qemu", "--count", "100000"][..],
            "--count 100000 needs",
        ),
        (
            &["boot", "--vm", "libvirt", "--count", "100000"][..],
            "--count 100000 needs",
        ),
        (
            &["boot", "--container", "docker", "--count", "100000"][..],
            "--count 100000 needs",
        ),
    ] {
        let err = profiler_tests::assert_refused_in_one_line(args, needle);
        assert!(err.contains("fit, or pass --force"), "{err}");
        let qemus = profiler_tests::live_children(&[me], boot::qemu::QEMU);
        assert!(qemus.is_empty(), "{args:?} started qemu: {qemus:?}");
        assert_eq!(
            profiler_tests::profiler_cgroups(),
            cgroups,
            "{args:?} made a cgroup"
        );
    }
}

/// Temp files of process `pid` in the artefacts cache (`tmp-<pid>-<start>-...` and
/// `<file>.tmp-<pid>-<start>`: initramfs copies and files being written).
fn cache_temps(pid: u32) -> Vec<String> {
    let (dir, file) = (format!("tmp-{pid}-"), format!(".tmp-{pid}-"));
    std::fs::read_dir(boot::artefacts::cache_dir())
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&dir) || n.contains(&file))
                .collect()
        })
        .unwrap_or_default()
}

/// Spawns `profiler boot --vm qemu --count N ARGS`, stderr kept.
fn spawn_boot(count: u32, extra: &[&str]) -> std::process::Child {
    profiler_tests::profiler()
        .args(["boot", "--vm", "qemu", "--count", &count.to_string()])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawning profiler")
}

/// Waits for `child` at most `limit`; None if it is still running then (it is killed).
fn wait_at_most(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn sigterm_mid_boot_tears_everything_down_within_10_s() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_tools();
    // Warm the cache: the signal must land in the boots (auto: the KVM probe or the boots).
    boot::artefacts::prepare().expect("the guest's artefacts");
    // A qemu it leaves comes here, not to init: none can hide.
    profiler_tests::become_subreaper();
    let me = std::process::id();
    // Auto probes again: the signal can land in the probe as before the answer was kept.
    for extra in [&["--probe-again"][..], &["--accel", "tcg"][..]] {
        let mut child = spawn_boot(4, extra);
        let pid = child.id();
        let qemus = || profiler_tests::live_children(&[pid, me], boot::qemu::QEMU);
        std::thread::sleep(Duration::from_secs(2));
        assert!(!qemus().is_empty(), "{extra:?}: no qemu running 2 s in");
        let t = Instant::now();
        profiler_tests::signal(child.id(), libc::SIGTERM);
        let status = wait_at_most(&mut child, Duration::from_secs(10));
        let took = t.elapsed();
        let status =
            status.unwrap_or_else(|| panic!("{extra:?}: still running 10 s after SIGTERM"));
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        eprintln!(
            "{extra:?}: exited {status} {took:?} after SIGTERM: {}",
            err.trim()
        );
        assert_eq!(status.code(), Some(143), "{extra:?}: {err}");
        assert!(err.contains("interrupted"), "{extra:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(qemus().is_empty(), "{extra:?}: qemu left: {:?}", qemus());
        profiler_tests::reap_orphans();
        assert!(
            cache_temps(pid).is_empty(),
            "{extra:?}: temp files left: {:?}",
            cache_temps(pid)
        );
    }
}

#[test]
fn kill_9_of_the_parent_leaves_no_qemu_alive_within_1_s() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_tools();
    boot::artefacts::prepare().expect("the guest's artefacts");
    // A qemu the kill orphans comes here, not to init: none can hide.
    profiler_tests::become_subreaper();
    let me = std::process::id();
    // In the KVM probe, right after a spawn and in the boots (auto here: probe, then TCG).
    for at in [300, 600, 1000, 2000, 3000] {
        let mut child = spawn_boot(2, &["--probe-again"]);
        std::thread::sleep(Duration::from_millis(at));
        let parents = [child.id(), me];
        let alive = profiler_tests::live_children(&parents, boot::qemu::QEMU).len();
        child.kill().expect("kill -9");
        let t = Instant::now();
        // Not waiting for the profiler first: its own exit (BPF teardown) takes ~0.8 s here,
        // while its qemu is dead (a zombie) at once.
        loop {
            let left = profiler_tests::live_children(&parents, boot::qemu::QEMU);
            if left.is_empty() {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "kill -9 at {at} ms: qemu alive {:?} after: {left:?}",
                t.elapsed()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let gone = t.elapsed();
        child.wait().expect("reaping");
        profiler_tests::reap_orphans();
        eprintln!(
            "kill -9 at {at} ms: {alive} qemu alive, gone after {gone:?}, the profiler after {:?}",
            t.elapsed()
        );
        let pid = parents[0];
        assert!(
            cache_temps(pid).is_empty(),
            "temp files left: {:?}",
            cache_temps(pid)
        );
    }
}

#[test]
fn bad_boot_input_is_one_line_naming_the_option() {
    require_root();
    let count = "'--count <N>': expected a whole number of at least 1";
    let secs = "'--timeout <SECS>': expected seconds greater than 0";
    for (args, needle) in [
        (&["boot", "--vm", "qemu", "--count", "0"][..], count),
        (&["boot", "--vm", "qemu", "--count", "-1"][..], count),
        (&["boot", "--vm", "micro", "--count", "x"][..], count),
        (
            &["boot", "--container", "native", "--count", "0"][..],
            count,
        ),
        (&["boot", "--vm", "qemu", "--timeout", "0"][..], secs),
        (&["boot", "--vm", "libvirt", "--timeout", "-5"][..], secs),
        (
            &["boot", "--container", "docker", "--timeout", "0"][..],
            secs,
        ),
        (
            &["boot", "--container", "native", "--timeout", "nan"][..],
            secs,
        ),
        (
            &["boot", "--container", "native", "--count", "201"][..],
            "--count must be 1 to 200, not 201",
        ),
        (&["boot", "--count", "2"][..], "say what to boot"),
    ] {
        profiler_tests::assert_refused_in_one_line(args, needle);
    }
}

/// A pids cgroup (v1's pids controller, else cgroup v2 with pids enabled) holding at most
/// `max` tasks, removed on drop.
struct PidsLimit(std::path::PathBuf);

impl PidsLimit {
    fn new(max: u32) -> Self {
        let name = format!("pftest-pids-{}", std::process::id());
        let v1 = std::path::Path::new("/sys/fs/cgroup/pids");
        let parent = if v1.join("pids.max").exists() || v1.join("cgroup.procs").exists() {
            v1.to_path_buf()
        } else {
            let root = profiler::container::cgroup::root().expect("cgroup v2");
            let controllers = std::fs::read_to_string(root.join("cgroup.subtree_control"));
            assert!(
                controllers.is_ok_and(|c| c.contains("pids")),
                "no pids controller to limit tasks with (v1 /sys/fs/cgroup/pids or v2 +pids)"
            );
            root
        };
        let dir = parent.join(name);
        std::fs::create_dir(&dir).expect("creating the pids cgroup");
        std::fs::write(dir.join("pids.max"), max.to_string()).expect("pids.max");
        PidsLimit(dir)
    }

    /// `profiler ARGS` run inside the limit.
    fn profiler(&self, args: &[&str]) -> std::process::Output {
        let procs = self.0.join("cgroup.procs");
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {} && exec \"$0\" \"$@\"",
                procs.display()
            ))
            .arg(profiler_tests::profiler_path())
            .args(args)
            .output()
            .expect("sh")
    }
}

impl Drop for PidsLimit {
    fn drop(&mut self) {
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn a_thread_or_qemu_that_cannot_start_is_one_line_not_a_panic() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_tools();
    boot::artefacts::prepare().expect("the guest's artefacts");
    let limit = PidsLimit::new(8);
    for (args, needle) in [
        (
            &["boot", "--vm", "micro", "--count", "20"][..],
            "starting a thread (boot-",
        ),
        (
            &["boot", "--vm", "qemu", "--count", "3", "--accel", "tcg"][..],
            "Resource temporarily unavailable",
        ),
    ] {
        let out = limit.profiler(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        // Everything it started (a qemu, say) was in the cgroup: nothing is left there.
        let procs = std::fs::read_to_string(limit.0.join("cgroup.procs")).unwrap();
        assert!(procs.trim().is_empty(), "{args:?} left processes: {procs}");
    }
}
