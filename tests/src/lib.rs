//! Helpers for the privileged integration tests in tests/tests/.
//! Run them one at a time (`cargo xtask test` passes --test-threads=1): some assert on global
//! state (all labs, the root namespace's devices).

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
    Command::new(profiler_path())
}

pub fn profiler_path() -> std::path::PathBuf {
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
    bin
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

/// Names of the network namespaces that exist (as `ip netns` keeps them).
pub fn namespaces() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The lab's namespaces, by the `pf-<id>-` prefix.
pub fn lab_namespaces(id: &str) -> Vec<String> {
    let prefix = format!("pf-{id}-");
    namespaces()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// Device names of the host's root namespace: a lab must never change them.
pub fn root_links() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/class/net")
        .expect("/sys/class/net")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A device's packet counters inside a namespace, read with iproute2 (test side only).
pub fn packets(netns: &str, dev: &str) -> (u64, u64) {
    let out = Command::new("ip")
        .args(["-j", "-s", "-n", netns, "link", "show", "dev", dev])
        .output()
        .expect("ip");
    assert!(out.status.success(), "ip link show {dev} in {netns} failed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j");
    let s = &v[0]["stats64"];
    (
        s["tx"]["packets"].as_u64().unwrap_or(0),
        s["rx"]["packets"].as_u64().unwrap_or(0),
    )
}

/// Whether a lab's registry file exists.
pub fn lab_file_exists(id: &str) -> bool {
    std::path::Path::new(&format!("/run/profiler/labs/{id}.json")).exists()
}

/// Asserts the lab left nothing behind.
pub fn assert_gone(id: &str) {
    assert!(
        lab_namespaces(id).is_empty(),
        "lab {id} left namespaces: {:?}",
        lab_namespaces(id)
    );
    assert!(!lab_file_exists(id), "lab {id} left its registry file");
}

/// Removes a lab when a test ends, passing or failing, so one failure does not cascade.
pub struct LabGuard(pub String);

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = profiler().args(["lab", "down", &self.0]).output();
    }
}

/// Bad input: the command fails with a clear error containing `needle`, and no panic.
pub fn assert_refused(args: &[&str], needle: &str) {
    let out = profiler().args(args).output().expect("spawning profiler");
    assert!(!out.status.success(), "{args:?} succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(needle), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A refusal: fails fast, non-zero, with exactly one line on stderr containing `needle`, and
/// nothing on stdout.
pub fn assert_refused_in_one_line(args: &[&str], needle: &str) -> String {
    let t = std::time::Instant::now();
    let out = profiler().args(args).output().expect("spawning profiler");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} succeeded: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{args:?}: not one line: {err}"
    );
    assert!(err.contains(needle), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.stdout.is_empty(), "{args:?} printed a report");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "{args:?} took {:?} to refuse: it started something",
        t.elapsed()
    );
    err
}

/// cgroups this tool creates (`profiler-*`, `profiler-run-*`) under the cgroup v2 root.
pub fn profiler_cgroups() -> Vec<String> {
    let root = profiler::container::cgroup::root().expect("cgroup v2 root");
    let mut v: Vec<String> = std::fs::read_dir(root)
        .expect("cgroup v2 root")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("profiler-"))
        .collect();
    v.sort();
    v
}

/// Makes this test process the reaper of every orphan below it: a child of a killed profiler
/// comes to us (not to init), so "alive" can be asked of exactly the tool's descendants.
pub fn become_subreaper() {
    // SAFETY: plain prctl on this process.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    assert_eq!(
        r,
        0,
        "PR_SET_CHILD_SUBREAPER: {}",
        std::io::Error::last_os_error()
    );
}

/// Reaps orphans handed to this process (see [`become_subreaper`]) that have exited.
pub fn reap_orphans() {
    // SAFETY: waitpid with WNOHANG on any child; tests run one at a time.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
}

/// (pid, ppid, state) of a process from /proc/PID/stat.
fn stat(pid: u32) -> Option<(u32, char)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split(' ');
    let state = f.next()?.chars().next()?;
    Some((f.next()?.parse().ok()?, state))
}

/// Processes not yet dead (zombies are dead) whose command line contains `needle` and whose
/// parent is one of `parents`: the tool's own children, or orphans handed to this process.
pub fn live_children(parents: &[u32], needle: &str) -> Vec<(u32, String)> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let (ppid, state) = stat(pid)?;
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (parents.contains(&ppid) && !matches!(state, 'Z' | 'X') && cmd.contains(needle))
                .then_some((pid, cmd))
        })
        .collect()
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: plain kill(2).
    let r = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(r, 0, "kill {pid}: {}", std::io::Error::last_os_error());
}
