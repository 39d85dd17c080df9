//! Helpers for the privileged integration tests in tests/tests/.

use std::process::{Command, Output};

/// Privileged tests never skip: without root they fail, loudly.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { geteuid() };
    assert_eq!(
        euid, 0,
        "privileged integration test run without root: run `sudo -E cargo xtask test`"
    );
}

unsafe extern "C" {
    fn geteuid() -> u32;
}

/// The profiler binary of this build profile (`cargo xtask test` builds it first).
pub fn profiler() -> Command {
    // Test binaries live in target/<profile>/deps/; the profiler in target/<profile>/.
    let exe = std::env::current_exe().expect("current_exe");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("profiler");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p profiler`, as `cargo xtask test` does)",
        bin.display()
    );
    Command::new(bin)
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawning profiler");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
