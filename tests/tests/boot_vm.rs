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

/// Our qemu processes (by the cache dir on their command line) still alive.
fn our_qemus() -> Vec<String> {
    let cache = boot::artefacts::cache_dir();
    let cache = cache.to_string_lossy();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(boot::qemu::QEMU) && c.contains(cache.as_ref()))
        .collect()
}

fn boot(vm: Vm, count: u32) -> (BootReport, Duration) {
    let args = BootArgs {
        vm: Some(vm),
        count,
        timeout: 120.0,
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
    (r, wall)
}

fn sum(r: &BootReport) -> u64 {
    let setup: u64 = r.setup.iter().map(|p| p.ns).sum();
    setup + r.phase_sum_ns(0)
}

#[test]
fn qemu_boot_has_every_phase_and_adds_up() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_tools();
    // Warm the cache, so the measured run's setup is the cache check and the KVM probe only.
    let _ = boot(Vm::Qemu, 1);
    let (r, wall) = boot(Vm::Qemu, 1);
    assert_eq!(r.boots.len(), 1);
    let b = &r.boots[0];
    let names: Vec<&str> = b.phases.iter().map(|p| p.name.as_str()).collect();
    let want: Vec<&str> = boot::qemu::PHASES.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, want, "a marker was missed: {b:#?}");
    for p in &b.phases {
        assert!(
            p.complete && p.ns > 0,
            "phase {} not positive: {p:?}",
            p.name
        );
    }
    assert_eq!(r.phase_sum_ns(0), b.total_ns);
    // The report accounts for the whole call: setup (cache, KVM probe) + the boot's phases.
    let wall_ns = wall.as_nanos() as f64;
    let off = (sum(&r) as f64 - wall_ns).abs() / wall_ns;
    assert!(
        off < 0.05,
        "phases add up to {} ns, the test measured {} ns ({:.1}% apart)",
        sum(&r),
        wall_ns,
        off * 100.0
    );
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
    assert!(r.setup.iter().any(|p| p.name == "artefacts (cached)"));
}

#[test]
fn qemu_count_two_reports_two_boots() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_tools();
    let (r, _) = boot(Vm::Qemu, 2);
    assert_eq!(r.boots.len(), 2);
    assert!(r.boots.iter().all(|b| b.ready));
    let total = r.summary.iter().find(|s| s.name == "total").expect("total");
    assert_eq!(total.count, 2);
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
    let r = boot::run(&args).expect("a timed-out boot is a report");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    boot::print(&r);
    assert!(!r.ok);
    assert!(
        r.error
            .as_deref()
            .unwrap_or("")
            .contains("not ready within"),
        "{:?}",
        r.error
    );
    let b = &r.boots[0];
    assert!(!b.ready);
    assert!(!b.phases.last().expect("a phase").complete);
    assert_eq!(b.phases.iter().map(|p| p.ns).sum::<u64>(), b.total_ns);
    assert!(
        our_qemus().is_empty(),
        "qemu left running: {:?}",
        our_qemus()
    );
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
    assert_eq!(e.to_string(), "profiler boot needs --vm qemu|micro");
}
