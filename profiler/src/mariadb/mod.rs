//! A MariaDB server of the tool's own, for `sysbench oltp_*`: Debian's `mariadbd` with its own
//! data directory (made by `mariadb-install-db`), its own unix socket in that directory and
//! its own port on 127.0.0.1, a user `sbtest` (no password) and a database `sbtest`, as
//! sysbench's defaults expect. The directory carries its owner
//! (`/var/tmp/profiler-mariadb/profiler-<pid>-<start>-<i>`); dropping the [`Server`] or a
//! signal stops the server and removes it, and [`reap_stale`] removes what a killed owner
//! left (the server itself dies with its spawner: PR_SET_PDEATHSIG).
//!
//! On disk, not tmpfs: a commit's fsync is part of what OLTP measures.
//! The lifecycle (owner-named state, start, ready, stop, reap) is the part another server
//! (nginx) can share.

pub mod cli;

use std::{
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Serialize;

use crate::cleanup::{self, Owner, owner};

/// Where the servers' data directories live (one per server, named by owner).
pub const DATA_ROOT: &str = "/var/tmp/profiler-mariadb";
const SERVER: &str = "/usr/sbin/mariadbd";
const INSTALL_DB: &str = "/usr/bin/mariadb-install-db";
/// Debian's share directory: the bootstrap SQL, error messages, character sets.
const SHARE: &str = "/usr/share/mysql";
/// What mariadb-install-db feeds `mariadbd --bootstrap`, in its order (without the test db).
const BOOTSTRAP_SQL: [&str; 6] = [
    "mysql_system_tables.sql",
    "mysql_performance_tables.sql",
    "mysql_system_tables_data.sql",
    "fill_help_tables.sql",
    "maria_add_gis_sp_bootstrap.sql",
    "mysql_sys_schema.sql",
];
/// How long the server may take to accept its first connection.
const READY_LIMIT: Duration = Duration::from_secs(60);

/// sysbench's default user and database, created at every start (`--init-file`).
pub const USER: &str = "sbtest";
pub const DB: &str = "sbtest";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Where a client reaches a running server.
#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    pub socket: PathBuf,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub db: String,
}

/// A running `mariadbd` of ours; stopped and its data directory removed on drop.
pub struct Server {
    pub endpoint: Endpoint,
    pub dir: PathBuf,
    /// mariadb-install-db, then the server's start to its first accepted connection.
    pub install_s: f64,
    pub start_s: f64,
    child: Option<Child>,
    key: String,
}

/// This process as the kernel's /proc names it (the host's pid in a native container, whose
/// /proc is the host's), so the host's reaper can tell whether the owner lives.
fn me() -> Owner {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let pid = stat
        .split(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(std::process::id);
    Owner {
        pid,
        start: owner::start_time(pid).unwrap_or(0),
    }
}

/// Checks the server's programs are here, in one line naming the package.
pub fn check_installed() -> Result<()> {
    // Without mariadb-install-db (a Docker image has no shell tools) its SQL is enough.
    let bootstrap = Path::new(INSTALL_DB).exists()
        || BOOTSTRAP_SQL
            .iter()
            .all(|f| Path::new(SHARE).join(f).exists());
    let need: &[&str] = if bootstrap {
        &[SERVER]
    } else {
        &[SERVER, INSTALL_DB]
    };
    for &p in need {
        if !Path::new(p).exists() {
            bail!(
                "{p} not found: install Debian's mariadb-server (cargo xtask setup), or pass --mysql-socket/--mysql-host for a server of your own"
            );
        }
    }
    Ok(())
}

impl Server {
    /// Makes a data directory, starts `mariadbd` on it and waits until it accepts a
    /// connection.
    pub fn start() -> Result<Server> {
        check_installed()?;
        let owner = me();
        let name = owner::name(&owner, NEXT.fetch_add(1, Ordering::Relaxed));
        let dir = Path::new(DATA_ROOT).join(&name);
        std::fs::create_dir_all(DATA_ROOT).with_context(|| format!("creating {DATA_ROOT}"))?;
        let _ = std::fs::set_permissions(DATA_ROOT, std::fs::Permissions::from_mode(0o700));
        // Removed by a signal from here on, whatever step it interrupts.
        let key = format!("mariadb {name}");
        let (undo, server_pid) = (dir.clone(), Arc::new(AtomicU32::new(0)));
        let pid_of = server_pid.clone();
        cleanup::on_signal(&key, move || {
            let pid = pid_of.load(Ordering::SeqCst);
            if pid > 0 {
                // SAFETY: our child, unreaped (the teardown killed it already: a no-op then).
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                wait_dead(pid, Duration::from_secs(2));
            }
            let _ = remove_dir(&undo);
        });
        let mut server = Server {
            endpoint: Endpoint {
                socket: dir.join("mysqld.sock"),
                host: "127.0.0.1".into(),
                port: 0,
                user: USER.into(),
                db: DB.into(),
            },
            dir: dir.clone(),
            install_s: 0.0,
            start_s: 0.0,
            child: None,
            key,
        };
        let t0 = Instant::now();
        install(&dir)?;
        server.install_s = t0.elapsed().as_secs_f64();
        if cleanup::stop_requested() {
            bail!("{}", cleanup::interrupted());
        }
        loopback_up();
        let t1 = Instant::now();
        server.endpoint.port = free_port()?;
        let init = dir.join("init.sql");
        std::fs::write(
            &init,
            format!(
                "CREATE DATABASE IF NOT EXISTS {DB};\n\
                 CREATE USER IF NOT EXISTS '{USER}'@'localhost';\n\
                 CREATE USER IF NOT EXISTS '{USER}'@'127.0.0.1';\n\
                 GRANT ALL ON {DB}.* TO '{USER}'@'localhost';\n\
                 GRANT ALL ON {DB}.* TO '{USER}'@'127.0.0.1';\n"
            ),
        )?;
        let mut cmd = Command::new(SERVER);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--tmpdir={}", tmpdir(&dir).display()))
            .arg(format!("--socket={}", server.endpoint.socket.display()))
            .arg(format!("--port={}", server.endpoint.port))
            .arg("--bind-address=127.0.0.1")
            .arg("--user=root")
            .arg("--skip-name-resolve")
            .arg(format!("--pid-file={}", dir.join("mariadbd.pid").display()))
            .arg(format!("--log-error={}", dir.join("error.log").display()))
            .arg(format!("--init-file={}", init.display()))
            .arg("--max-connections=1000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cleanup::die_with_parent(&mut cmd)
            .spawn()
            .with_context(|| format!("starting {SERVER}"))?;
        cleanup::children::add(child.id() as i32);
        server_pid.store(child.id(), Ordering::SeqCst);
        server.child = Some(child);
        server.wait_ready()?;
        server.start_s = t1.elapsed().as_secs_f64();
        Ok(server)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let end = Instant::now() + READY_LIMIT;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Some(st) = c.try_wait()?
            {
                cleanup::children::remove(c.id() as i32);
                self.child = None;
                bail!(
                    "mariadbd exited ({st}) before accepting connections: {}",
                    self.log_tail()
                );
            }
            // Ready once the init file ran: sysbench's user can log in to its database.
            if self.init_done() {
                return Ok(());
            }
            if cleanup::stop_requested() {
                bail!("{}", cleanup::interrupted());
            }
            if Instant::now() >= end {
                bail!(
                    "mariadbd accepted no connection within {} s: {}",
                    READY_LIMIT.as_secs(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn init_done(&self) -> bool {
        let opts = mysql::OptsBuilder::new()
            .socket(Some(self.endpoint.socket.to_string_lossy()))
            .user(Some(USER))
            .db_name(Some(DB))
            .prefer_socket(true);
        mysql::Conn::new(opts).is_ok()
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("ERROR"))
            .collect::<Vec<_>>();
        let pick = if lines.is_empty() {
            log.lines().rev().take(2).collect::<Vec<_>>()
        } else {
            lines.into_iter().rev().take(2).collect()
        };
        let s = pick.join(" | ");
        if s.is_empty() {
            format!("no error log in {}", self.dir.display())
        } else {
            s
        }
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Stops the server (SIGTERM, SIGKILL after 10 s) and removes its data directory.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            let pid = c.id() as i32;
            // SAFETY: our own unreaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let end = Instant::now() + Duration::from_secs(10);
            while c.try_wait()?.is_none() {
                if Instant::now() >= end {
                    // SAFETY: as above.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            cleanup::children::remove(pid);
        }
        let r = remove_dir(&self.dir);
        cleanup::forget(&self.key);
        r
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("profiler: {e}");
        }
    }
}

/// Until `pid` is a zombie or gone (a SIGKILLed server can still be flushing), at most `limit`.
fn wait_dead(pid: u32, limit: Duration) {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].trim_start().chars().next());
        if matches!(state, None | Some('Z' | 'X')) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Removes a server's directory; a second remover (the signal's teardown beside a drop)
/// can delete entries under the first: retried, gone counts as done.
fn remove_dir(dir: &Path) -> Result<()> {
    let mut last = None;
    for _ in 0..5 {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !dir.exists() => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match last {
        Some(e) if dir.exists() => Err(anyhow!("removing {}: {e}", dir.display())),
        _ => Ok(()),
    }
}

/// `mariadb-install-db` into `dir/data` (system tables; root by unix socket only); where it
/// is absent (a Docker image), the same SQL fed to `mariadbd --bootstrap` as it does.
fn install(dir: &Path) -> Result<()> {
    let tmp = tmpdir(dir);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    if !Path::new(INSTALL_DB).exists() {
        return bootstrap(&dir.join("data"), &tmp);
    }
    let mut cmd = Command::new(INSTALL_DB);
    // Its mariadbd --bootstrap takes TMPDIR (see `tmpdir`).
    cmd.env("TMPDIR", &tmp)
        .arg("--no-defaults")
        .arg(format!("--datadir={}", dir.join("data").display()))
        .arg("--user=root")
        .arg("--auth-root-authentication-method=socket")
        .arg("--skip-test-db")
        .arg("--skip-name-resolve")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = cleanup::die_with_parent(&mut cmd)
        .output()
        .with_context(|| format!("running {INSTALL_DB}"))?;
    if !out.status.success() {
        // Its last line is "[ERROR] Aborting": the first error says why.
        let err = String::from_utf8_lossy(&out.stderr);
        let why = err
            .lines()
            .find(|l| l.contains("ERROR") && !l.contains("Aborting"))
            .or_else(|| err.lines().rev().find(|l| !l.trim().is_empty()))
            .unwrap_or("");
        bail!("{INSTALL_DB} failed ({}): {}", out.status, why.trim());
    }
    Ok(())
}

/// The server's own temporary directory. A starting mariadbd deletes every `#sql*` file in its
/// tmpdir: with /tmp shared, a second server starting removed the first one's temporary tables
/// (8 at once: "Error on delete of '/tmp/#sql-temptable-…'", then "Aborting").
fn tmpdir(dir: &Path) -> PathBuf {
    dir.join("tmp")
}

fn bootstrap(data: &Path, tmp: &Path) -> Result<()> {
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    let mut sql = String::from(
        "create database if not exists mysql;\nuse mysql;\nSET @auth_root_socket='root';\n",
    );
    for f in BOOTSTRAP_SQL {
        let p = Path::new(SHARE).join(f);
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        // mariadb-install-db drops these when it cannot resolve the host name; so do we.
        for l in text.lines().filter(|l| !l.contains("@current_hostname")) {
            sql.push_str(l);
            sql.push('\n');
        }
    }
    let mut cmd = Command::new(SERVER);
    cmd.args([
        "--no-defaults",
        "--bootstrap",
        "--user=root",
        "--log-warnings=0",
    ])
    .arg(format!("--datadir={}", data.display()))
    .arg(format!("--tmpdir={}", tmp.display()))
    .args([
        "--enforce-storage-engine=",
        "--max_allowed_packet=8M",
        "--net_buffer_length=16K",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = cleanup::die_with_parent(&mut cmd)
        .spawn()
        .with_context(|| format!("bootstrapping with {SERVER}"))?;
    let mut stdin = child.stdin.take().context("the bootstrap's stdin")?;
    let fed = stdin.write_all(sql.as_bytes());
    drop(stdin);
    let out = child.wait_with_output()?;
    if let Err(e) = fed.map_err(anyhow::Error::from).and_then(|()| {
        if out.status.success() {
            Ok(())
        } else {
            Err(anyhow!("exit {}", out.status))
        }
    }) {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "{SERVER} --bootstrap failed ({e}): {}",
            err.lines()
                .rev()
                .find(|l| l.contains("ERROR"))
                .unwrap_or("")
        );
    }
    Ok(())
}

/// The files a root filesystem needs to run a server of ours without Debian's packages: the
/// server and its libraries, the bootstrap SQL, English messages and the character sets.
pub fn image_files() -> Result<Vec<PathBuf>> {
    check_installed()?;
    let elf = std::fs::read(SERVER).with_context(|| format!("reading {SERVER}"))?;
    let mut v = vec![PathBuf::from(SERVER)];
    v.extend(crate::exe::libraries(Path::new(SERVER), &elf)?);
    v.extend(BOOTSTRAP_SQL.iter().map(|f| Path::new(SHARE).join(f)));
    v.push(Path::new(SHARE).join("english/errmsg.sys"));
    for e in std::fs::read_dir(Path::new(SHARE).join("charsets"))?.flatten() {
        v.push(e.path());
    }
    Ok(v)
}

/// Whether a workload (this binary's arguments) starts a server of its own: `sysbench
/// oltp_*` without `--mysql-*`.
pub fn workload_needs_server(args: &[String]) -> bool {
    args.first().is_some_and(|a| a == "sysbench")
        && args.get(1).is_some_and(|t| t.starts_with("oltp_"))
        && !args.iter().any(|a| {
            a.starts_with("--mysql-socket")
                || a.starts_with("--mysql-host")
                || a.starts_with("--mysql-port")
        })
}

/// A port on 127.0.0.1 nobody listens on now (the server binds it a moment later).
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(l.local_addr()?.port())
}

/// A fresh network namespace (a native container's) has `lo` down: the server's
/// 127.0.0.1 needs it up. The host's is up already, so this never changes the host.
fn loopback_up() {
    // SAFETY: plain socket + ioctls on a zeroed ifreq naming "lo".
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return;
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) == 0 {
            let flags = ifr.ifr_ifru.ifru_flags;
            if flags & libc::IFF_UP as libc::c_short == 0 {
                ifr.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
                libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr);
            }
        }
        libc::close(fd);
    }
}

/// Data directories whose owner is gone: their `mariadbd` (if one outlived its spawner) is
/// killed, then the directory removed.
pub fn reap_stale() {
    let Ok(dir) = std::fs::read_dir(DATA_ROOT) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(owner) = owner::of_name(&name) else {
            continue;
        };
        if owner.alive() {
            continue;
        }
        let path = e.path();
        let pids = servers_in(&path);
        for &pid in &pids {
            // SAFETY: a mariadbd whose --datadir is in a dead owner's directory.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        // A dying server may still write into the directory: let it go first.
        for &pid in &pids {
            wait_dead(pid, Duration::from_secs(1));
        }
        if remove_dir(&path).is_ok() {
            eprintln!(
                "profiler: removed MariaDB data {} (its owner, pid {}, is gone)",
                path.display(),
                owner.pid
            );
        }
    }
}

/// The pids of running `mariadbd`s whose data directory is under `dir`.
pub fn servers_in(dir: &Path) -> Vec<u32> {
    let want = format!("--datadir={}/", dir.display());
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with(b"mariadbd"))
        })
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.split(|b| *b == 0)
                    .any(|a| String::from_utf8_lossy(a).starts_with(&want))
            })
        })
        .collect()
}

/// Prints one line (for a waiting client such as a script) and flushes it.
pub(crate) fn say(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}
