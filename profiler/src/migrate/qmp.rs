//! A QMP client: JSON lines over QEMU's unix socket. One command in flight at a time; events
//! arrive between responses and are kept with QEMU's own timestamp (gettimeofday, µs), which
//! is the clock [`realtime_us`] reads, so two QEMUs' events and our own stamps line up.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::{Value, json};

/// CLOCK_REALTIME in µs: the clock of QMP's event timestamps.
pub fn realtime_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub name: String,
    pub data: Value,
    /// QEMU's timestamp (CLOCK_REALTIME µs).
    pub ts_us: i64,
}

impl Event {
    /// `MIGRATION`'s status, if this is one.
    pub fn status(&self) -> Option<&str> {
        (self.name == "MIGRATION")
            .then(|| self.data.get("status").and_then(Value::as_str))
            .flatten()
    }
}

/// QEMU's `{"seconds": s, "microseconds": us}`.
pub fn parse_event(v: &Value) -> Option<Event> {
    let name = v.get("event")?.as_str()?.to_string();
    let ts = v.get("timestamp")?;
    let ts_us = ts.get("seconds")?.as_i64()? * 1_000_000 + ts.get("microseconds")?.as_i64()?;
    Some(Event {
        name,
        data: v.get("data").cloned().unwrap_or(Value::Null),
        ts_us,
    })
}

pub struct Qmp {
    /// Which QEMU, for messages ("source", "destination").
    pub who: &'static str,
    stream: UnixStream,
    replies: mpsc::Receiver<Value>,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Qmp {
    /// Connects to `path` (retrying until QEMU has created it, or `deadline`), reads the
    /// greeting and leaves capabilities negotiation mode.
    pub fn connect(who: &'static str, path: &Path, deadline: Instant) -> Result<Qmp> {
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    bail!("the {who} QEMU's QMP socket {}: {e}", path.display())
                }
                Err(_) => {
                    if crate::cleanup::stop_requested() {
                        bail!(crate::cleanup::interrupted());
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        };
        let reader = stream.try_clone().context("cloning the QMP socket")?;
        let (tx, replies) = mpsc::channel();
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        crate::cleanup::spawn(&format!("qmp-{who}"), move || {
            let mut r = BufReader::new(reader);
            let mut line = Vec::new();
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                if let Some(e) = parse_event(&v) {
                    ev.lock().unwrap_or_else(|e| e.into_inner()).push(e);
                } else if tx.send(v).is_err() {
                    break;
                }
            }
        })?;
        let mut q = Qmp {
            who,
            stream,
            replies,
            events,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let greeting = q.reply(left.max(Duration::from_secs(5)))?;
        if greeting.get("QMP").is_none() {
            bail!("the {who} QEMU's QMP greeting was {greeting}");
        }
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    fn reply(&self, limit: Duration) -> Result<Value> {
        let end = Instant::now() + limit;
        loop {
            match self.replies.recv_timeout(Duration::from_millis(20)) {
                Ok(v) => return Ok(v),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("the {} QEMU closed its QMP socket", self.who)
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if crate::cleanup::stop_requested() {
                bail!(crate::cleanup::interrupted());
            }
            if Instant::now() >= end {
                bail!(
                    "the {} QEMU did not answer QMP within {:.0} s",
                    self.who,
                    limit.as_secs_f64()
                );
            }
        }
    }

    /// Runs one command and returns its `return` (an `error` reply is an error).
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        self.execute_within(command, arguments, Duration::from_secs(60))
    }

    pub fn execute_within(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        limit: Duration,
    ) -> Result<Value> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.stream
            .write_all(line.as_bytes())
            .with_context(|| format!("sending {command} to the {} QEMU", self.who))?;
        let v = self.reply(limit)?;
        if let Some(e) = v.get("error") {
            let desc = e.get("desc").and_then(Value::as_str).unwrap_or("?");
            return Err(anyhow!("the {} QEMU refused {command}: {desc}", self.who));
        }
        Ok(v.get("return").cloned().unwrap_or(Value::Null))
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The first event `name` (with MIGRATION status `status`) at or after `since_us`.
    pub fn event(&self, name: &str, status: Option<&str>, since_us: i64) -> Option<Event> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|e| {
                e.name == name && e.ts_us >= since_us && (status.is_none() || e.status() == status)
            })
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_qemus_timestamp() {
        let v: Value = serde_json::from_str(
            r#"{"timestamp": {"seconds": 1764625000, "microseconds": 123456}, "event": "MIGRATION", "data": {"status": "active"}}"#,
        )
        .unwrap();
        let e = parse_event(&v).unwrap();
        assert_eq!(e.ts_us, 1_764_625_000_123_456);
        assert_eq!(e.status(), Some("active"));
        let stop: Value = serde_json::from_str(
            r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}"#,
        )
        .unwrap();
        let e = parse_event(&stop).unwrap();
        assert_eq!(
            (e.name.as_str(), e.ts_us, e.status()),
            ("STOP", 1_000_002, None)
        );
        assert!(parse_event(&json!({"return": {}})).is_none());
    }
}
