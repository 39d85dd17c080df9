//! `kill -9` of each command at three moments (early, mid-setup, during the measurement), then
//! one unrelated command (`profiler lab list`, whose start-up reaper is the only clean-up a
//! killed run gets), then a look for anything the killed run left: namespaces, lab files,
//! root-namespace links, firewall rules, qdiscs and filters, QEMU and other processes,
//! Docker containers and images, cgroups, BPF programs and temp files.
//!
//! Other runs of the tool may be at work on this machine at the same time, so every check
//! judges only what the killed run made: things named by its pid and start time, labs its
//! pid owned while it ran, and what appeared in the root namespace while it ran.

use std::{
    collections::BTreeSet,
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant, SystemTime},
};

use profiler_tests::{
    become_subreaper, live_children, namespaces, profiler, profiler_cgroups, reap_orphans,
    require_root, root_links, run_ok,
};

/// The killed process: pid and start time (clock ticks since boot, /proc/PID/stat field 22).
#[derive(Clone, Copy, Debug)]
struct Victim {
    pid: u32,
    start: u64,
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..]
        .split(' ')
        .nth(19)?
        .parse()
        .ok()
}

/// Lab ids whose registry file names `pid` as owner, and those with no owner (kept).
fn labs_of(pid: u32) -> (Vec<String>, Vec<String>) {
    let (mut owned, mut kept) = (vec![], vec![]);
    for e in std::fs::read_dir("/run/profiler/labs")
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(v) = std::fs::read(e.path())
            .map_err(|_| ())
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).map_err(|_| ()))
        else {
            continue;
        };
        let id = v["id"].as_str().unwrap_or_default().to_string();
        match v["owner"]["pid"].as_u64() {
            Some(p) if p == pid as u64 => owned.push(id),
            None if v["owner"].is_null() => kept.push(id),
            _ => {}
        }
    }
    (owned, kept)
}

fn lines_of(cmd: &str, args: &[&str]) -> BTreeSet<String> {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The root namespace as the tool must leave it: links, qdiscs, firewall rules by its names.
#[derive(Clone)]
struct Root {
    links: BTreeSet<String>,
    qdiscs: BTreeSet<String>,
    rules: BTreeSet<String>,
}

impl Root {
    fn now() -> Root {
        let ours = |l: &String| l.contains("pf-") || l.to_lowercase().contains("profiler");
        let mut rules: BTreeSet<String> = lines_of("iptables-save", &[]);
        rules.extend(lines_of("nft", &["list", "ruleset"]));
        Root {
            links: root_links().into_iter().collect(),
            qdiscs: lines_of("tc", &["qdisc", "show"])
                .into_iter()
                .chain(lines_of("tc", &["filter", "show"]))
                .collect(),
            rules: rules.into_iter().filter(ours).collect(),
        }
    }
}

/// A link Docker makes for a container (a veth on one of its bridges): another run's
/// container, judged by the container check instead.
fn dockers_link(name: &str) -> bool {
    std::fs::read_link(format!("/sys/class/net/{name}/master"))
        .ok()
        .and_then(|m| m.file_name().map(|f| f.to_string_lossy().into_owned()))
        .is_some_and(|m| m == "docker0" || m.starts_with("br-"))
}

/// The kernel names (at most 15 bytes) of the programs in the tool's eBPF object.
fn our_program_names() -> BTreeSet<String> {
    let obj = aya_obj::Object::parse(profiler::probes::OBJECT).expect("parsing the eBPF object");
    obj.programs
        .keys()
        .map(|n| n.chars().take(15).collect())
        .collect()
}

/// Program ids some live process holds (a program fd or a link fd: `prog_id:` in fdinfo).
fn held_programs() -> BTreeSet<u32> {
    let mut held = BTreeSet::new();
    for p in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if !p
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        for fd in std::fs::read_dir(p.path().join("fdinfo"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(info) = std::fs::read_to_string(fd.path()) else {
                continue;
            };
            for l in info.lines() {
                if let Some(id) = l.strip_prefix("prog_id:") {
                    held.extend(id.trim().parse::<u32>().ok());
                }
            }
        }
    }
    held
}

/// The tool's BPF programs loaded while the victim lived that nobody holds: left attached
/// (a TC filter, a pinned link) by a dead owner.
fn orphan_programs(names: &BTreeSet<String>, from: SystemTime, to: SystemTime) -> Vec<String> {
    let candidates = || -> Vec<(u32, String)> {
        aya::programs::loaded_programs()
            .flatten()
            .filter(|p| {
                p.loaded_at()
                    .is_some_and(|t| t + Duration::from_secs(1) >= from && t <= to)
            })
            .filter_map(|p| {
                let n = p.name_as_str()?.to_string();
                names.contains(&n).then_some((p.id(), n))
            })
            .collect()
    };
    let first = candidates();
    if first.is_empty() {
        return vec![];
    }
    let held = held_programs();
    // Still loaded after the holders were read: not a program freed in between.
    let still: BTreeSet<u32> = candidates().into_iter().map(|(id, _)| id).collect();
    first
        .into_iter()
        .filter(|(id, _)| !held.contains(id) && still.contains(id))
        .map(|(id, n)| format!("BPF program {id} {n}"))
        .collect()
}

/// How many of the tool's programs loaded since `from` process `pid` holds: proof that the
/// program check above looks at the right names and times.
fn programs_held_by(pid: u32, names: &BTreeSet<String>, from: SystemTime) -> usize {
    let mine: BTreeSet<u32> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
        .flat_map(|i| {
            i.lines()
                .filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .collect();
    aya::programs::loaded_programs()
        .flatten()
        .filter(|p| mine.contains(&p.id()))
        .filter(|p| {
            p.loaded_at()
                .is_some_and(|t| t + Duration::from_secs(1) >= from)
        })
        .filter(|p| p.name_as_str().is_some_and(|n| names.contains(n)))
        .count()
}

fn docker_ids(args: &[&str]) -> Vec<String> {
    lines_of("docker", args)
        .into_iter()
        .filter(|l| !l.trim().is_empty())
        .collect()
}

/// What one killed run left, by its identity.
struct Check<'a> {
    v: Victim,
    labs: &'a BTreeSet<String>,
    before: &'a Root,
    from: SystemTime,
    to: SystemTime,
    names: &'a BTreeSet<String>,
    docker: bool,
}

impl Check<'_> {
    fn leftovers(&self) -> Vec<String> {
        let Victim { pid, start } = self.v;
        let mut left = vec![];
        // Labs: its own (by owner while it ran), and prefixed namespaces no file accounts for.
        let (owned, kept) = labs_of(pid);
        left.extend(owned.iter().map(|id| format!("lab file {id} owned by it")));
        for ns in namespaces().into_iter().filter(|n| n.starts_with("pf-")) {
            let id = ns.split('-').nth(1).unwrap_or_default();
            let file = Path::new(&format!("/run/profiler/labs/{id}.json")).exists();
            if !file || (self.labs.contains(id) && !kept.iter().any(|k| k == id)) {
                left.push(format!("namespace {ns}"));
            }
        }
        // The root namespace: what appeared while it ran and is still there.
        let now = Root::now();
        left.extend(
            now.links
                .difference(&self.before.links)
                .filter(|l| !dockers_link(l))
                .map(|l| format!("root link {l}")),
        );
        let old_links = &self.before.links;
        left.extend(
            now.qdiscs
                .difference(&self.before.qdiscs)
                .filter(|q| {
                    // On a link that existed before (new links are judged above).
                    q.split_whitespace()
                        .skip_while(|w| *w != "dev")
                        .nth(1)
                        .is_some_and(|d| old_links.contains(d))
                })
                .map(|q| format!("root qdisc/filter {q}")),
        );
        left.extend(
            now.rules
                .difference(&self.before.rules)
                .map(|r| format!("firewall rule {r}")),
        );
        // Processes: QEMU named by it, and any orphan of it (they come to this subreaper).
        let marker = format!("profiler-{pid}-{start}-");
        left.extend(
            live_children(&[pid, std::process::id()], "")
                .into_iter()
                .map(|(p, c)| format!("process {p}: {c}")),
        );
        for p in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains("qemu-system") && cmd.contains(&marker) {
                left.push(format!("QEMU {}: {cmd}", p.file_name().to_string_lossy()));
            }
        }
        // Docker: containers and images labelled with it as owner, and its payload tags.
        if self.docker {
            let label = format!("label=profiler.owner={pid}:{start}");
            left.extend(
                docker_ids(&["ps", "-aq", "--filter", &label])
                    .into_iter()
                    .map(|c| format!("Docker container {c}")),
            );
            left.extend(
                docker_ids(&["images", "-q", "--filter", &label])
                    .into_iter()
                    .map(|i| format!("Docker image {i}")),
            );
            left.extend(
                docker_ids(&["images", "profiler-payload", "--format", "{{.Tag}}"])
                    .into_iter()
                    .filter(|t| *t == pid.to_string() || *t == format!("{pid}-self"))
                    .map(|t| format!("Docker image profiler-payload:{t}")),
            );
        }
        // cgroups: its runs', and its labs' once the lab is gone.
        let run = format!("profiler-run-{pid}-{start}-");
        for c in profiler_cgroups() {
            let of_its_lab = self.labs.iter().any(|id| {
                c.strip_prefix(&format!("profiler-{id}-"))
                    .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
                    && !Path::new(&format!("/run/profiler/labs/{id}.json")).exists()
            });
            if c.starts_with(&run) || of_its_lab {
                left.push(format!("cgroup {c}"));
            }
        }
        left.extend(orphan_programs(self.names, self.from, self.to));
        // MariaDB: data directories of dead owners (a native container's workload owns its
        // own, by its pid), and any server still running in one.
        let root = Path::new(profiler::mariadb::DATA_ROOT);
        for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if profiler::cleanup::owner::of_name(&name).is_none_or(|o| !o.alive()) {
                left.push(format!("MariaDB data {}", e.path().display()));
                left.extend(
                    profiler::mariadb::servers_in(&e.path())
                        .into_iter()
                        .map(|p| format!("mariadbd {p}")),
                );
            }
        }
        // Temp files named by it.
        let tag = format!("{pid}-{start}");
        let cache = profiler::boot::artefacts::cache_dir();
        for (dir, hit) in [
            (cache.as_path(), format!("tmp-{tag}-")),
            (cache.as_path(), format!(".tmp-{tag}")),
            (Path::new("/run/profiler/inject"), format!("{tag}.json")),
            (Path::new("/run/profiler/libvirt"), marker.clone()),
            (Path::new("/tmp"), format!("profiler-tar-{pid}.tar")),
            (Path::new("/tmp"), format!("profiler-srv-nginx-{tag}-")),
        ] {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.contains(&hit) {
                    left.push(format!("temp file {}", e.path().display()));
                }
            }
        }
        left
    }
}

fn docker_running() -> bool {
    std::os::unix::net::UnixStream::connect("/var/run/docker.sock").is_ok()
}

/// Runs `args`, kills it with SIGKILL `at` after its start, runs `profiler lab list`, and
/// returns what the killed run left (empty: nothing), after at most 3 s for things that go by
/// themselves (a dying process, a program the kernel frees late).
/// None: it ended by itself before `at` (a lab it handed over is taken down).
fn kill_at(args: &[&str], at: Duration, docker: bool) -> Option<(Vec<String>, usize)> {
    let before = Root::now();
    let names = our_program_names();
    let from = SystemTime::now();
    let mut child: Child = profiler()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning profiler");
    let pid = child.id();
    let start = start_time(pid).expect("the profiler's start time");
    let v = Victim { pid, start };
    // The labs it owns, as they appear (a registry file is written before its namespaces).
    let mut labs = BTreeSet::new();
    let t = Instant::now();
    while t.elapsed() < at {
        labs.extend(labs_of(pid).0);
        std::thread::sleep(Duration::from_millis(5));
    }
    if let Some(status) = child.try_wait().expect("try_wait") {
        assert!(
            status.success(),
            "{args:?} failed by itself ({status}) before the kill"
        );
        eprintln!("{args:?} ended by itself ({status}) before the kill at {at:?}");
        for id in labs_of(pid).1.iter().filter(|k| labs.contains(*k)) {
            let _ = profiler().args(["lab", "down", id]).output();
        }
        return None;
    }
    labs.extend(labs_of(pid).0);
    let held = programs_held_by(pid, &names, from);
    child.kill().expect("kill -9");
    child.wait().expect("reaping the profiler");
    let to = SystemTime::now();
    let out = run_ok(profiler().args(["lab", "list"]));
    let reaped = String::from_utf8_lossy(&out.stderr)
        .trim()
        .replace('\n', "; ");
    let check = Check {
        v,
        labs: &labs,
        before: &before,
        from,
        to,
        names: &names,
        docker,
    };
    let t = Instant::now();
    let left = loop {
        reap_orphans();
        let left = check.leftovers();
        if left.is_empty() || t.elapsed() > Duration::from_secs(3) {
            break left;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // A lab handed to the user before the kill is up by design (`lab up`): down for the next.
    for id in labs_of(pid).1.iter().filter(|k| labs.contains(*k)) {
        eprintln!("lab {id} was complete and handed over before the kill: kept");
        let _ = profiler().args(["lab", "down", id]).output();
    }
    eprintln!(
        "{args:?} killed at {at:?} (labs {labs:?}, {held} BPF programs): {}; the reaper said: {}",
        if left.is_empty() {
            "nothing left".to_string()
        } else {
            format!("LEFT {left:?}")
        },
        if reaped.is_empty() {
            "nothing"
        } else {
            &reaped
        }
    );
    Some((left, held))
}

/// Three kills of one command; fails with every leftover of every cycle. `bpf`: the command
/// held BPF programs at one of the moments at least (so the program check judged something).
fn three_kills(args: &[&str], at_ms: [u64; 3], bpf: bool) {
    require_root();
    become_subreaper();
    let docker = args.contains(&"docker");
    assert!(
        !docker || docker_running(),
        "{args:?} needs a running Docker daemon (/var/run/docker.sock answers nothing)"
    );
    let mut failures = vec![];
    let mut held = 0;
    for first in at_ms {
        // A run that ends before the moment (a quiet machine) is tried again earlier.
        let mut ms = first;
        let left = loop {
            if let Some((left, h)) = kill_at(args, Duration::from_millis(ms), docker_running()) {
                held = held.max(h);
                break left;
            }
            assert!(ms > 10, "{args:?} ends within {ms} ms: nothing to kill");
            ms = ms * 2 / 3;
        };
        if !left.is_empty() {
            failures.push(format!("killed at {ms} ms: {left:?}"));
        }
    }
    assert!(
        !bpf || held > 0,
        "{args:?} held no BPF program at any of {at_ms:?} ms: the kills missed its measurement"
    );
    assert!(failures.is_empty(), "{args:?} left: {failures:#?}");
}

#[test]
fn trace_overlay() {
    three_kills(
        &["trace", "--mode", "overlay", "-l", "5"],
        [150, 900, 3000],
        true,
    );
}

#[test]
fn trace_nested() {
    three_kills(
        &["trace", "--mode", "nested", "-l", "5"],
        [150, 900, 3000],
        true,
    );
}

/// VM-H: killed while its bridge lab, the tap on it and the guest on the tap are up (or being
/// made), it leaves no QEMU, no lab and no tap (in its namespace, or in the root's).
#[test]
fn experiment_vm_host() {
    let file = std::env::temp_dir().join(format!("pf-k9-vmh-{}.toml", std::process::id()));
    std::fs::write(
        &file,
        r#"paper = "kill -9 during VM-H"
repetitions = 1
length_s = 3
[[table]]
id = "rr"
title = "rr"
kind = "net"
test = "tcp_rr"
metric = "rr_latency_us"
unit = "us"
baseline = "VM-H"
rows = [{ setup = "VM-H", mode = "bridge", placement = "VM-H" }]
"#,
    )
    .unwrap();
    three_kills(
        &["experiment", file.to_str().unwrap()],
        [1500, 5000, 9000],
        false,
    );
    let _ = std::fs::remove_file(&file);
}

#[test]
fn lab_up() {
    // One an earlier failed run of this test handed over.
    let _ = profiler().args(["lab", "down", "k9up"]).output();
    three_kills(
        &["lab", "up", "--mode", "overlay", "--id", "k9up"],
        [40, 110, 180],
        false,
    );
}

#[test]
fn boot_vm_qemu() {
    profiler::boot::artefacts::prepare().expect("the guest's artefacts");
    three_kills(
        &["boot", "--vm", "qemu", "--accel", "tcg", "--count", "2"],
        [100, 700, 2500],
        true,
    );
}

#[test]
fn boot_container_native() {
    three_kills(
        &[
            "boot",
            "--container",
            "native",
            "--net",
            "bridge",
            "--count",
            "2",
        ],
        [40, 120, 200],
        false,
    );
}

#[test]
fn boot_container_docker() {
    three_kills(
        &["boot", "--container", "docker", "--count", "2"],
        [100, 400, 800],
        false,
    );
}

#[test]
fn run_env_native() {
    three_kills(
        &["run", "--env", "native", "sysbench", "cpu", "--time", "5"],
        [60, 300, 2000],
        false,
    );
}

#[test]
fn run_env_docker() {
    three_kills(
        &["run", "--env", "docker", "sysbench", "cpu", "--time", "5"],
        [150, 1200, 4000],
        false,
    );
}

#[test]
fn sysbench_oltp_own_server() {
    // In mariadb-install-db, at the server's start or prepare, during the run.
    three_kills(
        &[
            "sysbench",
            "oltp_read_write",
            "--time",
            "8",
            "--table-size",
            "2000",
        ],
        [300, 6500, 11000],
        false,
    );
}

#[test]
fn run_env_native_oltp() {
    three_kills(
        &[
            "run",
            "--env",
            "native",
            "sysbench",
            "oltp_read_only",
            "--time",
            "8",
            "--table-size",
            "2000",
        ],
        [300, 6500, 11000],
        false,
    );
}

#[test]
fn web_env_native() {
    three_kills(
        &[
            "web",
            "--env",
            "native",
            "--connections",
            "4",
            "-l",
            "3",
            "--no-trace",
        ],
        [100, 700, 2500],
        false,
    );
}

#[test]
fn web_env_host_traced() {
    // The last kill lands in the traced run: the tracer's programs must go with the process.
    three_kills(
        &[
            "web",
            "--env",
            "host",
            "--connections",
            "2",
            "-l",
            "1",
            "--trace-length",
            "4",
        ],
        [300, 900, 3500],
        true,
    );
}

#[test]
fn web_env_docker() {
    three_kills(
        &[
            "web",
            "--env",
            "docker",
            "--connections",
            "4",
            "-l",
            "3",
            "--no-trace",
        ],
        [150, 1200, 4000],
        false,
    );
}

#[test]
fn density_env_native() {
    three_kills(
        &[
            "density",
            "--env",
            "native",
            "--instances",
            "1,2",
            "--time",
            "2",
        ],
        [100, 700, 3000],
        false,
    );
}

#[test]
fn inject() {
    require_root();
    let out = run_ok(profiler().args(["lab", "up", "--mode", "bridge", "--id", "k9inj", "--json"]));
    let _lab = profiler_tests::LabGuard("k9inj".into());
    let desc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("lab JSON");
    let dev = desc["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .find(|d| d["role"] == "container_end")
        .expect("a container end");
    let (ns, name) = (
        dev["netns"].as_str().unwrap(),
        dev["name"].as_str().unwrap(),
    );
    let args = [
        "inject",
        "--lab",
        "k9inj",
        "--dev",
        name,
        "--netns",
        ns,
        "--ingress",
        "--delay",
        "1ms",
    ];
    three_kills(&args, [30, 150, 1000], true);
    // On the lab the user keeps: no filter of the injector on its device.
    for hook in ["ingress", "egress"] {
        let f = lines_of("tc", &["-n", ns, "filter", "show", "dev", name, hook]);
        assert!(f.is_empty(), "{hook} filters left on {name} in {ns}: {f:?}");
    }
    let q: Vec<String> = lines_of("tc", &["-n", ns, "qdisc", "show", "dev", name])
        .into_iter()
        .filter(|l| l.contains("clsact"))
        .collect();
    assert!(q.is_empty(), "clsact left on {name} in {ns}: {q:?}");
}

#[test]
fn trace_self_check() {
    three_kills(&["trace", "--self-check"], [200, 2500, 12000], true);
}

/// A QEMU that outlived its owner (PR_SET_PDEATHSIG lost, or another tool re-parented it) is
/// killed by the next command's reaper, found by the owner in its `-name`; one whose owner
/// lives is left alone.
#[test]
fn the_reaper_kills_a_qemu_whose_owner_is_gone_and_spares_a_live_owners() {
    require_root();
    become_subreaper();
    let me = std::process::id();
    let start = start_time(me).expect("my start time");
    let spawn = |name: String| {
        std::process::Command::new(profiler::boot::qemu::QEMU)
            .args(["-machine", "none", "-S", "-nographic", "-monitor", "none"])
            .args(["-serial", "none", "-name"])
            .arg(format!("{name},debug-threads=on"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning qemu")
    };
    // The same pid with another start time: a former holder of this pid, gone.
    let mut orphan = spawn(format!("profiler-{me}-{}-0", start + 1));
    let mut live = spawn(format!("profiler-{me}-{start}-0"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        orphan.try_wait().expect("try_wait").is_none(),
        "qemu -machine none did not stay up"
    );
    let t = Instant::now();
    let out = run_ok(profiler().args(["lab", "list"]));
    let took = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    let status = orphan.wait().expect("waiting for the orphan");
    let alive = live.try_wait().expect("try_wait").is_none();
    let _ = live.kill();
    let _ = live.wait();
    eprintln!("lab list took {took:?}: {}", err.trim());
    assert!(
        err.contains(&format!("killed QEMU {}", orphan.id())),
        "no word of the orphan: {err}"
    );
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "{status}"
    );
    assert!(alive, "the reaper killed a QEMU whose owner lives");
}
