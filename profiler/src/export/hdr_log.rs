//! HdrHistogram interval logs (`--hdr-log FILE`): the standard text format, one `Tag=` per
//! histogram, each interval's histogram compressed V2 (V2 + DEFLATE), as HdrHistogram's own
//! tools (HistogramLogProcessor, the Python `hdrhistogram` package) read them. Values are ns.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, anyhow};
use hdrhistogram::{
    Histogram,
    serialization::{V2DeflateSerializer, interval_log},
};

/// A tag for the log: spaces and commas, which the format forbids, become `_`.
pub fn tag(name: &str) -> String {
    name.chars()
        .map(|c| if c == ' ' || c == ',' { '_' } else { c })
        .collect()
}

/// Intervals collected over a run and written at the end (the writer borrows its sink).
pub struct HdrLog {
    path: PathBuf,
    start: SystemTime,
    /// (offset from start, length, tag, histogram of the interval)
    intervals: Vec<(Duration, Duration, String, Histogram<u64>)>,
    /// Each tag's cumulative histogram at the last interval, to take deltas from.
    last: std::collections::BTreeMap<String, Histogram<u64>>,
    last_at: Duration,
    began: std::time::Instant,
}

impl HdrLog {
    /// Checks the file can be written before anything runs.
    pub fn create(path: &Path) -> Result<HdrLog> {
        std::fs::write(path, b"")
            .with_context(|| format!("--hdr-log {}: cannot write it", path.display()))?;
        Ok(HdrLog {
            path: path.to_path_buf(),
            start: SystemTime::now(),
            intervals: vec![],
            last: Default::default(),
            last_at: Duration::ZERO,
            began: std::time::Instant::now(),
        })
    }

    /// Records the interval from the last call to `at` (time since the run started), from each
    /// tag's cumulative histogram.
    pub fn interval(
        &mut self,
        at: Duration,
        cumulative: Vec<(String, Histogram<u64>)>,
    ) -> Result<()> {
        let len = at.saturating_sub(self.last_at);
        for (t, h) in cumulative {
            let mut delta = h.clone();
            if let Some(prev) = self.last.get(&t) {
                delta
                    .subtract(prev)
                    .map_err(|e| anyhow!("hdr-log interval of {t}: {e:?}"))?;
            }
            if !delta.is_empty() {
                self.intervals.push((self.last_at, len, t.clone(), delta));
            }
            self.last.insert(t, h);
        }
        self.last_at = at;
        Ok(())
    }

    /// An interval ending now.
    pub fn mark(&mut self, cumulative: Vec<(String, Histogram<u64>)>) -> Result<()> {
        self.interval(self.began.elapsed(), cumulative)
    }

    pub fn finish(self) -> Result<()> {
        let mut out = Vec::new();
        let mut ser = V2DeflateSerializer::new();
        {
            let mut w = interval_log::IntervalLogWriterBuilder::new()
                .add_comment("profiler: latency histograms, values in ns")
                .with_start_time(self.start)
                .with_base_time(self.start)
                .begin_log_with(&mut out, &mut ser)
                .map_err(|e| anyhow!("hdr-log: {e:?}"))?;
            for (start, len, t, h) in &self.intervals {
                let tag = interval_log::Tag::new(t)
                    .ok_or_else(|| anyhow!("hdr-log: tag {t} has a forbidden character"))?;
                w.write_histogram(h, *start, *len, Some(tag))
                    .map_err(|e| anyhow!("hdr-log {t}: {e:?}"))?;
            }
        }
        std::fs::write(&self.path, out).with_context(|| format!("writing {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_reads_back_with_its_tags_and_deltas() {
        let path = std::env::temp_dir().join(format!("profiler-hdr-{}.hlog", std::process::id()));
        let mut log = HdrLog::create(&path).unwrap();
        let mut h = crate::hist::empty();
        h.record_n(1000, 10).unwrap();
        log.interval(
            Duration::from_secs(1),
            vec![(tag("requests/a b,c"), h.clone())],
        )
        .unwrap();
        h.record_n(5000, 4).unwrap();
        log.interval(Duration::from_secs(2), vec![(tag("requests/a b,c"), h)])
            .unwrap();
        log.finish().unwrap();
        let text = std::fs::read(&path).unwrap();
        let mut seen = vec![];
        for item in interval_log::IntervalLogIterator::new(&text) {
            if let Ok(interval_log::LogEntry::Interval(i)) = item {
                seen.push((
                    i.tag().unwrap().as_str().to_string(),
                    i.start_timestamp(),
                    i.duration(),
                    i.max(),
                ));
            }
        }
        assert_eq!(seen.len(), 2, "{}", String::from_utf8_lossy(&text));
        assert_eq!(seen[0].0, "requests/a_b_c");
        let s = Duration::from_secs;
        assert_eq!((seen[0].1, seen[0].2), (s(0), s(1)));
        assert_eq!((seen[1].1, seen[1].2), (s(1), s(1)));
        // The second interval holds only its own values (max 5000, not the first's 1000).
        assert!(seen[0].3 < 1100.0 && seen[1].3 >= 5000.0, "{seen:?}");
        let _ = std::fs::remove_file(path);
    }
}
