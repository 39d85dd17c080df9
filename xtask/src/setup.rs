//! `cargo xtask setup`: Debian packages, the nightly toolchain with rust-src, bpf-linker built
//! against Debian's LLVM 22. Each step checks first and only acts when something is missing.

use std::process::Command;

use anyhow::{Result, bail};

use crate::run as sh;

/// The nightly this project was tested with; another nightly usually works too.
pub const TESTED_NIGHTLY: &str = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// `cargo xtask deb`'s packager: from crates.io, as Debian has no cargo-deb package.
const CARGO_DEB_VERSION: &str = "3.8.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Debian packages, with why each is needed.
const PACKAGES: &[(&str, &str)] = &[
    (
        "llvm-22-dev",
        "bpf-linker links against LLVM 22 (rustc's LLVM)",
    ),
    ("libpolly-22-dev", "bpf-linker's LLVM 22 link"),
    ("libzstd-dev", "bpf-linker's LLVM 22 link"),
    ("zlib1g-dev", "bpf-linker's LLVM 22 link"),
    ("iproute2", "inspecting labs by hand (ip netns)"),
    ("iptables", "the nat lab's DNAT/MASQUERADE rules"),
    ("nftables", "the nat lab on nft-only hosts"),
    ("iperf3", "bench-workloads peer for tcp_stream"),
    ("sockperf", "bench-workloads peer for tcp_rr/udp_rr"),
    ("bpftrace", "bench-trace peer"),
    ("bpftool", "inspecting loaded programs"),
    ("qemu-system-x86", "boot --vm qemu (with seabios)"),
    (
        "kmod",
        "depmod: modules.dep for a stock kernel's tree (run --env vm --kernel)",
    ),
    (
        "xz-utils",
        "unpacking a stock kernel's .ko.xz modules for its guest",
    ),
    (
        "qemu-utils",
        "qemu-img, kept: the same suite's qemu-system-x86 replaces a newer one (say so below)",
    ),
    (
        "busybox-static",
        "the VM initramfs and the Docker payload image",
    ),
    (
        "libvirt-dev",
        "building the libvirt bindings (boot --vm libvirt)",
    ),
    ("libvirt-daemon", "libvirtd for boot --vm libvirt"),
    (
        "libvirt-daemon-driver-qemu",
        "libvirt's QEMU driver (boot --vm libvirt)",
    ),
    ("libvirt-clients", "virsh, inspecting domains by hand"),
    (
        "sysbench",
        "bench-sysbench peer and the sysbench comparison test",
    ),
    (
        "mariadb-server",
        "the server of sysbench oltp_* (the tool starts its own mariadbd with its own data dir)",
    ),
    (
        "nginx",
        "the server `profiler web` starts with its own config (Debian's 1.22)",
    ),
    (
        "sudo",
        "the README's `sudo profiler ...` as typed (a root-only image may lack it; Debian's secure_path has /usr/local/bin)",
    ),
    (
        "criu",
        "migrate --container native: `criu check` decides (and says why it fails)",
    ),
    (
        "openvswitch-switch",
        "ovs-dpctl, carried into the stock-kernel guests for the ovs lab mode (no daemon is used)",
    ),
    (
        "wrk",
        "`profiler web`'s load generator (HTTP/1.1 keep-alive; its Lua done() hands over the latency record)",
    ),
    (
        "chromium",
        "renders the --html report in the HTML test (headless)",
    ),
    (
        "debootstrap",
        "the .deb test's minimal Debian root, a host without a Rust toolchain",
    ),
    (
        "prometheus",
        "the agent test's scraper and promtool (Debian's 2.42)",
    ),
];

pub fn run() -> Result<()> {
    let started = std::time::Instant::now();
    let mut acted = false;
    acted |= packages()?;
    acted |= nightly()?;
    acted |= bpf_linker()?;
    acted |= cargo_deb()?;
    acted |= libvirt_user()?;
    acted |= python_packages()?;
    if acted {
        eprintln!("setup: done in {:.1?}", started.elapsed());
    } else {
        eprintln!(
            "setup: nothing missing, nothing to do ({:.1?})",
            started.elapsed()
        );
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}

fn packages() -> Result<bool> {
    let mut missing: Vec<String> = PACKAGES
        .iter()
        .filter(|(p, _)| !installed(p))
        .map(|(p, _)| p.to_string())
        .collect();
    eprintln!(
        "setup: Debian packages: {} of {} present",
        PACKAGES.len() - missing.len(),
        PACKAGES.len()
    );
    if missing.is_empty() {
        return Ok(false);
    }
    for p in &missing {
        let why = PACKAGES
            .iter()
            .find(|(n, _)| n == p)
            .map_or("", |(_, w)| *w);
        eprintln!("setup:   missing {p}: {why}");
    }
    if Command::new("apt-get").arg("--version").output().is_err() {
        bail!(
            "apt-get not found: install these packages by hand: {}",
            missing.join(" ")
        );
    }
    sh(Command::new("apt-get").args(["update", "-q"]))?;
    // What apt would remove or downgrade, said before it does.
    let plan = output(
        Command::new("apt-get")
            .args(["-s", "install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )
    .unwrap_or_default();
    for line in plan.lines() {
        if let Some(rest) = line.strip_prefix("Remv ") {
            let name = rest.split_whitespace().next().unwrap_or(rest);
            match PACKAGES.iter().find(|(p, _)| *p == name) {
                // One of ours (qemu-utils when the image's is newer than the suite's
                // qemu-system-x86): installed again, in the version that fits.
                Some((p, _)) => {
                    let v = suite_version(p);
                    eprintln!(
                        "setup: apt would remove {rest}; installing the suite's {p} {} in its place",
                        v.as_deref().unwrap_or("")
                    );
                    missing.push(v.map_or(p.to_string(), |v| format!("{p}={v}")));
                }
                None => eprintln!("setup: apt will REMOVE {rest} to install the packages above"),
            }
        }
        if let Some(rest) = line.strip_prefix("Inst ")
            && rest.contains('[')
            && plan_downgrades(rest)
        {
            eprintln!("setup: apt will DOWNGRADE {rest}");
        }
    }
    // A pinned `pkg=version` of ours is a downgrade apt refuses under -y unless told; said above.
    let pinned = missing.iter().any(|p| p.contains('='));
    sh(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(pinned.then_some("--allow-downgrades"))
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    // Debian's nginx starts a site on the host's port 80 when installed, mariadb-server a
    // database on 3306, and openvswitch-switch its daemons: this project only runs the servers
    // with its own config and data, uses no OVS daemon, and leaves the host's network alone.
    for (service, package) in [
        ("nginx", "nginx"),
        ("mariadb", "mariadb-server"),
        ("openvswitch-switch", "openvswitch-switch"),
    ] {
        if missing.iter().any(|p| p.split('=').next() == Some(package))
            && output(Command::new("systemctl").args(["is-enabled", service])).is_some()
        {
            eprintln!(
                "setup: stopping and disabling the {service}.service Debian's package started"
            );
            let _ = Command::new("systemctl")
                .args(["disable", "--now", service])
                .status();
        }
    }
    Ok(true)
}

/// PyPI packages tests use as independent checks: `hdrhistogram` decodes `--hdr-log` output.
fn python_packages() -> Result<bool> {
    let have = Command::new("python3")
        .args(["-c", "import hdrh.log"])
        .output()
        .is_ok_and(|o| o.status.success());
    if have {
        return Ok(false);
    }
    eprintln!("setup: PyPI hdrhistogram missing: the --hdr-log test decodes with it");
    sh(Command::new("python3").args(["-m", "pip", "install", "-q", "hdrhistogram"]))?;
    Ok(true)
}

/// The newest version of `pkg` the configured suites offer (`apt-cache madison`'s first row).
fn suite_version(pkg: &str) -> Option<String> {
    let out = output(Command::new("apt-cache").args(["madison", pkg]))?;
    let row = out.lines().next()?;
    Some(row.split('|').nth(1)?.trim().to_string())
}

/// `Inst pkg [old] (new suite [arch])`: a downgrade when new sorts below old (dpkg's order).
fn plan_downgrades(rest: &str) -> bool {
    // `[old]` only before the `(`: a fresh install has none, and `[arch]` is not a version.
    let head = rest.split('(').next().unwrap_or(rest);
    let old = head.split('[').nth(1).and_then(|s| s.split(']').next());
    let new = rest
        .split('(')
        .nth(1)
        .and_then(|s| s.split_whitespace().next());
    match (old, new) {
        (Some(o), Some(n)) => Command::new("dpkg")
            .args(["--compare-versions", n, "lt", o])
            .status()
            .is_ok_and(|s| s.success()),
        _ => false,
    }
}

fn nightly() -> Result<bool> {
    let mut acted = false;
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("setup: no nightly toolchain (the eBPF crate needs it)");
        sh(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
        acted = true;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("setup: nightly lacks rust-src (needed for -Z build-std=core)");
        sh(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
        acted = true;
    }
    let version = output(Command::new("rustc").args(["+nightly", "--version"])).unwrap_or_default();
    let version = version.trim();
    if version == TESTED_NIGHTLY {
        eprintln!("setup: nightly: {version} (the tested one)");
    } else {
        eprintln!(
            "setup: nightly: {version} differs from the tested {TESTED_NIGHTLY}; it usually works, \
             but if the eBPF build fails, this is the first suspect"
        );
    }
    Ok(acted)
}

fn bpf_linker() -> Result<bool> {
    if let Some(v) = output(Command::new("bpf-linker").arg("--version")) {
        eprintln!("setup: {}", v.trim());
        return Ok(false);
    }
    eprintln!("setup: bpf-linker missing: building it against {LLVM_PREFIX} (a few minutes)");
    if !std::path::Path::new(LLVM_PREFIX).join("lib").exists() {
        bail!("{LLVM_PREFIX} is missing: install Debian's llvm-22-dev first");
    }
    sh(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", LLVM_PREFIX))?;
    Ok(true)
}

/// cargo-deb builds `cargo xtask deb`'s package; Debian does not package it, so crates.io.
fn cargo_deb() -> Result<bool> {
    if let Some(v) = output(Command::new("cargo").args(["deb", "--version"])) {
        eprintln!("setup: {}", v.trim());
        return Ok(false);
    }
    eprintln!("setup: cargo-deb missing (builds the Debian package): installing it from crates.io");
    sh(Command::new("cargo").args([
        "install",
        "cargo-deb",
        "--version",
        CARGO_DEB_VERSION,
        "--locked",
    ]))?;
    Ok(true)
}

/// clippy on the eBPF crate, which only builds for the BPF target.
pub fn clippy_ebpf() -> Result<()> {
    sh(Command::new("cargo")
        .args([
            "+nightly",
            "clippy",
            "-p",
            "profiler-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])
        .env("CARGO_TARGET_DIR", "target/ebpf-clippy"))
}

/// libvirtd's QEMU driver will not start without the user it runs QEMU as, and that user needs
/// /dev/kvm. Debian's libvirt-daemon-system and udev set this up (user libvirt-qemu in group
/// kvm, /dev/kvm root:kvm 0660), but that package also defines a default NAT network that would
/// touch the host's network, so setup does just these steps. Without /dev/kvm access libvirtd's
/// capability probe never matches its cache, and it re-probes QEMU (seconds) on every create.
fn libvirt_user() -> Result<bool> {
    let ok = |cmd: &mut Command| cmd.output().is_ok_and(|o| o.status.success());
    let mut acted = false;
    if !ok(Command::new("getent").args(["group", "kvm"])) {
        eprintln!("setup: creating the system group kvm (owner of /dev/kvm)");
        sh(Command::new("groupadd").args(["--system", "kvm"]))?;
        acted = true;
    }
    if !ok(Command::new("getent").args(["passwd", "libvirt-qemu"])) {
        eprintln!("setup: creating the system user libvirt-qemu (libvirtd runs QEMU as it)");
        sh(Command::new("useradd").args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "--user-group",
            "--groups",
            "kvm",
            "libvirt-qemu",
        ]))?;
        acted = true;
    }
    let groups = Command::new("id")
        .args(["-nG", "libvirt-qemu"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if !groups.split_whitespace().any(|g| g == "kvm") {
        eprintln!("setup: adding libvirt-qemu to the group kvm");
        sh(Command::new("usermod").args(["-aG", "kvm", "libvirt-qemu"]))?;
        acted = true;
    }
    // What udev's rule does on a stock host; devtmpfs forgets it at reboot, setup redoes it.
    if let Ok(meta) = std::fs::metadata("/dev/kvm") {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        if meta.permissions().mode() & 0o060 != 0o060 || meta.gid() == 0 {
            eprintln!("setup: /dev/kvm to root:kvm 0660 (as udev sets it on a stock host)");
            sh(Command::new("chgrp").args(["kvm", "/dev/kvm"]))?;
            sh(Command::new("chmod").args(["0660", "/dev/kvm"]))?;
            acted = true;
        }
    }
    Ok(acted)
}

/// Daemons the integration tests talk to: started here when installed but not running (this
/// kind of machine has no systemd). Docker is left running; the libvirt daemons this started
/// are returned, for [`stop`] after the tests.
pub fn services() -> Result<Vec<&'static str>> {
    docker()?;
    libvirt()
}

fn docker() -> Result<()> {
    let docker_up = || {
        Command::new("docker")
            .arg("info")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if docker_up() {
        eprintln!("setup: Docker daemon: running");
        return Ok(());
    }
    if Command::new("dockerd").arg("--version").output().is_err() {
        bail!(
            "Docker is not installed: apt-get install docker.io (the Docker tests need a daemon)"
        );
    }
    eprintln!("setup: Docker daemon not running: starting dockerd");
    let log = std::fs::File::create("/tmp/profiler-dockerd.log")?;
    Command::new("dockerd")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    for _ in 0..60 {
        if docker_up() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    bail!("dockerd did not come up in 30 s: see /tmp/profiler-dockerd.log")
}

const LIBVIRT_SOCK: &str = "/run/libvirt/libvirt-sock";

/// virtlogd and libvirtd, each started with `-d` when its socket is missing.
fn libvirt() -> Result<Vec<&'static str>> {
    let mut started = Vec::new();
    std::fs::create_dir_all("/var/log/libvirt")
        .map_err(|e| anyhow::anyhow!("creating /var/log/libvirt: {e}"))?;
    for (daemon, sock) in [
        ("virtlogd", "/run/libvirt/virtlogd-sock"),
        ("libvirtd", LIBVIRT_SOCK),
    ] {
        // A socket file outlives a killed daemon: ask whether it answers.
        if std::os::unix::net::UnixStream::connect(sock).is_ok() {
            eprintln!("setup: {daemon}: running");
            continue;
        }
        eprintln!("setup: {daemon} not running: starting `{daemon} -d`");
        if let Err(e) = sh(Command::new(daemon).arg("-d")) {
            stop(&started);
            return Err(e);
        }
        started.push(daemon);
        let t = std::time::Instant::now();
        while std::os::unix::net::UnixStream::connect(sock).is_err() {
            if t.elapsed() > std::time::Duration::from_secs(30) {
                stop(&started);
                bail!(
                    "{daemon} did not answer on {sock} in 30 s: see /var/log/libvirt/{daemon}.log"
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    Ok(started)
}

/// Stops daemons [`services`] started: SIGTERM to the pid in its pid file (`-d` writes
/// /run/<daemon>.pid), then waits for it to go.
pub fn stop(daemons: &[&str]) {
    for d in daemons.iter().rev() {
        let pid = std::fs::read_to_string(format!("/run/{d}.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        let Some(pid) = pid else {
            eprintln!("setup: {d}: no /run/{d}.pid, left running");
            continue;
        };
        eprintln!("setup: stopping {d} (pid {pid})");
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let gone = || !std::path::Path::new(&format!("/proc/{pid}")).exists();
        let t = std::time::Instant::now();
        while !gone() && t.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}
