use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
        /// Print the report as JSON (schema in profiler/src/doctor/mod.rs).
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Doctor { json } => profiler::doctor::run().and_then(|r| {
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                profiler::doctor::print(&r);
            }
            Ok(())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("profiler: {e:#}");
            ExitCode::FAILURE
        }
    }
}
