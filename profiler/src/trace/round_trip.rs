//! The round trip, named: from the client's send syscall to its receive returning, every
//! segment of both directions and the server's own time between, against the round trip the
//! workload measured. A pure function over the per-direction report (layers as values), so
//! any layer the model names appears here by itself.

use serde::Serialize;

use super::layers;
use super::report::{Direction, NetReport, Row};
use crate::hist::fmt_ns;

/// One named part of the round trip.
#[derive(Debug, Serialize)]
pub struct Part {
    /// "client", "request", "server", "response": whose time it is.
    pub side: &'static str,
    pub part: &'static str,
    pub mean_ns: f64,
    pub p50_ns: f64,
    /// Segments per transaction (count / delivered packets of its direction): below 1 for a
    /// branch only some take, or a stage not correlated every time.
    pub per_transaction: f64,
    /// mean x per_transaction: what the part adds to the mean round trip.
    pub ns_per_transaction: f64,
}

/// What could not be tied to its packet, per direction (as lost packets are counted).
#[derive(Debug, Serialize)]
pub struct Uncorrelated {
    pub direction: &'static str,
    pub delivered: u64,
    /// Packets whose birth no send syscall entry was seen for (TCP deferred the transmit to
    /// softirq, or the sender received no followed packet before).
    pub births_without_send: u64,
    /// Copies with no data-ready tied to the packet (the receive row stays merged).
    pub copies_without_data_ready: u64,
    /// Copies whose receive's return was not seen.
    pub copies_without_return: u64,
}

#[derive(Debug, Serialize)]
pub struct RoundTrip {
    /// In path order: the client's own time (it times a transaction from its previous
    /// receive's return), its send, the request path, the server's time, the response path,
    /// the client's receive return.
    pub parts: Vec<Part>,
    /// Sum of the parts' ns_per_transaction.
    pub named_ns: f64,
    /// The workload's own mean round trip (the client times each transaction).
    pub workload_mean_rtt_ns: Option<f64>,
    /// workload_mean_rtt_ns - named_ns; None unless the hooks were attached the whole run.
    pub unattributed_ns: Option<f64>,
    /// unattributed_ns over the workload's mean.
    pub unattributed_share: Option<f64>,
    pub uncorrelated: Vec<Uncorrelated>,
    /// Share of the run the hooks were attached: below 1 the workload's mean covers untraced
    /// time too, and the two are not the same transactions.
    pub duty_cycle: f64,
}

/// The application time of one process (`--attach-only`: foreign traffic's application
/// segments, keyed by the process whose task sent after receiving).
#[derive(Debug, Serialize)]
pub struct Application {
    pub pid: u32,
    pub comm: String,
    /// The Docker container whose network namespace the process is in.
    pub container: Option<String>,
    /// Direction of the packets it received before its time: "requests" for a server.
    pub after: &'static str,
    pub count: u64,
    pub mean_ns: f64,
}

/// Names each process of `NET_APPS` by its comm and, where Docker knows its network
/// namespace, its container; most transactions first.
pub fn applications(
    raw: &[(u32, profiler_common::net::AppTime)],
    containers: &std::collections::HashMap<u64, String>,
) -> Vec<Application> {
    use std::os::unix::fs::MetadataExt as _;
    let mut out: Vec<Application> = raw
        .iter()
        .filter(|(_, a)| a.count > 0)
        .map(|(pid, a)| Application {
            pid: *pid,
            comm: std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim().to_string())
                .unwrap_or_else(|_| "(exited)".into()),
            container: std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .ok()
                .and_then(|m| containers.get(&m.ino()).cloned()),
            after: if a.dir == 0 { "requests" } else { "responses" },
            count: a.count,
            mean_ns: a.sum_ns as f64 / a.count as f64,
        })
        .collect();
    out.sort_by_key(|a| std::cmp::Reverse(a.count));
    out
}

pub fn print_applications(apps: &[Application]) {
    if apps.is_empty() {
        return;
    }
    println!();
    println!("  application time by process (receive return to next send)");
    for a in apps.iter().take(10) {
        println!(
            "  {:>8} {:<16} {:<32} after {:<9} {:>8} x {:>9}",
            a.pid,
            a.comm,
            a.container.as_deref().unwrap_or("-"),
            a.after,
            a.count,
            fmt_ns(a.mean_ns)
        );
    }
}

/// Hooks attached (nearly) the whole run: the parts and the workload's mean cover the same
/// transactions.
const FULL_DUTY: f64 = 0.999;

fn delivered(d: &Direction) -> u64 {
    d.one_way.as_ref().map_or(0, |o| o.summary.count)
}

fn part(side: &'static str, r: &Row) -> Part {
    Part {
        side,
        part: r.layer,
        mean_ns: r.summary.mean,
        p50_ns: r.summary.p50 as f64,
        per_transaction: r.per_packet,
        ns_per_transaction: r.summary.mean * r.per_packet,
    }
}

fn find<'a>(d: &'a Direction, layer: &str) -> Option<&'a Row> {
    d.layers.iter().find(|r| r.layer == layer)
}

/// The send, the path and the receive's return of one direction; the path's layers in the
/// report's order.
fn direction_parts(d: &Direction, sender: &'static str, path: &'static str) -> Vec<Part> {
    let mut out = vec![];
    out.extend(find(d, layers::SEND_OUTPUT).map(|r| part(sender, r)));
    out.extend(
        d.layers
            .iter()
            .filter(|r| r.in_one_way)
            .map(|r| part(path, r)),
    );
    let receiver = if sender == "client" {
        "server"
    } else {
        "client"
    };
    out.extend(find(d, layers::COPY_RETURN).map(|r| part(receiver, r)));
    out
}

fn uncorrelated(d: &Direction, name: &'static str) -> Uncorrelated {
    let n = delivered(d);
    let count = |layer: &str| find(d, layer).map_or(0, |r| r.summary.count);
    Uncorrelated {
        direction: name,
        delivered: n,
        births_without_send: n.saturating_sub(count(layers::SEND_OUTPUT)),
        copies_without_data_ready: count(layers::SOCKET),
        copies_without_return: n.saturating_sub(count(layers::COPY_RETURN)),
    }
}

/// The round trip of a request-response run; None without both directions.
pub fn build(net: &NetReport, workload_mean_ns: Option<f64>, duty_cycle: f64) -> Option<RoundTrip> {
    let req = net
        .directions
        .iter()
        .find(|d| d.name.starts_with("requests"))?;
    let resp = net
        .directions
        .iter()
        .find(|d| d.name.starts_with("responses"))?;
    if delivered(req) == 0 || delivered(resp) == 0 {
        return None;
    }
    // The client times a transaction from its previous receive's return: its own time
    // before the send is in the round trip it measures.
    let mut parts: Vec<Part> = find(resp, layers::APPLICATION)
        .map(|r| part("client", r))
        .into_iter()
        .collect();
    parts.extend(direction_parts(req, "client", "request"));
    parts.extend(find(req, layers::APPLICATION).map(|r| part("server", r)));
    parts.extend(direction_parts(resp, "server", "response"));
    let named_ns: f64 = parts.iter().map(|p| p.ns_per_transaction).sum();
    // With windows the workload's mean covers untraced transactions and the parts only the
    // windows' (first ones with the connection's start): no like-with-like remainder.
    let unattributed_ns = workload_mean_ns
        .filter(|_| duty_cycle >= FULL_DUTY)
        .map(|w| w - named_ns);
    Some(RoundTrip {
        named_ns,
        workload_mean_rtt_ns: workload_mean_ns,
        unattributed_ns,
        unattributed_share: workload_mean_ns
            .zip(unattributed_ns)
            .filter(|(w, _)| *w > 0.0)
            .map(|(w, u)| u / w),
        uncorrelated: vec![
            uncorrelated(req, "requests"),
            uncorrelated(resp, "responses"),
        ],
        duty_cycle,
        parts,
    })
}

pub fn print(rt: &RoundTrip) {
    println!();
    println!(
        "  round trip, named (mean per transaction, in path order)   {:>9} {:>9} {:>9}",
        "mean", "p50", "per txn"
    );
    for p in &rt.parts {
        println!(
            "  {:<8} {:<48} {:>9} {:>9} {:>9.2} {:>9}",
            p.side,
            p.part,
            fmt_ns(p.mean_ns),
            fmt_ns(p.p50_ns),
            p.per_transaction,
            fmt_ns(p.ns_per_transaction)
        );
    }
    match (rt.workload_mean_rtt_ns, rt.unattributed_ns) {
        (Some(w), Some(u)) => println!(
            "  named parts {} of the workload's mean round trip {}: unattributed {} ({:.1}%)",
            fmt_ns(rt.named_ns),
            fmt_ns(w),
            fmt_ns(u),
            rt.unattributed_share.unwrap_or(0.0) * 100.0,
        ),
        (Some(w), None) => println!(
            "  named parts {} per transaction; the workload's mean round trip {} also covers untraced transactions (hooks attached {:.0}% of the run): --follow-every 1 compares the two",
            fmt_ns(rt.named_ns),
            fmt_ns(w),
            rt.duty_cycle * 100.0
        ),
        _ => println!("  named parts {} per transaction", fmt_ns(rt.named_ns)),
    }
    let u: Vec<String> = rt
        .uncorrelated
        .iter()
        .map(|u| {
            format!(
                "{}: {} of {} births without a send seen, {} copies without a data-ready, {} without a receive return",
                u.direction,
                u.births_without_send,
                u.delivered,
                u.copies_without_data_ready,
                u.copies_without_return
            )
        })
        .collect();
    println!("  not correlated: {}", u.join("; "));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hist::Summary;
    use crate::trace::report::Counts;

    fn row(layer: &'static str, count: u64, mean: f64, delivered: u64) -> Row {
        let mut h = crate::hist::empty();
        for _ in 0..count {
            h.record(mean as u64).unwrap();
        }
        let per_packet = count as f64 / delivered as f64;
        Row {
            layer,
            summary: Summary::of(&h),
            min_offset_ns: 0.0,
            crossings: per_packet.round() as u64,
            per_packet,
            in_one_way: layers::in_one_way(layer),
            share: 0.0,
            p50_without_tracer_ns: None,
            histogram: vec![],
        }
    }

    fn direction(name: &'static str, app: f64) -> Direction {
        let n = 100;
        Direction {
            name,
            layers: vec![
                row(layers::SEND_OUTPUT, 100, 600.0, n),
                row(layers::BRIDGE, 200, 500.0, n),
                row(layers::RECEIVE, 100, 500.0, n),
                row(layers::WAKE_UP, 60, 400.0, n),
                row(layers::RUN_QUEUE, 60, 600.0, n),
                row(layers::READER, 60, 300.0, n),
                row("data-ready to the copy (reader not asleep)", 40, 1500.0, n),
                row(layers::COPY_RETURN, 100, 250.0, n),
                row(layers::APPLICATION, 100, app, n),
            ],
            one_way: Some(row(layers::ONE_WAY, 100, 3000.0, n)),
            unattributed_ns: 0.0,
            tracer_ns: None,
        }
    }

    fn report() -> NetReport {
        NetReport {
            directions: vec![
                direction("requests (client -> server)", 200_000.0),
                direction("responses (server -> client)", 800.0),
            ],
            counts: Counts {
                drawn: 0,
                followed: 0,
                delivered: 0,
                consumed_without_delivery: 0,
                dropped: 0,
                stale_restarts: 0,
                samples_lost: 0,
                unnamed_segments: 0,
                followed_hooks: 0,
                collisions: 0,
                lost: 0,
            },
            drop_reasons: vec![],
            unnamed: vec![],
        }
    }

    /// Each direction: send 600 + bridge 2 x 500 + receive 500 + (0.6 x 1300 + 0.4 x 1500)
    /// + return 250 = 3730; the server's 200 µs between; the client's own 800 ns before.
    #[test]
    fn parts_add_up_in_path_order_and_the_server_time_is_its_own() {
        let r = report();
        let expect = 2.0 * 3730.0 + 200_000.0 + 800.0;
        let rt = build(&r, Some(expect + 100.0), 1.0).unwrap();
        assert!(
            (rt.named_ns - expect).abs() < expect * 0.01,
            "{} against {expect}",
            rt.named_ns
        );
        let u = rt.unattributed_ns.unwrap();
        assert!((u - (rt.workload_mean_rtt_ns.unwrap() - rt.named_ns)).abs() < 1e-6);
        let sides: Vec<&str> = rt.parts.iter().map(|p| p.side).collect();
        assert_eq!(sides.first(), Some(&"client"));
        assert_eq!(sides.last(), Some(&"client"));
        let apps: Vec<&Part> = rt
            .parts
            .iter()
            .filter(|p| p.part == layers::APPLICATION)
            .collect();
        assert_eq!(apps.len(), 2);
        assert_eq!(apps[0].side, "client");
        assert!((apps[0].mean_ns - 800.0).abs() < 10.0);
        assert_eq!(apps[1].side, "server");
        // The server part sits between the request's return and the response's send.
        let i = rt.parts.iter().position(|p| p.side == "server").unwrap();
        assert_eq!(rt.parts[i].part, layers::COPY_RETURN);
        assert_eq!(rt.parts[i + 1].part, layers::APPLICATION);
        assert_eq!(rt.parts[i + 2].part, layers::SEND_OUTPUT);
        assert_eq!(rt.uncorrelated[0].births_without_send, 0);
    }

    #[test]
    fn windows_give_no_remainder_against_the_whole_runs_mean() {
        let rt = build(&report(), Some(300_000.0), 0.06).unwrap();
        assert!(rt.unattributed_ns.is_none() && rt.unattributed_share.is_none());
        assert_eq!(rt.workload_mean_rtt_ns, Some(300_000.0));
    }

    #[test]
    fn a_missing_stage_is_counted_not_invented() {
        let mut r = report();
        r.directions[1]
            .layers
            .retain(|l| l.layer != layers::COPY_RETURN);
        let rt = build(&r, None, 1.0).unwrap();
        assert_eq!(rt.uncorrelated[1].copies_without_return, 100);
        assert!(rt.unattributed_ns.is_none());
        assert!(
            !rt.parts
                .iter()
                .any(|p| p.side == "client" && p.part == layers::COPY_RETURN)
        );
    }
}
