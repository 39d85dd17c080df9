//! Progress on a terminal: one line on stderr, rewritten in place (`\r`, erase to the end of
//! the line), cleared when the work is done. Only when stderr is a TTY and the run's JSON does
//! not go to stdout: a pipe, a log file or `--json` sees exactly what it saw before.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static QUIET: AtomicBool = AtomicBool::new(false);
/// Whether a line is on the screen now (so the next message or the end clears it first).
static SHOWN: Mutex<bool> = Mutex::new(false);

/// No progress in this process: its JSON goes to stdout (`--json`, `--json -`).
pub fn quiet() {
    QUIET.store(true, Ordering::Relaxed);
}

/// Progress is drawn: stderr is a terminal, and the run was not made quiet.
pub fn on() -> bool {
    // SAFETY: isatty has no preconditions.
    !QUIET.load(Ordering::Relaxed) && unsafe { libc::isatty(2) } == 1
}

/// Replaces the progress line with `text` (nothing off a terminal).
pub fn show(text: &str) {
    if !on() {
        return;
    }
    let mut shown = SHOWN.lock().unwrap_or_else(|p| p.into_inner());
    // One write: the line is never half drawn between two threads' updates.
    eprint!("\r\x1b[K{text}");
    *shown = true;
}

/// Removes the progress line, if one is shown.
pub fn clear() {
    let mut shown = SHOWN.lock().unwrap_or_else(|p| p.into_inner());
    if *shown {
        eprint!("\r\x1b[K");
        *shown = false;
    }
}

/// Clears the progress line when dropped: on every way out of a step that draws one.
pub struct Cleared;

impl Drop for Cleared {
    fn drop(&mut self) {
        clear();
    }
}

/// A count of finished items of `total` ("booted 3 of 10"), shown as each one ends.
pub struct Count {
    what: String,
    total: u64,
    done: std::sync::atomic::AtomicU64,
}

impl Count {
    pub fn new(what: impl Into<String>, total: u64) -> Count {
        let c = Count {
            what: what.into(),
            total,
            done: 0.into(),
        };
        show(&format!("{}: 0 of {}", c.what, c.total));
        c
    }

    /// One more finished.
    pub fn tick(&self) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        show(&format!("{}: {done} of {}", self.what, self.total));
    }
}

impl Drop for Count {
    fn drop(&mut self) {
        clear();
    }
}

/// A clock for a run of known length ("tracing 3 s of 10 [###-------]"), redrawn twice a
/// second by its own thread until dropped.
pub struct Clock {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Clock {
    pub fn start(what: impl Into<String>, length: Duration) -> Clock {
        if !on() {
            return Clock {
                stop: None,
                thread: None,
            };
        }
        let what = what.into();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t0 = Instant::now();
        let thread = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || {
                loop {
                    show(&bar(&what, t0.elapsed(), length));
                    match rx.recv_timeout(Duration::from_millis(500)) {
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        _ => break,
                    }
                }
                clear();
            })
            .ok();
        Clock {
            stop: Some(tx),
            thread,
        }
    }
}

impl Drop for Clock {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `what 3 s of 10 s [######--------------]`, the bar full at `length` and beyond.
pub fn bar(what: &str, elapsed: Duration, length: Duration) -> String {
    const WIDTH: usize = 20;
    let frac = if length.is_zero() {
        1.0
    } else {
        (elapsed.as_secs_f64() / length.as_secs_f64()).min(1.0)
    };
    let full = (frac * WIDTH as f64).round() as usize;
    format!(
        "{what} {} s of {} s [{}{}]",
        elapsed.as_secs().min(length.as_secs()),
        length.as_secs_f64().ceil() as u64,
        "#".repeat(full),
        "-".repeat(WIDTH - full)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_time_and_stops_full() {
        let ten = Duration::from_secs(10);
        assert_eq!(
            bar("tracing", Duration::from_secs(3), ten),
            "tracing 3 s of 10 s [######--------------]"
        );
        assert_eq!(
            bar("tracing", Duration::from_secs(12), ten),
            "tracing 10 s of 10 s [####################]"
        );
        assert_eq!(
            bar("x", Duration::ZERO, Duration::ZERO),
            "x 0 s of 0 s [####################]"
        );
    }
}
