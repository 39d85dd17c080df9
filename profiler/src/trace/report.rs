//! The per-layer report: rows in path order per direction, the one-way total, what is left
//! unattributed, the workload's own end-to-end numbers, and every loss the tracer knows of.

use serde::Serialize;

use super::layers;
use crate::hist::{Summary, fmt_ns};
use crate::probes::net::Snapshot;
use profiler_common::net::{SLOT_ONE_WAY, SLOT_UNKNOWN, SLOTS_PER_DIR, counter};

#[derive(Debug, Serialize)]
pub struct Row {
    pub layer: &'static str,
    #[serde(flatten)]
    pub summary: Summary,
    /// Smallest time from a packet's first hook to this segment's end: its place on the path.
    pub min_offset_ns: f64,
    /// How many times a delivered packet crosses this layer (count / delivered, rounded): 2 for
    /// the bridge of each overlay host; 0 for segments only a few packets took (handshakes).
    pub crossings: u64,
    /// Segments per delivered packet (count / delivered), unrounded: below 1 for a branch
    /// only some packets take (a reader that was not asleep has no wake-up).
    pub per_packet: f64,
    /// Part of the one-way time (birth to copy); false for the round trip's send, receive
    /// return and application segments around it.
    pub in_one_way: bool,
    /// This layer's mean times its segments per packet, over the mean one-way time (0 outside
    /// the one-way time). Means per packet add up to the one-way mean; medians of a path with
    /// branches do not.
    pub share: f64,
    /// p50 with the tracer's own cost per crossing taken out (None: not calibrated).
    pub p50_without_tracer_ns: Option<f64>,
    /// Non-empty buckets: [value_ns, count].
    pub histogram: Vec<(u64, u64)>,
}

/// Followed packets freed by kfree_skb with one reason.
#[derive(Debug, Serialize)]
pub struct DropReason {
    /// enum skb_drop_reason's value on this kernel.
    pub code: u32,
    pub name: String,
    pub count: u64,
}

/// A segment the layer model does not name, and how often it was seen.
#[derive(Debug, Serialize)]
pub struct Unnamed {
    pub segment: String,
    pub count: u64,
}

#[derive(Debug, Serialize)]
pub struct Direction {
    pub name: &'static str,
    pub layers: Vec<Row>,
    pub one_way: Option<Row>,
    /// Mean one-way time minus the sum of the layers' means per packet: what the hooks do not
    /// see (segments of packets that were not delivered count in a layer, not in one-way).
    pub unattributed_ns: f64,
    /// The tracer's own time inside one packet's one-way time: its followed hooks' mean cost
    /// times the segments a packet crosses (None: not calibrated).
    pub tracer_ns: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Counts {
    /// Packets drawn at a transmit queue by the one-in-N decision (before the filter).
    pub drawn: u64,
    pub followed: u64,
    pub delivered: u64,
    pub consumed_without_delivery: u64,
    pub dropped: u64,
    pub stale_restarts: u64,
    pub samples_lost: u64,
    pub unnamed_segments: u64,
    /// Hooks run on followed packets.
    pub followed_hooks: u64,
    /// Drawn packets not followed because their state slot held another live packet.
    pub collisions: u64,
    /// Followed packets that ended neither delivered, consumed, dropped nor freed unseen: cut
    /// by a window's end, rebuilt under another skb address, or still in flight.
    pub lost: i64,
}

#[derive(Debug, Serialize)]
pub struct NetReport {
    pub directions: Vec<Direction>,
    pub counts: Counts,
    /// (skb_drop_reason, its name from BTF, count)
    pub drop_reasons: Vec<DropReason>,
    pub unnamed: Vec<Unnamed>,
}

fn row(
    layer: &'static str,
    h: &hdrhistogram::Histogram<u64>,
    offset: f64,
    delivered: u64,
    one_way_mean: f64,
) -> Row {
    let summary = Summary::of(h);
    let per_packet = if delivered > 0 {
        summary.count as f64 / delivered as f64
    } else {
        0.0
    };
    let in_one_way = layers::in_one_way(layer);
    Row {
        layer,
        summary,
        min_offset_ns: offset,
        crossings: per_packet.round() as u64,
        per_packet,
        in_one_way,
        p50_without_tracer_ns: None,
        share: if one_way_mean > 0.0 && in_one_way {
            summary.mean * per_packet / one_way_mean
        } else {
            0.0
        },
        histogram: h
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect(),
    }
}

/// Segments fewer packets than this take (per delivered packet) are listed after the path.
const RARE: f64 = 0.05;

pub fn build(s: &Snapshot, names: &[&'static str]) -> NetReport {
    let mut directions = vec![];
    for (dir, name) in [
        (0u32, "requests (client -> server)"),
        (1, "responses (server -> client)"),
    ] {
        let base = dir * SLOTS_PER_DIR;
        let ow = s.slots.get(&(base + SLOT_ONE_WAY));
        let (ow_mean, delivered) = ow.map_or((0.0, 0), |(h, _)| (Summary::of(h).mean, h.len()));
        let mut layers: Vec<Row> = s
            .slots
            .iter()
            .filter(|(slot, _)| **slot >= base && **slot < base + SLOTS_PER_DIR)
            .filter(|(slot, _)| **slot - base != SLOT_ONE_WAY)
            .map(|(slot, (h, off))| {
                let n = names[(slot - base) as usize];
                row(
                    if n.is_empty() { layers::UNKNOWN } else { n },
                    h,
                    *off,
                    delivered,
                    ow_mean,
                )
            })
            .collect();
        if layers.is_empty() && ow.is_none() {
            continue;
        }
        // Path order; segments few packets took go last.
        let rare = |r: &Row| r.per_packet < RARE;
        layers.sort_by(|a, b| {
            rare(a)
                .cmp(&rare(b))
                .then(a.min_offset_ns.total_cmp(&b.min_offset_ns))
        });
        let attributed: f64 = layers.iter().map(|r| r.share * ow_mean).sum();
        directions.push(Direction {
            name,
            unattributed_ns: ow_mean - attributed,
            tracer_ns: None,
            layers,
            one_way: ow.map(|(h, off)| row(layers::ONE_WAY, h, *off, delivered, ow_mean)),
        });
    }
    let c = &s.counters;
    let ended = c[counter::DELIVERED as usize]
        + c[counter::CONSUMED as usize]
        + c[counter::DROPPED as usize];
    NetReport {
        directions,
        counts: Counts {
            drawn: c[counter::DRAWN as usize],
            followed: c[counter::BIRTHS as usize],
            delivered: c[counter::DELIVERED as usize],
            consumed_without_delivery: c[counter::CONSUMED as usize],
            dropped: c[counter::DROPPED as usize],
            stale_restarts: c[counter::STALE as usize],
            samples_lost: c[counter::SAMPLES_LOST as usize],
            unnamed_segments: c[counter::UNKNOWN_SEGMENTS as usize],
            followed_hooks: c[counter::FOLLOWED_HOOKS as usize],
            collisions: c[counter::COLLISIONS as usize],
            lost: c[counter::BIRTHS as usize] as i64 - ended as i64,
        },
        drop_reasons: {
            let btf = crate::kernel::btf::Btf::vmlinux().ok();
            s.drop_reasons
                .iter()
                .map(|(r, n)| {
                    let name = btf
                        .as_ref()
                        .and_then(|b| b.enumerator("skb_drop_reason", *r as u64))
                        .unwrap_or_else(|| format!("reason {r}"));
                    DropReason {
                        code: *r,
                        name,
                        count: *n,
                    }
                })
                .collect()
        },
        unnamed: s
            .unnamed
            .iter()
            .map(|(segment, count)| Unnamed {
                segment: segment.clone(),
                count: *count,
            })
            .collect(),
    }
}

/// Takes the tracer's own cost out: each segment holds about one followed hook's run (the tail
/// of the program that opened it and the head of the one that closed it).
pub fn without_tracer(r: &mut NetReport, per_hook_ns: f64) {
    for d in &mut r.directions {
        let mut segments = 0.0;
        for l in &mut d.layers {
            if l.crossings > 0 || l.per_packet >= RARE {
                if l.in_one_way {
                    segments += l.per_packet;
                }
                l.p50_without_tracer_ns = Some((l.summary.p50 as f64 - per_hook_ns).max(0.0));
            }
        }
        let tracer = per_hook_ns * segments;
        d.tracer_ns = Some(tracer);
        if let Some(ow) = &mut d.one_way {
            ow.p50_without_tracer_ns = Some((ow.summary.p50 as f64 - tracer).max(0.0));
        }
    }
}

fn print_row(r: &Row) {
    let s = &r.summary;
    let q = [s.p50, s.p90, s.p99, s.p99_9, s.max].map(|v| v as f64);
    println!(
        "  {:<44} {:>8} {} {:>7}{}",
        r.layer,
        s.count,
        crate::hist::columns(&[q[0], q[1], q[2], q[3], q[4], s.mean]),
        if r.in_one_way {
            format!("{:.1}%", r.share * 100.0)
        } else {
            "-".into()
        },
        if r.crossings > 1 {
            format!(" (x{})", r.crossings)
        } else {
            String::new()
        }
    );
}

pub fn print(r: &NetReport) {
    for d in &r.directions {
        println!();
        println!(
            "  {:<44} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
            d.name, "count", "p50", "p90", "p99", "p99.9", "max", "mean", "share*"
        );
        for l in &d.layers {
            print_row(l);
        }
        if let Some(ow) = &d.one_way {
            print_row(ow);
            let of_mean = |ns: f64| {
                if ow.summary.mean > 0.0 {
                    ns / ow.summary.mean * 100.0
                } else {
                    0.0
                }
            };
            println!(
                "  {:<44} {:>8} {:>59} {:>6.1}%",
                "unattributed (one-way mean - layers' means)",
                "",
                fmt_ns(d.unattributed_ns),
                of_mean(d.unattributed_ns)
            );
            if let (Some(t), Some(w)) = (d.tracer_ns, ow.p50_without_tracer_ns) {
                println!(
                    "  {:<44} {:>8} {:>59} {:>6.1}%",
                    "the tracer's own inside that (estimated)",
                    "",
                    fmt_ns(t),
                    of_mean(t)
                );
                println!(
                    "  {:<44} {:>8} {:>9}",
                    "one-way p50 without the tracer",
                    "",
                    fmt_ns(w)
                );
            }
        }
    }
    let c = &r.counts;
    println!();
    println!(
        "  * share: the layer's mean times its segments per packet, over the one-way mean: shares add up ('-': outside the one-way time, in the round trip)"
    );
    println!(
        "  followed {} packets: {} delivered, {} consumed without delivery (e.g. pure ACKs), {} dropped, {} freed where no hook saw it (address reused), {} lost to the tracer or in flight; {} hooks on followed packets; {} not followed for a busy state slot",
        c.followed,
        c.delivered,
        c.consumed_without_delivery,
        c.dropped,
        c.stale_restarts,
        c.lost.max(0),
        c.followed_hooks,
        c.collisions
    );
    if !r.drop_reasons.is_empty() {
        let reasons: Vec<String> = r
            .drop_reasons
            .iter()
            .map(|d| format!("{}: {}", d.name, d.count))
            .collect();
        println!("  drops by skb_drop_reason: {}", reasons.join(", "));
    }
    if c.samples_lost > 0 {
        println!(
            "  sampled events lost (ring buffer full): {}",
            c.samples_lost
        );
    }
    if !r.unnamed.is_empty() {
        println!(
            "  segments the layer model does not name (in '{}'): {}",
            layers::UNKNOWN,
            r.unnamed
                .iter()
                .take(5)
                .map(|u| format!("{} ({})", u.segment, u.count))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    let _ = SLOT_UNKNOWN;
}
