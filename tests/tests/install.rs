//! The Debian package (`cargo xtask deb`) on a host without a Rust toolchain: a minimal Debian
//! root (debootstrap, cached in /var/cache/profiler-tests), overlaid per run in a private mount
//! namespace, where apt installs the .deb with its dependencies from Debian's archive and
//! `profiler doctor` runs. The namespace's mounts die with it; the overlay's upper dir is
//! removed after. Needs root and Debian's archive (deb.debian.org).

use std::path::{Path, PathBuf};
use std::process::Command;

use profiler_tests::{profiler, profiler_path, require_root, run_ok};

const CACHE: &str = "/var/cache/profiler-tests";
/// The host's suite: the binary is linked against its glibc.
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";

/// The package `cargo xtask deb --profile <this build's profile>` wrote (`cargo xtask test`
/// builds it), checked to be newer than the binary the other tests run.
fn package() -> PathBuf {
    let bin = profiler_path();
    let profile = bin
        .parent()
        .and_then(Path::file_name)
        .expect("target/<profile>");
    let target = bin.parent().and_then(Path::parent).expect("target/");
    let dir = target.join("debian").join(profile);
    let deb = std::fs::read_dir(&dir)
        .ok()
        .and_then(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|e| e == "deb"))
        })
        .unwrap_or_else(|| {
            panic!(
                "no .deb in {}: build it first (`cargo xtask deb --profile dev`, as `cargo xtask \
                 test` does)",
                dir.display()
            )
        });
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).unwrap();
    assert!(
        modified(&deb) >= modified(&bin),
        "{} is older than {}: rebuild it (`cargo xtask deb --profile dev`)",
        deb.display(),
        bin.display()
    );
    deb
}

/// A minimal Debian (debootstrap's minbase: dpkg, apt, no compilers), made once.
fn base_root() -> PathBuf {
    let base = Path::new(CACHE).join(format!("debian-{SUITE}-minbase"));
    if base.join("usr/bin/apt-get").exists() {
        return base;
    }
    let partial = base.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(CACHE).unwrap();
    eprintln!("building the cached {SUITE} root with debootstrap (once, about a minute)");
    run_ok(
        Command::new("debootstrap")
            .args(["--variant=minbase", SUITE])
            .arg(&partial)
            .arg(MIRROR),
    );
    std::fs::rename(&partial, &base).unwrap();
    base
}

/// Runs in the private mount namespace: overlay, /proc, /sys, /dev, a fresh /run, then in the
/// chroot: no toolchain, apt installs the package, and the installed files and doctor.
const SCRIPT: &str = r#"
set -eu
base=$1 work=$2 deb=$3 archives=$4
mkdir -p "$work/upper" "$work/work" "$work/root"
r=$work/root
mount -t overlay overlay -o "lowerdir=$base,upperdir=$work/upper,workdir=$work/work" "$r"
mount -t proc proc "$r/proc"
mount --rbind /sys "$r/sys"
mount --rbind /dev "$r/dev"
mount -t tmpfs tmpfs "$r/run"
mount --bind "$archives" "$r/var/cache/apt/archives"
cp /etc/resolv.conf "$r/etc/resolv.conf"
cp "$deb" "$r/tmp/"
chroot "$r" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root DEBIAN_FRONTEND=noninteractive /bin/bash -eu -c '
for tool in cargo rustc rustup cc; do
    if command -v $tool; then echo "a toolchain is here: $tool"; exit 3; fi
done
ls -d /root/.cargo /root/.rustup 2>/dev/null && exit 3
apt-get update -q >&2
apt-get install -y -q --no-install-recommends /tmp/*.deb >&2
echo "=== which"; command -v profiler
echo "=== version"; profiler --version
echo "=== depends"; dpkg-query -W -f="\${Depends}\n" profiler
echo "=== files"; dpkg -L profiler | grep -E "man1/profiler(-trace)?\.1\.gz|completions|site-functions" | sort
echo "=== doctor"; profiler doctor --json
'
"#;

fn section<'a>(out: &'a str, name: &str) -> &'a str {
    let start = out
        .find(&format!("=== {name}\n"))
        .unwrap_or_else(|| panic!("no `{name}` section in:\n{out}"))
        + name.len()
        + 5;
    let rest = &out[start..];
    rest[..rest.find("=== ").unwrap_or(rest.len())].trim()
}

#[test]
fn the_deb_installs_and_runs_doctor_without_a_toolchain() {
    require_root();
    let deb = package();
    let base = base_root();
    // Downloaded dependencies are kept between runs, as apt keeps them on a host.
    let archives = Path::new(CACHE).join("apt-archives");
    std::fs::create_dir_all(archives.join("partial")).unwrap();
    let work = std::env::temp_dir().join(format!("profiler-install-test-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "bash",
            "-c",
            SCRIPT,
            "install-test",
        ])
        .arg(&base)
        .arg(&work)
        .arg(&deb)
        .arg(&archives)
        .output()
        .expect("spawning unshare");
    // The namespace and its mounts are gone with the process: only the upper dir is left.
    let removed = std::fs::remove_dir_all(&work);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "installing {} in a {SUITE} root failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        deb.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    removed.expect("removing the overlay's upper dir");

    assert_eq!(section(&stdout, "which"), "/usr/bin/profiler");
    let host_version = run_ok(profiler().arg("--version")).stdout;
    assert_eq!(
        section(&stdout, "version"),
        String::from_utf8_lossy(&host_version).trim()
    );
    let depends = section(&stdout, "depends");
    for dep in ["libc6", "libvirt0"] {
        assert!(
            depends.contains(dep),
            "the package's Depends lack {dep}: {depends}"
        );
    }
    let files = section(&stdout, "files");
    for f in [
        "/usr/share/man/man1/profiler.1.gz",
        "/usr/share/man/man1/profiler-trace.1.gz",
        "/usr/share/bash-completion/completions/profiler",
        "/usr/share/zsh/vendor-completions/_profiler",
        "/usr/share/fish/vendor_completions.d/profiler.fish",
    ] {
        assert!(
            files.lines().any(|l| l == f),
            "{f} not in the package: {files}"
        );
    }

    // The installed doctor sees this kernel as the host's binary does.
    let inside: serde_json::Value =
        serde_json::from_str(section(&stdout, "doctor")).expect("doctor's JSON in the root");
    let host: serde_json::Value =
        serde_json::from_slice(&run_ok(profiler().args(["doctor", "--json"])).stdout).unwrap();
    assert_eq!(inside["btf"], true, "{inside}");
    let usable = |d: &serde_json::Value| -> Vec<(String, bool)> {
        let mut v: Vec<_> = d["mechanisms"]
            .as_object()
            .expect("mechanisms")
            .iter()
            .map(|(k, m)| (k.clone(), m["usable"].as_bool().unwrap()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(usable(&inside), usable(&host));
    assert!(
        usable(&inside).iter().any(|(_, ok)| *ok),
        "no mechanism usable in the root: {inside}"
    );
    // The lab modes as on the host, but nat: iptables is only recommended, and apt here
    // installs no recommends, so the doctor names the package to install.
    for (mode, there) in host["lab_modes"].as_object().expect("lab_modes") {
        let here = &inside["lab_modes"][mode];
        if mode == "nat" && here["buildable"] == false {
            let why = here["why_not"].as_str().unwrap_or_default();
            assert!(why.contains("install the iptables package"), "nat: {why}");
            continue;
        }
        assert_eq!(here, there, "lab mode {mode}");
    }
    assert_eq!(
        inside["kvm"]["micro_vm_pio_exits"],
        host["kvm"]["micro_vm_pio_exits"]
    );
}
