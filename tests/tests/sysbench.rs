//! `profiler::sysbench` against Debian's sysbench: the same cpu test, events/s within 10%.
//! Never skips: without `sysbench` installed it fails and says how to install it.

use std::{process::Command, time::Duration};

use profiler::sysbench::{self, Spec, Test};

const MAX_PRIME: u64 = 20000;
const SECS: u64 = 3;
/// Rounds of each, alternating; the best of each is compared, which keeps the comparison
/// about the code and not about whatever else shares the machine's CPUs at that moment.
const ROUNDS: usize = 3;

fn real_sysbench() -> f64 {
    let args = [
        "cpu".to_string(),
        format!("--cpu-max-prime={MAX_PRIME}"),
        "--threads=1".into(),
        format!("--time={SECS}"),
        "run".into(),
    ];
    let out = match Command::new("sysbench").args(&args).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`sysbench` is not installed: run `cargo xtask setup` or `apt-get install -y sysbench`"
        ),
        Err(e) => panic!("spawning sysbench: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sysbench {} failed ({}): {stdout}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("events per second:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no 'events per second' in sysbench's output:\n{stdout}"))
}

fn ours() -> f64 {
    let mut spec = Spec::new(Test::Cpu);
    spec.cpu.max_prime = MAX_PRIME;
    spec.threads = 1;
    spec.time = Duration::from_secs(SECS);
    let r = sysbench::run_workload(&spec).expect("profiler::sysbench cpu run");
    let st = r.run.expect("run statistics");
    assert!(st.total_events > 0, "{st:?}");
    st.events_per_sec
}

#[test]
fn cpu_events_per_second_match_sysbench() {
    let (mut theirs, mut mine) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        theirs.push(real_sysbench());
        mine.push(ours());
    }
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let ratio = best(&mine) / best(&theirs);
    eprintln!(
        "cpu --cpu-max-prime={MAX_PRIME} --threads=1 --time={SECS}: sysbench {theirs:.2?} \
         events/s, profiler {mine:.2?}; best-of-{ROUNDS} ratio {ratio:.3}"
    );
    assert!(
        (0.9..=1.1).contains(&ratio),
        "profiler sysbench cpu is {:.1}% of sysbench's events/s (best of {ROUNDS}: {:.2} vs \
         {:.2}; all runs: profiler {mine:.2?}, sysbench {theirs:.2?}); expected within 10%",
        ratio * 100.0,
        best(&mine),
        best(&theirs)
    );
}
