//! Whether a kernel feature is built in, built as a module (loaded or not, its file present or
//! not), or not built at all: from the kernel's own config (/proc/config.gz, else
//! /boot/config-<release>), /sys/module and /lib/modules/<release>. A stock kernel builds
//! most network drivers as modules, so "missing" must say which of these it is.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
};

/// How a feature is present in this kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Build {
    BuiltIn,
    /// `=m`: `file` is the module's file under /lib/modules, if it is there.
    Module {
        loaded: bool,
        file: Option<PathBuf>,
    },
    NotBuilt,
    /// The config could not be read.
    Unknown(String),
}

/// The running kernel's config and module tree (or a test's copy of them).
pub struct Modules {
    config: Result<String, String>,
    /// /lib/modules/<release>
    tree: PathBuf,
    /// /sys/module
    sys: PathBuf,
}

impl Modules {
    pub fn running() -> Modules {
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let config = read_gz("/proc/config.gz").or_else(|e| {
            std::fs::read_to_string(format!("/boot/config-{release}"))
                .map_err(|e2| format!("/proc/config.gz: {e}; /boot/config-{release}: {e2}"))
        });
        Modules {
            config,
            tree: Path::new("/lib/modules").join(&release),
            sys: PathBuf::from("/sys/module"),
        }
    }

    /// A kernel described by files under `root` (tests): `config`, `lib/modules`, `sys/module`.
    pub fn at(root: &Path) -> Modules {
        Modules {
            config: std::fs::read_to_string(root.join("config")).map_err(|e| e.to_string()),
            tree: root.join("lib/modules"),
            sys: root.join("sys/module"),
        }
    }

    /// How `option` (e.g. `CONFIG_VETH`), whose module is `module`, is built here.
    pub fn build(&self, option: &str, module: &str) -> Build {
        let config = match &self.config {
            Ok(c) => c,
            Err(e) => return Build::Unknown(e.clone()),
        };
        let value = config.lines().find_map(|l| {
            l.strip_prefix(option)
                .and_then(|rest| rest.strip_prefix('='))
                .map(str::trim)
        });
        match value {
            Some("y") => Build::BuiltIn,
            Some("m") => Build::Module {
                loaded: self.sys.join(module).join("initstate").exists()
                    || self.sys.join(module).join("refcnt").exists(),
                file: self.find(module),
            },
            _ => Build::NotBuilt,
        }
    }

    /// The module's file in the module tree (any compression), through modules.dep when
    /// present.
    fn find(&self, module: &str) -> Option<PathBuf> {
        let is_it = |p: &str| {
            let base = p.rsplit('/').next().unwrap_or(p);
            let stem = base.split(".ko").next().unwrap_or(base);
            base.contains(".ko") && stem.replace('-', "_") == module.replace('-', "_")
        };
        if let Ok(dep) = std::fs::read_to_string(self.tree.join("modules.dep")) {
            return dep
                .lines()
                .filter_map(|l| l.split(':').next())
                .find(|p| is_it(p))
                .map(|p| self.tree.join(p));
        }
        let mut stack = vec![self.tree.clone()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).ok()?.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if is_it(&p.to_string_lossy()) {
                    return Some(p);
                }
            }
        }
        None
    }

    /// One phrase for a refusal: what the config says and what to do.
    pub fn describe(&self, option: &str, module: &str) -> String {
        match self.build(option, module) {
            Build::BuiltIn => format!("{option}=y, built in"),
            Build::Module { loaded: true, .. } => format!("{option}=m, module {module} loaded"),
            Build::Module {
                loaded: false,
                file: Some(f),
            } => format!(
                "{option}=m: module {module} is built ({}) but not loaded; load it with `modprobe {module}`",
                f.display()
            ),
            Build::Module {
                loaded: false,
                file: None,
            } => format!(
                "{option}=m, but module {module} is missing from {}; install this kernel's modules package",
                self.tree.display()
            ),
            Build::NotBuilt => format!("{option} is not set: not built into this kernel"),
            Build::Unknown(why) => format!("{option}: the kernel's config is not readable ({why})"),
        }
    }
}

fn read_gz(path: &str) -> Result<String, String> {
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut s = String::new();
    flate2::read::GzDecoder::new(f)
        .read_to_string(&mut s)
        .map_err(|e| e.to_string())?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake kernel tree on disk: a stock-style config and module layout this host lacks.
    fn tree() -> (PathBuf, Modules) {
        let root =
            std::env::temp_dir().join(format!("profiler-modules-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let drivers = root.join("lib/modules/kernel/drivers/net");
        std::fs::create_dir_all(&drivers).unwrap();
        std::fs::create_dir_all(root.join("sys/module/vxlan")).unwrap();
        std::fs::write(root.join("sys/module/vxlan/initstate"), "live\n").unwrap();
        std::fs::write(drivers.join("veth.ko.xz"), "").unwrap();
        std::fs::write(drivers.join("vxlan.ko.xz"), "").unwrap();
        std::fs::write(
            root.join("config"),
            "CONFIG_BRIDGE=y\nCONFIG_VETH=m\nCONFIG_VXLAN=m\nCONFIG_IPVLAN=m\n# CONFIG_NET_IPIP is not set\n",
        )
        .unwrap();
        let m = Modules::at(&root);
        (root, m)
    }

    #[test]
    fn tells_built_in_module_loaded_unloaded_missing_and_absent_apart() {
        let (root, m) = tree();
        assert_eq!(m.build("CONFIG_BRIDGE", "bridge"), Build::BuiltIn);
        assert!(matches!(
            m.build("CONFIG_VETH", "veth"),
            Build::Module {
                loaded: false,
                file: Some(_)
            }
        ));
        assert!(matches!(
            m.build("CONFIG_VXLAN", "vxlan"),
            Build::Module { loaded: true, .. }
        ));
        assert_eq!(
            m.build("CONFIG_IPVLAN", "ipvlan"),
            Build::Module {
                loaded: false,
                file: None
            }
        );
        assert_eq!(m.build("CONFIG_NET_IPIP", "ipip"), Build::NotBuilt);
        assert!(m.describe("CONFIG_VETH", "veth").contains("modprobe veth"));
        assert!(m.describe("CONFIG_IPVLAN", "ipvlan").contains("missing"));
        assert!(m.describe("CONFIG_NET_IPIP", "ipip").contains("not built"));
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn this_kernel_reads_its_own_config() {
        // /proc/config.gz or /boot/config-*: every kernel this tool supports has one of them.
        let m = Modules::running();
        assert!(m.config.is_ok(), "{:?}", m.config.as_ref().err());
        assert_ne!(m.build("CONFIG_BPF_SYSCALL", "bpf"), Build::NotBuilt);
    }
}
