//! `profiler kvm`: the tracer's counts of the micro-VM's exits are exact. The micro-VM runs in
//! this process and the tracer follows only the calling thread, so tests may run in parallel.

use profiler::kvm::{
    cli::{self, KvmArgs},
    microvm::{DONE_PORT, PIO_PORT, Workload},
    report::KvmReport,
};
use profiler_tests::require_root;

const N: u32 = 10_000;

fn micro_vm(w: Workload, count: u32) -> KvmReport {
    require_root();
    let r = cli::micro_vm(w, count, false).unwrap_or_else(|e| panic!("micro-VM {w:?}: {e:#}"));
    // Shown with --nocapture.
    profiler::kvm::report::print(&r);
    r
}

fn returns(r: &KvmReport, reason: &str) -> (u64, u64) {
    r.run
        .by_reason
        .iter()
        .find(|x| x.name == reason)
        .map_or((0, 0), |x| (x.returns, x.in_kvm.count))
}

fn port(r: &KvmReport, port: u16) -> u64 {
    r.events
        .kvm_pio_ports
        .iter()
        .filter(|p| p.port == port && p.out)
        .map(|p| p.count)
        .sum()
}

#[test]
fn pio_exits_are_exact() {
    let r = micro_vm(Workload::Pio, N);
    let m = r.micro_vm.as_ref().unwrap();
    assert_eq!(m.vmm.pio_exits, N as u64);
    assert_eq!(m.traced, N as u64, "{}", m.traced_event);
    assert!(m.exact);
    // Every kvm_pio is the loop's port but one: the guest's single OUT to DONE_PORT.
    assert_eq!(port(&r, PIO_PORT), N as u64);
    assert_eq!(port(&r, DONE_PORT), 1);
    assert_eq!(r.events.kvm_pio_out, N as u64 + 1);
    assert_eq!(r.events.kvm_pio_in, 0);
    // Each OUT returns from KVM_RUN with KVM_EXIT_IO.
    assert_eq!(returns(&r, "IO"), (N as u64 + 1, N as u64 + 1));
    assert_eq!(r.run.round_trips, N as u64 + 1);
    assert_eq!(
        r.run.in_vmm.count, N as u64,
        "one VMM gap between each two KVM_RUNs"
    );
}

#[test]
fn mmio_exits_are_exact() {
    let r = micro_vm(Workload::Mmio, N);
    let m = r.micro_vm.as_ref().unwrap();
    assert_eq!(m.vmm.mmio_exits, N as u64);
    assert_eq!(r.events.kvm_mmio_write, N as u64, "one kvm_mmio per store");
    assert_eq!(
        r.events.kvm_mmio_read + r.events.kvm_mmio_read_unsatisfied,
        0
    );
    assert!(m.exact);
    assert_eq!(returns(&r, "MMIO"), (N as u64, N as u64));
}

#[test]
fn hlt_exits_are_exact() {
    let r = micro_vm(Workload::Hlt, N);
    let m = r.micro_vm.as_ref().unwrap();
    assert_eq!(m.vmm.hlt_exits, N as u64);
    assert_eq!(m.traced, N as u64);
    assert!(m.exact);
    let (hlt_returns, hlt_samples) = returns(&r, "HLT");
    assert_eq!(hlt_returns, N as u64);
    assert!(hlt_samples >= N as u64, "{hlt_samples} KVM_RUN samples");
    assert!(r.run.in_kvm.count >= N as u64);
}

#[test]
fn cpuid_exits_stay_in_the_kernel() {
    let r = micro_vm(Workload::Cpuid, N);
    assert!(r.events.kvm_cpuid >= N as u64, "{}", r.events.kvm_cpuid);
    let m = r.micro_vm.as_ref().unwrap();
    assert_eq!(m.vmm.pio_exits + m.vmm.mmio_exits + m.vmm.hlt_exits, 0);
    // Only the done port leaves KVM_RUN.
    assert_eq!(r.run.round_trips, 1);
}

/// What `profiler kvm --micro-vm pio --count 100000` reports.
#[test]
fn cli_reports_exactly_100000_port_exits() {
    require_root();
    let args = KvmArgs {
        pid: None,
        length: 5.0,
        json: None,
        micro_vm: Some(Workload::Pio),
        count: 100_000,
        debug_bpf: false,
    };
    let r = cli::measure(&args).unwrap_or_else(|e| panic!("{e:#}"));
    profiler::kvm::report::print(&r);
    let m = r.micro_vm.as_ref().unwrap();
    assert_eq!(m.traced, 100_000);
    assert_eq!(m.vmm.pio_exits, 100_000);
    assert!(m.exact);
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["micro_vm"]["traced"], 100_000);
    assert_eq!(json["backend"], serde_json::json!(r.backend));
}

/// Without --micro-vm: tracing a VMM process (here: this one) for a while sees its exits.
#[test]
fn tracing_a_running_vmm_sees_its_exits() {
    require_root();
    let pid = std::process::id();
    // A VMM holds /dev/kvm before its first VM: `--pid` refuses a process without a KVM fd.
    let _kvm = std::fs::File::open("/dev/kvm").unwrap();
    let tracer = std::thread::spawn(move || cli::trace_vms(Some(pid), 2.0, false));
    let mut runs = 0;
    while !tracer.is_finished() {
        micro_vm_untraced(Workload::Pio, 1_000);
        runs += 1;
    }
    let r = tracer.join().unwrap().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(runs > 0);
    assert!(r.micro_vm.is_none());
    let (io_returns, io_samples) = returns(&r, "IO");
    assert!(io_samples > 0, "no KVM_RUN traced in {runs} micro-VM runs");
    assert!(port(&r, PIO_PORT) > 0);
    assert!(io_returns >= io_samples);
    assert!(r.run.in_kvm_ns > 0 && r.run.in_vmm_ns > 0);
}

fn micro_vm_untraced(w: Workload, count: u32) {
    profiler::kvm::microvm::run(w, count).unwrap_or_else(|e| panic!("{e:#}"));
}

#[test]
fn bad_kvm_input_is_one_line_naming_the_option() {
    require_root();
    let secs = "'-l <SECS>': expected seconds greater than 0";
    for (args, needle) in [
        (&["kvm", "-l", "0"][..], secs),
        (&["kvm", "-l", "-1"][..], secs),
        (
            &["kvm", "--micro-vm", "pio", "--count", "0"][..],
            "'--count <N>': expected a whole number of at least 1",
        ),
        (
            &["kvm", "--micro-vm", "pio", "--count", "-3"][..],
            "'--count <N>': expected a whole number of at least 1",
        ),
        (
            &["kvm", "--pid", "0"][..],
            "'--pid <PID>': expected a whole number of at least 1",
        ),
        (
            &["kvm", "--pid", "4194305", "-l", "1"][..],
            "--pid 4194305: no such process",
        ),
        // A process that is not a VMM: it was traced, and reported nothing.
        (
            &["kvm", "--pid", "1", "-l", "1"][..],
            "is not a VMM: it holds no KVM file descriptor",
        ),
    ] {
        profiler_tests::assert_refused_in_one_line(args, needle);
    }
}

/// `--debug-bpf` loads the KVM programs with their log calls (the verifier takes them) and
/// counts as exactly as without; a normal run hits no rare condition, so the kernel says
/// nothing.
#[test]
fn debug_bpf_loads_and_a_normal_run_logs_nothing() {
    require_root();
    let out = profiler_tests::run_ok(profiler_tests::profiler().args([
        "kvm",
        "--micro-vm",
        "pio",
        "--count",
        "1000",
        "--debug-bpf",
        "--json",
    ]));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["micro_vm"]["traced"], 1000, "{r}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("bpf "), "{stderr}");
}
