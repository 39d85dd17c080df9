//! `profiler trace --self-check`: a known delay injected on one device at a time must land in
//! the layer that holds its hook, and nowhere else.

use std::time::Duration;

use anyhow::{Result, anyhow};
use serde::Serialize;

use super::{
    cli::{TraceArgs, prelude},
    layers,
    run::{TraceReport, trace_in},
};
use crate::lab::{self, Lab, Mode};

#[derive(Serialize)]
pub struct Shift {
    pub layer: String,
    pub baseline_p50_ns: u64,
    pub injected_p50_ns: u64,
}

/// One injection of the self-check.
#[derive(Serialize)]
pub struct Case {
    pub mode: Mode,
    pub device: String,
    pub hook: &'static str,
    pub expected_layer: &'static str,
    /// Request-direction layers, baseline and injected p50s.
    pub layers: Vec<Shift>,
    pub delay_ns: u64,
    pub landed_ns: i64,
    /// Largest |shift| of any other layer.
    pub elsewhere_ns: i64,
    pub passed: bool,
}

#[derive(Serialize)]
pub struct SelfCheck {
    pub cases: Vec<Case>,
    pub passed: bool,
    /// Why netem was not among the injectors (this kernel lacks sch_netem or its module).
    pub netem: Option<String>,
}

/// A lab of the self-check, kept up across its cases, with its baseline request p50s.
type SelfCheckLab = (Mode, lab::Description, Option<Lab>, Vec<(String, u64)>);

/// Median shift tolerance: 5% of the injected delay.
const TOLERANCE: f64 = 0.05;
const SELF_CHECK_DELAY: Duration = Duration::from_millis(1);

fn request_p50s(r: &TraceReport) -> Vec<(String, u64)> {
    r.net
        .directions
        .first()
        .map(|d| {
            d.layers
                .iter()
                .filter(|l| l.crossings >= 1)
                .map(|l| (l.layer.to_string(), l.summary.p50))
                .collect()
        })
        .unwrap_or_default()
}

pub fn self_check(args: &TraceArgs) -> Result<SelfCheck> {
    prelude(args, "profiler trace --self-check")?;
    // Requests go client -> server: the client's bridge port (host end), the server host's
    // underlay, the server container's end. (mode, role, device name, namespace suffix, layer)
    // (mode, role, device, namespace suffix, layer, netem): the TC program on ingress; where
    // the kernel has sch_netem, also netem on the server's bridge port's egress.
    let mut plan: Vec<(Mode, lab::Role, &str, &str, &'static str, bool)> = vec![
        (
            Mode::Bridge,
            lab::Role::HostEnd,
            "veth-c",
            "-h",
            layers::BRIDGE,
            false,
        ),
        (
            Mode::Overlay,
            lab::Role::Underlay,
            "uy",
            "-hy",
            layers::VXLAN_DECAP,
            false,
        ),
        (
            Mode::Overlay,
            lab::Role::ContainerEnd,
            "eth0",
            "-s",
            // TC ingress runs after netif_receive_skb's tracepoint, before the socket's
            // data-ready (where the kernel lacks sk_data_ready, in the socket's row).
            layers::RECEIVE,
            false,
        ),
    ];
    if lab::netem::available() {
        plan.insert(
            1,
            (
                Mode::Bridge,
                lab::Role::HostEnd,
                "veth-s",
                "-h",
                layers::VETH_TO_CONTAINER,
                true,
            ),
        );
    }
    let mut cases = vec![];
    let mut labs: Vec<SelfCheckLab> = vec![];
    for (mode, role, name, ns_suffix, expected, netem) in plan {
        if !labs.iter().any(|(m, ..)| *m == mode) {
            let (desc, owned) = lab::existing_or_new(None, mode)?;
            let base = request_p50s(&trace_in(&desc, desc.connect, args)?);
            labs.push((mode, desc, owned, base));
        }
        let (_, desc, _, base) = labs.iter().find(|(m, ..)| *m == mode).unwrap();
        // 6.1 has no sock:sk_data_ready: the receive row is not split from the socket's.
        let expected = if expected == layers::RECEIVE && !base.iter().any(|(n, _)| n == expected) {
            layers::SOCKET
        } else {
            expected
        };
        let dev = desc
            .device(role)
            .find(|d| d.name == name && d.netns.ends_with(ns_suffix))
            .ok_or_else(|| anyhow!("lab {} has no {name} ({role:?})", desc.id))?
            .clone();
        let injector: Box<dyn std::any::Any> = if netem {
            Box::new(lab::netem::Netem::add(
                &dev.netns,
                &dev.name,
                SELF_CHECK_DELAY,
            )?)
        } else {
            Box::new(crate::probes::inject::Injector::attach(
                &dev.netns,
                &dev.name,
                true,
                SELF_CHECK_DELAY,
                // All packets: on the underlay they are VXLAN (UDP 4789), not the workload's port.
                None,
            )?)
        };
        let traced = request_p50s(&trace_in(desc, desc.connect, args)?);
        drop(injector);
        let delay = SELF_CHECK_DELAY.as_nanos() as u64;
        let mut layers = vec![];
        let (mut landed, mut elsewhere) = (0i64, 0i64);
        for (name, b) in base {
            let t = traced.iter().find(|(n, _)| n == name).map_or(0, |x| x.1);
            let shift = t as i64 - *b as i64;
            if name == expected {
                landed = shift;
            } else {
                elsewhere = elsewhere.max(shift.abs());
            }
            layers.push(Shift {
                layer: name.clone(),
                baseline_p50_ns: *b,
                injected_p50_ns: t,
            });
        }
        let tol = (delay as f64 * TOLERANCE) as i64;
        cases.push(Case {
            mode,
            device: format!("{} in {}", dev.name, dev.netns),
            hook: if netem {
                "netem (egress qdisc)"
            } else {
                "tc ingress"
            },
            expected_layer: expected,
            layers,
            delay_ns: delay,
            landed_ns: landed,
            elsewhere_ns: elsewhere,
            passed: (landed - delay as i64).abs() <= tol && elsewhere <= tol,
        });
    }
    let passed = cases.iter().all(|c| c.passed);
    let netem =
        (!lab::netem::available()).then(|| format!("no netem case: {}", lab::netem::why_not()));
    Ok(SelfCheck {
        cases,
        passed,
        netem,
    })
}

pub fn print(c: &SelfCheck) {
    use crate::hist::fmt_ns;
    println!(
        "  self-check: {} injected (TC ingress program; netem where the kernel has it), tolerance {:.0}%",
        fmt_ns(SELF_CHECK_DELAY.as_nanos() as f64),
        TOLERANCE * 100.0
    );
    if let Some(why) = &c.netem {
        println!("  {why}");
    }
    for case in &c.cases {
        println!(
            "  {:<4} {:<8} {:<28} {:<20} expected in '{}': landed {} (other layers at most {})",
            if case.passed { "ok" } else { "FAIL" },
            case.mode,
            case.device,
            case.hook,
            case.expected_layer,
            fmt_ns(case.landed_ns as f64),
            fmt_ns(case.elsewhere_ns as f64)
        );
    }
}
