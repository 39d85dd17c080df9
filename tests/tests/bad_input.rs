//! Bad input to every option that takes a count, size, duration, interface, namespace, pid,
//! port, address, output file or container, where no other test file covers it: one line on
//! stderr naming what is wrong, a non-zero exit, nothing on stdout, and refused within 5 s
//! (nothing was started). Options covered elsewhere: boot's and density's counts and
//! timeouts (boot_vm.rs, envs.rs), bench's (bench.rs), inject's --delay (inject.rs), sysbench's
//! --threads and block sizes (sysbench.rs), trace's zero intervals and rates (trace.rs), a
//! missing Docker image (docker.rs), lab ids (lab.rs).

use profiler_tests::{LabGuard, assert_refused_in_one_line, profiler, require_root, run_ok};

fn all_refused(cases: &[(&[&str], &str)]) {
    require_root();
    for (args, needle) in cases {
        let err = assert_refused_in_one_line(args, needle);
        eprintln!("{args:?}: {}", err.trim());
    }
}

#[test]
fn trace_attach_only_filters_that_match_nothing() {
    all_refused(&[
        // The issue's case: it traced nothing and exited 0.
        (
            &[
                "trace",
                "--attach-only",
                "--port",
                "80",
                "--ifindex",
                "999999",
                "-l",
                "1",
            ],
            "--ifindex 999999: no interface has that index in the root namespace",
        ),
        (
            &[
                "trace",
                "--attach-only",
                "--port",
                "80",
                "--ifindex",
                "0",
                "-l",
                "1",
            ],
            "--ifindex 0: no interface",
        ),
        (
            &["trace", "--attach-only", "--port", "0", "-l", "1"],
            "--port 0 matches no packet",
        ),
        (
            &["trace", "--attach-only", "--port", "70000", "-l", "1"],
            "'--port <PORT>': 70000 is not in 0..=65535",
        ),
        (
            &[
                "trace",
                "--attach-only",
                "--port",
                "80",
                "--netns",
                "pf-nosuch-x",
            ],
            "no network namespace pf-nosuch-x",
        ),
        (
            &[
                "trace",
                "--attach-only",
                "--port",
                "80",
                "--host",
                "300.1.1.1",
            ],
            "'--host <HOST>': invalid IPv4 address syntax",
        ),
        (
            &["trace", "--attach-only", "--ifindex", "1", "-l", "1"],
            "--attach-only needs --port PORT",
        ),
    ]);
}

#[test]
fn an_ifindex_is_looked_up_in_the_namespace_given() {
    require_root();
    let out = run_ok(profiler().args(["lab", "up", "--mode", "host", "--id", "bi1", "--json"]));
    let _lab = LabGuard("bi1".into());
    let desc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("lab JSON");
    let ns = desc["client"]["netns"].as_str().expect("client namespace");
    // A lab namespace holds its own few devices: index 999 is none of them there.
    assert_refused_in_one_line(
        &[
            "trace",
            "--attach-only",
            "--port",
            "80",
            "--netns",
            ns,
            "--ifindex",
            "999",
        ],
        &format!("--ifindex 999: no interface has that index in namespace {ns}"),
    );
}

#[test]
fn trace_lengths_rates_and_files() {
    all_refused(&[
        (
            &["trace", "-l", "0"],
            "-l must be a positive number of seconds",
        ),
        (
            &["trace", "-l", "-1"],
            "-l must be a positive number of seconds",
        ),
        (&["trace", "-l", "abc"], "'-l <LENGTH>'"),
        (&["trace", "-r", "x", "-l", "1"], "bad -r value 'x'"),
        (&["trace", "-r", "0,1", "-l", "1"], "bad -r value '0,1'"),
        (
            &["trace", "--overhead", "-1", "-l", "1"],
            "--overhead must be a percentage",
        ),
        (
            &["trace", "--overhead", "101", "-l", "1"],
            "--overhead must be a percentage",
        ),
        (
            &["trace", "--follow-every", "-1", "-l", "1"],
            "'--follow-every <FOLLOW_EVERY>'",
        ),
        // Refused before the run, not after it.
        (
            &["trace", "--json", "/nonexistent/dir/x.json", "-l", "1"],
            "--json /nonexistent/dir/x.json: directory /nonexistent/dir does not exist",
        ),
    ]);
}

#[test]
fn inject_labs_devices_namespaces_ports_and_lengths() {
    require_root();
    run_ok(profiler().args(["lab", "up", "--mode", "bridge", "--id", "bi2"]));
    let _lab = LabGuard("bi2".into());
    let inject = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut v = vec!["inject", "--lab", "bi2", "--ingress", "--delay", "1ms"];
        v.extend_from_slice(extra);
        v
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "inject",
                "--lab",
                "nosuch",
                "--dev",
                "eth0",
                "--ingress",
                "--delay",
                "1ms",
            ],
            "no lab nosuch",
        ),
        (
            vec![
                "inject",
                "--lab",
                "../x",
                "--dev",
                "eth0",
                "--ingress",
                "--delay",
                "1ms",
            ],
            "bad lab id \"../x\"",
        ),
        (
            inject(&["--dev", "nosuchdev"]),
            "no device nosuchdev in lab bi2",
        ),
        (
            inject(&["--dev", "eth0", "--netns", "pf-bi2-zz"]),
            "no device eth0 in namespace pf-bi2-zz of lab bi2",
        ),
        (
            inject(&["--dev", "eth0"]),
            "device eth0 is in several namespaces of lab bi2: choose one with --netns",
        ),
        (
            inject(&["--dev", "eth0", "--netns", "pf-bi2-c", "--port", "0"]),
            "'--port <PORT>': expected a whole number of at least 1",
        ),
        (
            inject(&["--dev", "eth0", "--netns", "pf-bi2-c", "-l", "0"]),
            "bad -l value '0'",
        ),
        (
            inject(&["--dev", "eth0", "--netns", "pf-bi2-c", "-l", "x"]),
            "bad -l value 'x'",
        ),
    ];
    for (args, needle) in &cases {
        let err = assert_refused_in_one_line(args, needle);
        eprintln!("{args:?}: {}", err.trim());
    }
}

#[test]
fn kvm_pids_counts_lengths_and_files() {
    all_refused(&[
        (
            &["kvm", "--pid", "-5"],
            "'--pid <PID>': expected a whole number of at least 1",
        ),
        (
            &["kvm", "--pid", "x"],
            "'--pid <PID>': expected a whole number of at least 1",
        ),
        (
            &["kvm", "--micro-vm", "pio", "--count", "x"],
            "'--count <N>'",
        ),
        (
            &["kvm", "--micro-vm", "pio", "--count", "99999999999"],
            "is too large",
        ),
        (
            &["kvm", "-l", "abc"],
            "'-l <SECS>': expected seconds greater than 0",
        ),
        (
            &["kvm", "--json", "/nonexistent/dir/x.json", "-l", "1"],
            "--json /nonexistent/dir/x.json: directory /nonexistent/dir does not exist",
        ),
    ]);
}

#[test]
fn bench_and_serve_hosts_ports_sizes_and_labs() {
    all_refused(&[
        (
            &["serve", "-p", "70000"],
            "'--port <PORT>': 70000 is not in 0..=65535",
        ),
        (
            &["serve", "--bind", "nothing"],
            "'--bind <BIND>': invalid IP address syntax",
        ),
        (
            &["bench", "tcp_rr", "-H", "256.0.0.1", "-l", "1"],
            "bad -H value '256.0.0.1'",
        ),
        (
            &["bench", "tcp_rr", "-p", "70000"],
            "'--port <PORT>': 70000 is not in 0..=65535",
        ),
        (&["bench", "tcp_stream", "-m", "x"], "bad -m value 'x'"),
        (&["bench", "tcp_stream", "-m", "-5"], "bad -m value '-5'"),
        (&["bench", "tcp_rr", "-l", "abc"], "bad -l value 'abc'"),
        (&["bench", "tcp_rr", "--lab", "nosuch"], "no lab nosuch"),
    ]);
}

#[test]
fn boot_timeouts_networks_and_files() {
    all_refused(&[
        (
            &["boot", "--vm", "qemu", "--timeout", "abc"],
            "'--timeout <SECS>'",
        ),
        (
            &["boot", "--container", "native", "--net", "warp"],
            "'--net <NET>'",
        ),
        (
            &[
                "boot",
                "--vm",
                "qemu",
                "--accel",
                "tcg",
                "--json",
                "/nonexistent/dir/x.json",
            ],
            "--json /nonexistent/dir/x.json: directory /nonexistent/dir does not exist",
        ),
        (
            &[
                "boot",
                "--container",
                "docker",
                "--network",
                "profiler-no-such-net",
            ],
            // Asked of Docker first: it used to import an image and send a create.
            "--network profiler-no-such-net: Docker has no such network",
        ),
    ]);
}

#[test]
fn sysbench_counts_sizes_durations_and_dirs() {
    all_refused(&[
        (&["sysbench", "cpu", "--time", "-1"], "'--time <SECS>'"),
        (
            &["sysbench", "cpu", "--time", "0"],
            "bad --time 0 with --events 0",
        ),
        (&["sysbench", "cpu", "--events", "-1"], "'--events <N>'"),
        (
            &["sysbench", "cpu", "--cpu-max-prime", "0"],
            "'--cpu-max-prime <N>'",
        ),
        (
            &["sysbench", "memory", "--memory-total-size", "x"],
            "'--memory-total-size <SIZE>'",
        ),
        (
            &["sysbench", "memory", "--memory-total-size", "0"],
            "bad --memory-total-size 0",
        ),
        (
            &[
                "sysbench",
                "fileio",
                "--file-test-mode",
                "seqwr",
                "--file-num",
                "0",
            ],
            "'--file-num <N>'",
        ),
        (
            &[
                "sysbench",
                "fileio",
                "--file-test-mode",
                "seqwr",
                "--file-total-size",
                "x",
            ],
            "'--file-total-size <SIZE>'",
        ),
        (
            &[
                "sysbench",
                "fileio",
                "--file-test-mode",
                "seqwr",
                "--file-block-size",
                "0",
            ],
            "bad --file-block-size 0",
        ),
        (
            &[
                "sysbench",
                "fileio",
                "--file-test-mode",
                "seqwr",
                "--file-fsync-freq",
                "-1",
            ],
            "'--file-fsync-freq <N>'",
        ),
        (
            &[
                "sysbench",
                "fileio",
                "--file-test-mode",
                "rndrw",
                "--file-rw-ratio",
                "-1",
            ],
            "bad --file-rw-ratio -1",
        ),
        (
            &[
                "sysbench",
                "fileio",
                "--file-test-mode",
                "seqwr",
                "--file-dir",
                "/nonexistent/bi",
            ],
            "/nonexistent/bi",
        ),
        (
            &["sysbench", "threads", "--thread-yields", "x"],
            "'--thread-yields <N>'",
        ),
        (
            &["sysbench", "threads", "--thread-locks", "0"],
            "'--thread-locks <N>'",
        ),
        (
            &["sysbench", "mutex", "--mutex-num", "0"],
            "'--mutex-num <N>'",
        ),
        (
            &["sysbench", "mutex", "--mutex-locks", "-1"],
            "'--mutex-locks <N>'",
        ),
    ]);
}

#[test]
fn run_and_density_workloads_are_checked_before_an_environment_starts() {
    all_refused(&[
        // Docker's image of this binary takes seconds to build: refused before it.
        (
            &[
                "run",
                "--env",
                "docker",
                "sysbench",
                "cpu",
                "--threads",
                "0",
            ],
            "the workload's arguments: invalid value '0' for '--threads <N>'",
        ),
        (
            &[
                "run",
                "--env",
                "native",
                "sysbench",
                "cpu",
                "--no-such-option",
            ],
            "the workload's arguments: unexpected argument '--no-such-option'",
        ),
        (
            &["run", "--env", "vm", "sysbench", "nosuch"],
            "the workload's arguments: invalid value 'nosuch'",
        ),
        // Parsed, but a value the workload refuses: it started the container first.
        (
            &["run", "--env", "native", "sysbench", "cpu", "--time", "0"],
            "the workload's arguments: bad --time 0 with --events 0",
        ),
        (
            &[
                "density",
                "--env",
                "native",
                "--workload",
                "nosuch",
                "--instances",
                "1",
            ],
            "the workload's arguments: invalid value 'nosuch'",
        ),
        (
            &[
                "density",
                "--env",
                "native",
                "--json",
                "/nonexistent/dir/x.json",
            ],
            "--json /nonexistent/dir/x.json: directory /nonexistent/dir does not exist",
        ),
        (&["lab", "down", "../x"], "bad lab id \"../x\""),
    ]);
}
