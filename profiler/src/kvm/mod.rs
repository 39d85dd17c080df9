//! KVM: the built-in micro-VM (real KVM through rust-vmm's kvm-ioctls, no QEMU).

pub mod cli;
pub mod microvm;
pub mod report;
