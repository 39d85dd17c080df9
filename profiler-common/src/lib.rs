//! Types shared by the eBPF programs (`profiler-ebpf`) and user space (`profiler`).
//! Everything here is `#[repr(C)]` or a plain constant: both sides read the same bytes.
#![no_std]

pub mod exec;
pub mod hist;
pub mod inject;
pub mod kvm;
pub mod migrate;
pub mod names;
pub mod net;
pub mod probe;
pub mod sched;
pub mod softirq;
