//! A native container runtime, as runc builds containers, timed phase by phase:
//! clone into new namespaces, cgroup, network namespace, veth, bridge, addressing, exec of the
//! payload, payload ready. `profiler boot --container native` reports the phases' distributions.
//!
//! Clocks: every phase boundary is an `Instant::now()` in the parent (CLOCK_MONOTONIC), except
//! one: the end of `exec` (= start of `ready`) is the payload's own CLOCK_MONOTONIC reading at
//! `payload_main` entry, sent back through a pipe. Both processes read the same kernel clock, so
//! the boundary maps onto the parent's `Instant`s through one (Instant, CLOCK_MONOTONIC) anchor.
//! Phases are consecutive differences of these boundaries: they sum to spawn → ready exactly.

pub mod cgroup;
mod net;
mod payload;
mod report;
mod spawn;

use std::{
    ffi::CString,
    path::PathBuf,
    sync::{Condvar, Mutex, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Serialize;

use crate::{
    lab::{self, Lab, Mode, plan::PREFIX},
    startup::{Laps, ns},
};

pub use cgroup::{leftovers as cgroup_leftovers, root as cgroup_root};
pub use payload::payload_main;
pub use report::{ContainerBootReport, Startup, print};

/// The hidden subcommand main.rs dispatches to [`payload_main`].
pub const PAYLOAD_COMMAND: &str = "__container-payload";
/// The port the payload listens on inside each container.
pub const PAYLOAD_PORT: u16 = 8080;
/// Published ports in `--net nat`: 21000 + n (the nat lab itself uses 20000-20999).
pub const PUBLISHED_BASE: u16 = 21000;
/// Containers get 10.200.0.(10+n); .1-.3 are the lab's gateway, client and server.
pub const FIRST_HOST: u8 = 10;
pub const MAX_COUNT: usize = 200;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum NetMode {
    /// No network: the payload reports ready through a pipe.
    None,
    /// A veth on the bridge lab's br0 (Docker's default network).
    Bridge,
    /// The bridge plus a DNAT-ed published port per container (Docker's `-p`).
    Nat,
    /// A veth on the overlay lab's bridge on host hx (VXLAN to hy).
    Overlay,
}

impl NetMode {
    pub fn name(self) -> &'static str {
        match self {
            NetMode::None => "none",
            NetMode::Bridge => "bridge",
            NetMode::Nat => "nat",
            NetMode::Overlay => "overlay",
        }
    }

    /// The lab built first: `none` still claims a (host) lab, for its id, registry file and
    /// stale reaping of the containers' namespaces.
    fn lab_mode(self) -> Mode {
        match self {
            NetMode::None => Mode::Host,
            NetMode::Bridge => Mode::Bridge,
            NetMode::Nat => Mode::Nat,
            NetMode::Overlay => Mode::Overlay,
        }
    }

    pub fn networked(self) -> bool {
        self != NetMode::None
    }
}

#[derive(Clone, Debug, clap::Args)]
pub struct ContainerBootArgs {
    /// Containers started at once, one thread each.
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// The containers' network.
    #[arg(long, value_enum, default_value_t = NetMode::Bridge)]
    pub net: NetMode,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// A container not ready after this many seconds fails the run.
    #[arg(long, default_value_t = 15.0)]
    pub timeout: f64,
    /// The payload's command line (default: this binary's hidden payload command). The runtime
    /// appends `--fd 3` (and `--port P` when networked); give it last.
    #[arg(long, hide = true, num_args = 1.., allow_hyphen_values = true)]
    pub payload: Vec<String>,
}

impl Default for ContainerBootArgs {
    fn default() -> Self {
        Self {
            count: 1,
            net: NetMode::Bridge,
            json: None,
            timeout: 15.0,
            payload: vec![],
        }
    }
}

/// The native runtime's own flags, to flatten next to `boot`'s shared --count, --json and
/// --timeout (which [`ContainerBootArgs`] would otherwise define a second time).
#[derive(Clone, Debug, clap::Args)]
pub struct NativeArgs {
    /// `--container native`: the containers' network.
    #[arg(long, value_enum, default_value_t = NetMode::Bridge)]
    pub net: NetMode,
    /// `--container native`: the payload's command line (default: this binary's hidden payload
    /// command); give it last.
    #[arg(long, hide = true, num_args = 1.., allow_hyphen_values = true)]
    pub payload: Vec<String>,
}

impl ContainerBootArgs {
    /// From `boot`'s shared flags and the native ones.
    pub fn with(count: usize, json: Option<PathBuf>, timeout: f64, native: &NativeArgs) -> Self {
        Self {
            count,
            net: native.net,
            json,
            timeout,
            payload: native.payload.clone(),
        }
    }
}

/// Builds the lab, starts `count` containers at once, tears everything down, reports.
pub fn run(args: &ContainerBootArgs) -> Result<ContainerBootReport> {
    run_from(args, Laps::new(Instant::now()))
}

/// [`run`] on a clock that started earlier (`boot`'s CLI: at the process's start).
pub fn run_from(args: &ContainerBootArgs, mut laps: Laps) -> Result<ContainerBootReport> {
    if args.count == 0 || args.count > MAX_COUNT {
        bail!("--count must be 1 to {MAX_COUNT}, not {}", args.count);
    }
    crate::cleanup::set_interruptible();
    let host = Host::prepare(args)?;
    laps.lap("lab and cgroups");
    let startups = {
        let _progress = crate::progress::Cleared;
        crate::progress::show(&format!("starting {} container(s) at once", args.count));
        host.start_all(args.count, &mut laps)?
    };
    laps.lap("containers removed");
    let info = report::HostInfo::of(&host);
    drop(host);
    laps.lap("lab removed");
    let report = ContainerBootReport::new(info, startups, laps.finish());
    crate::export::json::write(args.json.as_deref(), &report)?;
    Ok(report)
}

/// What containers start on: the lab, the cgroup root, the payload. Dropping it removes the lab
/// (drop the containers first).
pub struct Host {
    net: NetMode,
    cgroups: PathBuf,
    payload: Vec<String>,
    /// How long one container may take to answer.
    timeout: Duration,
    anchor: Anchor,
    // Last: the lab goes after everything above.
    lab: Lab,
}

/// Where the containers' threads wait so their clocks start together; unlike a Barrier it can
/// send them away when one of them never came (its thread could not start).
struct Gate {
    /// Arrived, expected, aborted.
    state: Mutex<(usize, usize, bool)>,
    turn: Condvar,
}

impl Gate {
    fn new(n: usize) -> Self {
        Self {
            state: Mutex::new((0, n, false)),
            turn: Condvar::new(),
        }
    }

    /// Waits for all; false when aborted.
    fn wait(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 += 1;
        if s.0 >= s.1 {
            self.turn.notify_all();
        }
        while s.0 < s.1 && !s.2 {
            s = self.turn.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        !s.2
    }

    fn abort(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).2 = true;
        self.turn.notify_all();
    }
}

impl Host {
    pub fn prepare(args: &ContainerBootArgs) -> Result<Host> {
        crate::kernel::require_root("starting containers")?;
        if !(args.timeout > 0.0 && args.timeout < 86_400.0) {
            bail!(
                "--timeout must be between 0 and 86400 seconds, not {}",
                args.timeout
            );
        }
        let cgroups = cgroup::root()?;
        // Cgroups of labs that are gone, before a new lab may take their id.
        crate::cleanup::reap_stale();
        let lab = Lab::up(args.net.lab_mode(), None)?;
        let payload = if args.payload.is_empty() {
            vec!["/proc/self/exe".to_string(), PAYLOAD_COMMAND.to_string()]
        } else {
            args.payload.clone()
        };
        Ok(Host {
            net: args.net,
            cgroups,
            payload,
            timeout: Duration::from_secs_f64(args.timeout),
            anchor: Anchor::now(),
            lab,
        })
    }

    pub fn lab_id(&self) -> &str {
        &self.lab.desc.id
    }

    pub fn net(&self) -> NetMode {
        self.net
    }

    pub fn cgroup_root(&self) -> &std::path::Path {
        &self.cgroups
    }

    pub fn payload(&self) -> &[String] {
        &self.payload
    }

    /// The namespace whose br0 the containers attach to.
    fn bridge_ns(&self) -> String {
        let role = if self.net == NetMode::Overlay {
            "hx"
        } else {
            "h"
        };
        format!("{PREFIX}-{}-{role}", self.lab_id())
    }

    /// Starts container `index` from the calling thread. The payload dies with this thread
    /// (PR_SET_PDEATHSIG), so keep the thread until the container is dropped.
    pub fn start(&self, index: usize) -> Result<Container> {
        self.start_synced(index, None)
    }

    fn start_synced(&self, index: usize, barrier: Option<&Gate>) -> Result<Container> {
        if index >= MAX_COUNT {
            bail!("container index {index} is past {MAX_COUNT}");
        }
        // The tool's own set-up (runtime, netlink socket to the bridge's namespace), before the
        // clock starts: a daemon such as containerd keeps these around.
        let t = Instant::now();
        let ctx = ThreadCtx::new(self);
        let context_ns = t.elapsed().as_nanos() as u64;
        if let Some(b) = barrier
            && !b.wait()
        {
            bail!("not started: another container's thread could not start");
        }
        if crate::cleanup::stop_requested() {
            bail!("{} before its start", crate::cleanup::interrupted());
        }
        let mut c = self.launch(index, ctx?)?;
        c.outside_ns += context_ns;
        Ok(c)
    }

    /// Starts `count` containers at once, one thread each; all are torn down before returning.
    /// The instances' span on `laps` ends when the last container is ready, before teardown.
    fn start_all(&self, count: usize, laps: &mut Laps) -> Result<Vec<Startup>> {
        let barrier = Gate::new(count);
        let (tx, rx) = mpsc::channel();
        let (down_tx, down_rx) = mpsc::channel::<(usize, u64)>();
        std::thread::scope(|s| -> Result<Vec<Startup>> {
            let mut releases = vec![];
            let mut failed = None;
            for n in 0..count {
                let (release, wait) = mpsc::channel::<()>();
                releases.push(release);
                let (tx, down_tx, barrier) = (tx.clone(), down_tx.clone(), &barrier);
                let spawned = std::thread::Builder::new()
                    .name(format!("container-{n}"))
                    .spawn_scoped(s, move || {
                        let c = self.start_synced(n, Some(barrier));
                        let _ = tx.send((
                            n,
                            c.as_ref()
                                .map(|c| c.startup.clone())
                                .map_err(|e| anyhow!("container {n}: {e:#}")),
                        ));
                        // Ends the collection below once every thread has reported.
                        drop(tx);
                        // The payload lives while this thread does (PR_SET_PDEATHSIG): hold it until
                        // every container has reported, then tear it down here.
                        let _ = wait.recv();
                        // Shutdown (Dhar's Table 5.2): kill to reaped, cgroup, netns and DNAT
                        // rule removed; in the teardown span, not the instances'.
                        let t = Instant::now();
                        let started = c.is_ok();
                        drop(c);
                        if started {
                            let _ = down_tx.send((n, t.elapsed().as_nanos() as u64));
                        }
                    });
                if let Err(e) = spawned {
                    // The started ones are at the gate: send them home, not on.
                    barrier.abort();
                    failed = Some(crate::cleanup::thread_error(&format!("container {n}"), &e));
                    break;
                }
            }
            drop(tx);
            drop(down_tx);
            let mut results: Vec<(usize, Result<Startup>)> = rx.iter().collect();
            laps.instances();
            drop(releases);
            if let Some(e) = failed {
                return Err(e);
            }
            for (n, d) in down_rx.iter() {
                if let Some((_, Ok(st))) = results.iter_mut().find(|r| r.0 == n) {
                    st.shutdown_ns = Some(d);
                }
            }
            results.sort_by_key(|r| r.0);
            if results.len() != count {
                bail!(
                    "{} of {count} container threads ended without a report",
                    count - results.len()
                );
            }
            results.into_iter().map(|(_, r)| r).collect()
        })
    }

    fn launch(&self, index: usize, ctx: ThreadCtx) -> Result<Container> {
        let id = self.lab_id().to_string();
        let mut marks = Marks::new();
        let mut c = Container {
            index,
            pid: None,
            cgroup: None,
            netns: None,
            dnat: None,
            startup: Startup::default(),
            outside_ns: 0,
        };

        // 1. clone into new mount, PID, UTS, IPC and network namespaces; the child waits on `go`.
        let mut argv = self.payload.clone();
        argv.extend(["--fd".to_string(), spawn::STATUS_FD.to_string()]);
        if self.net.networked() {
            argv.extend(["--port".to_string(), PAYLOAD_PORT.to_string()]);
        }
        let hostname = format!("{PREFIX}-{id}-k{index}");
        let child = spawn::clone_child(&argv, &hostname)?;
        c.pid = Some(child.pid);
        let spawn::Child { pid, go, status } = child;
        marks.mark(Phase::Clone);

        // 2. cgroup v2.
        let name = format!("profiler-{id}-{index}");
        c.cgroup = Some(cgroup::create(&self.cgroups, &name, pid)?);
        marks.mark(Phase::Cgroup);

        // 3. the child's network namespace, named with the lab's prefix and id so the lab's
        // teardown and stale reaping cover it.
        let netns = hostname;
        net::bind_netns(pid, &netns, &mut c.netns)?;
        marks.mark(Phase::Netns);

        // 4-6. veth, bridge, addressing.
        let mut target = None;
        if let Some(ctx) = ctx.net {
            let plan = net::Plan::new(self.net, index, &self.lab.desc, &self.bridge_ns());
            ctx.rt.block_on(net::attach(
                &plan,
                &ctx.bridge_ns,
                &netns,
                &mut marks,
                &mut c.dnat,
            ))?;
            // Closes the netlink sockets, so nothing of ours holds the container's namespace.
            drop(ctx);
            target = Some(plan.probe);
        }

        // 7. exec: the child goes on (and execs the payload) once it reads this byte.
        let go_at = Instant::now();
        nix::unistd::write(&go, b"g").context("releasing the container's init")?;
        drop(go);

        // 8. ready.
        let (ready, entered) = match target {
            Some(probe) => {
                let ready = net::probe(&probe, pid, self.timeout)?;
                (
                    ready,
                    spawn::read_entry(&status, pid, Duration::from_millis(500))?,
                )
            }
            None => {
                let (ready, entered) = spawn::read_ready(&status, pid, self.timeout)?;
                (ready, entered)
            }
        };
        let entered = entered.and_then(|ns| self.anchor.instant(ns));
        match entered {
            Some(t) => {
                // Clamped: the anchor's mapping is good to well under a microsecond.
                let t = t.max(go_at).min(ready);
                marks.mark_at(Phase::Exec, t);
                marks.mark_at(Phase::Ready, ready);
            }
            None => marks.mark_at(Phase::ExecReady, ready),
        }
        drop(status);
        c.startup = marks.startup(index, pid.as_raw() as u32, self.net, c.cgroup.as_ref());
        c.outside_ns = ready.elapsed().as_nanos() as u64;
        Ok(c)
    }
}

/// Per-thread tools: a tokio runtime (rtnetlink) and a netlink socket in the bridge's namespace.
struct ThreadCtx {
    net: Option<NetCtx>,
}

struct NetCtx {
    // Declared first: the socket's connection task goes with the runtime.
    bridge_ns: lab::link::Ns,
    rt: tokio::runtime::Runtime,
}

impl ThreadCtx {
    fn new(host: &Host) -> Result<ThreadCtx> {
        if !host.net.networked() {
            return Ok(ThreadCtx { net: None });
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let bridge_ns = {
            let _guard = rt.enter();
            lab::link::Ns::open(&host.bridge_ns())?
        };
        Ok(ThreadCtx {
            net: Some(NetCtx { bridge_ns, rt }),
        })
    }
}

/// A started container. Dropping it kills the payload and removes its cgroup, its namespace
/// (its veth goes with it) and its DNAT rule.
pub struct Container {
    pub index: usize,
    pid: Option<nix::unistd::Pid>,
    cgroup: Option<PathBuf>,
    netns: Option<String>,
    dnat: Option<net::Dnat>,
    pub startup: Startup,
    /// The tool's own work around the phases: the thread's tools (runtime, netlink socket)
    /// before the clock starts, and reading the payload's stamps after it is ready.
    pub outside_ns: u64,
}

impl Container {
    pub fn pid(&self) -> Option<u32> {
        self.pid.map(|p| p.as_raw() as u32)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            // The payload is its PID namespace's init: SIGKILL takes the whole namespace.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
        if let Some(d) = self.dnat.take()
            && let Err(e) = d.remove()
        {
            eprintln!("profiler: container {}: {e:#}", self.index);
        }
        if let Some(ns) = self.netns.take()
            && let Err(e) = lab::netns::delete(&ns)
        {
            eprintln!("profiler: container {}: {e:#}", self.index);
        }
        if let Some(cg) = self.cgroup.take()
            && let Err(e) = cgroup::remove(&cg)
        {
            eprintln!("profiler: container {}: {e:#}", self.index);
        }
    }
}

/// The phases, in order. `ExecReady` stands for exec + ready when the payload sends no entry
/// time (a foreign payload).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Clone,
    Cgroup,
    Netns,
    Veth,
    Bridge,
    Addr,
    Exec,
    Ready,
    ExecReady,
}

impl Phase {
    pub const ALL: [Phase; 9] = [
        Phase::Clone,
        Phase::Cgroup,
        Phase::Netns,
        Phase::Veth,
        Phase::Bridge,
        Phase::Addr,
        Phase::Exec,
        Phase::Ready,
        Phase::ExecReady,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Clone => "clone",
            Phase::Cgroup => "cgroup",
            Phase::Netns => "netns",
            Phase::Veth => "veth",
            Phase::Bridge => "bridge",
            Phase::Addr => "addr",
            Phase::Exec => "exec",
            Phase::Ready => "ready",
            Phase::ExecReady => "exec+ready",
        }
    }

    pub fn what(self) -> &'static str {
        match self {
            Phase::Clone => "clone(2) into new mnt/pid/uts/ipc/net namespaces",
            Phase::Cgroup => "cgroup v2 mkdir + cgroup.procs",
            Phase::Netns => "bind /proc/PID/ns/net to /run/netns",
            Phase::Veth => "veth pair, host end moved out",
            Phase::Bridge => "host end enslaved to br0, up",
            Phase::Addr => "address, up, default route (nat: DNAT)",
            Phase::Exec => "release, child set-up, execve, payload main()",
            Phase::Ready => "payload main() to first answer",
            Phase::ExecReady => "release to first answer (payload sent no time)",
        }
    }

    /// Where the phase's end comes from: the payload's own clock only for `exec`.
    pub fn clock(self) -> Clock {
        match self {
            Phase::Exec => Clock::Payload,
            _ => Clock::Parent,
        }
    }
}

/// Which clock ended a phase: the parent's `Instant` or the payload's CLOCK_MONOTONIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Clock {
    Parent,
    Payload,
}

/// Phase boundaries of one start-up, from spawn.
struct Marks {
    start: Instant,
    marks: Vec<(Phase, Instant)>,
}

impl Marks {
    fn new() -> Marks {
        Marks {
            start: Instant::now(),
            marks: vec![],
        }
    }

    fn mark(&mut self, p: Phase) {
        self.mark_at(p, Instant::now());
    }

    fn mark_at(&mut self, p: Phase, t: Instant) {
        self.marks.push((p, t));
    }

    fn startup(&self, index: usize, pid: u32, net: NetMode, cgroup: Option<&PathBuf>) -> Startup {
        let phases = phases(self.start, &self.marks);
        let total_ns = self
            .marks
            .last()
            .map(|(_, t)| ns(t.saturating_duration_since(self.start)))
            .unwrap_or(0);
        Startup {
            index,
            pid,
            addr: net
                .networked()
                .then(|| net::container_ip(index).to_string()),
            cgroup: cgroup.map(|p| p.display().to_string()),
            phases,
            total_ns,
            shutdown_ns: None,
        }
    }
}

/// One phase of one start-up.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseTime {
    pub phase: Phase,
    pub name: &'static str,
    /// From spawn to the phase's start.
    pub offset_ns: u64,
    pub ns: u64,
    pub clock: Clock,
}

/// Consecutive differences of the boundaries: the phases sum to the last boundary - start.
fn phases(start: Instant, marks: &[(Phase, Instant)]) -> Vec<PhaseTime> {
    let mut prev = start;
    marks
        .iter()
        .map(|&(phase, t)| {
            let p = PhaseTime {
                phase,
                name: phase.name(),
                offset_ns: ns(prev.saturating_duration_since(start)),
                ns: ns(t.saturating_duration_since(prev)),
                clock: phase.clock(),
            };
            prev = prev.max(t);
            p
        })
        .collect()
}

pub use crate::kernel::monotonic_ns as mono_ns;

/// A pair of readings of the same clock, one as `Instant`, one as a number.
#[derive(Clone, Copy, Debug)]
struct Anchor {
    at: Instant,
    mono: u64,
}

impl Anchor {
    fn now() -> Anchor {
        // Bracketed: the pair is off by at most half the gap between the two raw readings.
        let a = mono_ns();
        let at = Instant::now();
        let b = mono_ns();
        Anchor {
            at,
            mono: a + (b - a) / 2,
        }
    }

    /// The `Instant` of a CLOCK_MONOTONIC reading.
    fn instant(&self, mono: u64) -> Option<Instant> {
        if mono >= self.mono {
            self.at.checked_add(Duration::from_nanos(mono - self.mono))
        } else {
            self.at.checked_sub(Duration::from_nanos(self.mono - mono))
        }
    }
}

fn cstrings(v: &[String]) -> Result<Vec<CString>> {
    v.iter()
        .map(|s| CString::new(s.as_str()).map_err(|_| anyhow!("NUL byte in {s:?}")))
        .collect()
}

#[cfg(test)]
mod tests;
