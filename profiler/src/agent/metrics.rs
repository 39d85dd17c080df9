//! The agent's exposition: Prometheus text (0.0.4) or OpenMetrics 1.0, in base units (seconds),
//! histograms with cumulative `le` buckets at fixed edges so every scrape has the same series.

use std::fmt::Write as _;

use crate::{probes::softirq::SoftirqReport, trace::budget::Cost, trace::report::NetReport};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Prometheus,
    OpenMetrics,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Bucket edges, ns: two per octave (2^k and 1.5 * 2^k) from 512 ns to 2^33 ns (8.6 s). With
/// linear interpolation inside a bucket, `histogram_quantile` is off by at most one bucket's
/// width: a third of the value at most.
pub fn edges_ns() -> Vec<u64> {
    (9..=33)
        .flat_map(|k| [1u64 << k, 3u64 << (k - 1)])
        .filter(|&e| e <= 1 << 33)
        .collect()
}

/// What one scrape shows.
pub struct Scrape<'a> {
    pub host: &'a str,
    /// The netns the agent filters on, if any.
    pub netns: Option<&'a str>,
    pub net: &'a NetReport,
    pub softirq: Option<&'a SoftirqReport>,
    pub kvm_exits: Option<&'a std::collections::BTreeMap<String, u64>>,
    pub cost: &'a Cost,
}

struct Out {
    text: String,
    format: Format,
}

/// A label value, escaped as both formats require.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", esc(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn secs(ns: f64) -> String {
    format!("{}", ns / 1e9)
}

impl Out {
    /// `# HELP` and `# TYPE`; counters are named without `_total` in OpenMetrics' TYPE line.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let family = match (self.format, kind) {
            (Format::OpenMetrics, "counter") => name.strip_suffix("_total").unwrap_or(name),
            _ => name,
        };
        let _ = writeln!(self.text, "# HELP {family} {help}");
        let _ = writeln!(self.text, "# TYPE {family} {kind}");
    }

    fn sample(&mut self, name: &str, l: &[(&str, &str)], v: impl std::fmt::Display) {
        let _ = writeln!(self.text, "{name}{} {v}", labels(l));
    }

    /// One histogram from HDR (value ns, count) pairs.
    fn histogram(&mut self, name: &str, l: &[(&str, &str)], values: &[(u64, u64)], edges: &[u64]) {
        let mut cum = 0u64;
        let mut i = 0;
        for &e in edges {
            while i < values.len() && values[i].0 <= e {
                cum += values[i].1;
                i += 1;
            }
            let le = secs(e as f64);
            let mut ll = l.to_vec();
            ll.push(("le", &le));
            self.sample(&format!("{name}_bucket"), &ll, cum);
        }
        let count: u64 = values.iter().map(|v| v.1).sum();
        let sum: f64 = values.iter().map(|&(v, n)| v as f64 * n as f64).sum();
        let mut ll = l.to_vec();
        ll.push(("le", "+Inf"));
        self.sample(&format!("{name}_bucket"), &ll, count);
        self.sample(&format!("{name}_sum"), l, secs(sum));
        self.sample(&format!("{name}_count"), l, count);
    }
}

/// "requests (client -> server)" -> "requests".
fn direction(name: &str) -> &str {
    name.split_whitespace().next().unwrap_or(name)
}

pub fn render(s: &Scrape, format: Format) -> String {
    let mut o = Out {
        text: String::new(),
        format,
    };
    let edges = edges_ns();
    let mut base = vec![("host", s.host)];
    if let Some(n) = s.netns {
        base.push(("netns", n));
    }

    o.family(
        "profiler_net_layer_latency_seconds",
        "histogram",
        "Time a followed packet spends in each layer of the network path, per crossing.",
    );
    for d in &s.net.directions {
        for r in &d.layers {
            let mut l = base.clone();
            l.push(("direction", direction(d.name)));
            l.push(("layer", r.layer));
            o.histogram(
                "profiler_net_layer_latency_seconds",
                &l,
                &r.histogram,
                &edges,
            );
        }
    }
    o.family(
        "profiler_net_one_way_latency_seconds",
        "histogram",
        "A followed packet's time from its first hook to its delivery to a socket.",
    );
    for d in &s.net.directions {
        if let Some(r) = &d.one_way {
            let mut l = base.clone();
            l.push(("direction", direction(d.name)));
            o.histogram(
                "profiler_net_one_way_latency_seconds",
                &l,
                &r.histogram,
                &edges,
            );
        }
    }
    let c = &s.net.counts;
    for (name, help, v) in [
        (
            "profiler_net_packets_drawn_total",
            "Packets drawn for following at their first hook.",
            c.drawn,
        ),
        (
            "profiler_net_packets_followed_total",
            "Packets followed through the path.",
            c.followed,
        ),
        (
            "profiler_net_packets_delivered_total",
            "Followed packets delivered to a socket.",
            c.delivered,
        ),
        (
            "profiler_net_packets_dropped_total",
            "Followed packets freed by kfree_skb.",
            c.dropped,
        ),
        (
            "profiler_net_collisions_total",
            "Drawn packets not followed: their state slot held a live packet.",
            c.collisions,
        ),
        (
            "profiler_net_samples_lost_total",
            "Path samples (--print-every) the ring buffer had no room for.",
            c.samples_lost,
        ),
        (
            "profiler_net_stale_restarts_total",
            "Packets whose state was stale (freed unseen) and started again.",
            c.stale_restarts,
        ),
    ] {
        o.family(name, "counter", help);
        o.sample(name, &base, v);
    }
    o.family(
        "profiler_net_drops_total",
        "counter",
        "Followed packets dropped, by the kernel's drop reason.",
    );
    for d in &s.net.drop_reasons {
        let mut l = base.clone();
        l.push(("reason", &d.name));
        o.sample("profiler_net_drops_total", &l, d.count);
    }
    if let Some(sq) = s.softirq {
        for (name, help) in [
            (
                "profiler_softirq_wait_seconds",
                "NET_RX/NET_TX softirq raise to entry, per CPU.",
            ),
            (
                "profiler_softirq_run_seconds",
                "NET_RX/NET_TX softirq entry to exit, per CPU.",
            ),
        ] {
            o.family(name, "summary", help);
            for cpu in &sq.cpus {
                let n = cpu.cpu.to_string();
                for (vector, v) in [("NET_RX", &cpu.net_rx), ("NET_TX", &cpu.net_tx)] {
                    let sum = if name.ends_with("wait_seconds") {
                        &v.delay
                    } else {
                        &v.run_time
                    };
                    let mut l = base.clone();
                    l.push(("cpu", &n));
                    l.push(("vector", vector));
                    for (q, val) in [("0.5", sum.p50), ("0.99", sum.p99)] {
                        let mut lq = l.clone();
                        lq.push(("quantile", q));
                        o.sample(name, &lq, secs(val as f64));
                    }
                    o.sample(
                        &format!("{name}_sum"),
                        &l,
                        secs(sum.mean * sum.count as f64),
                    );
                    o.sample(&format!("{name}_count"), &l, sum.count);
                }
            }
        }
    }
    if let Some(exits) = s.kvm_exits {
        o.family(
            "profiler_kvm_exits_total",
            "counter",
            "KVM exits and KVM_RUN returns of this host's VMs, by reason.",
        );
        for (reason, n) in exits {
            let mut l = base.clone();
            l.push(("reason", reason));
            o.sample("profiler_kvm_exits_total", &l, n);
        }
    }
    let cost = s.cost;
    for (name, help, v) in [
        (
            "profiler_tracer_cpu_share",
            "The tracer's measured run time (bpf_stats) as a share of one CPU.",
            cost.measured_share,
        ),
        (
            "profiler_tracer_charged_cpu_share",
            "What the budget charged the tracer (run time plus dispatch), share of one CPU.",
            cost.charged_share,
        ),
        (
            "profiler_tracer_follow_every",
            "The tracer follows one drawn packet in N while attached.",
            Some(cost.follow_every),
        ),
        (
            "profiler_tracer_duty_cycle",
            "Share of wall time the tracer's hooks were attached.",
            Some(cost.duty_cycle),
        ),
        (
            "profiler_tracer_followed_hook_seconds",
            "Mean run time of a hook on a followed packet.",
            cost.followed_ns_per_run.map(|n| n / 1e9),
        ),
    ] {
        if let Some(v) = v {
            o.family(name, "gauge", help);
            o.sample(name, &base, v);
        }
    }
    if format == Format::OpenMetrics {
        o.text.push_str("# EOF\n");
    }
    o.text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_end_at_the_count() {
        let mut o = Out {
            text: String::new(),
            format: Format::Prometheus,
        };
        o.histogram(
            "x_seconds",
            &[("layer", "bridge")],
            &[(600, 2), (1000, 3), (5000, 1)],
            &[512, 768, 1024, 4096],
        );
        let lines: Vec<&str> = o.text.lines().collect();
        assert_eq!(
            lines[0],
            "x_seconds_bucket{layer=\"bridge\",le=\"0.000000512\"} 0"
        );
        assert_eq!(
            lines[1],
            "x_seconds_bucket{layer=\"bridge\",le=\"0.000000768\"} 2"
        );
        assert_eq!(
            lines[2],
            "x_seconds_bucket{layer=\"bridge\",le=\"0.000001024\"} 5"
        );
        assert_eq!(
            lines[3],
            "x_seconds_bucket{layer=\"bridge\",le=\"0.000004096\"} 5"
        );
        assert_eq!(lines[4], "x_seconds_bucket{layer=\"bridge\",le=\"+Inf\"} 6");
        assert_eq!(lines[5], "x_seconds_sum{layer=\"bridge\"} 0.0000092");
        assert_eq!(lines[6], "x_seconds_count{layer=\"bridge\"} 6");
    }

    #[test]
    fn openmetrics_names_counter_families_without_total_and_ends_with_eof() {
        let mut o = Out {
            text: String::new(),
            format: Format::OpenMetrics,
        };
        o.family("a_total", "counter", "h");
        assert!(o.text.contains("# TYPE a counter"));
        let mut p = Out {
            text: String::new(),
            format: Format::Prometheus,
        };
        p.family("a_total", "counter", "h");
        assert!(p.text.contains("# TYPE a_total counter"));
    }

    #[test]
    fn edges_rise_two_per_octave() {
        let e = edges_ns();
        assert_eq!(e[..4], [512, 768, 1024, 1536]);
        assert!(e.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(*e.last().unwrap(), 1 << 33);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(labels(&[("a", "x\"y\\z")]), "{a=\"x\\\"y\\\\z\"}");
    }
}
