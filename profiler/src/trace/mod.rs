//! `profiler trace`: per-packet latency attributed to each network layer.

pub mod budget;
pub mod exec;
pub mod layers;
pub mod net;
pub mod report;
pub mod run;
pub mod sched;
pub mod softirq;
