//! Stock-kernel guests for `run --env vm --kernel debian-6.1|debian-6.12|PATH`: Debian's cloud
//! kernel package extracted (never installed) into the cache with its module tree and config,
//! and a workload initramfs that also carries the modules a command needs (loaded in
//! modules.dep order), the kernel's config and modules.dep (so the doctor in the guest tells a
//! module that isn't loaded from one that isn't built), and the user-space tools a lab runs.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, bail};

use super::artefacts::{self, TempDir};
use super::cpio::Entry;

/// A kernel named on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelChoice {
    /// A Debian cloud kernel, by the metapackage that names its current version.
    Debian {
        name: &'static str,
        meta: &'static str,
    },
    /// A .deb, an extracted tree (`boot/vmlinuz-*`, `lib/modules/<release>`) or a bare image.
    Path(PathBuf),
}

pub const DEBIAN: [(&str, &str); 2] = [
    ("debian-6.1", "linux-image-cloud-amd64"),
    ("debian-6.12", "linux-image-6.12-cloud-amd64"),
];

impl std::str::FromStr for KernelChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some((name, meta)) = DEBIAN.iter().find(|(n, _)| *n == s) {
            return Ok(KernelChoice::Debian { name, meta });
        }
        let p = PathBuf::from(s);
        if p.exists() {
            return Ok(KernelChoice::Path(p));
        }
        Err(format!(
            "{s:?} is neither {} nor an existing .deb, kernel tree or kernel image",
            DEBIAN.map(|d| d.0).join(", ")
        ))
    }
}

/// A kernel and, when it came with one, its module tree.
#[derive(Debug)]
pub struct StockKernel {
    pub label: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` of the package.
    pub modules: Option<PathBuf>,
    /// `boot/config-<release>`.
    pub config: Option<PathBuf>,
    /// A .deb given as PATH is extracted here for this run only.
    _scratch: Option<TempDir>,
}

impl StockKernel {
    pub fn release(&self) -> Option<String> {
        self.modules
            .as_ref()
            .and_then(|m| m.file_name())
            .map(|n| n.to_string_lossy().into_owned())
    }
}

/// The kernel `choice` names, from the cache or fetched into it (`<cache>/stock/<name>`).
pub fn kernel(choice: &KernelChoice) -> Result<StockKernel> {
    match choice {
        KernelChoice::Debian { name, meta } => {
            let dir = artefacts::cache_dir().join("stock").join(name);
            fs::create_dir_all(artefacts::cache_dir().join("stock"))
                .with_context(|| format!("creating {}", dir.display()))?;
            let _lock = lock(&artefacts::cache_dir().join("stock/.lock"))?;
            if !dir.join("package").exists() {
                fetch_debian(meta, &dir)?;
            }
            let label = fs::read_to_string(dir.join("package"))?.trim().to_string();
            tree(&dir, label, None)
        }
        KernelChoice::Path(p) if p.is_dir() => tree(p, p.display().to_string(), None),
        KernelChoice::Path(p) if p.extension().is_some_and(|x| x == "deb") => {
            let scratch = TempDir::new(&artefacts::cache_dir())?;
            artefacts::extract(p, &scratch.0)?;
            depmod(&scratch.0)?;
            let root = scratch.0.clone();
            tree(&root, p.display().to_string(), Some(scratch))
        }
        KernelChoice::Path(p) => Ok(StockKernel {
            label: p.display().to_string(),
            vmlinuz: p.clone(),
            modules: None,
            config: None,
            _scratch: None,
        }),
    }
}

fn lock(path: &Path) -> Result<fs::File> {
    use std::os::fd::AsRawFd as _;
    let f = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    // SAFETY: flock on a descriptor we own; released when it is closed.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!(
            "locking {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(f)
}

/// The versioned package `meta` depends on, downloaded and extracted whole into `dir`.
fn fetch_debian(meta: &str, dir: &Path) -> Result<()> {
    let out = artefacts::apt(&["apt-cache", "depends", "--important", meta])?;
    let package = artefacts::parse_depends(&out, "linux-image-").with_context(|| {
        format!("apt-cache depends {meta} names no linux-image package (run `apt-get update`?)")
    })?;
    let tmp = TempDir::new(&artefacts::cache_dir())?;
    let deb = artefacts::download(&package, &tmp.0)?;
    let version = artefacts::deb_field(&deb, "Version")?;
    let root = tmp.0.join("root");
    artefacts::extract(&deb, &root)?;
    depmod(&root)?;
    fs::write(root.join("package"), format!("{package} {version}\n"))?;
    let _ = fs::remove_dir_all(dir);
    fs::rename(&root, dir).with_context(|| format!("moving the kernel tree to {}", dir.display()))
}

/// modules.dep for an extracted package (its postinst would run depmod): `depmod -b ROOT REL`.
fn depmod(root: &Path) -> Result<()> {
    let Ok(dir) = fs::read_dir(root.join("lib/modules")) else {
        return Ok(());
    };
    for e in dir.flatten() {
        let release = e.file_name().to_string_lossy().into_owned();
        let out = crate::cleanup::die_with_parent(&mut Command::new("depmod"))
            .arg("-b")
            .arg(root)
            .arg(&release)
            .output()
            .context("running depmod (install kmod)")?;
        if !out.status.success() {
            bail!("depmod {release}: {}", artefacts::last_line(&out.stderr));
        }
    }
    Ok(())
}

/// A tree as a kernel package lays it out: `boot/vmlinuz-*`, `boot/config-*`, `lib/modules/*`.
fn tree(root: &Path, label: String, scratch: Option<TempDir>) -> Result<StockKernel> {
    let first = |dir: &Path, prefix: &str| -> Option<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
            })
            .collect();
        v.sort();
        v.pop()
    };
    let vmlinuz = first(&root.join("boot"), "vmlinuz-")
        .ok_or_else(|| anyhow!("{} has no boot/vmlinuz-*", root.display()))?;
    let modules =
        first(&root.join("lib/modules"), "").or_else(|| first(&root.join("usr/lib/modules"), ""));
    Ok(StockKernel {
        label,
        vmlinuz,
        modules,
        config: first(&root.join("boot"), "config-"),
        _scratch: scratch,
    })
}

/// NAT as Docker sets it up through iptables (nft backend) or iptables-legacy.
const NAT_MODULES: &[&str] = &[
    "nf_conntrack",
    "nf_nat",
    "nf_tables",
    "nft_compat",
    "nft_chain_nat",
    "nft_nat",
    "nft_masq",
    "x_tables",
    "xt_MASQUERADE",
    "xt_nat",
    "xt_tcpudp",
    "xt_conntrack",
    "xt_addrtype",
    "ip_tables",
    "iptable_nat",
    "iptable_filter",
];

/// The modules a profiler command needs: each lab mode it names (`--mode X`, `--compare a,b`),
/// netem for injection, KVM (AMD: TCG's `-cpu max` is SVM) for `kvm`. The doctor gets none, so
/// it reports the guest's modules as they are.
pub fn modules_for(args: &[String]) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    let mut add = |ms: &[&'static str]| {
        for m in ms {
            if !out.contains(m) {
                out.push(m);
            }
        }
    };
    let words = args
        .iter()
        .flat_map(|a| a.split([',', '=']))
        .collect::<Vec<_>>();
    let command = args.first().map(String::as_str).unwrap_or("");
    for w in &words {
        match *w {
            "bridge" | "nested" => add(&["veth", "bridge"]),
            "ovs" => add(&["veth", "openvswitch"]),
            "nat" => {
                add(&["veth", "bridge"]);
                add(NAT_MODULES)
            }
            "overlay" => add(&["veth", "bridge", "vxlan"]),
            "macvlan" => add(&["macvlan"]),
            "routed" => add(&["veth"]),
            "ipvlan" | "ipvlan-l3" => add(&["veth", "ipvlan"]),
            "ipip" => add(&["veth", "ipip"]),
            "geneve" => add(&["veth", "bridge", "geneve"]),
            "gre" => add(&["veth", "bridge", "ip_gre"]),
            "--ablation" => {
                add(NAT_MODULES);
                // Its NOTRACK variant: the raw table's CT target.
                add(&["iptable_raw", "xt_CT"])
            }
            _ => {}
        }
    }
    // trace's default mode is overlay, and --self-check builds bridge and overlay labs.
    if command == "trace" {
        add(&["veth", "bridge", "vxlan"]);
    }
    if command == "inject" || words.contains(&"--self-check") || words.contains(&"--netem") {
        // clsact (the TC injector's hook) is sch_ingress, and a BPF classifier needs
        // cls_bpf: modules on Debian.
        add(&["sch_netem", "sch_ingress", "cls_bpf"]);
    }
    if command == "kvm" || command == "boot" {
        add(&["kvm", "kvm_amd"]);
    }
    out
}

/// `modules` and what they depend on, dependencies first, as paths relative to the module
/// tree (modules.dep's). Built-in modules (modules.builtin) are left out; one not in the tree
/// is an error naming it.
pub fn load_order(dep: &str, builtin: &str, modules: &[&str]) -> Result<Vec<String>> {
    let name = |p: &str| -> String {
        let base = p.rsplit('/').next().unwrap_or(p);
        base.split(".ko").next().unwrap_or(base).replace('-', "_")
    };
    let deps: Vec<(String, String, Vec<String>)> = dep
        .lines()
        .filter_map(|l| {
            let (m, rest) = l.split_once(':')?;
            Some((
                name(m),
                m.to_string(),
                rest.split_whitespace().map(String::from).collect(),
            ))
        })
        .collect();
    let builtin: BTreeSet<String> = builtin.lines().map(name).collect();
    let mut order: Vec<String> = Vec::new();
    fn visit(
        path: &str,
        deps: &[(String, String, Vec<String>)],
        order: &mut Vec<String>,
        depth: usize,
    ) {
        if depth > 64 || order.iter().any(|o| o == path) {
            return;
        }
        if let Some((_, _, ds)) = deps.iter().find(|(_, p, _)| p == path) {
            for d in ds {
                visit(d, deps, order, depth + 1);
            }
        }
        order.push(path.to_string());
    }
    for m in modules {
        let m = m.replace('-', "_");
        if builtin.contains(&m) {
            continue;
        }
        let (_, path, _) = deps
            .iter()
            .find(|(n, _, _)| *n == m)
            .ok_or_else(|| anyhow!("module {m} is neither in modules.dep nor built in"))?;
        visit(path, &deps, &mut order, 0);
    }
    Ok(order)
}

/// A module's bytes, decompressed (busybox's insmod reads plain ELF).
fn module_bytes(path: &Path) -> Result<Vec<u8>> {
    let s = path.to_string_lossy();
    let tool = if s.ends_with(".xz") {
        Some("xz")
    } else if s.ends_with(".zst") {
        Some("zstd")
    } else if s.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => fs::read(path).with_context(|| format!("reading {}", path.display())),
        Some(t) => {
            let out = crate::cleanup::die_with_parent(&mut Command::new(t))
                .args(["-dc"])
                .arg(path)
                .output()
                .with_context(|| format!("running {t} -dc (install {t})"))?;
            if !out.status.success() {
                bail!(
                    "{t} -dc {}: {}",
                    path.display(),
                    artefacts::last_line(&out.stderr)
                );
            }
            Ok(out.stdout)
        }
    }
}

/// A module's place in the guest: its tree path without the compression suffix.
fn plain_name(rel: &str) -> String {
    match rel.find(".ko") {
        Some(i) => format!("{}.ko", &rel[..i]),
        None => rel.to_string(),
    }
}

/// The console line of a module the guest could not load (insmod's own error is above it).
pub const INSMOD_FAILED: &str = "PROFILER_INSMOD_FAILED";

/// The user-space tools a lab runs, with what they load at run time (iptables' extensions).
const TOOLS: &[&str] = &["ip", "tc", "iptables", "nft", "ovs-vsctl", "ovs-dpctl"];
const TOOL_DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin", "/bin"];
const XTABLES: &str = "/usr/lib/x86_64-linux-gnu/xtables";

/// What a stock guest carries on top of the workload image: modules, config, modules.dep,
/// tools with their libraries; and the `/init` lines that load the modules.
pub struct Extra {
    pub entries: Vec<(String, u32, Vec<u8>)>,
    /// Shell lines run before the workload.
    pub init: String,
    pub notes: Vec<String>,
}

pub fn extra(k: &StockKernel, modules: &[&str]) -> Result<Extra> {
    let mut entries: Vec<(String, u32, Vec<u8>)> = Vec::new();
    let mut init = String::new();
    let mut notes = Vec::new();
    if let (Some(tree), Some(release)) = (&k.modules, k.release()) {
        let read = |n: &str| fs::read_to_string(tree.join(n)).unwrap_or_default();
        let dep = read("modules.dep");
        let base = format!("lib/modules/{release}");
        for n in ["modules.dep", "modules.builtin", "modules.order"] {
            if let Ok(b) = fs::read(tree.join(n)) {
                entries.push((format!("{base}/{n}"), 0o644, b));
            }
        }
        let order = load_order(&dep, &read("modules.builtin"), modules)?;
        for rel in &order {
            let plain = plain_name(rel);
            entries.push((
                format!("{base}/{plain}"),
                0o644,
                module_bytes(&tree.join(rel))?,
            ));
            init.push_str(&format!(
                "$bb insmod /{base}/{plain} || echo \"{INSMOD_FAILED} {plain}\"\n"
            ));
        }
        if !order.is_empty() {
            notes.push(format!(
                "modules loaded in the guest: {}",
                order
                    .iter()
                    .map(|r| plain_name(r.rsplit('/').next().unwrap_or(r)))
                    .map(|n| n.trim_end_matches(".ko").to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
        if let Some(c) = &k.config {
            entries.push((
                format!("boot/config-{release}"),
                0o644,
                fs::read(c).with_context(|| format!("reading {}", c.display()))?,
            ));
        }
    } else if !modules.is_empty() {
        bail!(
            "the kernel {} came without a module tree; the command needs {}",
            k.label,
            modules.join(", ")
        );
    }
    for tool in TOOLS {
        let Some(path) = TOOL_DIRS
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
        else {
            continue;
        };
        // iptables is a symlink into xtables-nft-multi, which picks its applet by argv[0]:
        // the target's bytes under the tool's own name.
        let real = fs::canonicalize(&path)?;
        let bytes = fs::read(&real).with_context(|| format!("reading {}", real.display()))?;
        for lib in artefacts::libraries(&real, &bytes)? {
            let b = fs::read(&lib).with_context(|| format!("reading {}", lib.display()))?;
            entries.push((
                lib.to_string_lossy().trim_start_matches('/').into(),
                0o755,
                b,
            ));
        }
        entries.push((format!("usr/sbin/{tool}"), 0o755, bytes));
    }
    if let Ok(dir) = fs::read_dir(XTABLES) {
        for e in dir.flatten() {
            let p = e.path();
            if let Ok(b) = fs::read(&p) {
                entries.push((p.to_string_lossy().trim_start_matches('/').into(), 0o644, b));
            }
        }
    }
    Ok(Extra {
        entries,
        init,
        notes,
    })
}

/// Adds `extra`'s files to a workload image's entries, their directories first, each file once.
pub fn merge(entries: &mut Vec<Entry>, extra: &Extra) {
    let mut have: BTreeSet<String> = entries.iter().map(|e| e.name.clone()).collect();
    for (name, mode, bytes) in &extra.entries {
        let parts: Vec<&str> = name.split('/').collect();
        for n in 1..parts.len() {
            let d = parts[..n].join("/");
            if have.insert(d.clone()) {
                entries.push(Entry::dir(&d));
            }
        }
        if have.insert(name.clone()) {
            entries.push(Entry::file(name, *mode, bytes.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/drivers/net/vxlan/vxlan.ko.xz: kernel/net/ipv4/udp_tunnel.ko.xz kernel/net/ipv6/ip6_udp_tunnel.ko.xz\n\
kernel/net/ipv4/udp_tunnel.ko.xz:\n\
kernel/net/ipv6/ip6_udp_tunnel.ko.xz:\n\
kernel/net/ipv4/ipip.ko: kernel/net/ipv4/tunnel4.ko kernel/net/ipv4/ip_tunnel.ko\n\
kernel/net/ipv4/tunnel4.ko:\n\
kernel/net/ipv4/ip_tunnel.ko:\n\
kernel/drivers/net/veth.ko:\n";

    #[test]
    fn dependencies_load_first_each_once_builtins_skipped() {
        let order = load_order(
            DEP,
            "kernel/net/bridge/bridge.ko\n",
            &["vxlan", "ipip", "veth", "bridge", "udp_tunnel"],
        )
        .unwrap();
        assert_eq!(
            order,
            [
                "kernel/net/ipv4/udp_tunnel.ko.xz",
                "kernel/net/ipv6/ip6_udp_tunnel.ko.xz",
                "kernel/drivers/net/vxlan/vxlan.ko.xz",
                "kernel/net/ipv4/tunnel4.ko",
                "kernel/net/ipv4/ip_tunnel.ko",
                "kernel/net/ipv4/ipip.ko",
                "kernel/drivers/net/veth.ko",
            ]
        );
        let e = load_order(DEP, "", &["geneve"]).unwrap_err();
        assert!(e.to_string().contains("geneve"), "{e}");
        assert_eq!(plain_name("a/vxlan.ko.xz"), "a/vxlan.ko");
    }

    #[test]
    fn a_command_names_its_modules() {
        let a = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert!(modules_for(&a("doctor --json")).is_empty());
        assert_eq!(
            modules_for(&a("trace --mode overlay -l 1")),
            ["veth", "bridge", "vxlan"]
        );
        let check = modules_for(&a("trace --self-check -l 1"));
        for m in [
            "veth",
            "bridge",
            "vxlan",
            "sch_netem",
            "sch_ingress",
            "cls_bpf",
        ] {
            assert!(check.contains(&m), "{m}: {check:?}");
        }
        assert!(modules_for(&a("trace --compare host,ipip")).contains(&"ipip"));
        assert!(modules_for(&a("trace --mode=nat --ablation")).contains(&"xt_MASQUERADE"));
        assert!(modules_for(&a("inject --lab x --delay 1ms")).contains(&"sch_netem"));
        assert_eq!(
            modules_for(&a("kvm --micro-vm pio --count 10")),
            ["kvm", "kvm_amd"]
        );
    }

    #[test]
    fn kernel_names_parse() {
        assert!(matches!(
            "debian-6.12".parse::<KernelChoice>(),
            Ok(KernelChoice::Debian {
                meta: "linux-image-6.12-cloud-amd64",
                ..
            })
        ));
        let e = "debian-5".parse::<KernelChoice>().unwrap_err();
        assert!(e.contains("debian-6.1"), "{e}");
    }
}
