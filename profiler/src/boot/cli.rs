//! `profiler boot`: the command line of every kind (VMs, native and Docker containers) and the
//! dispatch to them, so `main` only hands over.

use anyhow::{Result, bail};

use super::BootArgs;
use crate::startup::Laps;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum ContainerRuntime {
    Native,
    Docker,
}

#[derive(clap::Args, Debug)]
pub struct BootCli {
    /// Container runtime to start.
    #[arg(long, value_enum, conflicts_with = "vm")]
    pub container: Option<ContainerRuntime>,
    /// --vm, --count, --json, --timeout, --accel
    #[command(flatten)]
    pub common: BootArgs,
    #[command(flatten)]
    pub docker: crate::docker::DockerBootArgs,
    #[command(flatten)]
    pub native: crate::container::NativeArgs,
}

/// Runs and prints the boot `args` ask for; its report's clock starts with the process.
pub fn run(args: &BootCli) -> Result<()> {
    let c = &args.common;
    if c.count == 0 {
        bail!("--count must be at least 1");
    }
    let laps = Laps::since_process_start();
    let Some(runtime) = args.container else {
        return match c.vm {
            Some(_) => super::cli(c, laps),
            None => bail!("say what to boot: --container native|docker or --vm qemu|micro"),
        };
    };
    if c.html.is_some() || c.hdr_log.is_some() {
        bail!("--html and --hdr-log are written for --vm boots, not containers yet: drop them");
    }
    let each = match runtime {
        ContainerRuntime::Docker => crate::fit::Each::docker_container(),
        ContainerRuntime::Native => {
            if c.count as usize > crate::container::MAX_COUNT {
                bail!(
                    "--count must be 1 to {}, not {}",
                    crate::container::MAX_COUNT,
                    c.count
                );
            }
            crate::fit::Each::native_container()
        }
    };
    let asked = format!("--count {}", c.count);
    crate::fit::require(c.force, &asked, c.count.into(), &each)?;
    match runtime {
        ContainerRuntime::Docker => {
            let timeout = std::time::Duration::from_secs_f64(c.timeout.max(1.0));
            let r = crate::docker::boot_from(&args.docker, c.count as usize, timeout, laps)?;
            if super::table(c.json.as_deref()) {
                crate::docker::print(&r);
            }
            super::write_json(c.json.as_deref(), &r)
        }
        ContainerRuntime::Native => {
            let a = crate::container::ContainerBootArgs::with(
                c.count as usize,
                c.json.clone(),
                c.timeout,
                &args.native,
            );
            let r = crate::container::run_from(&a, laps)?;
            if super::table(c.json.as_deref()) {
                crate::container::print(&r);
            }
            Ok(())
        }
    }
}
