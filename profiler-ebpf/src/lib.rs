#![no_std]
// The library target exists so user space can name this crate as a build-dependency.
