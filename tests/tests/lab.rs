//! The lab: every mode this kernel supports builds, carries traffic across its own devices,
//! and leaves nothing behind on every exit path.

use profiler_tests::*;
use serde_json::Value;

fn up(mode: &str, id: &str) -> Value {
    let out = run_ok(profiler().args(["lab", "up", "--mode", mode, "--id", id, "--json"]));
    serde_json::from_slice(&out.stdout).expect("lab up --json")
}

fn down(id: &str) {
    run_ok(profiler().args(["lab", "down", id]));
    assert_gone(id);
}

fn device<'a>(lab: &'a Value, role: &str) -> Vec<&'a Value> {
    lab["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["role"] == role)
        .collect()
}

#[test]
fn every_supported_mode_builds_and_tears_down() {
    require_root();
    let links_before = root_links();
    for (mode, roles) in [
        ("host", &["loopback"][..]),
        ("bridge", &["bridge", "container_end", "host_end"][..]),
        ("nat", &["bridge", "external", "container_end"][..]),
        (
            "overlay",
            &["underlay", "vxlan", "bridge", "container_end"][..],
        ),
        ("macvlan", &["parent", "container_end"][..]),
        ("routed", &["container_end", "host_end"][..]),
        ("nested", &["bridge", "container_end", "host_end"][..]),
    ] {
        let id = format!("m{mode}");
        let _guard = LabGuard(id.clone());
        let lab = up(mode, &id);
        assert_eq!(lab["mode"], mode);
        let ns: Vec<String> = lab["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_string())
            .collect();
        assert_eq!(lab_namespaces(&id).len(), ns.len(), "{mode}: {ns:?}");
        for role in roles {
            assert!(!device(&lab, role).is_empty(), "{mode}: no {role} device");
        }
        // Only the modes that have them list a bridge or a vxlan device.
        assert_eq!(
            !device(&lab, "vxlan").is_empty(),
            mode == "overlay",
            "{mode}"
        );
        assert!(lab["owner"].is_null(), "lab up hands the lab to the user");
        down(&id);
    }
    assert_eq!(
        root_links(),
        links_before,
        "the root namespace's devices changed"
    );
}

/// lab up checks connectivity with a TCP connection through the whole path; the overlay's
/// VXLAN device and underlay must have carried it.
#[test]
fn overlay_traffic_crosses_vxlan_and_underlay() {
    require_root();
    let _guard = LabGuard("vx".into());
    let lab = up("overlay", "vx");
    for d in device(&lab, "vxlan")
        .into_iter()
        .chain(device(&lab, "underlay"))
    {
        let (tx, rx) = packets(d["netns"].as_str().unwrap(), d["name"].as_str().unwrap());
        assert!(tx > 0 && rx > 0, "{d}: tx {tx} rx {rx}");
    }
    down("vx");
}

#[test]
fn missing_kernel_features_fail_at_once_naming_the_option() {
    require_root();
    let before = namespaces();
    for (mode, option) in [
        ("ipvlan", "CONFIG_IPVLAN"),
        ("ipvlan-l3", "CONFIG_IPVLAN"),
        ("ipip", "CONFIG_NET_IPIP"),
        ("geneve", "CONFIG_GENEVE"),
        ("gre", "CONFIG_NET_IPGRE"),
        ("ovs", "CONFIG_OPENVSWITCH"),
    ] {
        let out = profiler()
            .args(["lab", "up", "--mode", mode, "--id", "nf"])
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "{mode} built on a kernel without it?"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(option), "{mode}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert_gone("nf");
    }
    assert_eq!(namespaces(), before);
}

#[test]
fn injected_failure_halfway_leaves_nothing() {
    require_root();
    let links_before = root_links();
    for (mode, step) in [
        ("overlay", "underlay"),
        ("overlay", "vxlan"),
        ("nat", "external"),
        ("routed", "routed"),
        ("nested", "inner bridge"),
    ] {
        let out = profiler()
            .args(["lab", "up", "--mode", mode, "--id", "inj"])
            .env("PROFILER_FAIL_AT", step)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("injected failure"), "{mode}/{step}: {err}");
        assert_gone("inj");
    }
    assert_eq!(root_links(), links_before);
}

#[test]
fn two_labs_coexist_and_ids_are_not_clobbered() {
    require_root();
    let _guards = (LabGuard("ca".into()), LabGuard("cb".into()));
    let a = up("bridge", "ca");
    let b = up("overlay", "cb");
    assert_ne!(a["namespaces"], b["namespaces"]);
    let out = profiler()
        .args(["lab", "up", "--mode", "bridge", "--id", "ca"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a second lab took a used id");
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
    assert_eq!(
        lab_namespaces("ca").len(),
        3,
        "the refused run touched lab ca"
    );
    let list = run_ok(profiler().args(["lab", "list", "--json"]));
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"ca") && ids.contains(&"cb"), "{ids:?}");
    run_ok(profiler().args(["lab", "down", "--all"]));
    assert_gone("ca");
    assert_gone("cb");
}

#[test]
fn bad_input_is_one_clear_line() {
    require_root();
    for (args, needle) in [
        (&["lab", "up", "--mode", "bogus"][..], "possible values"),
        (
            &["lab", "up", "--mode", "bridge", "--id", "Bad_Id"][..],
            "bad lab id",
        ),
        (&["lab", "down", "nosuchlab"][..], "no lab nosuchlab"),
    ] {
        assert_refused(args, needle);
    }
}

/// A container network inside a container: the host's bridge, the outer container routing to
/// its own bridge, the inner container behind it. It builds, carries tcp_rr from the host to
/// the inner container across both bridges, and is gone after.
#[test]
fn nested_lab_carries_tcp_rr_across_two_bridges() {
    require_root();
    let links_before = root_links();
    let _guard = LabGuard("nst".into());
    let lab = up("nested", "nst");
    assert_eq!(lab["mode"], "nested");
    assert_eq!(lab_namespaces("nst").len(), 3);
    let bridges = device(&lab, "bridge");
    assert_eq!(bridges.len(), 2, "{lab}");
    assert_ne!(
        bridges[0]["netns"], bridges[1]["netns"],
        "the inner bridge lives in the outer container"
    );
    assert_eq!(device(&lab, "container_end").len(), 2, "{lab}");
    assert_eq!(lab["client"]["netns"], bridges[0]["netns"]);
    assert_ne!(lab["server"]["netns"], bridges[1]["netns"]);
    // Both bridges and the veths behind them carry every transaction: each bridge sends the
    // requests on (the host's br0 from its stack, the outer br1 forwarded), each container end
    // sends the responses back.
    let carriers: Vec<&Value> = bridges
        .iter()
        .copied()
        .chain(device(&lab, "container_end"))
        .collect();
    let count = |d: &Value| packets(d["netns"].as_str().unwrap(), d["name"].as_str().unwrap()).0;
    let before: Vec<u64> = carriers.iter().map(|d| count(d)).collect();
    let out = run_ok(profiler().args(["bench", "tcp_rr", "--lab", "nst", "-l", "1", "--json"]));
    let r: Value = serde_json::from_slice(&out.stdout).expect("bench --json");
    let trans = r["transactions"].as_u64().unwrap();
    assert!(trans > 100, "{r}");
    for (d, b) in carriers.iter().zip(before) {
        let sent = count(d) - b;
        assert!(
            sent >= trans,
            "{d}: sent {sent} packets for {trans} transactions"
        );
    }
    // The trace names both bridge crossings per packet, each way, and the outer container's
    // routing between them.
    let file = format!("/tmp/profiler-test-nested-{}.json", std::process::id());
    run_ok(profiler().args([
        "trace", "--lab", "nst", "-t", "tcp_rr", "-l", "1", "--json", &file,
    ]));
    let t: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let _ = std::fs::remove_file(&file);
    let crossings = |dir: usize, layer: &str| {
        t["net"]["directions"][dir]["layers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["layer"] == layer)
            .and_then(|l| l["crossings"].as_u64())
            .unwrap_or(0)
    };
    for (dir, layer, n) in [
        (0, "bridge (host stack to port)", 2),
        (0, "veth (host to container)", 2),
        (0, "ip forward + netfilter", 1),
        (1, "bridge (port to host stack)", 2),
        (1, "veth (container to host)", 2),
        (1, "ip forward + netfilter", 1),
    ] {
        assert_eq!(
            crossings(dir, layer),
            n,
            "direction {dir}: '{layer}' in {}",
            t["net"]["directions"][dir]["layers"]
        );
    }
    down("nst");
    assert_eq!(root_links(), links_before);
}
