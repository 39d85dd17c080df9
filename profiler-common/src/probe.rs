//! The doctor's probe programs: one hit counter per attach mechanism.

/// Index into the `PROBE_HITS` array map, one slot per mechanism the doctor tries.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeSlot {
    Kprobe = 0,
    Kretprobe = 1,
    Fentry = 2,
    Fexit = 3,
    TpBtf = 4,
    RawTracepoint = 5,
    Tracepoint = 6,
    Tc = 7,
    Xdp = 8,
    KvmExit = 9,
}

pub const PROBE_SLOTS: u32 = 16;
