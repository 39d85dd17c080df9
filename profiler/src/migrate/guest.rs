//! What runs inside the migrated guest (this binary, in the workload initramfs of
//! `boot::artefacts::workload_initramfs`): a ticker that writes the guest's CLOCK_MONOTONIC to
//! the serial port every few milliseconds, and a loop that dirties a working set of memory at a
//! given rate and says how much it has dirtied. Both write to `/dev/ttyS0` directly (the
//! workload's stdout goes to a file), one whole line per write, so lines never interleave.

use std::{
    fs::File,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

/// The hidden subcommand the guest's `/init` runs (handled before anything else in `main`).
pub const GUEST_COMMAND: &str = "__migrate-guest";
/// `PROFILER_TICK <seq> <guest CLOCK_MONOTONIC ns>`.
pub const TICK: &str = "PROFILER_TICK";
/// `PROFILER_DIRTY <pages dirtied so far> <guest CLOCK_MONOTONIC ns>`, every [`REPORT_EVERY`].
pub const DIRTY: &str = "PROFILER_DIRTY";
/// The working set has been touched once: the rate is steady from here.
pub const READY: &str = "PROFILER_MIGRATE_READY";
pub const PAGE: u64 = 4096;
const REPORT_EVERY: Duration = Duration::from_millis(100);
/// The dirtier works in slices this long; a backlog of more than [`MAX_BACKLOG`] slices (the
/// vCPU could not keep up) is dropped, so the rate never bursts above the one asked.
const SLICE: Duration = Duration::from_millis(5);
const MAX_BACKLOG: f64 = 4.0;

/// The guest's arguments, in order: dirty rate (MiB/s), working set (MiB), tick (ms).
pub fn args(dirty_mib_per_s: u64, set_mib: u64, tick_ms: u64) -> Vec<String> {
    vec![
        GUEST_COMMAND.to_string(),
        dirty_mib_per_s.to_string(),
        set_mib.to_string(),
        tick_ms.to_string(),
    ]
}

pub fn main(args: &[String]) -> ! {
    let code = match run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{GUEST_COMMAND}: {e:#}");
            1
        }
    };
    std::process::exit(code)
}

fn mono_ns() -> u64 {
    crate::kernel::monotonic_ns()
}

/// Sleeps until CLOCK_MONOTONIC reaches `at_ns`.
fn sleep_until(at_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (at_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (at_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: plain clock_nanosleep with a valid timespec; EINTR just wakes us early.
    unsafe {
        libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &ts,
            std::ptr::null_mut(),
        )
    };
}

fn run(args: &[String]) -> Result<()> {
    let num = |i: usize, what: &str| -> Result<u64> {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("argument {i} ({what}) missing or not a number: {args:?}"))
    };
    let (rate, set_mib, tick_ms) = (
        num(0, "MiB/s")?,
        num(1, "set MiB")?,
        num(2, "tick ms")?.max(1),
    );
    if set_mib == 0 {
        bail!("the working set must be at least 1 MiB");
    }
    let tty = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/ttyS0")
        .or_else(|_| std::fs::OpenOptions::new().write(true).open("/dev/console"))
        .context("opening the serial port")?;
    let tty = Arc::new(Mutex::new(tty));
    let say = |tty: &Mutex<File>, line: String| {
        let mut t = tty.lock().unwrap_or_else(|e| e.into_inner());
        let _ = t.write_all(line.as_bytes());
    };

    let pages = (set_mib * (1 << 20) / PAGE) as usize;
    let mut set = vec![0u8; pages * PAGE as usize];
    // The first touch allocates: after it, every write only dirties.
    for p in 0..pages {
        // SAFETY: in bounds; volatile so the stores are not elided.
        unsafe { std::ptr::write_volatile(set.as_mut_ptr().add(p * PAGE as usize), 1) };
    }
    say(&tty, format!("{READY} {pages}\n"));

    let ticker_tty = tty.clone();
    std::thread::Builder::new()
        .name("ticker".into())
        .spawn(move || {
            // Above the dirtier, so a busy vCPU does not delay the ticks.
            let p = libc::sched_param { sched_priority: 10 };
            // SAFETY: sets this thread's own policy.
            unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &p) };
            let tick = tick_ms * 1_000_000;
            let mut next = mono_ns();
            let mut seq = 0u64;
            loop {
                next += tick;
                sleep_until(next);
                let now = mono_ns();
                // Missed ticks (the vCPU did not run) are not made up: the gap shows.
                if now > next + tick {
                    next = now;
                }
                say(&ticker_tty, format!("{TICK} {seq} {now}\n"));
                seq += 1;
            }
        })
        .context("starting the ticker thread")?;

    let per_slice = rate as f64 * (1 << 20) as f64 / PAGE as f64 * SLICE.as_secs_f64();
    let mut owed = 0.0f64;
    let mut done = 0u64;
    let mut at = 0usize;
    let mut value = 2u8;
    let slice = SLICE.as_nanos() as u64;
    let mut next = mono_ns();
    let mut report = next;
    let mut last = next;
    loop {
        next += slice;
        sleep_until(next);
        let now = mono_ns();
        if now > next + slice {
            next = now;
        }
        // Owed by the time that passed (a late wake-up owes more), at most a few slices.
        let passed = (now - last) as f64 / slice as f64;
        last = now;
        owed = (owed + per_slice * passed).min(per_slice * MAX_BACKLOG);
        while owed >= 1.0 {
            // SAFETY: `at` < pages; volatile so every store happens.
            unsafe { std::ptr::write_volatile(set.as_mut_ptr().add(at * PAGE as usize), value) };
            at += 1;
            if at == pages {
                at = 0;
                value = value.wrapping_add(1).max(2);
            }
            done += 1;
            owed -= 1.0;
        }
        if now >= report {
            report = now + REPORT_EVERY.as_nanos() as u64;
            say(&tty, format!("{DIRTY} {done} {now}\n"));
        }
    }
}

/// One tick as the host read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tick {
    pub seq: u64,
    pub guest_ns: u64,
}

/// `PROFILER_TICK 12 345` anywhere in a console line.
pub fn parse_tick(line: &str) -> Option<Tick> {
    let (seq, guest_ns) = two_numbers(line, TICK)?;
    Some(Tick { seq, guest_ns })
}

/// `PROFILER_DIRTY <pages> <ns>` anywhere in a console line.
pub fn parse_dirty(line: &str) -> Option<(u64, u64)> {
    two_numbers(line, DIRTY)
}

fn two_numbers(line: &str, tag: &str) -> Option<(u64, u64)> {
    let at = line.find(tag)?;
    let mut it = line[at + tag.len()..].split_whitespace();
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ticks_and_dirty_reports() {
        assert_eq!(
            parse_tick("PROFILER_TICK 7 123456789"),
            Some(Tick {
                seq: 7,
                guest_ns: 123_456_789
            })
        );
        assert_eq!(
            parse_tick("\r[ 1.0] x PROFILER_TICK 8 9\r").map(|t| t.seq),
            Some(8)
        );
        assert_eq!(parse_tick("PROFILER_TICK 8"), None);
        assert_eq!(parse_tick("PROFILER_TICK x 9"), None);
        assert_eq!(parse_dirty("PROFILER_DIRTY 100 200"), Some((100, 200)));
        assert_eq!(parse_dirty("PROFILER_TICK 100 200"), None);
        assert_eq!(args(64, 32, 2), [GUEST_COMMAND, "64", "32", "2"]);
    }
}
