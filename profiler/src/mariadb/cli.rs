//! `profiler mariadb`: a server of the tool's own for clients of yours (Debian's sysbench,
//! the benchmark, the tests): starts it, prints where it listens as one JSON line, holds it
//! until a signal (or `--hold` runs out), then stops it and removes its data.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::Server;

#[derive(Debug, Clone, clap::Args)]
pub struct MariadbArgs {
    /// Stop after this many seconds; 0: hold until SIGINT/SIGTERM.
    #[arg(long, default_value_t = 0, value_name = "SECS",
          value_parser = crate::opts::at_least::<u64, 0>)]
    pub hold: u64,
}

/// Runs the command; the exit code is the signal's (128 + n) when one ended it.
pub fn run(args: &MariadbArgs) -> Result<()> {
    crate::cleanup::set_interruptible();
    let server = Server::start()?;
    let line = serde_json::json!({
        "socket": server.endpoint.socket,
        "host": server.endpoint.host,
        "port": server.endpoint.port,
        "user": server.endpoint.user,
        "db": server.endpoint.db,
        "pid": server.pid(),
        "dir": server.dir,
        "install_s": server.install_s,
        "start_s": server.start_s,
    });
    super::say(&line.to_string())?;
    let end = (args.hold > 0).then(|| Instant::now() + Duration::from_secs(args.hold));
    while !crate::cleanup::stop_requested() && end.is_none_or(|e| Instant::now() < e) {
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(server);
    if crate::cleanup::stop_requested() {
        anyhow::bail!("{}", crate::cleanup::interrupted());
    }
    Ok(())
}
