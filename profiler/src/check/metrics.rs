//! The metrics of a report file, by kind: what `check` compares. Read from the JSON the
//! commands write, so a file from another build of the tool compares as long as it has the
//! fields.

use anyhow::{Result, bail};
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Lower,
    Higher,
}

#[derive(Debug, Clone, Serialize)]
pub struct Metric {
    /// e.g. `p99`, `throughput`, `one_way@requests`, `layer:bridge@requests`, `experiment:table2-rr/H-H`.
    pub name: String,
    pub unit: String,
    pub better: Better,
    /// One value per run.
    pub values: Vec<f64>,
}

#[derive(Debug)]
pub struct Report {
    /// trace, bench, experiment, boot or sysbench.
    pub kind: &'static str,
    pub runs: usize,
    pub metrics: Vec<Metric>,
}

fn kind_of(v: &Value) -> Option<&'static str> {
    if v.get("kind").and_then(Value::as_str) == Some("experiment") {
        Some("experiment")
    } else if v.get("net").is_some() && v.get("tracer").is_some() {
        Some("trace")
    } else if v.get("throughput_mbps").is_some() && v.get("latency").is_some() {
        Some("bench")
    } else if v.get("summary").is_some_and(Value::is_array) && v.get("wall_ns").is_some() {
        Some("boot")
    } else if v.get("test").is_some() && v.pointer("/run/events_per_sec").is_some() {
        Some("sysbench")
    } else {
        None
    }
}

/// The report's metrics; a `{"repeat": N, "runs": [...]}` file gives each metric N values.
pub fn extract(v: &Value) -> Result<Report> {
    let runs: Vec<&Value> = match v.get("runs").and_then(Value::as_array) {
        Some(a) if v.get("repeat").is_some() => a.iter().collect(),
        _ => vec![v],
    };
    if runs.is_empty() {
        bail!("a --repeat report with no runs");
    }
    let Some(kind) = kind_of(runs[0]) else {
        bail!(
            "not a trace, bench, experiment, boot or sysbench report: pass the JSON of `profiler trace --json FILE`, `bench --json`, `experiment --json`, `boot --json` or `sysbench ... run --json`"
        );
    };
    let mut metrics: Vec<Metric> = vec![];
    for (i, run) in runs.iter().enumerate() {
        if kind_of(run) != Some(kind) {
            bail!(
                "run {} of the --repeat report is not a {kind} report",
                i + 1
            );
        }
        let mut add = |name: String, unit: &str, better: Better, x: Option<f64>| {
            let Some(x) = x.filter(|x| x.is_finite()) else {
                return;
            };
            match metrics.iter_mut().find(|m| m.name == name) {
                Some(m) => m.values.push(x),
                None => metrics.push(Metric {
                    name,
                    unit: unit.to_string(),
                    better,
                    values: vec![x],
                }),
            }
        };
        match kind {
            "trace" => {
                if let Some(w) = run.get("workload").filter(|w| !w.is_null()) {
                    workload(w, &mut add);
                } else {
                    bail!(
                        "a trace report without its workload (interrupted, or --attach-only): nothing to gate on"
                    );
                }
                for d in run
                    .pointer("/net/directions")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let dir = d
                        .get("name")
                        .and_then(Value::as_str)
                        .and_then(|n| n.split_whitespace().next())
                        .unwrap_or("?");
                    let p50 = |r: &Value| r.get("p50").and_then(Value::as_f64);
                    add(
                        format!("one_way@{dir}"),
                        "ns",
                        Better::Lower,
                        d.get("one_way").and_then(p50),
                    );
                    for l in d
                        .get("layers")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        let (Some(name), Some(p), Some(c)) = (
                            l.get("layer").and_then(Value::as_str),
                            p50(l),
                            l.get("crossings").and_then(Value::as_f64),
                        ) else {
                            continue;
                        };
                        // Segments only handshakes took (0 crossings) are not the path.
                        if c >= 1.0 {
                            add(
                                format!("layer:{name}@{dir}"),
                                "ns",
                                Better::Lower,
                                Some(p * c),
                            );
                        }
                    }
                }
            }
            "bench" => workload(run, &mut add),
            "boot" => boot(run, &mut add),
            "sysbench" => sysbench(run, &mut add),
            _ => {
                for t in run
                    .get("tables")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let id = t.get("id").and_then(Value::as_str).unwrap_or("?");
                    let unit = t.get("unit").and_then(Value::as_str).unwrap_or("");
                    let better = if t.get("higher_is_better").and_then(Value::as_bool) == Some(true)
                    {
                        Better::Higher
                    } else {
                        Better::Lower
                    };
                    for r in t
                        .get("rows")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        let setup = r.get("setup").and_then(Value::as_str).unwrap_or("?");
                        for x in r
                            .get("values")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                        {
                            add(format!("experiment:{id}/{setup}"), unit, better, x.as_f64());
                        }
                    }
                }
            }
        }
    }
    Ok(Report {
        kind,
        runs: runs.len(),
        metrics,
    })
}

/// Records one value of a metric: (name, unit, which way is better, the value if present).
type Add<'a> = dyn FnMut(String, &str, Better, Option<f64>) + 'a;

fn workload(w: &Value, add: &mut Add<'_>) {
    let f = |p: &str| w.pointer(p).and_then(Value::as_f64);
    let rr = matches!(
        w.get("test").and_then(Value::as_str),
        Some("tcp_rr" | "tcp_crr" | "udp_rr")
    );
    if rr {
        add(
            "throughput".into(),
            "trans/s",
            Better::Higher,
            f("/transactions_per_sec"),
        );
    } else {
        add(
            "throughput".into(),
            "Mbit/s",
            Better::Higher,
            f("/throughput_mbps"),
        );
    }
    for (name, p) in [
        ("p50", "/latency/p50_us"),
        ("p90", "/latency/p90_us"),
        ("p99", "/latency/p99_us"),
        ("p99.9", "/latency/p99_9_us"),
        ("mean", "/latency/mean_us"),
    ] {
        add(name.into(), "µs", Better::Lower, f(p));
    }
    add(
        "service_demand".into(),
        if rr { "µs/tr" } else { "µs/KB" },
        Better::Lower,
        f("/service_demand_us_per_tran").or(f("/service_demand_us_per_kb")),
    );
}

/// A start-up report (every `boot` kind shares the shape): each phase's and the total's median
/// over the instances, and the whole run's wall clock.
fn boot(r: &Value, add: &mut Add<'_>) {
    for p in r
        .get("summary")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(name) = p.get("name").and_then(Value::as_str) else {
            continue;
        };
        let metric = if name == "total" {
            "total".to_string()
        } else {
            format!("phase:{name}")
        };
        add(
            metric,
            "ns",
            Better::Lower,
            p.get("p50_ns").and_then(Value::as_f64),
        );
    }
    add(
        "wall".into(),
        "ns",
        Better::Lower,
        r.get("wall_ns").and_then(Value::as_f64),
    );
}

/// A sysbench `run` report: events per second and the latency percentiles (ms), plus the
/// test's own rates where it has them.
fn sysbench(r: &Value, add: &mut Add<'_>) {
    let f = |p: &str| r.pointer(p).and_then(Value::as_f64);
    add(
        "throughput".into(),
        "events/s",
        Better::Higher,
        f("/run/events_per_sec"),
    );
    for (name, p) in [
        ("p50", "/run/latency_ms/p50"),
        ("p95", "/run/latency_ms/p95"),
        ("p99", "/run/latency_ms/p99"),
        ("mean", "/run/latency_ms/avg"),
    ] {
        add(name.into(), "ms", Better::Lower, f(p));
    }
    for (name, p) in [
        ("memory_mib_per_s", "/run/memory/mib_per_sec"),
        ("read_mib_per_s", "/run/fileio/read_mib_per_sec"),
        ("written_mib_per_s", "/run/fileio/written_mib_per_sec"),
    ] {
        add(name.into(), "MiB/s", Better::Higher, f(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_report_gives_workload_one_way_and_layer_metrics() {
        let run = serde_json::json!({
            "net": {"directions": [
                {"name": "requests (client -> server)",
                 "one_way": {"p50": 9000},
                 "layers": [
                    {"layer": "bridge", "p50": 1300, "crossings": 2},
                    {"layer": "handshake only", "p50": 50, "crossings": 0}
                 ]}
            ]},
            "tracer": {},
            "workload": {"test": "tcp_rr", "transactions_per_sec": 20000.0,
                         "latency": {"p50_us": 40.0, "p90_us": 50.0, "p99_us": 90.0,
                                     "p99_9_us": 120.0, "mean_us": 45.0},
                         "throughput_mbps": 0.3}
        });
        let r = extract(&run).unwrap();
        assert_eq!((r.kind, r.runs), ("trace", 1));
        let get = |n: &str| {
            r.metrics
                .iter()
                .find(|m| m.name == n)
                .map(|m| m.values.clone())
        };
        assert_eq!(get("throughput"), Some(vec![20000.0]));
        assert_eq!(get("p99"), Some(vec![90.0]));
        assert_eq!(get("one_way@requests"), Some(vec![9000.0]));
        assert_eq!(get("layer:bridge@requests"), Some(vec![2600.0]));
        assert_eq!(get("layer:handshake only@requests"), None);
        let rep = serde_json::json!({"repeat": 2, "runs": [run.clone(), run]});
        let r = extract(&rep).unwrap();
        assert_eq!(r.runs, 2);
        assert_eq!(
            r.metrics.iter().find(|m| m.name == "p99").unwrap().values,
            [90.0, 90.0]
        );
    }

    #[test]
    fn boot_and_sysbench_reports_give_their_metrics() {
        let boot = serde_json::json!({
            "wall_ns": 500e6, "instances_wall_ns": 140e6,
            "summary": [{"name": "clone", "p50_ns": 1e6}, {"name": "veth", "p50_ns": 6e7},
                        {"name": "total", "p50_ns": 1.4e8}]
        });
        let r = extract(&boot).unwrap();
        assert_eq!(r.kind, "boot");
        let names: Vec<_> = r.metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["phase:clone", "phase:veth", "total", "wall"]);
        let sb = serde_json::json!({
            "test": "cpu", "command": "run",
            "run": {"events_per_sec": 758.0, "latency_ms": {"avg": 1.3, "p50": 0.33, "p95": 10.5, "p99": 16.4},
                    "memory": null}
        });
        let r = extract(&sb).unwrap();
        assert_eq!(r.kind, "sysbench");
        let t = r.metrics.iter().find(|m| m.name == "throughput").unwrap();
        assert_eq!(
            (t.values.as_slice(), t.better),
            (&[758.0][..], Better::Higher)
        );
        assert!(r.metrics.iter().any(|m| m.name == "p99" && m.unit == "ms"));
    }

    #[test]
    fn anything_else_is_refused_in_one_line() {
        for v in [
            serde_json::json!({"hello": 1}),
            serde_json::json!([1, 2]),
            serde_json::json!({"repeat": 2, "runs": []}),
        ] {
            let e = extract(&v).unwrap_err().to_string();
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
