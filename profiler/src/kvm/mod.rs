//! KVM: the built-in micro-VM (real KVM through rust-vmm's kvm-ioctls, no QEMU).

pub mod microvm;
