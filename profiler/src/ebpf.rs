//! The eBPF object built from `profiler-ebpf` by build.rs, embedded in the binary.

use anyhow::{Context as _, Result};
use aya::Ebpf;

pub const OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profiler"));

pub fn load() -> Result<Ebpf> {
    Ebpf::load(OBJECT).context("loading the profiler's eBPF object")
}
