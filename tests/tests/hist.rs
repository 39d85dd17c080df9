//! The kernel-side histogram bucket code passes the verifier and records real samples.

use profiler::{
    hist::{Summary, read_shared as read},
    probes::selftest::selftest_attach,
};
use profiler_tests::require_root;

#[test]
fn selftest_hist_records_getpid_calls() {
    require_root();
    let mut ebpf = profiler::probes::load().expect("loading the eBPF object");
    let map = selftest_attach(&mut ebpf).expect("selftest_hist loads and attaches");
    let before = read(&map, 0).expect("reading SELFTEST_HIST").len();
    const N: u64 = 1000;
    for _ in 0..N {
        // glibc >= 2.25 caches nothing: each call is one getpid(2) syscall.
        std::hint::black_box(std::process::id());
    }
    let h = read(&map, 0).expect("reading SELFTEST_HIST");
    let s = Summary::of(&h);
    assert!(
        h.len() - before >= N,
        "{} getpid hits recorded, expected >= {N}: {s:?}",
        h.len() - before
    );
    // The program records the clock's low 24 bits: all below 2^24 ns, no overflow.
    assert!(s.max < 1 << 24, "{s:?}");
}
