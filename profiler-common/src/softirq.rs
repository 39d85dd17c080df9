//! Softirq timing shared layout: histogram slots of `SOFTIRQ_HIST` (per CPU).

/// Softirq vector numbers (include/linux/interrupt.h), stable kernel ABI.
pub const NET_TX: u32 = 2;
pub const NET_RX: u32 = 3;

/// Kinds per vector: raise-to-entry delay, run time, packets per run (NET_RX only).
pub const KINDS: u32 = 3;
pub const HIST_SLOTS: u32 = 2 * KINDS;

/// Slot of (vector index 0 = NET_TX / 1 = NET_RX, kind 0 delay / 1 run time / 2 packets).
#[inline(always)]
pub const fn slot(vec: u32, kind: u32) -> u32 {
    vec * KINDS + kind
}
