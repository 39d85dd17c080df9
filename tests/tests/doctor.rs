//! The doctor's claims come from real load/attach attempts on this kernel.

use profiler_tests::{profiler, require_root, run_ok};
use serde_json::Value;

fn doctor() -> Value {
    require_root();
    let out = run_ok(profiler().args(["doctor", "--json"]));
    serde_json::from_slice(&out.stdout).expect("doctor --json prints JSON")
}

/// On this machine (kernel without CONFIG_KPROBES, trampolines refused) the doctor must find
/// tracepoints, TC and XDP usable and kprobe/fentry not, each with the kernel's reason.
/// `PROFILER_EXPECT_STOCK_HOST=1` flips the expectation for a stock distribution kernel.
#[test]
fn mechanisms_match_what_the_kernel_allows() {
    let r = doctor();
    let m = &r["mechanisms"];
    for usable in ["tp_btf", "raw_tracepoint", "tracepoint", "tc", "xdp"] {
        assert_eq!(m[usable]["usable"], true, "{usable}: {}", m[usable]);
        assert_eq!(
            m[usable]["fired"], true,
            "{usable} attached but never fired"
        );
    }
    let stock = std::env::var("PROFILER_EXPECT_STOCK_HOST").is_ok_and(|v| v == "1");
    for probe in ["kprobe", "kretprobe", "fentry", "fexit"] {
        assert_eq!(m[probe]["usable"], stock, "{probe}: {}", m[probe]);
        if !stock {
            let why = m[probe]["error"]
                .as_str()
                .expect("a refused mechanism says why");
            assert!(why.contains("failed"), "{probe}: {why}");
        }
    }
    assert!(
        m["kprobe"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("CONFIG_KPROBES")
            || stock
    );
    assert_eq!(r["btf"], true);
    assert!(
        r["tracefs"].as_str().is_some(),
        "tracefs not found or mounted"
    );
}

#[test]
fn kvm_backend_and_micro_vm() {
    let r = doctor();
    let kvm = &r["kvm"];
    assert_eq!(kvm["backend"], "pvm", "{kvm}");
    assert_eq!(kvm["kvm_exit_exists"], true);
    // PVM: the tracepoint exists but never fires, which sends the plan to kvm_userspace_exit.
    assert_eq!(kvm["kvm_exit_fires"], false, "{kvm}");
    assert_eq!(kvm["micro_vm_pio_exits"], 64, "{kvm}");
    let hooks = r["hooks"].as_array().unwrap();
    let exit = hooks.iter().find(|h| h["hook"] == "kvm_exit").unwrap();
    assert_eq!(exit["target"], "kvm:kvm_userspace_exit");
}

#[test]
fn attach_plan_uses_what_works() {
    let r = doctor();
    let hooks = r["hooks"].as_array().unwrap();
    let get = |name: &str| hooks.iter().find(|h| h["hook"] == name).unwrap().clone();
    assert_eq!(get("vxlan_encap")["mechanism"], "raw_tracepoint");
    assert_eq!(get("softirq")["mechanism"], "raw_tracepoint");
    let ct = get("conntrack");
    assert!(ct["mechanism"].is_null());
    assert!(ct["fallback"].as_str().unwrap().contains("ablation"));
    assert_eq!(ct["passed_over"].as_array().unwrap().len(), 2);
}

#[test]
fn doctor_table_is_readable() {
    require_root();
    let out = run_ok(profiler().arg("doctor"));
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "mechanism",
        "tp_btf",
        "KVM backend",
        "vxlan encap",
        "docker.sock",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

/// The doctor's plan says what the tracer really attaches: each tracepoint hook's mechanism is
/// the one `profiler trace` reports for that tracepoint.
#[test]
fn doctor_plan_matches_what_the_tracer_attaches() {
    require_root();
    let r = doctor();
    let file = format!(
        "/tmp/profiler-test-doctor-trace-{}.json",
        std::process::id()
    );
    run_ok(profiler().args(["trace", "--mode", "bridge", "-l", "1", "--json", &file]));
    let t: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let _ = std::fs::remove_file(&file);
    let traced = t["attached"].as_array().unwrap();
    let planned = r["attach"]["net"].as_array().unwrap();
    let events = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|a| a["event"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(events(traced), events(planned), "the same points, in order");
    let mut compared = 0;
    for (a, p) in traced.iter().zip(planned) {
        let (how, plan) = (a["how"].as_str().unwrap(), p["how"].as_str().unwrap());
        // Points left out by policy ("not attached: ..."), not by the kernel: start_xmit on a
        // lab of noqueue devices, the tunnel route lookup's probes without --split-route.
        if how.starts_with("not attached: ") {
            continue;
        }
        // A point no way attached: the doctor names the mechanisms it found unusable, the tracer
        // the errors its attempts got; both must say not attached.
        if how.starts_with("not attached (") || plan.starts_with("not attached (") {
            assert!(
                how.starts_with("not attached (") && plan.starts_with("not attached ("),
                "{}: tracer {how:?} against doctor {plan:?}",
                a["event"]
            );
            continue;
        }
        assert_eq!(how, plan, "{}: tracer against doctor", a["event"]);
        compared += 1;
    }
    assert!(compared >= 11, "{compared} points compared");
    // The KVM tracer too: its attached list is in every kvm report.
    let file = format!("/tmp/profiler-test-doctor-kvm-{}.json", std::process::id());
    run_ok(profiler().args(["kvm", "--micro-vm", "pio", "--count", "10", "--json", &file]));
    let k: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let _ = std::fs::remove_file(&file);
    // (event, how), sorted: the KVM tracer reports its points in attach order.
    let sorted = |v: &Value| -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["event"].as_str().unwrap().into(),
                    a["how"].as_str().unwrap().into(),
                )
            })
            .collect();
        out.sort();
        out
    };
    let (traced, planned) = (sorted(&k["attached"]), sorted(&r["attach"]["kvm"]));
    assert_eq!(traced, planned, "the KVM tracer against the doctor");
}
