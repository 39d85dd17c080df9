//! `profiler experiment FILE`: a paper's tables reproduced from an experiment file in
//! `configs/` (`spec`), run here (`run`) and printed in the paper's layout beside its figures,
//! with each mode's difference from host explained layer by layer (`report`).

pub mod report;
pub mod run;
pub mod spec;

use std::path::PathBuf;

use anyhow::{Context as _, Result};

pub use report::ExperimentReport;
pub use spec::Spec;

#[derive(clap::Args, Debug)]
pub struct ExperimentArgs {
    /// The experiment file, e.g. configs/suo2018.toml.
    pub file: PathBuf,
    /// Short runs (the file's [quick] section: e.g. 1 s, 1 repetition, few instances).
    #[arg(long)]
    pub quick: bool,
    /// Write the report as JSON: to FILE, or to stdout with no value or `-` (the tables then
    /// go to stderr).
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    pub json: Option<PathBuf>,
}

pub fn main(args: &ExperimentArgs) -> Result<()> {
    let spec = Spec::load(&args.file)?;
    let results = run::run_all(&spec, args.quick)?;
    let r = report::build(
        &spec,
        &args.file.display().to_string(),
        args.quick,
        &results,
    );
    let json = serde_json::to_vec_pretty(&r)?;
    match args.json.as_deref() {
        Some(p) if p.as_os_str() == "-" => {
            // Stdout carries the JSON alone; the tables go to stderr.
            report::write(&mut std::io::stderr().lock(), &r);
            println!("{}", String::from_utf8_lossy(&json));
        }
        Some(p) => {
            report::print(&r);
            std::fs::write(p, json).with_context(|| format!("writing {}", p.display()))?;
        }
        None => report::print(&r),
    }
    Ok(())
}
