use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use profiler::lab::{self, Lab, Mode};

#[derive(Parser)]
#[command(
    name = "profiler",
    version,
    about = "eBPF profiler: where virtualization overhead comes from"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// What this kernel allows (real load/attach attempts) and the attach plan that follows.
    Doctor {
        /// The report as JSON (schema in profiler/src/doctor/mod.rs): on stdout (no FILE, or
        /// -) or into FILE.
        #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
        json: Option<std::path::PathBuf>,
    },
    /// Container network labs in network namespaces.
    Lab {
        #[command(subcommand)]
        command: LabCommand,
    },
    /// Per-packet latency attributed to each network layer (builds a lab and drives traffic).
    #[command(allow_negative_numbers = true)]
    Trace(profiler::trace::cli::TraceArgs),
    /// netperf-style workloads across a lab (or against `profiler serve` with -H).
    #[command(allow_negative_numbers = true)]
    Bench {
        #[command(flatten)]
        args: profiler::workload::BenchArgs,
        /// Run N times (in one lab) and report all N, `{"repeat": N, "runs": [...]}` with
        /// --json, for `profiler check`'s run-to-run spread.
        #[arg(long, default_value_t = 1, value_name = "N",
              value_parser = profiler::opts::at_least::<u32, 1>)]
        repeat: u32,
    },
    /// The server side of `bench -H`, for measuring two real hosts.
    Serve(profiler::workload::ServeArgs),
    /// A paper's tables reproduced from an experiment file (configs/*.toml): the paper's
    /// figures, ours, and both ratios against host, with the layers that explain each mode.
    Experiment(profiler::experiment::ExperimentArgs),
    /// Compare a report with a baseline (trace, bench, experiment): exit 1 on a regression,
    /// naming it; 2 on bad input.
    Check(profiler::check::CheckArgs),
    /// Delay packets on one hook of one lab device (a TC program; netem where absent).
    Inject(profiler::inject::InjectArgs),
    /// Trace continuously within the overhead budget and serve Prometheus metrics.
    #[command(allow_negative_numbers = true)]
    Agent(profiler::agent::AgentArgs),
    /// Start-up latency in phases: containers (native, docker) or VMs.
    #[command(allow_negative_numbers = true)]
    Boot(profiler::boot::cli::BootCli),
    /// Live migration of a VM in phases: setup, pre-copy rounds, stop-and-copy, resume.
    #[command(allow_negative_numbers = true)]
    Migrate(profiler::migrate::MigrateArgs),
    /// KVM exits by reason (or KVM_RUN round trips), of running VMs or the built-in micro-VM.
    #[command(allow_negative_numbers = true)]
    Kvm(profiler::kvm::cli::KvmArgs),
    /// sysbench-style workloads: cpu, memory, fileio, threads, mutex, oltp_* (sysbench's options).
    #[command(allow_negative_numbers = true)]
    Sysbench(profiler::sysbench::SysbenchArgs),
    /// A MariaDB of the tool's own (own data dir, socket and loopback port) for other clients:
    /// prints where as one JSON line, holds it until a signal, then removes it.
    Mariadb(profiler::mariadb::cli::MariadbArgs),
    /// nginx serving across environments (host, native, docker) under wrk: requests/s, the
    /// response-time histogram, the server's CPU, and the network layers under it.
    #[command(allow_negative_numbers = true)]
    Web(profiler::web::WebArgs),
    /// Run a workload (this tool's own, e.g. `sysbench cpu --time 5`) in an environment.
    #[command(allow_negative_numbers = true)]
    Run {
        #[arg(long, value_enum)]
        env: profiler::envs::Env,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600, value_parser = profiler::opts::at_least::<u64, 1>)]
        timeout: u64,
        /// QEMU's accelerator for `--env vm`: auto probes KVM with a stock guest, else TCG.
        #[arg(long, value_enum, default_value_t = profiler::boot::AccelChoice::Auto)]
        accel: profiler::boot::AccelChoice,
        /// Run even when the workload's threads or memory do not fit this machine.
        #[arg(long)]
        force: bool,
        /// `--env vm` on a stock kernel: debian-6.1, debian-6.12, or a PATH (.deb, extracted
        /// tree, or kernel image). Any profiler command runs in it, with the modules and
        /// tools it needs; its stdout, stderr and exit status are the run's.
        #[arg(long, value_name = "debian-6.1|debian-6.12|PATH")]
        kernel: Option<profiler::boot::stock::KernelChoice>,
        /// With --kernel: modules to load in the guest besides those the command needs.
        #[arg(long, value_delimiter = ',', requires = "kernel")]
        modules: Vec<String>,
        /// With --kernel and --accel tcg: the guest's clock from QEMU's instruction counter
        /// (1 ns an instruction, idle time skipped). Its timers (netem's delay among them) fire
        /// exactly when due, where plain TCG delivers them tens of microseconds late; durations
        /// are then the emulator's model, not wall time.
        #[arg(long, requires = "kernel")]
        icount: bool,
        /// The workload: a profiler subcommand and its options, e.g. `sysbench cpu --time 5`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        workload: Vec<String>,
    },
    /// N identical instances at once, per N: each one's result and the slowdown against one
    /// instance on the host.
    #[command(allow_negative_numbers = true)]
    Density {
        #[arg(long, value_enum)]
        env: profiler::envs::Env,
        /// sysbench test to run: cpu, memory, fileio, threads, mutex.
        #[arg(long, default_value = "cpu")]
        workload: String,
        /// Instance counts, e.g. 1,2,4,8.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4",
              value_parser = profiler::opts::at_least::<usize, 1>)]
        instances: Vec<usize>,
        /// Seconds each instance runs.
        #[arg(long, default_value = "3", value_parser = profiler::opts::seconds_text)]
        time: String,
        /// The report as JSON: on stdout instead of the table (no FILE, or -) or into FILE.
        #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
        json: Option<std::path::PathBuf>,
        /// Write the report as one self-contained HTML page: the slowdown curve over the
        /// instance counts, and the table.
        #[arg(long, value_name = "FILE")]
        html: Option<std::path::PathBuf>,
        /// QEMU's accelerator for `--env vm`: auto probes KVM with a stock guest, else TCG.
        #[arg(long, value_enum, default_value_t = profiler::boot::AccelChoice::Auto)]
        accel: profiler::boot::AccelChoice,
        /// Start even what does not fit this machine's memory, tasks or CPUs.
        #[arg(long)]
        force: bool,
    },
    /// Shell completions for this command line, on stdout (`cargo xtask install` and the
    /// Debian package install them).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The man page (roff) on stdout (`profiler manpage | man -l -`), or with DIR every page
    /// (profiler.1, profiler-trace.1, ...) written into DIR.
    Manpage { dir: Option<std::path::PathBuf> },
}

#[derive(Subcommand)]
enum LabCommand {
    /// Build a lab and leave it up (until `lab down`).
    Up {
        #[arg(long, value_enum)]
        mode: Mode,
        /// Lab id (1-12 lowercase letters or digits); the first free number if absent.
        #[arg(long)]
        id: Option<String>,
        /// The lab's description as JSON: on stdout (no FILE, or -) or into FILE.
        #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
        json: Option<std::path::PathBuf>,
    },
    /// Remove a lab, or every lab.
    Down {
        id: Option<String>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// The labs that exist.
    List {
        /// The labs as JSON: on stdout (no FILE, or -) or into FILE.
        #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
        json: Option<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    profiler::startup::mark_process_start();
    // A native container's payload is this binary: before the signal thread, so it is nothing else.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(profiler::container::PAYLOAD_COMMAND) {
        profiler::container::payload_main(&argv[2..]);
    }
    // The migrated guest's workload (this binary, in its initramfs).
    if argv.get(1).map(String::as_str) == Some(profiler::migrate::guest::GUEST_COMMAND) {
        profiler::migrate::guest::main(&argv[2..]);
    }
    profiler::cleanup::install_signal_teardown();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version as clap prints them; a bad command line in one line.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            eprintln!(
                "profiler: {}",
                profiler::opts::one_line(&e.render().to_string())
            );
            return ExitCode::from(2);
        }
    };
    // Generated from the clap definitions; they touch nothing on the machine.
    if let Some(done) = generated(&cli.command) {
        return match done {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("profiler: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // The gate reads two files and needs nothing else: exit 1 is a regression, 2 bad input.
    if let Command::Check(args) = &cli.command {
        return match profiler::check::main(args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!(
                    "profiler check: {}",
                    profiler::opts::one_line(&format!("{e:#}"))
                );
                ExitCode::from(2)
            }
        };
    }
    if let Command::Run {
        env,
        kernel: Some(_),
        ..
    } = &cli.command
        && *env != profiler::envs::Env::Vm
    {
        eprintln!("profiler: --kernel needs --env vm (a stock kernel boots in a guest)");
        return ExitCode::from(2);
    }
    if let Command::Run {
        icount: true,
        accel,
        ..
    } = &cli.command
        && *accel != profiler::boot::AccelChoice::Tcg
    {
        eprintln!(
            "profiler: --icount needs --accel tcg (QEMU counts instructions only where it emulates them)"
        );
        return ExitCode::from(2);
    }
    // A bad experiment file is bad input: refused before any lab or guest starts.
    if let Command::Experiment(a) = &cli.command
        && let Err(e) = profiler::experiment::Spec::load(&a.file)
            .and_then(|s| profiler::experiment::run::matrix(&s, a.quick).map(|_| ()))
    {
        eprintln!("profiler: {}", profiler::opts::one_line(&format!("{e:#}")));
        return ExitCode::from(2);
    }
    // Whatever a killed run left, whoever it was, before this one starts (as dockerd does).
    profiler::cleanup::register_reapers(profiler::REAPERS);
    profiler::cleanup::reap_stale();
    profiler::migrate::reap_stale();
    // JSON on stdout: nothing else is drawn on the terminal (progress goes to stderr).
    if json_to_stdout(&cli.command) {
        profiler::progress::quiet();
    }
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("profiler: {e:#}");
            // A run a signal cut short says so in its exit code (130 for SIGINT, 143 for
            // SIGTERM), as the signal thread does when it ends the run itself.
            match profiler::cleanup::signalled() {
                Some(sig) => ExitCode::from(profiler::cleanup::exit_code(sig)),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// Whether the command's report goes to stdout as JSON (`--json`, `--json -`; `run` always).
fn json_to_stdout(command: &Command) -> bool {
    let json = match command {
        Command::Run { .. } => return true,
        Command::Doctor { json }
        | Command::Density { json, .. }
        | Command::Lab {
            command: LabCommand::Up { json, .. } | LabCommand::List { json },
        } => json.as_deref(),
        Command::Trace(a) => a.json.as_deref(),
        Command::Bench { args, .. } => args.json.as_deref(),
        Command::Experiment(a) => a.json.as_deref(),
        Command::Boot(a) => a.common.json.as_deref(),
        Command::Migrate(a) => a.json.as_deref(),
        Command::Kvm(a) => a.json.as_deref(),
        Command::Sysbench(a) => a.json.as_deref(),
        _ => None,
    };
    profiler::export::json::to_stdout(json)
}

/// `completions` and `manpage`, from the clap definitions; None for every other command.
fn generated(command: &Command) -> Option<Result<()>> {
    use anyhow::Context as _;
    use clap::CommandFactory as _;
    use std::io::Write as _;
    let mut out = Vec::new();
    match command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "profiler", &mut out)
        }
        Command::Manpage { dir: Some(dir) } => {
            return Some(
                clap_mangen::generate_to(Cli::command().name("profiler"), dir)
                    .with_context(|| format!("writing the man pages into {}", dir.display())),
            );
        }
        Command::Manpage { dir: None } => {
            if let Err(e) = clap_mangen::Man::new(Cli::command()).render(&mut out) {
                return Some(Err(e.into()));
            }
        }
        _ => return None,
    }
    // A closed pipe (`| head`) is the reader's choice, not an error.
    match std::io::stdout().write_all(&out) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Some(Err(e.into())),
        _ => Some(Ok(())),
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Doctor { json } => {
            let r = profiler::doctor::run()?;
            profiler::export::json::emit(json.as_ref(), &r, profiler::doctor::print)
        }
        Command::Lab { command } => {
            profiler::kernel::require_root("profiler lab")?;
            lab_command(command)
        }
        Command::Trace(args) => {
            // What would only fail at the end, or trace nothing, is refused before the start.
            profiler::opts::output_file(args.json.as_deref(), "--json")?;
            profiler::opts::output_file(args.html.as_deref(), "--html")?;
            if args.attach_only {
                args.filter.check()?;
            }
            profiler::trace::cli::main(&args)
        }
        Command::Bench { args, repeat } => bench(&args, repeat),
        Command::Serve(args) => args.run(),
        Command::Inject(args) => profiler::inject::run(&args),
        Command::Agent(args) => profiler::agent::run(&args),
        Command::Experiment(args) => profiler::experiment::main(&args),
        Command::Check(_) | Command::Completions { .. } | Command::Manpage { .. } => {
            unreachable!("dispatched before")
        }
        Command::Boot(args) => {
            profiler::opts::output_file(args.common.json.as_deref(), "--json")?;
            profiler::boot::cli::run(&args)
        }
        Command::Migrate(args) => {
            profiler::opts::output_file(args.json.as_deref(), "--json")?;
            profiler::migrate::cli(&args)
        }
        Command::Kvm(args) => {
            profiler::opts::output_file(args.json.as_deref(), "--json")?;
            profiler::kvm::cli::run(&args)
        }
        Command::Run {
            env,
            timeout,
            accel,
            kernel: Some(kernel),
            modules,
            icount,
            workload,
            ..
        } => {
            workload_parses(&workload)?;
            profiler::envs::check_place(env, &workload)?;
            let r = profiler::envs::stock(
                &kernel,
                &workload,
                &modules,
                std::time::Duration::from_secs(timeout),
                accel,
                None,
                icount,
            )?;
            debug_assert_eq!(env, profiler::envs::Env::Vm);
            print!("{}", r.stdout);
            if !r.stdout.is_empty() && !r.stdout.ends_with('\n') {
                println!();
            }
            eprintln!(
                "profiler run: {} under {} in {:.1} s (qemu's spawn to exit)",
                r.kernel,
                r.accel.name(),
                r.total_ns as f64 / 1e9
            );
            for n in &r.notes {
                eprintln!("profiler run: {n}");
            }
            if r.exit != 0 {
                eprintln!("{}", r.stderr.trim_end());
                use std::io::Write as _;
                let _ = std::io::stdout().flush();
                std::process::exit(r.exit.clamp(1, 255));
            }
            Ok(())
        }
        Command::Run {
            env,
            timeout,
            accel,
            force,
            mut workload,
            ..
        } => {
            workload_parses(&workload)?;
            profiler::envs::check_place(env, &workload)?;
            // What cannot fit the machine says so first; then the workload's own checks.
            if let Some((_, _, asked)) = profiler::sysbench::footprint(&workload) {
                profiler::envs::check_fit(env, &workload, &asked, 1, force)?;
                // The workload checks itself too, in its environment: it was told.
                if force {
                    workload.push("--force".into());
                }
            }
            profiler::sysbench::validate_workload(&workload)?;
            let r = profiler::envs::run_from(
                env,
                &workload,
                std::time::Duration::from_secs(timeout),
                accel,
                profiler::startup::Laps::since_process_start(),
            )?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(())
        }
        Command::Density {
            env,
            workload,
            instances,
            time,
            json,
            html,
            accel,
            force,
        } => {
            profiler::opts::output_file(json.as_deref(), "--json")?;
            profiler::opts::output_file(html.as_deref(), "--html")?;
            let w = vec!["sysbench".to_string(), workload, "--time".to_string(), time];
            workload_parses(&w)?;
            profiler::envs::check_place(env, &w)?;
            profiler::sysbench::validate_workload(&w)?;
            let d = profiler::envs::density(
                env,
                &w,
                &instances,
                std::time::Duration::from_secs(600),
                accel,
                force,
                profiler::startup::Laps::since_process_start(),
            )?;
            if let Some(p) = &html {
                std::fs::write(p, profiler::envs::html::density(&d))
                    .map_err(|e| anyhow::anyhow!("writing {}: {e}", p.display()))?;
            }
            profiler::export::json::emit(json.as_ref(), &d, profiler::envs::print_density)
        }
        Command::Mariadb(args) => {
            profiler::kernel::require_root("profiler mariadb")?;
            profiler::mariadb::cli::run(&args)
        }
        Command::Web(args) => profiler::web::main(&args),
        Command::Sysbench(args) => {
            let r = profiler::sysbench::run(&args)?;
            profiler::export::json::emit(args.json.as_ref(), &r, profiler::sysbench::print)
        }
    }
}

/// A workload's arguments, checked here before an environment is started for it (the
/// workload parses them again where it runs).
fn workload_parses(workload: &[String]) -> Result<()> {
    let argv = std::iter::once("profiler").chain(workload.iter().map(String::as_str));
    match Cli::try_parse_from(argv) {
        Ok(_) => Ok(()),
        // `--help` or `--version` in a workload: its environment prints them.
        Err(e) if !e.use_stderr() => Ok(()),
        Err(e) => anyhow::bail!(
            "the workload's arguments: {}",
            profiler::opts::one_line(&e.render().to_string())
        ),
    }
}

fn bench(args: &profiler::workload::BenchArgs, repeat: u32) -> Result<()> {
    use clap::ValueEnum as _;
    use profiler::workload::{self, Endpoints};
    let opts = args.options()?;
    let mut reports = vec![];
    if let Some(host) = args.remote()? {
        for _ in 0..repeat {
            reports.push(workload::run_remote(host, args.port, &opts)?);
        }
    } else {
        profiler::kernel::require_root("profiler bench across a lab")?;
        let mode = Mode::from_str(&args.mode, true).map_err(|_| {
            let valid: Vec<&str> = Mode::ALL.iter().map(|m| m.name()).collect();
            anyhow::anyhow!(
                "unknown mode '{}': expected one of {}",
                args.mode,
                valid.join(", ")
            )
        })?;
        let (desc, _owned) = lab::existing_or_new(args.lab.as_deref(), mode)?;
        let endpoints = Endpoints::in_lab(&desc);
        for i in 0..repeat {
            if profiler::cleanup::stop_requested() {
                anyhow::bail!("interrupted");
            }
            if repeat > 1 {
                eprintln!("profiler: bench run {}/{repeat}", i + 1);
            }
            reports.push(workload::run(&endpoints, &opts)?);
        }
    }
    match reports.as_slice() {
        [one] => profiler::export::json::emit(args.json.as_ref(), one, workload::print),
        all => profiler::export::json::emit(
            args.json.as_ref(),
            &serde_json::json!({ "repeat": repeat, "runs": all }),
            |_| all.iter().for_each(workload::print),
        ),
    }
}

fn lab_command(command: LabCommand) -> Result<()> {
    match command {
        LabCommand::Up { mode, id, json } => {
            let desc = Lab::up(mode, id.as_deref())?.keep()?;
            profiler::export::json::emit(json.as_ref(), &desc, |desc| {
                println!(
                    "lab {} ({}) is up: client in {} ({}), server in {} ({}), connect to {}",
                    desc.id,
                    desc.mode,
                    desc.client.netns,
                    desc.client.addr,
                    desc.server.netns,
                    desc.server.addr,
                    desc.connect
                );
                println!("remove it with: profiler lab down {}", desc.id);
            })
        }
        LabCommand::Down { id, all } => {
            let ids: Vec<String> = match (id, all) {
                (_, true) => lab::list().into_iter().map(|d| d.id).collect(),
                (Some(id), false) => {
                    lab::find(&id)?;
                    vec![id]
                }
                (None, false) => anyhow::bail!("name a lab (`profiler lab down ID`) or use --all"),
            };
            for id in ids {
                lab::remove(&id)?;
                println!("lab {id} removed");
            }
            Ok(())
        }
        LabCommand::List { json } => {
            let labs = lab::list();
            profiler::export::json::emit(json.as_ref(), &labs, |labs| {
                if labs.is_empty() {
                    println!("no labs");
                    return;
                }
                println!("{:<10} {:<8} {:<10} namespaces", "id", "mode", "owner");
                for d in labs {
                    let owner = d
                        .owner
                        .as_ref()
                        .map_or("user".to_string(), |o| format!("pid {}", o.pid));
                    println!(
                        "{:<10} {:<8} {:<10} {}",
                        d.id,
                        d.mode,
                        owner,
                        d.namespaces.join(" ")
                    );
                }
            })
        }
    }
}
