//! Output formats other tools read: the `--json [FILE]` convention (`json`), HdrHistogram
//! interval logs (`hdr_log`), self-contained HTML pages (`html`). The Prometheus exposition lives with the agent that serves it
//! (`agent/metrics.rs`).

pub mod hdr_log;
pub mod html;
pub mod json;
