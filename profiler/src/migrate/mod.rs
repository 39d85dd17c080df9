//! `profiler migrate --vm qemu`: live-migrates a guest from one qemu-system-x86_64 to a second
//! started with `-incoming tcp:127.0.0.1:<port>`, over loopback, and cuts the migration into
//! phases: setup, each pre-copy round, stop-and-copy (the downtime) and resume on the
//! destination. QEMU is driven through QMP; the phases come from its events (their
//! timestamps) and from `query-migrate` polled every few milliseconds. The guest is
//! `boot --vm qemu`'s kernel with a workload initramfs carrying this binary, which dirties
//! memory at a chosen rate and prints its monotonic clock to the serial port, so the freeze is
//! also seen from inside.

pub mod criu;
pub mod guest;
pub mod kernel;
#[cfg(feature = "libvirt")]
pub mod libvirt;
pub mod phases;
pub mod qmp;
pub mod vm;

use std::{
    collections::VecDeque,
    path::PathBuf,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::boot::{self, AccelChoice, artefacts};
use crate::hist::fmt_ns;
use crate::startup::{self, Laps, Phase as Lap};
use phases::{Cut, GuestSide, Marks, Sample};
use qmp::{Qmp, realtime_us};
use vm::{Out, Side, Vm};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrateVm {
    /// Two qemu-system-x86_64 on this host, over loopback TCP.
    Qemu,
    /// A transient libvirt domain on qemu:///system, migrated by libvirt to a session libvirtd
    /// (uid 65534, its own host UUID) on this host, over loopback TCP.
    Libvirt,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrateContainer {
    /// A native container checkpointed and restored with CRIU: refused where `criu check`
    /// fails (it says why).
    Native,
}

#[derive(Debug, Clone, clap::Args)]
pub struct MigrateArgs {
    /// The VM that migrates (or --container).
    #[arg(
        long,
        value_enum,
        required_unless_present = "container",
        conflicts_with = "container"
    )]
    pub vm: Option<MigrateVm>,
    /// The container that migrates (instead of --vm).
    #[arg(long, value_enum)]
    pub container: Option<MigrateContainer>,
    /// Guest memory, MiB (each of the two QEMUs).
    #[arg(long, value_name = "MIB", default_value_t = 512,
          value_parser = crate::opts::at_least::<u64, 128>)]
    pub memory: u64,
    /// The guest dirties its working set at this rate (MiB/s, 0: idle).
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = crate::opts::at_least::<u64, 0>)]
    pub dirty_mib_per_s: u64,
    /// The guest's working set, MiB (at most half of --memory).
    #[arg(long, value_name = "MIB", default_value_t = 64,
          value_parser = crate::opts::at_least::<u64, 1>)]
    pub dirty_set_mib: u64,
    /// The guest-side ticker's period, ms: the resolution of the freeze seen from inside.
    #[arg(long, value_name = "MS", default_value_t = 2,
          value_parser = crate::opts::at_least::<u64, 1>)]
    pub tick_ms: u64,
    /// How often query-migrate is polled, ms (a round's boundaries are this precise).
    #[arg(long, value_name = "MS", default_value_t = 5,
          value_parser = crate::opts::at_least::<u64, 1>)]
    pub poll_ms: u64,
    /// QEMU's downtime-limit (ms); QEMU's default (300) when absent.
    #[arg(long, value_name = "MS", value_parser = crate::opts::at_least::<u64, 1>)]
    pub downtime_limit_ms: Option<u64>,
    /// QEMU's max-bandwidth (MiB/s); QEMU's default (128) when absent.
    #[arg(long, value_name = "N", value_parser = crate::opts::at_least::<u64, 1>)]
    pub max_bandwidth_mib_per_s: Option<u64>,
    /// Seconds the guest runs its workload before the migration starts (its dirty rate is
    /// measured then).
    #[arg(long, value_name = "SECS", default_value_t = 1.0, value_parser = crate::opts::seconds)]
    pub warmup: f64,
    /// The whole run (boot, warm-up, migration) is given up after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 120.0, value_parser = crate::opts::seconds)]
    pub timeout: f64,
    /// QEMU's accelerator: auto probes KVM with a stock guest, else TCG.
    #[arg(long, value_enum, default_value_t = AccelChoice::Auto)]
    pub accel: AccelChoice,
    /// The report as JSON (docs/migrate-json.md): on stdout instead of the table (no FILE, or
    /// -) or into FILE.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    pub json: Option<PathBuf>,
    /// Start even when two guests of --memory do not fit this machine.
    #[arg(long)]
    pub force: bool,
}

impl MigrateArgs {
    pub fn qemu() -> Self {
        Self {
            vm: Some(MigrateVm::Qemu),
            container: None,
            memory: 512,
            dirty_mib_per_s: 0,
            dirty_set_mib: 64,
            tick_ms: 2,
            poll_ms: 5,
            downtime_limit_ms: None,
            max_bandwidth_mib_per_s: None,
            warmup: 1.0,
            timeout: 120.0,
            accel: AccelChoice::Auto,
            json: None,
            force: false,
        }
    }
}

/// The guest dirties at least this share of the rate asked, or the run is refused. The
/// warm-up's estimate is one second of console reports, late and bunched when the host is
/// loaded (0.87 of a 16 MiB/s pace seen with other builds running): half is what "cannot
/// reach" means, and the report carries each round's measured rate anyway.
pub const RATE_SHARE: f64 = 0.5;

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Downtime {
    /// The source's STOP to its MIGRATION completed (event timestamps, µs): what QEMU calls
    /// downtime.
    pub ours_ns: u64,
    /// QEMU's own `downtime` (query-migrate, whole ms).
    pub qemu_ms: u64,
    /// The source's STOP to the destination's RESUME: how long no vCPU of the guest ran.
    pub guest_stopped_ns: u64,
    /// The freeze from inside: the guest's ticks.
    pub guest_side: GuestSide,
}

/// QEMU's own figures from the final query-migrate on the source.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct QemuFigures {
    pub total_time_ms: u64,
    pub setup_time_ms: u64,
    pub downtime_ms: u64,
    pub transferred_bytes: u64,
    pub normal_pages: u64,
    pub zero_pages: u64,
    pub dirty_sync_count: u64,
    pub precopy_bytes: u64,
    pub downtime_bytes: u64,
    pub mbps: f64,
    pub page_size: u64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Event {
    pub side: &'static str,
    pub event: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// From the `migrate` command (negative: before it).
    pub at_ns: i64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct MigrateReport {
    pub vm: MigrateVm,
    pub accelerator: String,
    pub accelerator_reason: String,
    pub memory_mib: u64,
    /// QEMU's `-m` (under TCG 8 KiB short of --memory: see `migrate::vm::TCG_RAM_SHORT_KIB`).
    pub qemu_memory: String,
    pub dirty_mib_per_s: u64,
    pub dirty_set_mib: u64,
    /// What the guest dirtied during the warm-up, and from the migration's start to the stop
    /// (MiB/s, the guest's own count).
    pub guest_dirty_mib_per_s_warmup: Option<f64>,
    pub guest_dirty_mib_per_s_precopy: Option<f64>,
    /// QEMU's migration parameters in force (query-migrate-parameters: downtime-limit ms,
    /// max-bandwidth bytes/s).
    pub parameters: Value,
    /// What ran before the migration (artefacts, guest image, boots, warm-up), consecutive.
    pub setup: Vec<Lap>,
    /// The migration: `migrate` sent to the destination's RESUME, consecutive.
    pub phases: Vec<phases::Phase>,
    pub rounds: Vec<phases::Round>,
    /// Pre-copy rounds: the dirty-bitmap syncs less the final one (with the vCPUs stopped).
    pub precopy_rounds: u64,
    pub stop_copy: phases::StopCopy,
    pub total_ns: u64,
    pub downtime: Downtime,
    pub qemu: QemuFigures,
    /// query-migrate answers polled, and the median time between two.
    pub samples: u64,
    pub poll_interval_ns: u64,
    pub events: Vec<Event>,
    /// The destination's guest went on ticking after the resume.
    pub guest_alive_after: bool,
    /// What QMP cannot see, from the host's kernel: the stream's bytes per phase and over
    /// time, the vCPU threads' last and first runs.
    pub kernel: kernel::KernelSide,
    pub notes: Vec<String>,
    /// The whole run, setup to teardown.
    pub wall_ns: u64,
}

const MIB: u64 = 1 << 20;

/// Checks what can be checked before anything starts; one line each.
pub fn check(args: &MigrateArgs) -> Result<()> {
    if args.vm == Some(MigrateVm::Libvirt) && args.accel == AccelChoice::Kvm {
        bail!(
            "--vm libvirt --accel kvm: the libvirt domains run under TCG (the destination is a session libvirtd as uid 65534, without /dev/kvm); pass --accel tcg or leave --accel out"
        );
    }
    if args.container == Some(MigrateContainer::Native) {
        crate::kernel::require_root("profiler migrate --container native")?;
        criu::check()?;
        bail!(
            "--container native: `criu check` passes, but checkpoint, transfer and restore are not built yet (issue 17)"
        );
    }
    if args.dirty_set_mib * 2 > args.memory {
        bail!(
            "--dirty-set-mib {} is more than half of --memory {}: the guest's kernel and image need the rest; pass at most {}",
            args.dirty_set_mib,
            args.memory,
            args.memory / 2
        );
    }
    // Memory cannot be written faster than this anywhere: a typo, not a measurement.
    if args.dirty_mib_per_s > 1 << 20 {
        bail!(
            "--dirty-mib-per-s {} is beyond any memory (1 TiB/s); ask for what the guest can do, e.g. 64",
            args.dirty_mib_per_s
        );
    }
    let asked = format!("--memory {}", args.memory);
    let each = crate::fit::Each::qemu(args.memory, 1);
    crate::fit::require(args.force, &asked, 2, &each)
        .map_err(|e| anyhow::anyhow!("{e} (a migration runs two QEMUs of --memory at once)"))?;
    Ok(())
}

/// A run's own directory for the QMP sockets: `/run/profiler/migrate/<pid>-<start>`, removed
/// on drop and on a signal; one whose owner is dead is removed by the next run.
struct RunDir {
    path: PathBuf,
}

pub const RUN_DIR: &str = "/run/profiler/migrate";

impl RunDir {
    fn create() -> Result<RunDir> {
        reap_stale();
        let o = crate::cleanup::Owner::me();
        let path = PathBuf::from(RUN_DIR).join(format!("{}-{}", o.pid, o.start));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        let p = path.clone();
        crate::cleanup::on_signal(&Self::key(&path), move || {
            let _ = std::fs::remove_dir_all(&p);
        });
        Ok(RunDir { path })
    }

    fn key(path: &std::path::Path) -> String {
        format!("migrate-dir {}", path.display())
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
        crate::cleanup::forget(&Self::key(&self.path));
    }
}

/// Kills (SIGKILL) every process whose environment names `dir`: `--vm libvirt`'s destination
/// libvirtd, the virtlogd it starts and the QEMUs it spawns all carry its XDG directories.
pub fn kill_users_of(dir: &std::path::Path) {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(env) = std::fs::read(p.path().join("environ")) else {
            continue;
        };
        if env
            .split(|b| *b == 0)
            .any(|v| String::from_utf8_lossy(v).contains(&needle))
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Removes run directories whose owner (pid + start time) is gone (root only; every command
/// runs it at its start, after `cleanup::reap_stale`).
pub fn reap_stale() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(RUN_DIR) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().replacen('-', ":", 1);
        if let Ok(owner) = name.parse::<crate::cleanup::Owner>()
            && !owner.alive()
        {
            kill_users_of(&e.path());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// What the two consoles and stderrs said, as it arrives.
#[derive(Default)]
struct Consoles {
    ticks: Vec<(Side, i64, guest::Tick)>,
    /// (side, arrival µs, pages, guest ns).
    dirty: Vec<(Side, i64, u64, u64)>,
    ready_us: Option<i64>,
    tail: [VecDeque<String>; 2],
    stderr: [Vec<String>; 2],
    exited: [Option<Option<std::process::ExitStatus>>; 2],
}

impl Consoles {
    fn idx(side: Side) -> usize {
        match side {
            Side::Source => 0,
            Side::Destination => 1,
        }
    }

    fn take(&mut self, side: Side, out: Out) {
        let i = Self::idx(side);
        match out {
            Out::Line(at, l) => {
                if let Some(t) = guest::parse_tick(&l) {
                    self.ticks.push((side, at, t));
                    return;
                }
                if let Some((pages, ns)) = guest::parse_dirty(&l) {
                    self.dirty.push((side, at, pages, ns));
                    return;
                }
                if l.contains(guest::READY) && self.ready_us.is_none() {
                    self.ready_us = Some(at);
                }
                if self.tail[i].len() == 12 {
                    self.tail[i].pop_front();
                }
                self.tail[i].push_back(l);
            }
            Out::Stderr(l) => self.stderr[i].push(l),
            Out::Exited(s) => self.exited[i] = Some(s),
        }
    }

    /// Takes what has arrived, waiting at most `wait` for the first.
    fn pump(&mut self, rx: &mpsc::Receiver<(Side, Out)>, wait: Duration) {
        if let Ok((side, out)) = rx.recv_timeout(wait) {
            self.take(side, out);
        }
        while let Ok((side, out)) = rx.try_recv() {
            self.take(side, out);
        }
    }

    /// Why a QEMU that exited did: its last stderr line, or its console.
    fn why_exited(&self, side: Side) -> Option<String> {
        let i = Self::idx(side);
        let status = self.exited[i].as_ref()?;
        let status = status.map_or("?".to_string(), |s| s.to_string());
        let err = self.stderr[i]
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| format!(": {}", l.trim()))
            .unwrap_or_default();
        Some(format!("the {} QEMU exited ({status}){err}", side.name()))
    }

    fn rate(&self, side: Side, from_us: i64, to_us: i64) -> Option<f64> {
        let r: Vec<(u64, u64)> = self
            .dirty
            .iter()
            .filter(|d| d.0 == side && d.1 >= from_us && d.1 <= to_us)
            .map(|d| (d.2, d.3))
            .collect();
        phases::dirty_rate(&r)
    }

    fn console_tail(&self, side: Side) -> String {
        let t: Vec<&str> = self.tail[Self::idx(side)]
            .iter()
            .map(String::as_str)
            .collect();
        t.join(" | ")
    }
}

/// A timeout's error followed by what explains it; an interruption's as it is.
fn with(e: anyhow::Error, why: impl FnOnce() -> String) -> anyhow::Error {
    if crate::cleanup::stop_requested() {
        e
    } else {
        anyhow::anyhow!("{e:#}: {}", why())
    }
}

struct Deadline {
    end: Instant,
    secs: f64,
}

impl Deadline {
    /// Fails when the run is interrupted or out of time; `what` says what it waited for.
    fn check(&self, what: &str) -> Result<()> {
        if crate::cleanup::stop_requested() {
            bail!("{} while waiting for {what}", crate::cleanup::interrupted());
        }
        if Instant::now() >= self.end {
            bail!(
                "still waiting for {what} after --timeout {:.0} s (raise it)",
                self.secs
            );
        }
        Ok(())
    }
}

/// QMP on `vm`'s socket once QEMU has made it; a QEMU that exits first is an error saying why.
fn connect(
    vm: &Vm,
    sock: &std::path::Path,
    con: &mut Consoles,
    rx: &mpsc::Receiver<(Side, Out)>,
    deadline: &Deadline,
) -> Result<Qmp> {
    let why = |con: &mut Consoles| {
        // Its exit reaches the channel after its last stderr line.
        let end = Instant::now() + Duration::from_secs(2);
        while con.why_exited(vm.side).is_none() && Instant::now() < end {
            con.pump(rx, Duration::from_millis(20));
        }
        con.why_exited(vm.side)
    };
    while !sock.exists() {
        con.pump(rx, Duration::from_millis(10));
        if vm.exited() {
            let w = why(con).unwrap_or_else(|| format!("the {} QEMU exited", vm.side.name()));
            bail!("{w}");
        }
        deadline.check(&format!("the {} QEMU's QMP socket", vm.side.name()))?;
    }
    Qmp::connect(vm.side.name(), sock, deadline.end).map_err(|e| {
        if vm.exited() || e.to_string().contains("closed") {
            why(con).map_or(e, anyhow::Error::msg)
        } else {
            e
        }
    })
}

/// Runs the migration and writes `--json`.
pub fn run(args: &MigrateArgs) -> Result<MigrateReport> {
    check(args)?;
    crate::kernel::require_root("profiler migrate")?;
    crate::cleanup::set_interruptible();
    let started = Instant::now();
    let deadline = Deadline {
        end: started + Duration::from_secs_f64(args.timeout),
        secs: args.timeout,
    };
    let mut laps = Laps::new(started);
    let a = artefacts::prepare()?;
    laps.lap(if a.built {
        "artefacts (built)"
    } else {
        "artefacts (cached)"
    });
    let (accel, accel_reason, probe) = boot::qemu::choose(
        args.accel,
        false,
        &a,
        Duration::from_secs_f64(args.timeout),
        None,
    )?;
    if probe.is_some() {
        laps.lap("kvm probe");
    }
    deadline.check("before the guest's image")?;
    let image = artefacts::workload_initramfs(
        &a,
        &guest::args(args.dirty_mib_per_s, args.dirty_set_mib, args.tick_ms),
    )?;
    laps.lap("guest image");
    let dir = RunDir::create()?;
    let (src_sock, dst_sock) = (
        dir.path.join("source.qmp"),
        dir.path.join("destination.qmp"),
    );
    let (tx, rx) = mpsc::channel();
    let mut con = Consoles::default();

    let mut src = Vm::spawn(
        Side::Source,
        vm::command(
            accel.name(),
            args.memory,
            &a.kernel,
            &image.path,
            &src_sock,
            None,
        ),
        tx.clone(),
    )?;
    let mut sq = connect(&src, &src_sock, &mut con, &rx, &deadline)?;
    while con.ready_us.is_none() {
        con.pump(&rx, Duration::from_millis(20));
        if let Some(why) = con.why_exited(Side::Source) {
            bail!(
                "{why} before the guest was ready: {}",
                con.console_tail(Side::Source)
            );
        }
        deadline.check("the guest's workload").map_err(|e| {
            with(e, || {
                format!("its console: {}", con.console_tail(Side::Source))
            })
        })?;
    }
    laps.lap("source boot");

    // Warm-up: the dirty rate the guest reaches before anything watches it.
    let warm_from = realtime_us();
    let warm_end = Instant::now() + Duration::from_secs_f64(args.warmup);
    while Instant::now() < warm_end {
        con.pump(&rx, Duration::from_millis(20));
        deadline.check("the warm-up")?;
        if let Some(why) = con.why_exited(Side::Source) {
            bail!("{why} during the warm-up");
        }
    }
    let warm_rate = con.rate(Side::Source, warm_from, realtime_us());
    if args.dirty_mib_per_s > 0 {
        let got = warm_rate.unwrap_or(0.0);
        if got < RATE_SHARE * args.dirty_mib_per_s as f64 {
            bail!(
                "--dirty-mib-per-s {}: the guest dirtied only {got:.0} MiB/s in {:.1} s of warm-up (its vCPU's limit under {}); ask for at most {:.0}",
                args.dirty_mib_per_s,
                args.warmup,
                accel.name(),
                got.floor()
            );
        }
    }
    laps.lap("warm-up");

    // The destination, listening; a port taken meanwhile is tried again with another.
    let (mut dst, mut dq, port) = {
        let mut tries = 0;
        loop {
            tries += 1;
            let port = vm::free_port()?;
            let d = Vm::spawn(
                Side::Destination,
                vm::command(
                    accel.name(),
                    args.memory,
                    &a.kernel,
                    &image.path,
                    &dst_sock,
                    Some(port),
                ),
                tx.clone(),
            )?;
            match connect(&d, &dst_sock, &mut con, &rx, &deadline) {
                Ok(q) => break (d, q, port),
                Err(e) => {
                    drop(d);
                    con.exited[1] = None;
                    con.stderr[1].clear();
                    let _ = std::fs::remove_file(&dst_sock);
                    if tries >= 3 || !e.to_string().contains("in use") {
                        return Err(e);
                    }
                }
            }
        }
    };
    let caps = json!({"capabilities": [{"capability": "events", "state": true}]});
    sq.execute("migrate-set-capabilities", Some(caps.clone()))?;
    dq.execute("migrate-set-capabilities", Some(caps))?;
    let mut params = serde_json::Map::new();
    if let Some(ms) = args.downtime_limit_ms {
        params.insert("downtime-limit".into(), json!(ms));
    }
    if let Some(m) = args.max_bandwidth_mib_per_s {
        params.insert("max-bandwidth".into(), json!(m * MIB));
    }
    if !params.is_empty() {
        sq.execute("migrate-set-parameters", Some(Value::Object(params)))?;
    }
    let all = sq.execute("query-migrate-parameters", None)?;
    let parameters = json!({
        "downtime-limit": all.get("downtime-limit"),
        "max-bandwidth": all.get("max-bandwidth"),
    });
    laps.lap("destination start");
    // The kernel side: the stream on the migration's port, the vCPU threads' runs.
    let mut tracer =
        crate::probes::migrate::MigrateTracer::start(src.pid, dst.pid, port, BUCKET_NS)
            .context("the migration's kernel tracer")?;
    let mut cpus: Vec<(u32, u32)> = Vec::new();
    for (q, side) in [
        (&mut sq, profiler_common::migrate::SOURCE),
        (&mut dq, profiler_common::migrate::DESTINATION),
    ] {
        let list = q.execute("query-cpus-fast", None)?;
        for c in list.as_array().into_iter().flatten() {
            let (Some(tid), Some(i)) = (
                c.get("thread-id").and_then(Value::as_u64),
                c.get("cpu-index").and_then(Value::as_u64),
            ) else {
                continue;
            };
            tracer.watch(tid as u32, side)?;
            cpus.push((tid as u32, i as u32));
        }
    }
    laps.lap("kernel tracer");
    let setup_ns: u64 = laps.setup().iter().map(|p| p.ns).sum();

    // The migration.
    let armed = tracer.arm()?;
    let offset_ns = crate::probes::migrate::realtime_offset_ns();
    let command_us = realtime_us();
    sq.execute(
        "migrate",
        Some(json!({"uri": format!("tcp:127.0.0.1:{port}")})),
    )?;
    let poll = Duration::from_millis(args.poll_ms);
    let mut samples: Vec<Sample> = Vec::new();
    let last = loop {
        let t0 = realtime_us();
        let began = Instant::now();
        let v = sq.execute("query-migrate", None)?;
        let s = Sample::from_query(&v, (t0 + realtime_us()) / 2);
        match s.status.as_str() {
            "completed" => break s,
            "failed" | "cancelled" => {
                let why = v
                    .get("error-desc")
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given");
                con.pump(&rx, Duration::ZERO);
                let exited = con
                    .why_exited(Side::Destination)
                    .map(|w| format!("; {w}"))
                    .unwrap_or_default();
                bail!("the migration {}: {why}{exited}", s.status);
            }
            _ => {}
        }
        samples.push(s);
        con.pump(&rx, Duration::ZERO);
        if let Err(e) = deadline.check("the migration") {
            let _ = sq.execute_within("migrate_cancel", None, Duration::from_secs(5));
            let rounds = samples.last().map_or(0, |s| s.sync);
            return Err(with(e, || {
                format!(
                    "it had synced its dirty bitmap {rounds} times: the guest dirties faster than the stream sends; lower --dirty-mib-per-s or --dirty-set-mib, or raise --downtime-limit-ms or --max-bandwidth-mib-per-s"
                )
            }));
        }
        let next = began + poll;
        loop {
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            con.pump(&rx, left);
        }
    };
    // The destination's RESUME, and its guest running there.
    let resume = loop {
        if let Some(e) = dq.event("RESUME", None, command_us) {
            break e;
        }
        con.pump(&rx, Duration::from_millis(5));
        if let Some(why) = con.why_exited(Side::Destination) {
            bail!("{why} after the migration completed");
        }
        deadline.check("the destination's RESUME")?;
    };
    let status = dq.execute("query-status", None)?;
    let running = status.get("status").and_then(Value::as_str) == Some("running");
    if !running {
        bail!("the destination is not running after its RESUME: {status}");
    }
    // A few ticks from the destination: the guest lives on there.
    let after_end = Instant::now() + Duration::from_millis(500);
    let mut alive = false;
    while Instant::now() < after_end || !alive {
        con.pump(&rx, Duration::from_millis(20));
        alive = con
            .ticks
            .iter()
            .filter(|t| t.0 == Side::Destination)
            .count()
            >= 5;
        if alive && Instant::now() >= after_end {
            break;
        }
        if let Some(why) = con.why_exited(Side::Destination) {
            bail!(
                "{why} after the guest resumed there: {}",
                con.console_tail(Side::Destination)
            );
        }
        deadline
            .check("the guest's ticks on the destination")
            .map_err(|e| {
                with(e, || {
                    format!("its console: {}", con.console_tail(Side::Destination))
                })
            })?;
    }
    let watched_to = realtime_us();
    let final_query = sq.execute("query-migrate", None)?;
    let raw = tracer.read(armed, crate::probes::migrate::ktime_ns())?;
    drop(tracer);

    let mut report = report(
        args,
        Context {
            accel: accel.name(),
            accel_reason,
            parameters,
            laps: laps.setup().to_vec(),
            command_us,
            samples,
            last,
            final_query,
            src_events: sq.events(),
            dst_events: dq.events(),
            resume_us: resume.ts_us,
            warm_rate,
            watched_to,
            alive,
            raw,
            clock: kernel::Clock {
                offset_ns,
                command_us,
            },
            port,
            cpus,
        },
        &con,
    )?;
    let _ = sq.execute_within("quit", None, Duration::from_secs(2));
    let _ = dq.execute_within("quit", None, Duration::from_secs(2));
    src.end();
    dst.end();
    drop(dir);
    drop(image);
    report.wall_ns = startup::ns(started.elapsed());
    debug_assert!(report.wall_ns >= setup_ns);
    boot::write_json(args.json.as_deref(), &report)?;
    Ok(report)
}

struct Context {
    accel: &'static str,
    accel_reason: String,
    parameters: Value,
    laps: Vec<Lap>,
    command_us: i64,
    samples: Vec<Sample>,
    last: Sample,
    final_query: Value,
    src_events: Vec<qmp::Event>,
    dst_events: Vec<qmp::Event>,
    resume_us: i64,
    warm_rate: Option<f64>,
    watched_to: i64,
    alive: bool,
    raw: crate::probes::migrate::Raw,
    clock: kernel::Clock,
    port: u16,
    cpus: Vec<(u32, u32)>,
}

/// The kernel's time buckets for the stream, ns: phases are cut to a fraction of one.
pub(crate) const BUCKET_NS: u64 = 1_000_000;

fn report(args: &MigrateArgs, c: Context, con: &Consoles) -> Result<MigrateReport> {
    let find = |ev: &[qmp::Event], name: &str, status: Option<&str>| {
        ev.iter()
            .find(|e| {
                e.name == name
                    && e.ts_us >= c.command_us
                    && (status.is_none() || e.status() == status)
            })
            .map(|e| e.ts_us)
    };
    let active = find(&c.src_events, "MIGRATION", Some("active"))
        .context("the source sent no MIGRATION active event")?;
    let stop = find(&c.src_events, "STOP", None).context("the source sent no STOP event")?;
    let completed = find(&c.src_events, "MIGRATION", Some("completed"))
        .context("the source sent no MIGRATION completed event")?;
    let passes: Vec<(u64, i64)> = c
        .src_events
        .iter()
        .filter(|e| e.name == "MIGRATION_PASS" && e.ts_us >= c.command_us)
        .filter_map(|e| Some((e.data.get("pass")?.as_u64()?, e.ts_us)))
        .collect();
    let marks = Marks {
        command_us: c.command_us,
        active_us: active,
        stop_us: stop,
        completed_us: completed,
        resume_us: c.resume_us,
    };
    let Cut {
        phases,
        rounds,
        stop_copy,
        total_ns,
    } = phases::cut(
        &marks,
        &phases::passes(&passes, &c.samples),
        &c.samples,
        &c.last,
    );
    let q = &c.final_query;
    let ram = q.get("ram").cloned().unwrap_or(Value::Null);
    let n = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let qemu = QemuFigures {
        total_time_ms: n(q, "total-time"),
        setup_time_ms: n(q, "setup-time"),
        downtime_ms: n(q, "downtime"),
        transferred_bytes: n(&ram, "transferred"),
        normal_pages: n(&ram, "normal"),
        zero_pages: n(&ram, "duplicate"),
        dirty_sync_count: n(&ram, "dirty-sync-count"),
        precopy_bytes: n(&ram, "precopy-bytes"),
        downtime_bytes: n(&ram, "downtime-bytes"),
        mbps: ram.get("mbps").and_then(Value::as_f64).unwrap_or(0.0),
        page_size: n(&ram, "page-size"),
    };
    let tick_ns = args.tick_ms * 1_000_000;
    let guest_side = phases::guest_side(&con.ticks, tick_ns, c.command_us, c.watched_to);
    let downtime = Downtime {
        ours_ns: (completed - stop).max(0) as u64 * 1000,
        qemu_ms: qemu.downtime_ms,
        guest_stopped_ns: (c.resume_us - stop).max(0) as u64 * 1000,
        guest_side,
    };
    let mut events: Vec<Event> = Vec::new();
    for (side, evs) in [("source", &c.src_events), ("destination", &c.dst_events)] {
        for e in evs.iter() {
            events.push(Event {
                side,
                event: e.name.clone(),
                status: e.status().map(str::to_string),
                at_ns: (e.ts_us - c.command_us) * 1000,
            });
        }
    }
    events.sort_by_key(|e| e.at_ns);
    let mut gaps: Vec<i64> = c
        .samples
        .windows(2)
        .map(|w| w[1].at_us - w[0].at_us)
        .collect();
    gaps.sort_unstable();
    let poll_interval_ns = gaps
        .get(gaps.len() / 2)
        .map_or(0, |g| (*g).max(0) as u64 * 1000);
    let kernel = kernel::KernelSide {
        stream: kernel::stream(
            &c.raw,
            c.clock,
            c.port,
            &phases,
            &rounds,
            &stop_copy,
            qemu.transferred_bytes,
        ),
        vcpus: kernel::vcpus(&c.raw, c.clock, &c.cpus, stop, c.resume_us),
    };
    let mut notes = vec![
        "device state: sent inside stop_and_copy after the last RAM pages; QMP has no event between them (only pause-before-switchover, which would lengthen the downtime)".to_string(),
        kernel::EXITS_NOTE.to_string(),
    ];
    if kernel.stream.late_bytes > 0 {
        notes.push(format!(
            "the kernel's time buckets ({} s) ended before the stream: {} bytes counted in the totals only",
            profiler_common::migrate::BUCKETS as u64 * BUCKET_NS / 1_000_000_000,
            kernel.stream.late_bytes
        ));
    }
    if c.accel == "tcg" {
        notes.push(format!(
            "TCG: the guest has {} KiB less RAM than --memory (-m {}), so QEMU syncs the dirty bitmap page by page and re-arms TCG's TLB; on its aligned fast path (QEMU before 9.0) stores after a sync are lost and the destination's kernel crashes after a multi-round migration",
            vm::TCG_RAM_SHORT_KIB,
            vm::memory_arg(c.accel, args.memory)
        ));
    }
    if downtime
        .guest_side
        .across_guest_clock_ns
        .is_some_and(|g| g < downtime.ours_ns / 2)
    {
        notes.push(
            "the guest's clock did not see the freeze: QEMU stops the guest's clocks with its vCPUs and the destination carries them on; the console gap is the freeze seen in the guest's output".into(),
        );
    }
    Ok(MigrateReport {
        vm: MigrateVm::Qemu,
        accelerator: c.accel.into(),
        accelerator_reason: c.accel_reason,
        memory_mib: args.memory,
        qemu_memory: vm::memory_arg(c.accel, args.memory),
        dirty_mib_per_s: args.dirty_mib_per_s,
        dirty_set_mib: args.dirty_set_mib,
        guest_dirty_mib_per_s_warmup: c.warm_rate,
        guest_dirty_mib_per_s_precopy: con.rate(Side::Source, c.command_us, stop),
        parameters: c.parameters,
        setup: c.laps,
        phases,
        precopy_rounds: qemu.dirty_sync_count.saturating_sub(1),
        rounds,
        stop_copy,
        total_ns,
        downtime,
        qemu,
        samples: c.samples.len() as u64,
        poll_interval_ns,
        events,
        guest_alive_after: c.alive,
        kernel,
        notes,
        wall_ns: 0,
    })
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / MIB as f64)
}

pub fn print(r: &MigrateReport) {
    println!(
        "migrate: qemu -> qemu over tcp:127.0.0.1, {} MiB guest, accelerator {} ({})",
        r.memory_mib, r.accelerator, r.accelerator_reason
    );
    let rate = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.0}"));
    println!(
        "  guest workload: dirties {} MiB/s asked over {} MiB (warm-up {}, during pre-copy {} MiB/s)",
        r.dirty_mib_per_s,
        r.dirty_set_mib,
        rate(r.guest_dirty_mib_per_s_warmup),
        rate(r.guest_dirty_mib_per_s_precopy)
    );
    let p = |k: &str| r.parameters.get(k).and_then(Value::as_u64).unwrap_or(0);
    println!(
        "  QEMU parameters: downtime-limit {} ms, max-bandwidth {} MiB/s",
        p("downtime-limit"),
        p("max-bandwidth") / MIB
    );
    for s in &r.setup {
        println!("  setup: {:<22} {:>9}", s.name, fmt_ns(s.ns as f64));
    }
    println!(
        "  {:<16} {:>9} {:>7} {:>11} {:>9} {:>10} {:>11} {:>11}",
        "phase", "time", "share", "sent", "pages", "zero", "dirtied", "send rate"
    );
    let mut ri = r.rounds.iter();
    for ph in &r.phases {
        let share = 100.0 * ph.ns as f64 / r.total_ns.max(1) as f64;
        let (sent, pages, zero, dirtied, rate) = if ph.name.starts_with("round ") {
            let rd = ri.next();
            rd.map_or(Default::default(), |rd| {
                (
                    mib(rd.sent_bytes),
                    rd.sent_pages.to_string(),
                    rd.zero_pages.to_string(),
                    match (rd.dirtied_pages, rd.dirty_mib_per_s) {
                        (Some(d), Some(r)) => format!("{d} ({r:.0} MiB/s)"),
                        (Some(d), None) => d.to_string(),
                        _ => "-".into(),
                    },
                    format!("{:.0} MiB/s", rd.send_mib_per_s),
                )
            })
        } else if ph.name == phases::STOP_COPY.0 {
            let s = &r.stop_copy;
            (
                mib(s.sent_bytes),
                s.sent_pages.to_string(),
                s.zero_pages.to_string(),
                String::new(),
                String::new(),
            )
        } else {
            Default::default()
        };
        println!(
            "  {:<16} {:>9} {:>6.1}% {:>11} {:>9} {:>10} {:>11} {:>11}",
            ph.name,
            fmt_ns(ph.ns as f64),
            share,
            sent,
            pages,
            zero,
            dirtied,
            rate
        );
    }
    println!(
        "  {:<16} {:>9} {:>6.1}% {:>11}   (`migrate` to the destination's RESUME)",
        "total",
        fmt_ns(r.total_ns as f64),
        100.0,
        mib(r.qemu.transferred_bytes)
    );
    let d = &r.downtime;
    println!(
        "  downtime: ours {} (source STOP to completed), QEMU's {} ms; guest stopped {} (source STOP to destination RESUME)",
        fmt_ns(d.ours_ns as f64),
        d.qemu_ms,
        fmt_ns(d.guest_stopped_ns as f64)
    );
    let k = &r.kernel;
    let st = &k.stream;
    println!(
        "  kernel: the stream on port {}: the source sent {} in {} sends ({:.3} x QEMU's transferred), the destination received {} in {} receives",
        st.port,
        mib(st.source_sent_bytes),
        st.source_sends,
        st.sent_over_qemu_transferred,
        mib(st.destination_received_bytes),
        st.destination_receives
    );
    println!(
        "  {:<16} {:>11} {:>11} {:>11} {:>11}",
        "phase", "sent", "received", "rate", "QEMU's"
    );
    for p in &st.phases {
        println!(
            "  {:<16} {:>11} {:>11} {:>11} {:>11}",
            p.phase,
            mib(p.sent_bytes),
            mib(p.received_bytes),
            format!("{:.0} MiB/s", p.sent_mib_per_s),
            p.qemu_sent_bytes.map_or("-".into(), mib)
        );
    }
    let v = &k.vcpus;
    let rel = |t: Option<i64>| t.map_or("?".into(), |t| fmt_ns(t as f64));
    println!(
        "  vCPU threads on the host: the source's last run ended {} after `migrate`, the destination's first began {}: none ran for {} (QEMU's downtime {} ms, STOP to RESUME {})",
        rel(v.source_last_run_ns),
        rel(v.destination_first_run_ns),
        v.freeze_ns.map_or("?".into(), |f| fmt_ns(f as f64)),
        d.qemu_ms,
        fmt_ns(d.guest_stopped_ns as f64)
    );
    let g = &d.guest_side;
    let opt = |v: Option<u64>| v.map_or("?".into(), |v| fmt_ns(v as f64));
    println!(
        "  seen from inside (a tick every {}): across the switch {} on the guest's clock, {} on the console; largest gap {} / {} (from {} after `migrate`)",
        fmt_ns(g.tick_ns as f64),
        opt(g.across_guest_clock_ns),
        opt(g.across_console_ns),
        fmt_ns(g.largest_guest_clock_gap_ns as f64),
        fmt_ns(g.largest_console_gap_ns as f64),
        fmt_ns(g.largest_console_gap_at_ns.max(0) as f64)
    );
    let q = &r.qemu;
    println!(
        "  QEMU: total {} ms, setup {} ms, downtime {} ms, {} transferred ({} pages, {} zero), dirty sync count {} ({} pre-copy rounds)",
        q.total_time_ms,
        q.setup_time_ms,
        q.downtime_ms,
        mib(q.transferred_bytes),
        q.normal_pages,
        q.zero_pages,
        q.dirty_sync_count,
        r.precopy_rounds
    );
    println!(
        "  {} query-migrate samples, one every {}; guest alive on the destination: {}",
        r.samples,
        fmt_ns(r.poll_interval_ns as f64),
        if r.guest_alive_after { "yes" } else { "no" }
    );
    for n in &r.notes {
        println!("  note: {n}");
    }
    println!("  whole run: {}", fmt_ns(r.wall_ns as f64));
}

/// run + print: what `main` calls.
pub fn cli(args: &MigrateArgs) -> Result<()> {
    if args.vm == Some(MigrateVm::Libvirt) {
        check(args)?;
        #[cfg(not(feature = "libvirt"))]
        bail!("this profiler was built without libvirt (the `libvirt` feature)");
        #[cfg(feature = "libvirt")]
        let r = libvirt::run(args)?;
        boot::write_json(args.json.as_deref(), &r)?;
        if boot::table(args.json.as_deref()) {
            libvirt::print(&r);
        }
        return Ok(());
    }
    let r = run(args)?;
    if boot::table(args.json.as_deref()) {
        print(&r);
    }
    Ok(())
}
