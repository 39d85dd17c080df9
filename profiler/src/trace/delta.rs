//! The difference between two traced runs (a mode against a baseline), layer by layer: each
//! direction's one-way time and, for rr tests, the round trip. Generic over the layer model:
//! whatever layers the reports hold (trace/layers.rs) are the parts, in path order; a layer
//! only one side has counts fully on that side; what no layer holds is "the rest".
//! `trace --compare` and `experiment`'s explanation both use it.

use serde::Serialize;

use super::run::TraceReport;
use crate::hist::fmt_ns;

/// One statistic's difference (p50 or mean) and how much of it the layers explain.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Delta {
    pub mode_ns: f64,
    pub base_ns: f64,
    /// mode - baseline.
    pub total_ns: f64,
    /// The layers' deltas, summed.
    pub layers_ns: f64,
    /// total - layers: what no layer holds (and, for p50s, what medians do not add up to).
    pub rest_ns: f64,
}

impl Delta {
    fn new(mode_ns: f64, base_ns: f64, layers_ns: f64) -> Delta {
        let total_ns = mode_ns - base_ns;
        Delta {
            mode_ns,
            base_ns,
            total_ns,
            layers_ns,
            rest_ns: total_ns - layers_ns,
        }
    }
}

/// Which side's path holds a layer.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum On {
    Both,
    Mode,
    Baseline,
}

/// One layer's part: its time per packet (p50 x crossings, mean x count per delivered packet)
/// on each side and the difference.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LayerDelta {
    pub layer: &'static str,
    /// Crossings per packet: the mode's, or the baseline's for a layer only it has.
    pub crossings: u64,
    pub on: On,
    pub p50_ns: f64,
    pub base_p50_ns: f64,
    pub p50_delta_ns: f64,
    pub mean_ns: f64,
    pub base_mean_ns: f64,
    pub mean_delta_ns: f64,
}

/// One direction's (or the round trip's) difference, decomposed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Decomposition {
    /// The mode's direction, or "round trip".
    pub name: String,
    /// The baseline's direction compared with: the same, or requests where the baseline
    /// traced none in this direction (on loopback the tracer sees both ways as one).
    pub base_name: String,
    /// Both sides without the tracer's own cost (its measured ns per followed hook, taken
    /// once per crossing from each layer and from the totals); false: as traced.
    pub corrected: bool,
    pub p50: Delta,
    pub mean: Delta,
    /// Path order.
    pub layers: Vec<LayerDelta>,
}

/// A mode against its baseline.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModeDelta {
    pub directions: Vec<Decomposition>,
    /// rr tests: the workload's round trip against both directions' layers; the rest is the
    /// application, syscalls and the stack outside the hooks.
    pub round_trip: Option<Decomposition>,
}

/// One layer on one side's path: its time per delivered packet.
#[derive(Debug, Clone)]
struct Part {
    layer: &'static str,
    crossings: u64,
    p50: f64,
    mean: f64,
}

/// One side's direction: its layers in path order and its totals.
struct Path {
    name: &'static str,
    parts: Vec<Part>,
    p50: f64,
    mean: f64,
    /// The tracer's own time in the totals (already taken out of them).
    tracer_p50: f64,
    tracer_mean: f64,
    corrected: bool,
}

fn path(r: &TraceReport, dir: usize) -> Option<Path> {
    let d = r.net.directions.get(dir)?;
    let ow = d.one_way.as_ref()?;
    // Requests are born in the client's namespace: always the workload's. Responses with a
    // tenth of the requests' packets are not its responses: a few stray packets where the
    // tracer counts both ways as requests (loopback), or stream ACKs, which end unread.
    let requests = r.net.directions.first().and_then(|d| d.one_way.as_ref());
    let requests = requests.map_or(0, |o| o.summary.count);
    if ow.summary.count == 0 || (dir > 0 && ow.summary.count * 10 < requests) {
        return None;
    }
    let delivered = ow.summary.count as f64;
    let per_hook = r.tracer.followed_ns_per_run.filter(|c| c.is_finite());
    let corrected = per_hook.is_some() && ow.p50_without_tracer_ns.is_some();
    let per_hook = if corrected {
        per_hook.unwrap_or(0.0)
    } else {
        0.0
    };
    // Segments only a few packets took (handshakes) are not on the per-packet path; a branch
    // some packets take (a reader not asleep has no wake-up) is. The round trip's send,
    // receive-return and application rows lie outside the one-way time.
    let on_path = d
        .layers
        .iter()
        .filter(|l| l.in_one_way && (l.crossings > 0 || l.per_packet >= 0.05));
    let mut parts = vec![];
    let (mut hooks_p50, mut tracer_mean) = (0.0, 0.0);
    for l in on_path {
        // Per delivered packet: the means add up to the one-way mean (the report's shares);
        // p50 x the rounded crossings is the median view beside it.
        let per_packet = l.summary.count as f64 / delivered;
        let p50 = if corrected {
            l.p50_without_tracer_ns.unwrap_or(l.summary.p50 as f64)
        } else {
            l.summary.p50 as f64
        };
        hooks_p50 += l.crossings as f64;
        // No layer gives up more than it holds, and the one-way mean gives up exactly what the
        // layers did: the parts still add up where the estimate overshoots a short layer.
        let taken = per_hook.min(l.summary.mean) * per_packet;
        tracer_mean += taken;
        parts.push(Part {
            layer: l.layer,
            crossings: l.crossings,
            p50: p50 * l.crossings as f64,
            mean: l.summary.mean * per_packet - taken,
        });
    }
    let p50 = if corrected {
        ow.p50_without_tracer_ns.unwrap_or(ow.summary.p50 as f64)
    } else {
        ow.summary.p50 as f64
    };
    Some(Path {
        name: d.name,
        parts,
        p50,
        mean: ow.summary.mean - tracer_mean,
        tracer_p50: per_hook * hooks_p50,
        tracer_mean,
        corrected,
    })
}

/// The mode's layers in its path order; a layer only the baseline has goes after the layer
/// that precedes it on the baseline's path.
fn layers(mode: &[Part], base: &[Part]) -> Vec<LayerDelta> {
    let find = |parts: &[Part], l: &'static str| parts.iter().find(|p| p.layer == l).cloned();
    let mut out: Vec<LayerDelta> = mode
        .iter()
        .map(|m| {
            let b = find(base, m.layer);
            let (bp, bm) = b.as_ref().map_or((0.0, 0.0), |b| (b.p50, b.mean));
            LayerDelta {
                layer: m.layer,
                crossings: m.crossings,
                on: if b.is_some() { On::Both } else { On::Mode },
                p50_ns: m.p50,
                base_p50_ns: bp,
                p50_delta_ns: m.p50 - bp,
                mean_ns: m.mean,
                base_mean_ns: bm,
                mean_delta_ns: m.mean - bm,
            }
        })
        .collect();
    for (i, b) in base.iter().enumerate() {
        if find(mode, b.layer).is_some() {
            continue;
        }
        let at = base[..i]
            .iter()
            .rev()
            .find_map(|prev| out.iter().position(|o| o.layer == prev.layer))
            .map_or(0, |p| p + 1);
        out.insert(
            at,
            LayerDelta {
                layer: b.layer,
                crossings: b.crossings,
                on: On::Baseline,
                p50_ns: 0.0,
                base_p50_ns: b.p50,
                p50_delta_ns: -b.p50,
                mean_ns: 0.0,
                base_mean_ns: b.mean,
                mean_delta_ns: -b.mean,
            },
        );
    }
    out
}

fn decompose(
    name: String,
    base_name: String,
    corrected: bool,
    (mode_p50, mode_mean, mode_parts): (f64, f64, &[Part]),
    (base_p50, base_mean, base_parts): (f64, f64, &[Part]),
) -> Decomposition {
    let layers = layers(mode_parts, base_parts);
    let p50_sum = layers.iter().map(|l| l.p50_delta_ns).sum();
    let mean_sum = layers.iter().map(|l| l.mean_delta_ns).sum();
    Decomposition {
        name,
        base_name,
        corrected,
        p50: Delta::new(mode_p50, base_p50, p50_sum),
        mean: Delta::new(mode_mean, base_mean, mean_sum),
        layers,
    }
}

/// Both directions' parts as one path: requests first, a layer both cross summed.
fn round_trip_parts(a: &Path, b: &Path) -> Vec<Part> {
    let mut out: Vec<Part> = a.parts.clone();
    for p in &b.parts {
        match out.iter_mut().find(|o| o.layer == p.layer) {
            Some(o) => {
                o.crossings += p.crossings;
                o.p50 += p.p50;
                o.mean += p.mean;
            }
            None => out.push(p.clone()),
        }
    }
    out
}

/// The two directions of a round trip on one side: responses fall back to requests where the
/// tracer saw both ways as one direction (loopback).
fn both_ways(r: &TraceReport) -> Option<(Path, Path)> {
    let req = path(r, 0)?;
    let resp = path(r, 1).or_else(|| path(r, 0))?;
    Some((req, resp))
}

/// The workload's round trip (p50, mean) without the tracer's time in both directions.
fn rtt(r: &TraceReport, ways: &(Path, Path)) -> Option<(f64, f64)> {
    let w = r.workload.as_ref().filter(|w| w.test.is_rr())?;
    if w.latency.samples == 0 {
        return None;
    }
    let (a, b) = ways;
    Some((
        w.latency.p50_us * 1e3 - a.tracer_p50 - b.tracer_p50,
        w.latency.mean_us * 1e3 - a.tracer_mean - b.tracer_mean,
    ))
}

/// `mode` against `base`: each of the mode's directions, and the round trip for rr tests.
pub fn between(mode: &TraceReport, base: &TraceReport) -> ModeDelta {
    let mut directions = vec![];
    for d in 0..mode.net.directions.len() {
        let Some(m) = path(mode, d) else { continue };
        let Some(b) = path(base, d).or_else(|| path(base, 0)) else {
            continue;
        };
        directions.push(decompose(
            m.name.to_string(),
            b.name.to_string(),
            m.corrected && b.corrected,
            (m.p50, m.mean, &m.parts),
            (b.p50, b.mean, &b.parts),
        ));
    }
    let round_trip = both_ways(mode).zip(both_ways(base)).and_then(|(m, b)| {
        let (mr, br) = (rtt(mode, &m)?, rtt(base, &b)?);
        Some(decompose(
            "round trip".into(),
            "round trip".into(),
            m.0.corrected && m.1.corrected && b.0.corrected && b.1.corrected,
            (mr.0, mr.1, &round_trip_parts(&m.0, &m.1)),
            (br.0, br.1, &round_trip_parts(&b.0, &b.1)),
        ))
    });
    ModeDelta {
        directions,
        round_trip,
    }
}

/// Which statistic a line shows.
#[derive(Clone, Copy)]
pub enum Stat {
    P50,
    Mean,
}

fn signed(ns: f64) -> String {
    if ns >= 0.0 {
        format!("+{}", fmt_ns(ns))
    } else {
        format!("-{}", fmt_ns(-ns))
    }
}

/// "overlay - host = +X: vxlan encap +a, bridge x2 +c, ...; the rest +r", in path order.
pub fn line(mode: &str, base: &str, d: &Decomposition, stat: Stat) -> String {
    let (delta, what) = match stat {
        Stat::P50 => (&d.p50, "p50"),
        Stat::Mean => (&d.mean, "mean"),
    };
    let parts: Vec<String> = d
        .layers
        .iter()
        .map(|l| {
            let v = match stat {
                Stat::P50 => l.p50_delta_ns,
                Stat::Mean => l.mean_delta_ns,
            };
            let x = if l.crossings > 1 {
                format!(" x{}", l.crossings)
            } else {
                String::new()
            };
            // A layer only the mode has is the usual case and goes unmarked.
            let only = match l.on {
                On::Baseline => " (baseline only)",
                _ => "",
            };
            format!("{}{x}{only} {}", l.layer, signed(v))
        })
        .collect();
    format!(
        "{mode} - {base}, {} {what}{} = {}: {}; the rest {}",
        d.name,
        if d.corrected {
            " (without the tracer's cost)"
        } else {
            ""
        },
        signed(delta.total_ns),
        parts.join(", "),
        signed(delta.rest_ns)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(layer: &'static str, crossings: u64, ns: f64) -> Part {
        Part {
            layer,
            crossings,
            p50: ns,
            mean: ns,
        }
    }

    #[test]
    fn layers_keep_path_order_and_one_sided_layers_count_fully() {
        let host = [part("lo", 1, 500.0), part("sock", 1, 10_000.0)];
        let overlay = [
            part("veth", 1, 200.0),
            part("bridge", 2, 2_600.0),
            part("sock", 1, 11_000.0),
        ];
        let l = layers(&overlay, &host);
        let names: Vec<_> = l.iter().map(|l| (l.layer, l.on)).collect();
        assert_eq!(
            names,
            [
                ("lo", On::Baseline),
                ("veth", On::Mode),
                ("bridge", On::Mode),
                ("sock", On::Both)
            ]
        );
        assert_eq!(l[0].p50_delta_ns, -500.0);
        assert_eq!(l[2].p50_delta_ns, 2_600.0);
        assert_eq!(l[3].mean_delta_ns, 1_000.0);
        // A baseline-only layer after a shared one follows it.
        let l = layers(
            &[part("a", 1, 1.0)],
            &[part("a", 1, 1.0), part("b", 1, 2.0)],
        );
        assert_eq!(l[1].layer, "b");
    }

    #[test]
    fn the_rest_is_what_the_layers_do_not_hold() {
        let d = decompose(
            "requests".into(),
            "requests".into(),
            false,
            (
                5_000.0,
                6_000.0,
                &[part("x", 1, 3_000.0), part("s", 1, 1_500.0)],
            ),
            (2_000.0, 2_500.0, &[part("s", 1, 1_400.0)]),
        );
        assert_eq!(d.p50.total_ns, 3_000.0);
        assert_eq!(d.p50.layers_ns, 3_100.0);
        assert_eq!(d.p50.rest_ns, -100.0);
        let s = line("overlay", "host", &d, Stat::P50);
        assert!(
            s.starts_with("overlay - host, requests p50 = +3.00 µs: x"),
            "{s}"
        );
        assert!(s.ends_with("the rest -100 ns"), "{s}");
    }

    #[test]
    fn round_trip_sums_a_layer_both_directions_cross() {
        let mk = |parts: Vec<Part>| Path {
            name: "d",
            parts,
            p50: 0.0,
            mean: 0.0,
            tracer_p50: 0.0,
            tracer_mean: 0.0,
            corrected: false,
        };
        let rt = round_trip_parts(
            &mk(vec![part("bridge", 2, 800.0), part("sock", 1, 100.0)]),
            &mk(vec![part("bridge", 2, 900.0), part("gro", 1, 50.0)]),
        );
        let v: Vec<_> = rt.iter().map(|p| (p.layer, p.crossings, p.p50)).collect();
        assert_eq!(
            v,
            [("bridge", 4, 1_700.0), ("sock", 1, 100.0), ("gro", 1, 50.0)]
        );
    }
}
