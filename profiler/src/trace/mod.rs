//! `profiler trace`: per-packet latency attributed to each network layer.

pub mod budget;
pub mod layers;
pub mod report;
pub mod run;
