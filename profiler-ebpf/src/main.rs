//! All eBPF programs of the profiler, one module per subject; user space loads this one object.
#![no_std]
#![no_main]
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod exec;
mod hist;
mod inject;
mod kvm;
mod migrate;
mod net;
mod probe;
mod sched;
mod selftest;
mod softirq;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// GPL-compatible: tp_btf, fentry and several helpers are GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
