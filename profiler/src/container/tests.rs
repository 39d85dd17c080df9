use std::time::{Duration, Instant};

use super::{
    Anchor, Clock, Phase, phases,
    report::Startup,
    spawn::{Status, parse_entry, parse_status},
};

fn startup(index: usize, ms: &[(Phase, u64)]) -> Startup {
    let start = Instant::now();
    let mut t = start;
    let marks: Vec<(Phase, Instant)> = ms
        .iter()
        .map(|&(p, d)| {
            t += Duration::from_millis(d);
            (p, t)
        })
        .collect();
    Startup {
        index,
        phases: phases(start, &marks),
        total_ns: ms.iter().map(|m| m.1).sum::<u64>() * 1_000_000,
        ..Startup::default()
    }
}

#[test]
fn phases_are_consecutive_and_sum_to_the_total() {
    let s = startup(
        0,
        &[
            (Phase::Clone, 2),
            (Phase::Cgroup, 1),
            (Phase::Netns, 1),
            (Phase::Exec, 5),
            (Phase::Ready, 3),
        ],
    );
    let ns: Vec<u64> = s.phases.iter().map(|p| p.ns).collect();
    assert_eq!(ns, [2_000_000, 1_000_000, 1_000_000, 5_000_000, 3_000_000]);
    let offsets: Vec<u64> = s.phases.iter().map(|p| p.offset_ns).collect();
    assert_eq!(offsets, [0, 2_000_000, 3_000_000, 4_000_000, 9_000_000]);
    assert_eq!(s.sum_ns(), s.total_ns);
    assert_eq!(s.phases[3].clock, Clock::Payload);
    assert_eq!(s.phases[4].clock, Clock::Parent);
}

#[test]
fn a_boundary_out_of_order_never_goes_negative() {
    let start = Instant::now();
    let later = start + Duration::from_millis(5);
    let p = phases(start, &[(Phase::Clone, later), (Phase::Cgroup, start)]);
    assert_eq!(p[0].ns, 5_000_000);
    assert_eq!(p[1].ns, 0);
}

#[test]
fn the_anchor_maps_the_payload_clock_onto_instants() {
    let a = Anchor::now();
    let t = a.instant(a.mono + 1_500).unwrap();
    assert_eq!(t.duration_since(a.at), Duration::from_nanos(1_500));
    let t = a.instant(a.mono - 700).unwrap();
    assert_eq!(a.at.duration_since(t), Duration::from_nanos(700));
    // The raw clock and Instant agree: a fresh reading maps to within a millisecond of now.
    let now = Instant::now();
    let mapped = a.instant(super::mono_ns()).unwrap();
    let gap = if mapped > now {
        mapped - now
    } else {
        now - mapped
    };
    assert!(gap < Duration::from_millis(1), "{gap:?}");
}

#[test]
fn distributions_per_phase_and_total() {
    let cs: Vec<Startup> = (0..10)
        .map(|i| {
            startup(
                i,
                &[
                    (Phase::Clone, 1 + i as u64),
                    (Phase::Exec, 10),
                    (Phase::Ready, 2),
                ],
            )
        })
        .collect();
    let s = crate::startup::summary(&cs, |_| String::new());
    let names: Vec<&str> = s.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["clone", "exec", "ready", "total"]);
    let (phases, total) = (&s[..3], &s[3]);
    let clone = &phases[0];
    assert_eq!(clone.count, 10);
    assert_eq!(clone.min_ns, 1_000_000);
    assert_eq!(clone.max_ns, 10_000_000);
    // HDR with 3 significant digits: within 0.1%.
    assert!(
        clone.p50_ns.abs_diff(5_000_000) <= 5_000,
        "{}",
        clone.p50_ns
    );
    assert!(
        clone.p90_ns.abs_diff(9_000_000) <= 9_000,
        "{}",
        clone.p90_ns
    );
    assert_eq!(clone.mean_ns, 5_500_000);
    assert_eq!(total.min_ns, 13_000_000);
    assert_eq!(total.max_ns, 22_000_000);
}

#[test]
fn empty_distribution_is_zero() {
    let s = crate::startup::PhaseStats::of("x", "", &[]);
    assert_eq!((s.count, s.min_ns, s.p50_ns, s.max_ns), (0, 0, 0, 0));
}

#[test]
fn status_pipe_protocol() {
    assert_eq!(parse_status(b""), Status::Incomplete);
    assert_eq!(parse_status(b"1234"), Status::Incomplete);
    assert_eq!(parse_status(b"1234\n"), Status::Incomplete);
    assert_eq!(parse_status(b"1234\nr"), Status::Ready(Some(1234)));
    assert_eq!(parse_status(b"x"), Status::Ready(None));
    assert_eq!(parse_entry(b"42\n"), Some(42));
    assert_eq!(parse_entry(b"42"), None);
    assert_eq!(parse_entry(b"x\n"), None);
}

#[test]
fn the_args_parse_as_a_flattened_clap_struct() {
    use clap::{CommandFactory as _, Parser};
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: super::ContainerBootArgs,
    }
    Cli::command().debug_assert();
    let c = Cli::try_parse_from(["x"]).unwrap();
    assert_eq!((c.a.count, c.a.net), (1, super::NetMode::Bridge));
    assert!(c.a.payload.is_empty() && c.a.json.is_none());
    let c = Cli::try_parse_from([
        "x",
        "--count",
        "8",
        "--net",
        "none",
        "--payload",
        "/bin/sh",
        "-c",
        "printf x >&3",
    ])
    .unwrap();
    assert_eq!((c.a.count, c.a.net), (8, super::NetMode::None));
    assert_eq!(c.a.payload, ["/bin/sh", "-c", "printf x >&3"]);
}

#[test]
fn native_args_flatten_next_to_boot_shared_flags() {
    use clap::{CommandFactory as _, Parser};
    #[derive(Parser)]
    struct Boot {
        #[arg(long, default_value_t = 1)]
        count: u32,
        #[arg(long)]
        json: Option<std::path::PathBuf>,
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
        #[command(flatten)]
        native: super::NativeArgs,
    }
    Boot::command().debug_assert();
    let b = Boot::try_parse_from(["x", "--count", "3", "--net", "nat"]).unwrap();
    let a = super::ContainerBootArgs::with(b.count as usize, b.json, b.timeout, &b.native);
    assert_eq!((a.count, a.net, a.timeout), (3, super::NetMode::Nat, 60.0));
}

#[test]
fn the_gate_opens_for_all_or_sends_them_away() {
    let gate = super::Gate::new(3);
    std::thread::scope(|s| {
        let waiting: Vec<_> = (0..3).map(|_| s.spawn(|| gate.wait())).collect();
        assert!(waiting.into_iter().all(|h| h.join().unwrap()));
    });
    // Two of three came (the third's thread never started): abort sends them away.
    let gate = super::Gate::new(3);
    std::thread::scope(|s| {
        let waiting: Vec<_> = (0..2).map(|_| s.spawn(|| gate.wait())).collect();
        std::thread::sleep(Duration::from_millis(50));
        gate.abort();
        assert!(waiting.into_iter().all(|h| !h.join().unwrap()));
    });
}
