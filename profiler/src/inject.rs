//! `profiler inject`: attaches the delay injector (`probes::inject`) to one lab device.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow, bail};

use crate::lab;
pub use crate::probes::inject::{Injector, MAX_DELAY, hook_name};

/// `--delay`: a number with a unit: ns, us (or µs), ms or s; fractions allowed (2.5ms).
pub fn parse_delay(s: &str) -> Result<Duration> {
    let bad = || {
        anyhow!(
            "bad --delay value '{s}': expected a duration with a unit (ns, us, ms, s) up to \
             {}ms, e.g. --delay 500us or --delay 2.5ms",
            MAX_DELAY.as_millis()
        )
    };
    let t = s.trim();
    let (num, unit_ns) = [
        ("ns", 1.0),
        ("us", 1e3),
        ("µs", 1e3),
        ("ms", 1e6),
        ("s", 1e9),
    ]
    .into_iter()
    .find_map(|(suffix, ns)| t.strip_suffix(suffix).map(|n| (n, ns)))
    .ok_or_else(bad)?;
    let v: f64 = num.trim().parse().map_err(|_| bad())?;
    let ns = v * unit_ns;
    if !ns.is_finite() || ns < 1.0 || ns > MAX_DELAY.as_nanos() as f64 {
        return Err(bad());
    }
    Ok(Duration::from_nanos(ns.round() as u64))
}

#[derive(Debug, Clone, clap::Args)]
#[command(group = clap::ArgGroup::new("hook").required(true).args(["ingress", "egress"]))]
pub struct InjectArgs {
    /// The lab whose device gets the delay.
    #[arg(long, value_name = "ID")]
    pub lab: String,
    /// The device (as `lab up` lists it), e.g. eth0 or a host-side veth.
    #[arg(long, value_name = "DEV")]
    pub dev: String,
    /// The lab namespace holding DEV, when several hold a device of that name.
    #[arg(long, value_name = "NAME")]
    pub netns: Option<String>,
    /// Delay packets arriving on DEV (TC ingress).
    #[arg(long)]
    pub ingress: bool,
    /// Delay packets leaving DEV (TC egress).
    #[arg(long)]
    pub egress: bool,
    /// Delay per packet: ns, us, ms or s, e.g. 500us, 1ms, 2.5ms, 200000ns.
    #[arg(long, value_name = "DURATION")]
    pub delay: String,
    /// Only packets with this source or destination port (TCP or UDP); default all.
    #[arg(long, value_name = "PORT", value_parser = crate::opts::at_least::<u16, 1>)]
    pub port: Option<u16>,
    /// Delay with a netem qdisc (`tc qdisc add dev DEV root netem delay D`) instead of the TC
    /// program: egress only, every packet; where the kernel has sch_netem.
    #[arg(long, conflicts_with_all = ["ingress", "port"])]
    pub netem: bool,
    /// How long to stay attached, in seconds (an "ms" suffix works); default until Ctrl-C.
    #[arg(short = 'l', long, value_name = "SECS")]
    pub length: Option<String>,
}

impl InjectArgs {
    /// The lab namespace holding `--dev`; errors name the lab's devices.
    pub fn namespace(&self, desc: &lab::Description) -> Result<String> {
        let listing = || {
            desc.devices
                .iter()
                .map(|d| format!("{} ({})", d.name, d.netns))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let holders: Vec<&lab::Device> = desc
            .devices
            .iter()
            .filter(|d| d.name == self.dev)
            .filter(|d| self.netns.as_ref().is_none_or(|n| *n == d.netns))
            .collect();
        let dev = match (holders.as_slice(), &self.netns) {
            ([d], _) => *d,
            ([], Some(ns)) => bail!(
                "no device {} in namespace {ns} of lab {}: its devices are {}",
                self.dev,
                desc.id,
                listing()
            ),
            ([], None) => bail!(
                "no device {} in lab {}: its devices are {}",
                self.dev,
                desc.id,
                listing()
            ),
            (many, _) => bail!(
                "device {} is in several namespaces of lab {}: choose one with --netns ({})",
                self.dev,
                desc.id,
                many.iter()
                    .map(|d| d.netns.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        if dev.kind == "ipip" {
            bail!(
                "{} in {} is an ipip device (no Ethernet header); the injector parses \
                 Ethernet frames: choose another device ({})",
                dev.name,
                dev.netns,
                listing()
            );
        }
        Ok(dev.netns.clone())
    }
}

/// `profiler inject`: attaches, waits for `-l` or Ctrl-C, prints the count, detaches.
pub fn run(args: &InjectArgs) -> Result<()> {
    crate::kernel::require_root("profiler inject")?;
    let delay = parse_delay(&args.delay)?;
    let length = args
        .length
        .as_deref()
        .map(crate::workload::parse_duration)
        .transpose()?;
    let desc = lab::find(&args.lab)?;
    let netns = args.namespace(&desc)?;
    // Written before the attach: a `kill -9` leaves a record the next run's reaper reads.
    let record = Record::write(&netns, &args.dev, args.ingress, args.netem)?;
    let inj = if args.netem {
        Err(lab::netem::Netem::add(&netns, &args.dev, delay)?)
    } else {
        Ok(Injector::attach(
            &netns,
            &args.dev,
            args.ingress,
            delay,
            args.port,
        )?)
    };
    crate::cleanup::set_interruptible();
    let which = match args.port {
        Some(p) => format!("IPv4 TCP/UDP packets with port {p}"),
        None => "every IPv4 TCP/UDP packet".to_string(),
    };
    let until = match length {
        Some(l) => format!("for {l:?}"),
        None => "until Ctrl-C".to_string(),
    };
    let how = if args.netem {
        "a netem qdisc (egress)"
    } else {
        hook_name(args.ingress)
    };
    let which = if args.netem {
        "every packet".to_string()
    } else {
        which
    };
    println!(
        "profiler inject: delaying {which} by {delay:?} at {how} of {} in {netns} (lab {}), {until}",
        args.dev, desc.id
    );
    let end = length.map(|l| Instant::now() + l);
    while !crate::cleanup::stop_requested() {
        let left = match end {
            Some(e) => e.saturating_duration_since(Instant::now()),
            None => Duration::MAX,
        };
        if left.is_zero() {
            break;
        }
        thread::sleep(left.min(Duration::from_millis(100)));
    }
    let n = match &inj {
        Ok(i) => format!("{} packets delayed", i.injected()?),
        Err(_) => "netem counts no packets".to_string(),
    };
    drop(inj);
    drop(record);
    println!("profiler inject: {n}; detached");
    Ok(())
}

/// Where the injector records what it attached, one file per run, named by its owner.
const RECORDS: &str = "/run/profiler/inject";

/// What one `inject` run attached where: on kernels before 6.6 its TC filter outlives a
/// `kill -9` (from 6.6 on it is a TCX link, gone with the process), and [`reap_stale`]
/// detaches it by the program's name.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    netns: String,
    dev: String,
    ingress: bool,
    /// A netem root qdisc, not the TC program.
    #[serde(default)]
    netem: bool,
    #[serde(skip)]
    path: std::path::PathBuf,
}

impl Record {
    fn write(netns: &str, dev: &str, ingress: bool, netem: bool) -> Result<Record> {
        let me = crate::cleanup::Owner::me();
        let path = std::path::Path::new(RECORDS).join(format!("{}-{}.json", me.pid, me.start));
        let r = Record {
            netns: netns.into(),
            dev: dev.into(),
            ingress,
            netem,
            path,
        };
        std::fs::create_dir_all(RECORDS)
            .and_then(|()| std::fs::write(&r.path, serde_json::to_vec(&r)?))
            .map_err(|e| anyhow!("recording the injector in {RECORDS}: {e}"))?;
        Ok(r)
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Detaches the TC filters of `inject` runs whose owner is dead (for the reaper), on devices
/// of labs that are still up (a lab that is gone took its devices and filters with it).
pub fn reap_stale() {
    let Ok(dir) = std::fs::read_dir(RECORDS) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(owner) = name.strip_suffix(".json").and_then(|n| {
            n.replacen('-', ":", 1)
                .parse::<crate::cleanup::Owner>()
                .ok()
        }) else {
            continue;
        };
        if owner.alive() {
            continue;
        }
        let record: Option<Record> = std::fs::read(e.path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let _ = std::fs::remove_file(e.path());
        let Some(r) = record else { continue };
        if !lab::netns::list().contains(&r.netns) {
            continue;
        }
        if r.netem {
            if lab::netem::Netem::remove(&r.netns, &r.dev).is_ok() {
                eprintln!(
                    "profiler: removed the netem qdisc left on {} of {} by pid {}",
                    r.dev, r.netns, owner.pid
                );
            }
            continue;
        }
        let (dev, ingress) = (r.dev.clone(), r.ingress);
        let detached = lab::netns::run_in(&r.netns, move || {
            let hook = if ingress {
                aya::programs::TcAttachType::Ingress
            } else {
                aya::programs::TcAttachType::Egress
            };
            Ok(aya::programs::tc::qdisc_detach_program(&dev, hook, "inject_delay").is_ok())
        });
        if detached.unwrap_or(false) {
            eprintln!(
                "profiler: detached the injector left on {} ({}) of {} by pid {}",
                r.dev,
                hook_name(r.ingress),
                r.netns,
                owner.pid
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_parse_with_units() {
        let us = Duration::from_micros;
        assert_eq!(parse_delay("500us").unwrap(), us(500));
        assert_eq!(parse_delay("500µs").unwrap(), us(500));
        assert_eq!(parse_delay("1ms").unwrap(), us(1000));
        assert_eq!(parse_delay("2.5ms").unwrap(), us(2500));
        assert_eq!(parse_delay("200000ns").unwrap(), us(200));
        assert_eq!(parse_delay("0.01s").unwrap(), us(10_000));
        for bad in ["", "1", "ms", "-1ms", "0us", "1h", "1e9s", "nanms", "101ms"] {
            let e = parse_delay(bad).unwrap_err().to_string();
            assert!(e.starts_with("bad --delay value"), "{bad}: {e}");
            assert!(!e.contains('\n'), "{bad}: {e}");
        }
    }

    fn lab() -> lab::Description {
        let dev = |netns: &str, name: &str, kind: &str, role| lab::Device {
            netns: netns.into(),
            name: name.into(),
            kind: kind.into(),
            role,
            addr: None,
            mtu: None,
        };
        let ip = std::net::IpAddr::from([10, 0, 0, 1]);
        lab::Description {
            id: "t1".into(),
            mode: lab::Mode::Bridge,
            namespaces: vec!["pf-t1-client".into(), "pf-t1-server".into()],
            devices: vec![
                dev("pf-t1-client", "eth0", "veth", lab::Role::ContainerEnd),
                dev("pf-t1-server", "eth0", "veth", lab::Role::ContainerEnd),
                dev("pf-t1-host", "br0", "bridge", lab::Role::Bridge),
                dev("pf-t1-host", "tun0", "ipip", lab::Role::Tunnel),
            ],
            client: lab::Endpoint {
                netns: "pf-t1-client".into(),
                addr: ip,
            },
            server: lab::Endpoint {
                netns: "pf-t1-server".into(),
                addr: ip,
            },
            connect: ip,
            ports: (5201, 5202),
            owner: None,
        }
    }

    fn args(dev: &str, netns: Option<&str>) -> InjectArgs {
        InjectArgs {
            lab: "t1".into(),
            dev: dev.into(),
            netns: netns.map(Into::into),
            ingress: true,
            egress: false,
            delay: "1ms".into(),
            port: None,
            netem: false,
            length: None,
        }
    }

    #[test]
    fn devices_resolve_to_their_namespace() {
        let d = lab();
        assert_eq!(args("br0", None).namespace(&d).unwrap(), "pf-t1-host");
        let ns = args("eth0", Some("pf-t1-server")).namespace(&d).unwrap();
        assert_eq!(ns, "pf-t1-server");
        for (a, want) in [
            (args("eth0", None), "choose one with --netns"),
            (
                args("eth9", None),
                "no device eth9 in lab t1: its devices are eth0 (pf-t1-client)",
            ),
            (
                args("br0", Some("pf-t1-client")),
                "no device br0 in namespace pf-t1-client",
            ),
            (args("tun0", None), "no Ethernet header"),
        ] {
            let e = format!("{:#}", a.namespace(&d).unwrap_err());
            assert!(e.contains(want) && !e.contains('\n'), "{e}");
        }
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        inject: InjectArgs,
    }

    #[test]
    fn exactly_one_hook() {
        use clap::{CommandFactory as _, Parser as _};
        Cli::command().debug_assert();
        let parse = |extra: &[&str]| {
            let base = ["inject", "--lab", "a1", "--dev", "eth0", "--delay", "1ms"];
            Cli::try_parse_from(base.iter().chain(extra)).map(|c| c.inject)
        };
        assert!(parse(&[]).is_err());
        assert!(parse(&["--ingress", "--egress"]).is_err());
        let a = parse(&["--egress", "--port", "5201", "-l", "3"]).unwrap();
        assert!(a.egress && !a.ingress);
        assert_eq!((a.port, a.length.as_deref()), (Some(5201), Some("3")));
    }
}
