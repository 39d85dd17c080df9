//! `profiler trace`: per-packet latency attributed to each network layer.

pub mod ablation;
pub mod budget;
pub mod cli;
pub mod compare;
pub mod delta;
pub mod html;
pub mod layers;
pub mod report;
pub mod round_trip;
pub mod run;
pub mod samples;
pub mod self_check;
