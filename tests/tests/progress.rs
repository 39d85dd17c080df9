//! Progress on a terminal: under a pty (`script`), lab building, the trace's length, N boots
//! and density's steps redraw one line on stderr (`\r`, erase line); on pipes, and with the
//! JSON on stdout, none of it appears.

use std::process::{Command, Output};

use profiler_tests::{profiler_path, require_root};

const REDRAW: &str = "\r\x1b[K";

/// The command under a pseudo-terminal (util-linux `script`); stdout and stderr both reach it.
fn under_pty(args: &[&str]) -> String {
    let line = std::iter::once(profiler_path().display().to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new("script")
        .args(["-qfec", &line, "/dev/null"])
        .output()
        .expect("spawning script");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "`{line}` under a pty failed: {}\n{text}",
        out.status
    );
    text
}

/// The command with stdout and stderr on pipes.
fn piped(args: &[&str]) -> Output {
    let out = Command::new(profiler_path())
        .args(args)
        .output()
        .expect("spawning profiler");
    assert!(
        out.status.success(),
        "{args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn assert_no_progress(what: &str, bytes: &[u8], words: &str) {
    let text = String::from_utf8_lossy(bytes);
    assert!(
        !text.contains('\r') && !text.contains('\x1b'),
        "{what}: terminal control characters off a terminal:\n{text:?}"
    );
    assert!(
        !text.contains(words),
        "{what}: progress `{words}` off a terminal:\n{text}"
    );
}

#[test]
fn lab_building_shows_its_steps_on_a_tty_only() {
    require_root();
    let tty = under_pty(&["lab", "up", "--mode", "bridge", "--id", "prgt"]);
    let _ = Command::new(profiler_path())
        .args(["lab", "down", "prgt"])
        .output();
    for step in [
        "building the bridge lab prgt",
        "building the lab: namespaces done",
        "building the lab: client done",
        "the bridge lab prgt: checking it carries traffic",
    ] {
        assert!(
            tty.contains(&format!("{REDRAW}{step}")),
            "no `{step}` drawn:\n{tty:?}"
        );
    }
    // Cleared before the report: the report's line starts after an erase.
    assert!(
        tty.contains(&format!("{REDRAW}lab prgt (bridge) is up")),
        "{tty:?}"
    );

    let out = piped(&["lab", "up", "--mode", "bridge", "--id", "prgp"]);
    let _ = Command::new(profiler_path())
        .args(["lab", "down", "prgp"])
        .output();
    assert_no_progress("lab up, piped stderr", &out.stderr, "building the lab");
    assert_no_progress("lab up, piped stdout", &out.stdout, "building the lab");
}

#[test]
fn the_trace_length_counts_up_on_a_tty_and_not_with_json() {
    require_root();
    let tty = under_pty(&["trace", "--mode", "host", "-l", "3"]);
    for second in ["tracing 1 s of 3 s [", "tracing 2 s of 3 s ["] {
        assert!(tty.contains(second), "no `{second}` drawn:\n{tty:?}");
    }
    assert!(
        tty.contains("one-way total"),
        "the report is missing:\n{tty}"
    );

    let out = piped(&["trace", "--mode", "host", "-l", "2"]);
    assert_no_progress("trace, piped stderr", &out.stderr, "tracing 1 s of");
    assert_no_progress("trace, piped stdout", &out.stdout, "tracing 1 s of");

    // JSON on stdout: the terminal gets the JSON and the messages, no progress.
    let json = under_pty(&["trace", "--mode", "host", "-l", "2", "--json"]);
    assert!(
        !json.contains("tracing 1 s of") && !json.contains(REDRAW),
        "{json:?}"
    );
    assert!(json.contains("\"directions\""), "no JSON:\n{json}");
}

#[test]
fn boots_count_up_on_a_tty_only() {
    require_root();
    let tty = under_pty(&["boot", "--vm", "micro", "--count", "3"]);
    for n in 1..=3 {
        let done = format!("VMs booted and shut down (--count 3): {n} of 3");
        assert!(tty.contains(&done), "no `{done}` drawn:\n{tty:?}");
    }
    let out = piped(&["boot", "--vm", "micro", "--count", "3"]);
    assert_no_progress("boot, piped stderr", &out.stderr, "VMs booted");
    assert_no_progress("boot, piped stdout", &out.stdout, "VMs booted");
}

#[test]
fn density_steps_show_on_a_tty_only() {
    require_root();
    let args = [
        "density",
        "--env",
        "native",
        "--instances",
        "1,2",
        "--time",
        "1",
    ];
    let tty = under_pty(&args);
    for step in [
        "density: step 1 of 2, 1 instance at once",
        "density: step 2 of 2, 2 instances at once",
    ] {
        assert!(tty.contains(step), "no `{step}` drawn:\n{tty:?}");
    }
    let out = piped(&args);
    assert_no_progress("density, piped stderr", &out.stderr, "density: step");
    assert_no_progress("density, piped stdout", &out.stdout, "density: step");
}
