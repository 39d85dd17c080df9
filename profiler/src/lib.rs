//! profiler: where virtualization overhead comes from. See ARCHITECTURE.md for the map.

pub mod attach;
pub mod boot;
pub mod check;
pub mod cleanup;
pub mod container;
pub mod docker;
pub mod doctor;
pub mod envs;
pub mod experiment;
pub mod fit;
pub mod hist;
pub mod inject;
pub mod kernel;
pub mod kvm;
pub mod lab;
pub mod opts;
pub mod probes;
pub mod sysbench;
pub mod trace;
pub mod workload;
