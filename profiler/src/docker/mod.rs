//! Docker through its API (bollard): container start-up in phases, with the execs the kernel
//! saw under them (runc, containerd-shim, iptables, the entrypoint), and the names of
//! containers' network namespaces for the tracer.
//!
//! Everything made here carries the label `profiler=1` and `profiler.owner=<pid>:<start>`, so a
//! later run removes what a killed one left (`reap_stale`).

pub mod image;
pub mod service;

use std::{collections::HashMap, time::Duration};

use anyhow::{Context as _, Result, bail};
use bollard::{
    Docker,
    models::{ContainerCreateBody, HostConfig},
    query_parameters::{
        CreateContainerOptionsBuilder, CreateImageOptionsBuilder, RemoveContainerOptionsBuilder,
        RemoveImageOptionsBuilder,
    },
};
use futures::StreamExt as _;
use serde::Serialize;

use crate::{
    cleanup::Owner,
    hist::fmt_ns,
    probes::exec::{ExecTracer, monotonic_ns},
    startup::{Instance, Laps, Phase, PhaseStats, Wall, summary},
};

pub use crate::cleanup::docker::SOCKET;
use crate::cleanup::docker::{IMAGE, LABEL, OWNER_LABEL};

pub async fn connect() -> Result<Docker> {
    if !std::path::Path::new(SOCKET).exists() {
        bail!("no Docker daemon: {SOCKET} is missing (start dockerd, or install docker.io)");
    }
    let d = Docker::connect_with_socket_defaults()
        .with_context(|| format!("connecting to Docker at {SOCKET}"))?;
    d.negotiate_version()
        .await
        .with_context(|| format!("Docker at {SOCKET} does not answer"))
}

/// The current-thread runtime each call into the daemon runs on.
fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The daemon, with what killed runs left removed first.
async fn connect_reaped() -> Result<Docker> {
    let d = connect().await?;
    reap_stale(&d).await?;
    Ok(d)
}

fn labels() -> HashMap<String, String> {
    HashMap::from([
        (LABEL.to_string(), "1".to_string()),
        (OWNER_LABEL.to_string(), Owner::me().to_string()),
    ])
}

/// Removes containers and images the profiler made whose owner process is gone.
pub async fn reap_stale(d: &Docker) -> Result<Vec<String>> {
    crate::cleanup::docker::reap(d).await
}

async fn remove_container(d: &Docker, id: &str) {
    let _ = d
        .remove_container(
            id,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await;
}

/// Imports the payload image from a root filesystem we assemble (no registry needed).
async fn build_image(d: &Docker) -> Result<String> {
    import(d, image::rootfs()?, &std::process::id().to_string()).await
}

async fn import(d: &Docker, tar: Vec<u8>, tag_suffix: &str) -> Result<String> {
    let tag = format!("{IMAGE}:{tag_suffix}");
    let opts = CreateImageOptionsBuilder::default()
        .from_src("-")
        .repo(IMAGE)
        .tag(tag_suffix)
        .changes(vec![
            format!(
                "CMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"{}\", \"-h\", \"/www\"]",
                image::PORT
            ),
            format!("LABEL {LABEL}=1"),
            format!("LABEL {OWNER_LABEL}={}", Owner::me()),
        ])
        .build();
    let mut s = d.create_image(Some(opts), Some(bollard::body_full(tar.into())), None);
    while let Some(r) = s.next().await {
        r.context("importing the payload image")?;
    }
    Ok(tag)
}

#[derive(clap::Args, Debug, Clone)]
pub struct DockerBootArgs {
    /// Image to start (default: the profiler builds and later removes its own busybox image).
    #[arg(long)]
    pub image: Option<String>,
    /// Network: bridge, host, none or a network name.
    #[arg(long, default_value = "bridge")]
    pub network: String,
}

/// One container's start-up, ns from the moment create was sent.
#[derive(Debug, Serialize, Clone)]
pub struct DockerBoot {
    pub name: String,
    /// create, start, running, ready.
    pub phases: Vec<Phase>,
    pub total_ns: u64,
    pub ready_by: &'static str,
}

impl Instance for DockerBoot {
    fn complete_phases(&self) -> Vec<(&str, u64)> {
        self.phases.complete_phases()
    }

    fn ready_total_ns(&self) -> Option<u64> {
        Some(self.total_ns)
    }
}

#[derive(Debug, Serialize)]
pub struct DockerBootReport {
    pub image: String,
    pub network: String,
    pub boots: Vec<DockerBoot>,
    /// setup (connecting, reaping leftovers, importing the payload image), the containers,
    /// teardown (removing the containers and the image): the whole run.
    #[serde(flatten)]
    pub wall: Wall,
    /// Execs the kernel saw while the containers started (all of them, in order): offset ns
    /// from the first create request, and the program (`exe` is dockerd re-executing itself
    /// to set up namespaces).
    pub kernel: Vec<(u64, String)>,
    /// Per phase across boots, then `total`.
    pub summary: Vec<PhaseStats>,
}

/// What each phase stands for.
pub const PHASES: [(&str, &str); 4] = [
    ("create", "the create request to its answer"),
    ("start", "the start request to its answer"),
    (
        "running",
        "to the first inspect that shows it running with a pid",
    ),
    (
        "ready",
        "to the first HTTP answer from the container's address",
    ),
];

fn what(name: &str) -> String {
    PHASES
        .iter()
        .find(|(n, _)| *n == name)
        .map_or("create request to ready", |(_, w)| *w)
        .to_string()
}

/// Refuses a `--network` Docker does not know, before any image or container is made (the
/// create request was the first to fail, with a container's worth of work already done).
async fn check_network(d: &Docker, network: &str) -> Result<()> {
    // Network modes rather than networks: nothing to look up.
    if ["host", "none", "default"].contains(&network) || network.starts_with("container:") {
        return Ok(());
    }
    match d.inspect_network(network, None).await {
        Ok(_) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => bail!(
            "--network {network}: Docker has no such network (`docker network ls` lists them; bridge, host and none always exist)"
        ),
        Err(e) => Err(e).with_context(|| format!("--network {network}: asking Docker about it")),
    }
}

/// Starts `count` containers at once and times each start-up.
pub fn boot(args: &DockerBootArgs, count: usize, timeout: Duration) -> Result<DockerBootReport> {
    boot_from(args, count, timeout, Laps::new(std::time::Instant::now()))
}

/// [`boot`] on a clock that started earlier (`boot`'s CLI: at the process's start).
pub fn boot_from(
    args: &DockerBootArgs,
    count: usize,
    timeout: Duration,
    mut laps: Laps,
) -> Result<DockerBootReport> {
    crate::kernel::require_root("profiler boot --container docker")?;
    let _progress = crate::progress::Cleared;
    crate::progress::show(&format!("booting {count} Docker container(s)"));
    runtime()?.block_on(async {
        let d = connect_reaped().await?;
        check_network(&d, &args.network).await?;
        laps.lap("connect, reap");
        let built = match &args.image {
            Some(i) => (i.clone(), false),
            None => (build_image(&d).await?, true),
        };
        laps.lap(if built.1 { "image import" } else { "image" });
        let key = format!("docker-{}", std::process::id());
        let (names, image) = (
            (0..count)
                .map(|n| format!("profiler-{}-{n}", std::process::id()))
                .collect::<Vec<_>>(),
            built.clone(),
        );
        crate::cleanup::on_signal(&key, move || {
            let Ok(rt) = runtime() else {
                return;
            };
            rt.block_on(async {
                if let Ok(d) = connect().await {
                    for n in &names {
                        remove_container(&d, n).await;
                    }
                    if image.1 {
                        let _ = d
                            .remove_image(
                                &image.0,
                                None::<RemoveImageOptionsBuilder>.map(|b| b.build()),
                                None,
                            )
                            .await;
                    }
                }
            });
        });
        let mut execs = ExecTracer::start().ok();
        laps.lap("exec tracer");
        let names: Vec<String> = (0..count)
            .map(|n| format!("profiler-{}-{n}", std::process::id()))
            .collect();
        let runs = futures::future::join_all(
            names
                .iter()
                .map(|name| boot_one(&d, name, &built.0, &args.network, timeout)),
        )
        .await;
        laps.instances();
        for name in &names {
            remove_container(&d, name).await;
        }
        laps.lap("containers removed");
        if built.1 {
            let _ = d
                .remove_image(
                    &built.0,
                    Some(RemoveImageOptionsBuilder::default().force(true).build()),
                    None,
                )
                .await;
            laps.lap("image removed");
        }
        let seen = match execs.as_mut() {
            Some(t) => t.drain().unwrap_or_default(),
            None => vec![],
        };
        drop(execs);
        crate::cleanup::forget(&key);
        laps.lap("exec tracer closed");
        let mut boots = vec![];
        let (mut first, mut last) = (u64::MAX, 0);
        for r in runs {
            let (b, t0, t_end) = r?;
            (first, last) = (first.min(t0), last.max(t_end));
            boots.push(b);
        }
        let kernel = seen
            .iter()
            .filter(|e| e.ts >= first && e.ts <= last)
            .filter(|e| {
                [
                    "runc",
                    "containerd-shim",
                    "iptables",
                    "busybox",
                    "docker-proxy",
                    "exe",
                ]
                .iter()
                .any(|c| e.comm.starts_with(c))
            })
            .map(|e| (e.ts - first, e.comm.clone()))
            .collect();
        Ok(DockerBootReport {
            image: built.0,
            network: args.network.clone(),
            summary: summary(&boots, what),
            boots,
            wall: laps.finish(),
            kernel,
        })
    })
}

async fn boot_one(
    d: &Docker,
    name: &str,
    image: &str,
    network: &str,
    timeout: Duration,
) -> Result<(DockerBoot, u64, u64)> {
    let t0 = monotonic_ns();
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        labels: Some(labels()),
        host_config: Some(HostConfig {
            network_mode: Some(network.to_string()),
            ..Default::default()
        }),
        ..Default::default()
    };
    d.create_container(
        Some(CreateContainerOptionsBuilder::default().name(name).build()),
        body,
    )
    .await
    .with_context(|| format!("creating container {name} from {image}"))?;
    let t_create = monotonic_ns();
    d.start_container(name, None)
        .await
        .with_context(|| format!("starting container {name}"))?;
    let t_start = monotonic_ns();
    let deadline = t0 + timeout.as_nanos() as u64;
    let (pid, ip) = loop {
        let i = d.inspect_container(name, None).await?;
        let st = i.state.as_ref();
        let pid = st.and_then(|s| s.pid).unwrap_or(0);
        if st.and_then(|s| s.running) == Some(true) && pid > 0 {
            break (pid, address(&i));
        }
        if monotonic_ns() > deadline {
            bail!("container {name} is not running after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let t_running = monotonic_ns();
    let target = match (network, &ip) {
        ("host", _) => Some(format!("127.0.0.1:{}", image::PORT)),
        ("none", _) => None,
        (_, Some(ip)) => Some(format!("{ip}:{}", image::PORT)),
        (_, None) => None,
    };
    let ready_by = if let Some(target) = &target {
        let addr: std::net::SocketAddr = target.parse()?;
        loop {
            if http_ok(addr).await {
                break "first HTTP answer from the container's address";
            }
            if monotonic_ns() > deadline {
                bail!("container {name} (pid {pid}) never answered on {target} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    } else {
        "running (no network to answer on)"
    };
    let t_ready = monotonic_ns();
    Ok((
        DockerBoot {
            name: name.to_string(),
            phases: vec![
                Phase::new("create", t_create - t0),
                Phase::new("start", t_start - t_create),
                Phase::new("running", t_running - t_start),
                Phase::new("ready", t_ready - t_running),
            ],
            total_ns: t_ready - t0,
            ready_by,
        },
        t0,
        t_ready,
    ))
}

async fn http_ok(addr: std::net::SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(Ok(mut s)) = tokio::time::timeout(
        Duration::from_millis(200),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    else {
        return false;
    };
    if s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await,
        Ok(Ok(n)) if n >= 12 && buf.starts_with(b"HTTP/1.")
    )
}

pub fn print(r: &DockerBootReport) {
    println!(
        "profiler boot — {} Docker container(s) from {} on network {}",
        r.boots.len(),
        r.image,
        r.network
    );
    for b in &r.boots {
        let phases: Vec<String> = b
            .phases
            .iter()
            .map(|p| format!("{} {}", p.name, fmt_ns(p.ns as f64)))
            .collect();
        println!(
            "  {:<24} total {:>9}: {}",
            b.name,
            fmt_ns(b.total_ns as f64),
            phases.join(", ")
        );
    }
    if !r.kernel.is_empty() {
        let k: Vec<String> = r
            .kernel
            .iter()
            .map(|(t, c)| format!("+{} {c}", fmt_ns(*t as f64)))
            .collect();
        println!("  kernel saw exec: {}", k.join(", "));
    }
    if r.boots.len() > 1 {
        println!(
            "  {:<10} {:>9} {:>9} {:>9} {:>9}",
            "phase", "min", "p50", "p90", "max"
        );
        for s in &r.summary {
            let cols = [s.min_ns, s.p50_ns, s.p90_ns, s.max_ns].map(|v| v as f64);
            println!("  {:<10} {}", s.name, crate::hist::columns(&cols));
        }
    }
    if let Some(b) = r.boots.first() {
        println!("  ready = {}", b.ready_by);
    }
    crate::startup::print_laps("setup", &r.wall.setup);
    println!(
        "  containers together (first create to last ready): {}",
        fmt_ns(r.wall.instances_wall_ns as f64)
    );
    crate::startup::print_laps("teardown", &r.wall.teardown);
    println!(
        "  whole run (setup + containers + teardown): {}",
        fmt_ns(r.wall.wall_ns as f64)
    );
}

/// Network namespace inode -> container name, for naming namespaces in traces.
pub fn netns_names() -> HashMap<u64, String> {
    let Ok(rt) = runtime() else {
        return HashMap::new();
    };
    rt.block_on(async {
        let mut out = HashMap::new();
        let Ok(d) = connect().await else { return out };
        let Ok(list) = d.list_containers(None).await else {
            return out;
        };
        for c in list {
            let (Some(id), Some(names)) = (c.id, c.names) else {
                continue;
            };
            let Ok(i) = d.inspect_container(&id, None).await else {
                continue;
            };
            let Some(pid) = i.state.and_then(|s| s.pid).filter(|p| *p > 0) else {
                continue;
            };
            if let Ok(m) = std::fs::metadata(format!("/proc/{pid}/ns/net")) {
                use std::os::unix::fs::MetadataExt as _;
                let name = names.first().cloned().unwrap_or_default();
                out.insert(
                    m.ino(),
                    format!("{} ({})", name.trim_start_matches('/'), &id[..12]),
                );
            }
        }
        out
    })
}

/// What a command printed in a container, and how long the container ran.
pub struct ContainerRun {
    pub stdout: String,
    pub wall: Duration,
}

/// Runs this very binary with `args` in a Docker container (an image of it and its libraries,
/// built here and removed after), and returns what it printed.
/// The run's laps: connecting and the image's import, the container's run, its removal.
pub fn run_self(
    args: &[String],
    timeout: Duration,
    on_start: &mut dyn FnMut(u32),
    laps: &mut Laps,
) -> Result<ContainerRun> {
    runtime()?.block_on(async {
        let d = connect_reaped().await?;
        laps.lap("connect, reap");
        let tag = format!("{}-self", std::process::id());
        // A workload that starts its own database gets the server's files in its image.
        let rootfs = if crate::mariadb::workload_needs_server(args) {
            let exe = std::fs::read_link("/proc/self/exe").context("finding this program")?;
            image::rootfs_with_extra(&exe.to_string_lossy(), &crate::mariadb::image_files()?)?
        } else {
            image::rootfs_with_self()?
        };
        let image = import(&d, rootfs, &tag).await?;
        laps.lap("image import");
        let name = format!(
            "profiler-{}-run-{}",
            std::process::id(),
            monotonic_ns() % 1_000_000
        );
        let key = format!("docker-run-{name}");
        let (n2, i2) = (name.clone(), image.clone());
        crate::cleanup::on_signal(&key, move || {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", &n2])
                .output();
            let _ = std::process::Command::new("docker")
                .args(["rmi", "-f", &i2])
                .output();
        });
        let result = run_container(&d, &name, &image, args, timeout, on_start).await;
        laps.instances();
        remove_container(&d, &name).await;
        let _ = d
            .remove_image(
                &image,
                Some(RemoveImageOptionsBuilder::default().force(true).build()),
                None,
            )
            .await;
        crate::cleanup::forget(&key);
        laps.lap("container and image removed");
        result
    })
}

async fn run_container(
    d: &Docker,
    name: &str,
    image: &str,
    args: &[String],
    timeout: Duration,
    on_start: &mut dyn FnMut(u32),
) -> Result<ContainerRun> {
    let mut cmd = vec!["/profiler".to_string()];
    cmd.extend(args.iter().cloned());
    d.create_container(
        Some(CreateContainerOptionsBuilder::default().name(name).build()),
        ContainerCreateBody {
            image: Some(image.to_string()),
            cmd: Some(cmd),
            labels: Some(labels()),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await
    .with_context(|| format!("creating container {name}"))?;
    let start = std::time::Instant::now();
    d.start_container(name, None)
        .await
        .with_context(|| format!("starting container {name}"))?;
    if let Some(pid) = d
        .inspect_container(name, None)
        .await
        .ok()
        .and_then(|i| i.state.and_then(|s| s.pid))
        .filter(|p| *p > 0)
    {
        on_start(pid as u32);
    }
    let mut wait = d.wait_container(
        name,
        None::<bollard::query_parameters::WaitContainerOptions>,
    );
    let code = match tokio::time::timeout(timeout, wait.next()).await {
        Ok(Some(Ok(r))) => r.status_code,
        Ok(Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. }))) => code,
        Ok(Some(Err(e))) => return Err(e).context("waiting for the container"),
        Ok(None) => 0,
        Err(_) => bail!("container {name} still running after {timeout:?}"),
    };
    let wall = start.elapsed();
    let mut logs = d.logs(
        name,
        Some(
            bollard::query_parameters::LogsOptionsBuilder::default()
                .stdout(true)
                .stderr(true)
                .build(),
        ),
    );
    let (mut stdout, mut stderr) = (String::new(), String::new());
    while let Some(l) = logs.next().await {
        match l? {
            bollard::container::LogOutput::StdOut { message } => {
                stdout.push_str(&String::from_utf8_lossy(&message))
            }
            bollard::container::LogOutput::StdErr { message } => {
                stderr.push_str(&String::from_utf8_lossy(&message))
            }
            _ => {}
        }
    }
    if code != 0 {
        bail!(
            "the workload in container {name} exited with {code}: {}",
            stderr.trim()
        );
    }
    Ok(ContainerRun { stdout, wall })
}

/// The container's first network address, once Docker has given it one.
pub(crate) fn address(i: &bollard::models::ContainerInspectResponse) -> Option<String> {
    i.network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
        .and_then(|n| n.values().find_map(|e| e.ip_address.clone()))
        .filter(|ip| !ip.is_empty())
}
