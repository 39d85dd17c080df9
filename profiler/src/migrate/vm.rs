//! One qemu-system-x86_64 of a migration: spawned from a thread of its own that lives as long
//! as it does (PR_SET_PDEATHSIG follows the spawning thread), its serial console read line by
//! line and stamped on arrival (CLOCK_REALTIME µs, the clock of QMP's events), its exit caught
//! with `waitid(WNOWAIT)` so a kill never hits a reused pid. Killed on drop and on a signal.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread::JoinHandle,
};

use anyhow::{Context as _, Result, anyhow};

use super::qmp::realtime_us;
use crate::boot::qemu::QEMU;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Destination => "destination",
        }
    }
}

pub enum Out {
    /// A console line and when it arrived (CLOCK_REALTIME µs).
    Line(i64, String),
    Stderr(String),
    Exited(Option<std::process::ExitStatus>),
}

/// Whether the process has been reaped: kill only while it has not (its pid is still ours).
type Reaped = Arc<Mutex<bool>>;

fn kill(pid: i32, reaped: &Reaped) {
    let r = reaped.lock().unwrap_or_else(|e| e.into_inner());
    if !*r {
        // SAFETY: our child, not yet reaped (the lock keeps the waiter from reaping it now).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

pub struct Vm {
    pub side: Side,
    pub pid: u32,
    reaped: Reaped,
    key: String,
    thread: Option<JoinHandle<()>>,
}

impl Vm {
    /// Spawns `cmd` (qemu), sending its console, stderr and exit to `tx`.
    pub fn spawn(side: Side, mut cmd: Command, tx: mpsc::Sender<(Side, Out)>) -> Result<Vm> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Own process group: a Ctrl-C at the terminal reaches us, not it.
            .process_group(0);
        crate::cleanup::die_with_parent(&mut cmd);
        if crate::cleanup::stop_requested() {
            anyhow::bail!(crate::cleanup::interrupted());
        }
        let reaped: Reaped = Arc::new(Mutex::new(false));
        let (spawned_tx, spawned) = mpsc::channel::<Result<u32>>();
        let r = reaped.clone();
        let thread = crate::cleanup::spawn(&format!("qemu-{}", side.name()), move || {
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let _ = spawned_tx.send(Err(anyhow!(
                        "{QEMU} not found: install it with `apt-get install qemu-system-x86`"
                    )));
                    return;
                }
                Err(e) => {
                    let _ = spawned_tx.send(Err(anyhow!("spawning {QEMU}: {e}")));
                    return;
                }
            };
            let pid = child.id() as i32;
            let stdout = child.stdout.take();
            let stderr = child.stderr.take();
            let mut readers = Vec::new();
            if let Some(out) = stdout {
                let tx = tx.clone();
                readers.push(lines_of("qemu-console", out, move |line| {
                    let at = realtime_us();
                    let line = line.trim_matches(|c| c == '\r' || c == '\n');
                    let _ = tx.send((side, Out::Line(at, line.to_string())));
                }));
            }
            if let Some(err) = stderr {
                let tx = tx.clone();
                readers.push(lines_of("qemu-stderr", err, move |line| {
                    let _ = tx.send((side, Out::Stderr(line.trim_end().to_string())));
                }));
            }
            let _ = spawned_tx.send(Ok(pid as u32));
            crate::cleanup::children::wait_exit(pid);
            let status = {
                let mut done = r.lock().unwrap_or_else(|e| e.into_inner());
                *done = true;
                child.wait().ok()
            };
            for h in readers.into_iter().flatten() {
                let _ = h.join();
            }
            let _ = tx.send((side, Out::Exited(status)));
        })?;
        let pid = match spawned.recv() {
            Ok(Ok(pid)) => pid,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                anyhow::bail!("the {} QEMU's spawner ended without a word", side.name());
            }
        };
        let key = format!("migrate-qemu-{}-{pid}", side.name());
        let hook = reaped.clone();
        crate::cleanup::on_signal(&key, move || kill(pid as i32, &hook));
        Ok(Vm {
            side,
            pid,
            reaped,
            key,
            thread: Some(thread),
        })
    }

    pub fn kill(&self) {
        kill(self.pid as i32, &self.reaped);
    }

    pub fn exited(&self) -> bool {
        *self.reaped.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Kills it (if still running) and waits until it is reaped.
    pub fn end(&mut self) {
        self.kill();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        crate::cleanup::forget(&self.key);
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.end();
    }
}

/// The command line shared by both QEMUs (a destination must be built like its source);
/// `incoming` adds `-incoming tcp:127.0.0.1:<port>`.
pub fn command(
    accel: &str,
    memory_mib: u64,
    kernel: &std::path::Path,
    initramfs: &std::path::Path,
    qmp: &std::path::Path,
    incoming: Option<u16>,
) -> Command {
    let mut cmd = Command::new(QEMU);
    cmd.args(["-accel", accel])
        .arg("-m")
        .arg(memory_arg(accel, memory_mib))
        .args(["-smp", "1", "-nographic", "-no-reboot"])
        .args(["-name", "profiler-migrate,debug-threads=on"])
        .args(["-net", "none", "-monitor", "none", "-serial", "stdio"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(crate::boot::qemu::APPEND);
    if let Some(port) = incoming {
        cmd.arg("-incoming").arg(format!("tcp:127.0.0.1:{port}"));
    }
    cmd
}

/// Taken off a TCG guest's RAM, so its size is no multiple of 256 KiB (QEMU rounds `-m` up
/// to 8 KiB). QEMU before 9.0 syncs a RAM block whose size is such a multiple on a fast path
/// that clears the migration dirty bitmap without re-arming TCG's TLB, so stores through a
/// TLB entry that outlives a sync (the kernel's global mappings) are never sent again and the
/// destination's kernel crashes after a multi-round migration (seen here with 7.2: "kernel
/// tried to execute NX-protected page"). The per-page path re-arms the TLB.
pub const TCG_RAM_SHORT_KIB: u64 = 8;

/// `-m` for QEMU: whole MiB, or (TCG) [`TCG_RAM_SHORT_KIB`] less, in KiB.
pub fn memory_arg(accel: &str, memory_mib: u64) -> String {
    if accel == "tcg" {
        format!("{}K", memory_mib * 1024 - TCG_RAM_SHORT_KIB)
    } else {
        memory_mib.to_string()
    }
}

/// A TCP port on 127.0.0.1 free right now (the kernel's pick).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// A thread handing each line of `pipe` to `each` as soon as it is read, until the pipe ends.
fn lines_of<R: std::io::Read + Send + 'static>(
    name: &str,
    pipe: R,
    mut each: impl FnMut(&str) + Send + 'static,
) -> Result<std::thread::JoinHandle<()>> {
    crate::cleanup::spawn(name, move || {
        let mut r = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            each(&String::from_utf8_lossy(&buf));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcg_ram_is_no_multiple_of_256_kib() {
        assert_eq!(memory_arg("kvm", 512), "512");
        let kib: u64 = memory_arg("tcg", 512)
            .trim_end_matches('K')
            .parse()
            .unwrap();
        assert_eq!(kib, 512 * 1024 - 8);
        // QEMU rounds -m up to 8 KiB: it stays as given, and short of a 256 KiB multiple.
        assert_eq!(kib % 8, 0);
        assert_ne!(kib % 256, 0);
    }
}
