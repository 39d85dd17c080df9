//! `cargo xtask <chore>`: the project's build chores, so a new machine needs two commands.

mod bench;
mod install;
mod setup;

use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    chore: Chore,
}

#[derive(Subcommand)]
enum Chore {
    /// Install everything the project needs on a fresh Debian/Ubuntu machine (idempotent).
    Setup,
    /// Setup, then fmt, clippy, unit tests and the privileged integration tests (root).
    Test,
    /// Setup, build, install (`cargo xtask install`), then run `profiler doctor` and
    /// `profiler trace --mode overlay`.
    Demo,
    /// Release build into /usr/local/bin/profiler, with its man pages and shell completions.
    Install {
        /// Where to install: bin/, share/man/man1/, share/{bash-completion,zsh,fish}/.
        #[arg(long, default_value = "/usr/local")]
        prefix: std::path::PathBuf,
    },
    /// A Debian package (cargo-deb) for hosts without a Rust toolchain, in
    /// target/debian/<profile dir>/.
    Deb {
        /// Cargo profile to package: release, or dev for the tests' debug build.
        #[arg(long, default_value = "release")]
        profile: String,
    },
    /// Built-in workloads against iperf3 and sockperf, in host and overlay labs (root).
    BenchWorkloads,
    /// The tracer's perturbation and cost per hook, against a bpftrace peer (root).
    BenchTrace,
    /// The built-in sysbench workloads against Debian's sysbench (root), OLTP on the tool's
    /// MariaDB too (host and a native container).
    BenchSysbench {
        /// Only the OLTP pairs (docs/benchmarks/sysbench-oltp.md).
        #[arg(long)]
        oltp_only: bool,
    },
    /// The tracer of this build against BEFORE (another build's binary), interleaved (root).
    BenchTraceAb {
        /// The earlier build's profiler binary.
        before: String,
        /// This build's binary (default: build target/release/profiler). Both builds embed a
        /// release eBPF object either way; give two debug binaries to skip a release build.
        after: Option<String>,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().chore {
        Chore::Setup => setup::run(),
        Chore::Test => test(),
        Chore::Demo => demo(),
        Chore::Install { prefix } => install::install(&prefix).map(|_| ()),
        Chore::Deb { profile } => setup::run().and_then(|_| install::deb(&profile).map(|_| ())),
        Chore::BenchWorkloads => release().and_then(|_| bench::workloads()),
        Chore::BenchTrace => release().and_then(|_| bench::trace()),
        Chore::BenchSysbench { oltp_only } => release().and_then(|_| {
            if !oltp_only {
                bench::sysbench()?;
            }
            bench::sysbench_oltp()
        }),
        Chore::BenchTraceAb { before, after } => match after {
            Some(after) => bench::trace_ab(&before, &after),
            None => release().and_then(|_| bench::trace_ab(&before, bench::PROFILER)),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command, echoing it first; fails with its exit status.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {}", render(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{}`", render(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", render(cmd));
    }
    Ok(())
}

fn render(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn require_root(chore: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        bail!("{chore} runs privileged tests (BPF, namespaces): run `sudo -E cargo xtask {chore}`");
    }
    Ok(())
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn test() -> Result<()> {
    require_root("test")?;
    setup::run()?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    setup::clippy_ebpf()?;
    let started = setup::services()?;
    let result = tests();
    setup::stop(&started);
    result
}

/// Unit tests, then the privileged integration tests (tests/), which need root.
fn tests() -> Result<()> {
    run(cargo().args([
        "test",
        "--workspace",
        "--exclude",
        "profiler-ebpf",
        "--exclude",
        "profiler-tests",
    ]))?;
    run(cargo().args(["build", "-p", "profiler"]))?;
    // tests/install.rs installs the package of the binary the tests run.
    install::deb("dev")?;
    run(cargo().args(["test", "-p", "profiler-tests", "--", "--test-threads=1"]))?;
    Ok(())
}

fn release() -> Result<()> {
    require_root("bench-*")?;
    setup::run()?;
    run(cargo().args(["build", "--release", "-p", "profiler"]))
}

fn demo() -> Result<()> {
    require_root("demo")?;
    // Setup, the release build, then /usr/local: `profiler` is on PATH from here on.
    let bin = install::install(std::path::Path::new(install::PREFIX))?;
    run(Command::new(&bin).arg("doctor"))?;
    run(Command::new(&bin).args(["trace", "--mode", "overlay"]))
}
