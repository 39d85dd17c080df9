//! `profiler trace --ablation`: conntrack and NAT costed by difference, where no function
//! probe can isolate them.

use anyhow::{Result, anyhow, bail};
use serde::Serialize;

use super::{
    cli::{TraceArgs, prelude},
    layers,
    run::{TraceReport, trace_in},
};
use crate::lab::{self, Mode};

/// `--ablation` in a nat lab: the same workload with NAT, without NAT (direct to the server,
/// conntrack still on), and with conntrack off (NOTRACK in the raw table). Where function
/// probes cannot isolate conntrack and NAT, the differences of the forwarding segment can.
#[derive(Serialize)]
pub struct Ablation {
    pub variants: Vec<Variant>,
    /// p50 of the host's "ip forward + netfilter" segment per variant (requests).
    pub forward_p50_ns: Vec<Forward>,
    pub nat_cost_ns: Option<i64>,
    pub conntrack_cost_ns: Option<i64>,
}

#[derive(Serialize)]
pub struct Variant {
    pub name: String,
    pub report: TraceReport,
}

#[derive(Serialize)]
pub struct Forward {
    pub variant: String,
    pub p50_ns: u64,
}

pub fn ablation(args: &TraceArgs) -> Result<Ablation> {
    prelude(args, "profiler trace --ablation")?;
    let (desc, _owned) = lab::existing_or_new(args.lab.as_deref(), Mode::Nat)?;
    if desc.mode != Mode::Nat {
        bail!(
            "--ablation needs a nat lab (lab {} is {})",
            desc.id,
            desc.mode
        );
    }
    let host_ns = desc
        .namespaces
        .iter()
        .find(|n| n.ends_with("-h"))
        .ok_or_else(|| anyhow!("lab {} has no host namespace", desc.id))?
        .clone();
    let mut variants = vec![];
    variants.push(("nat".to_string(), trace_in(&desc, desc.connect, args)?));
    variants.push((
        "no nat (conntrack on)".to_string(),
        trace_in(&desc, desc.server.addr, args)?,
    ));
    let notrack = [
        ["-t", "raw", "-I", "PREROUTING", "-j", "NOTRACK"],
        ["-t", "raw", "-I", "OUTPUT", "-j", "NOTRACK"],
    ];
    for rule in &notrack {
        lab::iptables_in(&host_ns, rule)?;
    }
    let r = trace_in(&desc, desc.server.addr, args);
    for rule in &notrack {
        let mut del = rule.to_vec();
        del[2] = "-D";
        lab::iptables_in(&host_ns, &del)?;
    }
    variants.push(("no conntrack (NOTRACK)".to_string(), r?));
    let forward = |r: &TraceReport| {
        r.net.directions.first().and_then(|d| {
            d.layers
                .iter()
                .find(|l| l.layer == layers::IP_FORWARD)
                .map(|l| l.summary.p50)
        })
    };
    let forward_p50_ns: Vec<Forward> = variants
        .iter()
        .filter_map(|(n, r)| {
            forward(r).map(|p| Forward {
                variant: n.clone(),
                p50_ns: p,
            })
        })
        .collect();
    let get = |i: usize| forward(&variants[i].1).map(|v| v as i64);
    let nat_cost_ns = get(0).zip(get(1)).map(|(a, b)| a - b);
    let conntrack_cost_ns = get(1).zip(get(2)).map(|(a, b)| a - b);
    Ok(Ablation {
        variants: variants
            .into_iter()
            .map(|(name, report)| Variant { name, report })
            .collect(),
        forward_p50_ns,
        nat_cost_ns,
        conntrack_cost_ns,
    })
}

pub fn print(a: &Ablation) {
    println!(
        "  netfilter ablation (p50 of the host's 'ip forward + netfilter' segment, requests):"
    );
    for f in &a.forward_p50_ns {
        println!(
            "    {:<28} {}",
            f.variant,
            crate::hist::fmt_ns(f.p50_ns as f64)
        );
    }
    if let Some(c) = a.nat_cost_ns {
        println!(
            "    NAT (DNAT rule + translation) costs       {}",
            crate::hist::fmt_ns(c as f64)
        );
    }
    if let Some(c) = a.conntrack_cost_ns {
        println!(
            "    conntrack (lookup/insert per packet) costs {}",
            crate::hist::fmt_ns(c as f64)
        );
    }
    for v in &a.variants {
        let (n, r) = (&v.name, &v.report);
        if let Some(w) = &r.workload {
            println!(
                "    {:<28} {:.0} trans/s, mean RTT {:.1} µs",
                n, w.transactions_per_sec, w.latency.mean_us
            );
        }
    }
}
