//! The delay injector (`profiler inject`): a TC program that holds each selected packet on its
//! hook until a deadline, spinning on `bpf_ktime_get_ns` inside `bpf_loop`. It stands in for
//! netem where the kernel has none. The packet then goes on unchanged (TC_ACT_OK).
//! User space: profiler/src/inject.rs.

use core::ffi::c_void;

use aya_ebpf::{
    Global,
    bindings::TC_ACT_OK,
    helpers::{bpf_ktime_get_ns, generated::bpf_loop},
    macros::{classifier, map},
    maps::PerCpuArray,
    programs::TcContext,
};
use profiler_common::inject::InjectConfig;

/// The delay and the port to select, set by the loader (profiler/src/inject.rs).
#[unsafe(no_mangle)]
static INJECT_CONFIG: Global<InjectConfig> = Global::new(InjectConfig {
    delay_ns: 0,
    port: 0,
    _pad: [0; 6],
});

#[map]
static INJECT_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// bpf_loop's ceiling on iterations per call.
const LOOP_MAX: u32 = 1 << 23;
/// Calls of bpf_loop per packet at most: each lasts well over 10 ms (a ktime read per
/// iteration), so this covers far more than user space allows (100 ms).
const CHUNKS: u32 = 16;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// IPv4 TCP/UDP behind an Ethernet header, with the selected port on either side.
#[inline(always)]
fn selected(ctx: &TcContext) -> bool {
    let Ok(proto) = ctx.load::<u16>(12) else {
        return false;
    };
    if u16::from_be(proto) != ETH_P_IP {
        return false;
    }
    let Ok(vihl) = ctx.load::<u8>(ETH_HLEN) else {
        return false;
    };
    if vihl >> 4 != 4 {
        return false;
    }
    let Ok(l4) = ctx.load::<u8>(ETH_HLEN + 9) else {
        return false;
    };
    if l4 != IPPROTO_TCP && l4 != IPPROTO_UDP {
        return false;
    }
    let port = INJECT_CONFIG.load().port;
    if port == 0 {
        return true;
    }
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return false;
    }
    let Ok(ports) = ctx.load::<[u8; 4]>(ETH_HLEN + ihl) else {
        return false;
    };
    let sport = u16::from_be_bytes([ports[0], ports[1]]);
    let dport = u16::from_be_bytes([ports[2], ports[3]]);
    sport == port || dport == port
}

/// bpf_loop's callback: `ctx` points at the deadline on the program's stack; 1 stops the loop.
#[inline(never)]
extern "C" fn spin(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer `inject_delay` gave it, to a live u64.
    let deadline = unsafe { *(ctx as *const u64) };
    // SAFETY: helper without preconditions.
    if unsafe { bpf_ktime_get_ns() } >= deadline {
        1
    } else {
        0
    }
}

#[classifier]
pub fn inject_delay(ctx: TcContext) -> i32 {
    // SAFETY: helper without preconditions.
    let start = unsafe { bpf_ktime_get_ns() };
    if !selected(&ctx) {
        return TC_ACT_OK;
    }
    let mut deadline = start + INJECT_CONFIG.load().delay_ns;
    for _ in 0..CHUNKS {
        // SAFETY: `spin` is a static callback taking (u64, *mut c_void); the context pointer
        // is to `deadline`, which outlives the call.
        unsafe {
            bpf_loop(
                LOOP_MAX,
                spin as *mut c_void,
                &mut deadline as *mut u64 as *mut c_void,
                0,
            );
        }
        // SAFETY: helper without preconditions.
        if unsafe { bpf_ktime_get_ns() } >= deadline {
            break;
        }
    }
    if let Some(p) = INJECT_COUNT.get_ptr_mut(0) {
        // SAFETY: per-CPU value, this CPU only.
        unsafe { *p += 1 };
    }
    TC_ACT_OK
}
