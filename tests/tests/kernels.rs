//! The kernel matrix: Debian's stock cloud kernels (6.1 and 6.12) booted under QEMU (TCG on
//! this host) through `profiler run --env vm --kernel`, and inside each guest: the doctor's
//! real attach attempts, every mode this host lacks carrying tcp_rr (OVS too, on its kernel
//! datapath) and showing its own layers, the function probes the attach plan gives (fentry,
//! kprobe) splitting the overlay's transmit and timing conntrack and NAT per packet, KVM exits
//! by reason on a real SVM (TCG's `-cpu max`, kvm_amd loaded), and a netem delay landing in its
//! layer (the guest's clock QEMU's instruction counter). One test per kernel and
//! subject, so pass/fail reads per kernel; a guest that cannot boot fails its test.

use std::time::Instant;

use profiler_tests::*;
use serde_json::Value;

/// `profiler run --env vm --accel tcg --kernel KERNEL ARGS...`: the guest command's JSON.
fn in_guest(kernel: &str, args: &[&str]) -> Value {
    guest_json(kernel, args, true)
}

/// The guest command's JSON; with `must_succeed` false also when it exits non-zero (a failed
/// self-check still prints its cases).
fn guest_json(kernel: &str, args: &[&str], must_succeed: bool) -> Value {
    guest_json_with(kernel, &[], args, must_succeed)
}

/// [`guest_json`] with options of `run` itself (`run_opts`) before the guest's command.
fn guest_json_with(kernel: &str, run_opts: &[&str], args: &[&str], must_succeed: bool) -> Value {
    require_root();
    let started = Instant::now();
    let out = profiler()
        .args(["run", "--env", "vm", "--accel", "tcg", "--kernel", kernel])
        .args(run_opts)
        .args(args)
        .output()
        .expect("running profiler");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "{kernel}: `{}` took {:.1} s\n{stderr}",
        args.join(" "),
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success() || (!must_succeed && !out.stdout.is_empty()),
        "{kernel}: `{}` failed ({}): {stderr}",
        args.join(" "),
        out.status
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{kernel}: `{}` printed no JSON ({e}): {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// fentry, kprobe and tp_btf loaded, attached and fired for real in the guest; the plan gives
/// ip_local_out's probe fentry; the lab modes' modules (none loaded for the doctor) named as
/// built but not loaded.
fn doctor(kernel: &str) {
    let d = in_guest(kernel, &["doctor", "--json"]);
    for m in ["fentry", "kprobe", "tp_btf", "raw_tracepoint"] {
        let r = &d["mechanisms"][m];
        assert_eq!(r["usable"], true, "{kernel}: {m}: {r}");
        for step in ["loaded", "attached", "fired"] {
            assert_eq!(r[step], true, "{kernel}: {m} not {step}: {r}");
        }
    }
    // The function probes' plan: fentry on ip_local_out (vmlinux), the tunnel's split.
    let encap = d["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["hook"] == "vxlan_encap")
        .expect("the doctor plans vxlan_encap");
    assert_eq!(encap["mechanism"], "fentry", "{kernel}: {encap}");
    assert_eq!(encap["target"], "ip_local_out", "{kernel}: {encap}");
    let planned = d["attach"]["net"].as_array().unwrap();
    let plan_of = |event: &str| -> Vec<String> {
        planned
            .iter()
            .filter(|a| a["event"] == event)
            .map(|a| a["how"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(plan_of("ip_local_out"), ["fentry"], "{kernel}");
    assert_eq!(d["lab_modes"]["host"]["buildable"], true);
    for (mode, module) in [
        ("ipvlan", "ipvlan"),
        ("bridge", "veth"),
        ("geneve", "veth"),
        ("gre", "veth"),
    ] {
        let why = d["lab_modes"][mode]["why_not"].as_str().unwrap_or("");
        assert!(
            why.contains(&format!("module {module} is built"))
                && why.contains("not loaded")
                && why.contains(&format!("modprobe {module}")),
            "{kernel}: {mode}: {why}"
        );
    }
}

const NEW_MODES: [&str; 6] = ["ipvlan", "ipvlan-l3", "ipip", "geneve", "gre", "ovs"];

/// Each new mode carries tcp_rr (bench, one boot per mode: no tracer involved).
fn traffic(kernel: &str) {
    for mode in NEW_MODES {
        let r = in_guest(
            kernel,
            &["bench", "tcp_rr", "--mode", mode, "-l", "1", "--json"],
        );
        let tx = r["transactions"].as_u64().unwrap_or(0);
        eprintln!("{kernel}: {mode}: {tx} transactions in 1 s");
        assert!(tx > 100, "{kernel}: {mode} carried {tx} transactions: {r}");
    }
}

/// Each new mode in one traced run (every packet followed): tcp_rr flows, and the mode's own
/// layer shows, with no other mode's encapsulation. With --split-route a tunnel's transmit is
/// split at its route lookup's return (a kprobe on the tunnel's transmit keeps the skb, an
/// fexit on the lookup closes it) and at ip_local_out (fentry): "route lookup", "encap", then
/// "ip output + netfilter out". Overlay is here for its split; it has no new module.
fn layers(kernel: &str) {
    // Not ovs: before the bridge fix its trace ended at the datapath's receiving port, and it
    // has not been traced since; its layer name is unit-tested in trace/layers.rs. It carries
    // traffic (`traffic`).
    let modes = ["overlay"]
        .into_iter()
        .chain(NEW_MODES.iter().filter(|m| **m != "ovs").copied())
        .collect::<Vec<_>>()
        .join(",");
    let r = compare(kernel, &modes, &["--split-route"]);
    // `--compare` adds its baseline (host) when it is not listed: the new modes' rows only.
    let rows: Vec<&Value> = r["rows"]
        .as_array()
        .expect("compare's JSON has one row per mode")
        .iter()
        .filter(|row| row["mode"] != "host")
        .collect();
    // (mode, layers it must show, words no layer of it may hold). A tunnel's route lookup
    // (its transmit's kprobe, the lookup's fexit) is cut from its encapsulation.
    let expect: [(&str, &[&str], &[&str]); 6] = [
        (
            "overlay",
            &[
                "vxlan fdb + route lookup",
                "vxlan encap",
                "ip output + netfilter out",
            ],
            &["geneve", "ipip", "gre ", "encap + route"],
        ),
        ("ipvlan", &["ipvlan"], &["encap", "bridge", "macvlan"]),
        ("ipvlan_l3", &["ipvlan"], &["encap", "bridge", "macvlan"]),
        (
            "ipip",
            &["ipip route lookup", "ipip encap"],
            &["vxlan", "geneve", "gre", "bridge"],
        ),
        // Geneve bridges its containers, as overlay does.
        (
            "geneve",
            &["geneve route lookup", "geneve encap"],
            &["vxlan", "ipip", "gre "],
        ),
        (
            "gre",
            &["gre route lookup", "gre encap"],
            &["vxlan", "geneve", "ipip", "bridge"],
        ),
    ];
    assert_eq!(rows.len(), expect.len(), "{kernel}: {r}");
    for (row, (mode, layers, never)) in rows.iter().zip(expect) {
        assert_eq!(row["mode"], mode, "{kernel}");
        let report = &row["reports"][0];
        let tx = report["workload"]["transactions"].as_u64().unwrap_or(0);
        assert!(tx > 100, "{kernel}: {mode} carried {tx} transactions");
        if mode == "overlay" {
            // vxlan_xmit (a module's) by kprobe; the lookup's returns (vmlinux) by fexit.
            for (event, how) in [
                ("vxlan_xmit", "kprobe"),
                ("dst_cache_get_ip4", "fexit"),
                ("ip_route_output_flow", "fexit"),
            ] {
                assert_eq!(attached(report, event), [how], "{kernel}: {event}");
            }
        }
        let mut names: Vec<&str> = Vec::new();
        for dir in report["net"]["directions"].as_array().unwrap() {
            let here: Vec<&str> = dir["layers"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|l| l["layer"].as_str())
                .collect();
            eprintln!("{kernel}: {mode} {}: {here:?}", dir["name"]);
            names.extend(here);
        }
        for layer in layers {
            assert!(
                names.contains(layer),
                "{kernel}: {mode}: no {layer:?} in {names:?}"
            );
        }
        for n in &names {
            assert!(
                !never.iter().any(|w| n.contains(w)),
                "{kernel}: {mode}: {n:?} belongs to another mode"
            );
        }
    }
}

/// `trace --compare MODES` in the guest, one round of 1 s each, every packet followed, with
/// `extra` options.
fn compare(kernel: &str, modes: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "trace",
        "--compare",
        modes,
        "-l",
        "1",
        "--follow-every",
        "1",
        "--repeat",
        "1",
    ];
    args.extend(extra);
    args.push("--json");
    in_guest(kernel, &args)
}

/// How a trace report says it attached `event`, one entry per way.
fn attached(report: &Value, event: &str) -> Vec<String> {
    report["attached"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["event"] == event)
        .map(|a| a["how"].as_str().unwrap().to_string())
        .collect()
}

/// A layer's row in one direction of a trace report.
fn row<'a>(dir: &'a Value, layer: &str) -> Option<&'a Value> {
    dir["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["layer"] == layer)
}

/// Function probes as the attach plan gives them, in the real guest (the doctor's plan of them
/// is checked in `doctor`): an overlay trace attaches ip_local_out by fentry and shows
/// "vxlan encap + route lookup" and "ip output + netfilter out" as rows of their own (the route
/// lookup's own probes wait for --split-route: `layers`); a nat
/// trace attaches nf_conntrack_in and nf_nat_inet_fn by kprobe and kretprobe (module
/// functions) and shows conntrack once and NAT twice (prerouting, postrouting) per packet,
/// each a histogram of entry-to-exit times, and ip_forward by fentry, splitting the route
/// lookup from the forward.
fn function_probes(kernel: &str) {
    let r = compare(kernel, "overlay,nat", &[]);
    let report = |mode: &str| -> &Value {
        let row = r["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|row| row["mode"] == mode)
            .unwrap_or_else(|| panic!("{kernel}: no {mode} row in {r}"));
        &row["reports"][0]
    };

    let overlay = report("overlay");
    assert_eq!(attached(overlay, "ip_local_out"), ["fentry"], "{kernel}");
    // Without --split-route the route lookup's probes stay off (`layers` splits it).
    for event in ["vxlan_xmit", "dst_cache_get_ip4", "ip_route_output_flow"] {
        let how = attached(overlay, event);
        assert!(
            how.len() == 1 && how[0].contains("without --split-route"),
            "{kernel}: {event}: {how:?}"
        );
    }
    for dir in overlay["net"]["directions"].as_array().unwrap() {
        let one_way = dir["one_way"]["count"].as_u64().unwrap_or(0);
        assert!(one_way > 100, "{kernel}: overlay: {one_way} packets");
        assert!(
            row(dir, "vxlan encap + route + netfilter out").is_none(),
            "{kernel}: overlay {}: the merged row is still there",
            dir["name"]
        );
        for layer in ["vxlan encap + route lookup", "ip output + netfilter out"] {
            let l = row(dir, layer)
                .unwrap_or_else(|| panic!("{kernel}: overlay {}: no {layer:?}", dir["name"]));
            eprintln!(
                "{kernel}: overlay {} {layer}: count {} p50 {} mean {:.0}",
                dir["name"],
                l["count"],
                l["p50"],
                l["mean"].as_f64().unwrap()
            );
            let n = l["count"].as_u64().unwrap();
            assert!(n * 10 >= one_way * 9, "{kernel}: {layer}: {n} of {one_way}");
            assert!(l["p50"].as_u64().unwrap() > 0, "{kernel}: {layer}: {l}");
        }
    }

    let nat = report("nat");
    assert_eq!(
        attached(nat, "nf_conntrack_in"),
        ["kprobe", "kretprobe"],
        "{kernel}"
    );
    assert_eq!(
        attached(nat, "nf_nat_inet_fn"),
        ["kprobe", "kretprobe"],
        "{kernel}"
    );
    assert_eq!(attached(nat, "ip_forward"), ["fentry"], "{kernel}");
    for dir in nat["net"]["directions"].as_array().unwrap() {
        let one_way = dir["one_way"]["count"].as_u64().unwrap_or(0);
        assert!(one_way > 100, "{kernel}: nat: {one_way} packets");
        // ip_forward's entry cuts the route lookup (after prerouting's NAT) from the forward.
        for (layer, per_packet) in [
            ("conntrack (nf_conntrack_in)", 1.0),
            ("NAT (nf_nat_inet_fn)", 2.0),
            ("route lookup", 1.0),
            ("ip forward + netfilter forward (to NAT)", 1.0),
        ] {
            let l = row(dir, layer)
                .unwrap_or_else(|| panic!("{kernel}: nat {}: no {layer:?}", dir["name"]));
            eprintln!(
                "{kernel}: nat {} {layer}: count {} per packet {:.2} p50 {} mean {:.0}",
                dir["name"],
                l["count"],
                l["per_packet"].as_f64().unwrap(),
                l["p50"],
                l["mean"].as_f64().unwrap()
            );
            let pp = l["per_packet"].as_f64().unwrap();
            assert!(
                (pp - per_packet).abs() < 0.1,
                "{kernel}: {layer}: {pp} per packet"
            );
            assert!(
                l["histogram"].as_array().unwrap().len() > 1,
                "{kernel}: {layer}: a histogram of one bucket: {l}"
            );
        }
    }
}

/// The micro-VM's exits on SVM, exact per reason: IOIO = pio + 1 (the exit port), HLT, MMIO
/// as NPF (nested page faults) + 1 (the first touch of the guest's page, which every kind
/// has), CPUID.
fn svm_exits(kernel: &str) {
    let count = |r: &Value, name: &str| -> u64 {
        r["exits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["count"].as_u64())
            .unwrap_or(0)
    };
    for (kind, reason, extra) in [
        ("pio", "IOIO", 1),
        ("hlt", "HLT", 0),
        ("mmio", "NPF", 1),
        ("cpuid", "CPUID", 0),
    ] {
        let n = 500u64;
        let r = in_guest(
            kernel,
            &[
                "kvm",
                "--micro-vm",
                kind,
                "--count",
                &n.to_string(),
                "--json",
            ],
        );
        assert_eq!(r["backend"], "svm", "{kernel}: {kind}: {}", r["backend"]);
        assert_eq!(r["path"], "per_reason_exits", "{kernel}: {kind}");
        let got = count(&r, reason);
        let all: Vec<String> = r["exits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| format!("{} {}", e["name"], e["count"]))
            .collect();
        eprintln!("{kernel}: {kind} x{n}: {all:?}");
        assert_eq!(got, n + extra, "{kernel}: {kind}: {reason}: {all:?}");
    }
}

/// netem where the kernel has it (sch_netem loaded in the guest): the self-check's 1 ms netem
/// delay on the server's bridge port lands in "veth (host to container)" within 5%. The guest's
/// clock is QEMU's instruction counter (`--icount`): under plain TCG here every netem delay
/// (0.5, 1, 2 and 4 ms alike) landed 86-92 us long, a constant, not a proportion: the host
/// delivering the guest's timer interrupt late, which the tracer rightly puts in the layer.
/// On 6.1 (no TCX) it also checks that the TC injector of the case before is gone: its netlink
/// filter, once deleted from the wrong namespace, kept delaying "bridge" through this case.
fn netem(kernel: &str) {
    let r = guest_json_with(
        kernel,
        &["--icount"],
        &[
            "trace",
            "--self-check",
            "-l",
            "2",
            "--follow-every",
            "1",
            "--json",
        ],
        false,
    );
    assert!(
        r["netem"].is_null(),
        "{kernel}: no netem case: {}",
        r["netem"]
    );
    let case = r["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["hook"] == "netem (egress qdisc)")
        .unwrap_or_else(|| panic!("{kernel}: no netem case in {r}"));
    eprintln!("{kernel}: netem case: {case}");
    assert_eq!(case["expected_layer"], "veth (host to container)");
    assert_eq!(case["passed"], true, "{kernel}: netem: {case}");
}

#[test]
fn debian_6_1_doctor() {
    doctor("debian-6.1");
}

#[test]
fn debian_6_12_doctor() {
    doctor("debian-6.12");
}

#[test]
fn debian_6_1_new_modes_carry_traffic() {
    traffic("debian-6.1");
}

#[test]
fn debian_6_12_new_modes_carry_traffic() {
    traffic("debian-6.12");
}

#[test]
fn debian_6_1_new_modes_show_their_layers() {
    layers("debian-6.1");
}

#[test]
fn debian_6_12_new_modes_show_their_layers() {
    layers("debian-6.12");
}

#[test]
fn debian_6_1_netem_lands_in_its_layer() {
    netem("debian-6.1");
}

#[test]
fn debian_6_12_netem_lands_in_its_layer() {
    netem("debian-6.12");
}

#[test]
fn debian_6_1_function_probes() {
    function_probes("debian-6.1");
}

#[test]
fn debian_6_12_function_probes() {
    function_probes("debian-6.12");
}

#[test]
fn debian_6_1_svm_exits_by_reason() {
    svm_exits("debian-6.1");
}

#[test]
fn debian_6_12_svm_exits_by_reason() {
    svm_exits("debian-6.12");
}

#[test]
fn a_bad_kernel_is_one_line_and_exit_2_before_anything_starts() {
    require_root();
    for (args, says) in [
        (
            &["run", "--env", "vm", "--kernel", "debian-5", "doctor"][..],
            "debian-6.1, debian-6.12",
        ),
        (
            &["run", "--env", "host", "--kernel", "debian-6.1", "doctor"][..],
            "--kernel needs --env vm",
        ),
        (
            &["run", "--env", "vm", "--modules", "veth", "doctor"][..],
            "--kernel",
        ),
        (
            &[
                "run",
                "--env",
                "vm",
                "--kernel",
                "debian-6.1",
                "--icount",
                "doctor",
            ][..],
            "--icount needs --accel tcg",
        ),
        (
            &["run", "--env", "vm", "--icount", "doctor"][..],
            "--kernel",
        ),
    ] {
        let out = profiler().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
