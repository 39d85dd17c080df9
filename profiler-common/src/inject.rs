//! The delay injector's load-time configuration.

/// `INJECT_CONFIG`: how long to hold a packet, and which packets (port 0: every IPv4 TCP/UDP).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct InjectConfig {
    pub delay_ns: u64,
    pub port: u16,
    pub _pad: [u8; 6],
}

#[cfg(feature = "user")]
// SAFETY: plain old data, `#[repr(C)]`, no implicit padding.
unsafe impl aya::Pod for InjectConfig {}
