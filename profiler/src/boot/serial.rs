//! The guest's serial console as timestamped lines, and the boot markers found in them.
//!
//! A line's time is the arrival of its first byte: SeaBIOS and the kernel do not always end a
//! line before the next one starts (a terminal reset `ESC c` separates them), so escape
//! sequences and `\r` break lines too.

use std::time::Instant;

/// What the guest's `/init` prints, followed by the marker's name.
pub const MARK: &str = "PROFILER_MARK";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Esc {
    None,
    /// After ESC: one more byte, or `[` for a CSI sequence.
    Start,
    /// Inside `ESC [`, until a final byte 0x40..=0x7e.
    Csi,
}

/// Splits a byte stream into lines stamped with the arrival of their first byte.
pub struct LineSplitter {
    line: Vec<u8>,
    started: Option<Instant>,
    esc: Esc,
}

impl Default for LineSplitter {
    fn default() -> Self {
        Self::new()
    }
}

impl LineSplitter {
    pub fn new() -> Self {
        Self {
            line: Vec::new(),
            started: None,
            esc: Esc::None,
        }
    }

    /// Feeds bytes that arrived at `now`; returns the lines they completed.
    pub fn feed(&mut self, bytes: &[u8], now: Instant) -> Vec<(Instant, String)> {
        let mut done = Vec::new();
        for &b in bytes {
            match self.esc {
                Esc::Start => {
                    self.esc = if b == b'[' { Esc::Csi } else { Esc::None };
                    continue;
                }
                Esc::Csi => {
                    if (0x40..=0x7e).contains(&b) {
                        self.esc = Esc::None;
                    }
                    continue;
                }
                Esc::None => {}
            }
            match b {
                0x1b => {
                    self.esc = Esc::Start;
                    self.flush(&mut done);
                }
                b'\n' | b'\r' => self.flush(&mut done),
                b if b < 0x20 && b != b'\t' => {}
                b => {
                    self.started.get_or_insert(now);
                    self.line.push(b);
                }
            }
        }
        done
    }

    /// The unterminated rest, at end of stream.
    pub fn finish(&mut self) -> Option<(Instant, String)> {
        let mut done = Vec::new();
        self.flush(&mut done);
        done.pop()
    }

    fn flush(&mut self, done: &mut Vec<(Instant, String)>) {
        if let Some(t) = self.started.take() {
            let text = String::from_utf8_lossy(&self.line).trim_end().to_string();
            if !text.trim().is_empty() {
                done.push((t, text));
            }
        }
        self.line.clear();
    }
}

/// `[    1.834503] rest` -> (1.834503 s, "rest"): the kernel's own clock on a printk line.
pub fn printk_time(line: &str) -> Option<(f64, &str)> {
    let rest = line.trim_start().strip_prefix('[')?;
    let (num, rest) = rest.split_once(']')?;
    let num = num.trim();
    let (secs, frac) = num.split_once('.')?;
    if secs.is_empty()
        || frac.is_empty()
        || !secs.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some((num.parse().ok()?, rest.trim_start()))
}

/// `PROFILER_MARK ready` (with or without a printk prefix) -> "ready".
pub fn marker(line: &str) -> Option<&str> {
    let at = line.find(MARK)?;
    let name = line[at + MARK.len()..].split_whitespace().next()?;
    Some(name)
}

/// SeaBIOS hands over to the boot device (QEMU's linuxboot option ROM for `-kernel`).
pub fn is_firmware_done(line: &str) -> bool {
    line.contains("Booting from ROM")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn escapes_and_carriage_returns_break_lines() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(5);
        let mut s = LineSplitter::new();
        let mut lines = s.feed(
            b"\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16)\r\nBoot",
            t0,
        );
        lines.extend(s.feed(
            b"ing from ROM..\x1bc\x1b[?7l\x1b[2J[    0.000000] Linux",
            t1,
        ));
        lines.extend(s.feed(b" version 6.1\r\n", t1));
        let text: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(
            text,
            [
                "SeaBIOS (version 1.16)",
                "Booting from ROM..",
                "[    0.000000] Linux version 6.1"
            ]
        );
        // A line is stamped with its first byte's arrival.
        assert_eq!(lines[1].0, t0);
        assert_eq!(lines[2].0, t1);
        assert!(s.finish().is_none());
        s.feed(b"tail", t1);
        assert_eq!(s.finish().map(|(_, l)| l), Some("tail".to_string()));
    }

    #[test]
    fn printk_timestamps() {
        assert_eq!(
            printk_time("[    1.834503] PROFILER_MARK init"),
            Some((1.834503, "PROFILER_MARK init"))
        );
        assert_eq!(printk_time("[12345.000001] x"), Some((12345.000001, "x")));
        assert_eq!(printk_time("[mem 0x0-0x9fbff] usable"), None);
        assert_eq!(printk_time("PROFILER_MARK init"), None);
        assert_eq!(printk_time("[ .5] x"), None);
    }

    #[test]
    fn marker_lines() {
        assert_eq!(marker("[    1.858261] PROFILER_MARK ready"), Some("ready"));
        assert_eq!(marker("PROFILER_MARK init"), Some("init"));
        assert_eq!(marker("PROFILER_MARK"), None);
        assert_eq!(marker("init"), None);
        assert!(is_firmware_done("Booting from ROM..."));
        assert!(!is_firmware_done("SeaBIOS (version 1.16)"));
    }
}
