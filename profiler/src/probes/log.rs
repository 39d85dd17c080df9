//! `--debug-bpf`: the kernel side's messages on rare conditions (aya-log), printed on stderr as
//! `bpf warn: ...` while the command runs. Off by default, and then free: the loader keeps
//! aya-log's ring buffer at one page, no reader runs, and the programs read the subject's
//! `debug` config bit only on their rare branches, so it never runs when off.

use std::{
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use anyhow::{Context as _, Result};
use aya::{Ebpf, EbpfLoader};
use profiler_common::names::map;

/// aya-log-ebpf's own ring buffer size, given back when the log is asked for.
const BYTES: u32 = 1 << 17;
/// The ring buffer's smallest size (one page), for every load that does not log.
pub const SMALLEST: u32 = 4096;

/// Gives the log its ring buffer at full size (before the load).
pub fn enable(loader: &mut EbpfLoader) {
    loader.map_max_entries(map::AYA_LOGS, BYTES);
}

/// Each record as one line on stderr.
struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        eprintln!(
            "bpf {}: {}",
            r.level().as_str().to_ascii_lowercase(),
            r.args()
        );
    }
    fn flush(&self) {}
}

/// A thread printing the kernel's log until dropped (then it prints what is left).
pub struct KernelLog {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl KernelLog {
    /// Starts reading `ebpf`'s log when `on`; the loader must have had `enable`.
    pub fn start(ebpf: &mut Ebpf, on: bool) -> Result<Option<KernelLog>> {
        if !on {
            return Ok(None);
        }
        let mut logger = aya_log::EbpfLogger::init_with_logger(ebpf, Stderr)
            .context("--debug-bpf: opening the kernel side's log")?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bpf-log".into())
            .spawn(move || {
                let fd = logger.as_raw_fd();
                while !stopped.load(Ordering::Relaxed) {
                    let mut p = libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd; the fd lives as long as `logger`.
                    unsafe { libc::poll(&mut p, 1, 100) };
                    logger.flush();
                }
                logger.flush();
            })
            .map_err(|e| crate::cleanup::thread_error("bpf-log", &e))?;
        Ok(Some(KernelLog {
            stop,
            thread: Some(thread),
        }))
    }
}

impl Drop for KernelLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
