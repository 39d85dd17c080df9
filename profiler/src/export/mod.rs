//! Output formats other tools read: the `--json [FILE]` convention (`json`), HdrHistogram
//! interval logs (`hdr_log`). The Prometheus exposition lives with the agent that serves it
//! (`agent/metrics.rs`).

pub mod hdr_log;
pub mod json;
