//! An experiment file (`configs/*.toml`): the paper, its tables, each table's rows with the
//! paper's figures as data, and how long and how often to run. Checked whole before anything
//! runs, so a typo is one line naming the table and the field.

use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::{envs::Env, lab::Mode, workload::Test};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub paper: String,
    #[serde(default = "one")]
    pub repetitions: u32,
    /// Seconds per network run (netperf -l).
    #[serde(default = "ten")]
    pub length_s: f64,
    #[serde(default)]
    pub quick: Quick,
    #[serde(rename = "table")]
    pub tables: Vec<Table>,
}

/// What `--quick` changes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quick {
    #[serde(default = "one")]
    pub repetitions: u32,
    #[serde(default = "one_f")]
    pub length_s: f64,
    /// Rows of more instances are not run; a table's own `count` is capped at it.
    #[serde(default = "two")]
    pub max_count: u32,
    /// sysbench's --time.
    #[serde(default = "one_f")]
    pub time_s: f64,
}

impl Default for Quick {
    fn default() -> Self {
        Quick {
            repetitions: 1,
            length_s: 1.0,
            max_count: 2,
            time_s: 1.0,
        }
    }
}

fn one() -> u32 {
    1
}
fn two() -> u32 {
    2
}
fn ten() -> f64 {
    10.0
}
fn one_f() -> f64 {
    1.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A netperf-style workload across a lab (`bench`).
    Net,
    /// `boot --vm qemu --count N`.
    VmBoot,
    /// `boot --container native --count N`.
    ContainerBoot,
    /// sysbench cpu in an environment (`run --env E sysbench cpu`).
    Sysbench,
    /// sysbench oltp_* on the tool's own MariaDB inside the environment (`run --env E`), or
    /// N instances at once, each with its own server (`density --instances N`).
    Oltp,
    /// nginx under wrk in an environment (`web --env E --connections N`).
    Web,
}

/// What a row may set for itself, and its table for every row that does not.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Params {
    #[serde(default)]
    pub test: Option<String>,
    #[serde(default)]
    pub rr: Option<String>,
    #[serde(default)]
    pub send_size: Option<String>,
    #[serde(default)]
    pub count: Option<u32>,
    #[serde(default)]
    pub net: Option<String>,
    /// web: open connections (wrk -c).
    #[serde(default)]
    pub connections: Option<usize>,
}

impl Params {
    /// The row's own values, the table's where the row has none.
    fn over(&self, table: &Params) -> Params {
        Params {
            test: self.test.clone().or_else(|| table.test.clone()),
            rr: self.rr.clone().or_else(|| table.rr.clone()),
            send_size: self.send_size.clone().or_else(|| table.send_size.clone()),
            count: self.count.or(table.count),
            net: self.net.clone().or_else(|| table.net.clone()),
            connections: self.connections.or(table.connections),
        }
    }
}

/// Keys neither the struct nor its flattened `Params` know. serde's `deny_unknown_fields`
/// does not work with `flatten`, so they are collected and refused by `validate`.
type Unknown = std::collections::BTreeMap<String, toml::Value>;

fn refuse_unknown(unknown: &Unknown, place: &str) -> Result<()> {
    match unknown.keys().next() {
        Some(k) => bail!("{place}: unknown field '{k}'"),
        None => Ok(()),
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Table {
    pub id: String,
    pub title: String,
    pub kind: Kind,
    pub metric: String,
    pub unit: String,
    /// The setup every ratio is against.
    pub baseline: String,
    #[serde(flatten)]
    pub params: Params,
    #[serde(default)]
    pub max_prime: Option<u64>,
    #[serde(default)]
    pub time_s: Option<f64>,
    /// oltp: rows per table and client threads per instance (sysbench's defaults: 10000, 1).
    #[serde(default)]
    pub table_size: Option<u32>,
    #[serde(default)]
    pub threads: Option<u32>,
    /// web: the served file's bytes.
    #[serde(default)]
    pub size: Option<usize>,
    pub rows: Vec<Row>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Row {
    /// The paper's name for the setup.
    pub setup: String,
    #[serde(default)]
    pub mode: Option<String>,
    /// H-H, C-H, H-C or C-C (client-server); default: what the mode builds.
    #[serde(default)]
    pub placement: Option<String>,
    #[serde(default)]
    pub env: Option<String>,
    #[serde(flatten)]
    pub params: Params,
    /// The paper's figure, in the table's unit.
    #[serde(default)]
    pub paper: Option<f64>,
    /// The paper's ratio against the baseline, where it publishes a ratio and no figure.
    #[serde(default)]
    pub paper_ratio: Option<f64>,
    /// Why this machine or tool cannot run the row; it is printed, not run.
    #[serde(default)]
    pub unsupported: Option<String>,
    #[serde(flatten)]
    unknown: Unknown,
}

/// Who sits where: the lab's ends (C-C), or one end on the lab host's bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Placement {
    #[serde(rename = "H-H")]
    HostHost,
    #[serde(rename = "C-C")]
    ContainerContainer,
    #[serde(rename = "C-H")]
    ContainerHost,
    #[serde(rename = "H-C")]
    HostContainer,
    /// The client in a stock-kernel guest on a tap on the bridge lab's bridge, the server on
    /// the lab host (Amaral's VM-H bridge).
    #[serde(rename = "VM-H")]
    VmHost,
}

impl Placement {
    pub fn name(self) -> &'static str {
        match self {
            Placement::HostHost => "H-H",
            Placement::ContainerContainer => "C-C",
            Placement::ContainerHost => "C-H",
            Placement::HostContainer => "H-C",
            Placement::VmHost => "VM-H",
        }
    }
}

/// What one row runs: the cache key, so tables that show the same run share it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Run {
    Net(NetRun),
    VmBoot {
        count: u32,
    },
    ContainerBoot {
        net: crate::container::NetMode,
        count: u32,
    },
    Sysbench {
        env: Env,
        max_prime: u64,
        time_s: f64,
    },
    Oltp(OltpRun),
    Web {
        env: crate::web::WebEnv,
        connections: usize,
        size: usize,
    },
}

/// A netperf-style workload across a lab.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetRun {
    pub mode: Mode,
    pub placement: Placement,
    pub test: Test,
    pub rr: String,
    pub send_size: Option<String>,
}

/// sysbench oltp_* in an environment, `count` instances at once.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OltpRun {
    pub env: Env,
    /// oltp_read_write, oltp_read_only or oltp_write_only.
    pub test: String,
    pub count: u32,
    pub table_size: u32,
    pub threads: u32,
    pub time_s: f64,
}

impl OltpRun {
    /// The workload's words, as `run --env` and `density` take them.
    pub fn workload(&self) -> Vec<String> {
        format!(
            "sysbench {} --table-size {} --threads {} --time {}",
            self.test, self.table_size, self.threads, self.time_s
        )
        .split(' ')
        .map(String::from)
        .collect()
    }
}

/// The metrics each kind reports (the names a table's `metric` may use).
pub fn metrics(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Net => &[
            "throughput_gbps",
            "throughput_mbps",
            "transactions_per_sec",
            "rr_latency_us",
            "p99_us",
            "client_cpu_pct",
            "server_cpu_pct",
            "client_sd_us",
            "server_sd_us",
        ],
        Kind::VmBoot => &["boot_s", "shutdown_s"],
        Kind::ContainerBoot => &["boot_s", "boot_ms", "shutdown_s"],
        Kind::Sysbench => &["events_per_sec"],
        Kind::Oltp => &[
            "transactions_per_sec",
            "queries_per_sec",
            "reads_per_sec",
            "writes_per_sec",
        ],
        Kind::Web => &[
            "requests_per_sec",
            "response_ms",
            "response_stddev_ms",
            "response_p50_ms",
            "response_p99_ms",
            "server_cpu_pct",
            "server_cpu_machine_pct",
            "client_cpu_pct",
        ],
    }
}

/// Whether a larger value of `metric` is better (for how a reader reads the ratio).
pub fn higher_is_better(metric: &str) -> bool {
    matches!(
        metric,
        "throughput_gbps"
            | "throughput_mbps"
            | "transactions_per_sec"
            | "events_per_sec"
            | "queries_per_sec"
            | "reads_per_sec"
            | "writes_per_sec"
            | "requests_per_sec"
    )
}

impl Spec {
    pub fn load(path: &Path) -> Result<Spec> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading experiment file {}", path.display()))?;
        Spec::parse(&text).map_err(|e| anyhow!("{}: {e:#}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Spec> {
        let spec: Spec = toml::from_str(text).map_err(|e| {
            anyhow!(
                "not an experiment file: {}",
                crate::opts::one_line(&e.to_string())
            )
        })?;
        spec.validate()?;
        Ok(spec)
    }

    fn validate(&self) -> Result<()> {
        if self.tables.is_empty() {
            bail!("no [[table]]: an experiment declares at least one table");
        }
        if self.repetitions == 0 || self.quick.repetitions == 0 {
            bail!("repetitions must be at least 1");
        }
        for len in [self.length_s, self.quick.length_s] {
            if !(len > 0.0 && len < 86_400.0) {
                bail!("length_s must be a positive number of seconds, e.g. length_s = 10");
            }
        }
        let mut ids = std::collections::HashSet::new();
        for t in &self.tables {
            refuse_unknown(&t.unknown, &format!("table '{}'", t.id))?;
            for r in &t.rows {
                refuse_unknown(&r.unknown, &format!("table '{}', row '{}'", t.id, r.setup))?;
            }
            if !ids.insert(&t.id) {
                bail!("table id '{}' appears twice", t.id);
            }
            if !metrics(t.kind).contains(&t.metric.as_str()) {
                bail!(
                    "table '{}': metric '{}' is not one of {}",
                    t.id,
                    t.metric,
                    metrics(t.kind).join(", ")
                );
            }
            if !t.rows.iter().any(|r| r.setup == t.baseline) {
                bail!(
                    "table '{}': baseline '{}' names no row's setup",
                    t.id,
                    t.baseline
                );
            }
            for r in &t.rows {
                if r.unsupported.is_none() {
                    t.run_of(r, self, false)
                        .map_err(|e| anyhow!("table '{}', row '{}': {e}", t.id, r.setup))?;
                }
            }
        }
        Ok(())
    }

    pub fn repetitions(&self, quick: bool) -> u32 {
        if quick {
            self.quick.repetitions
        } else {
            self.repetitions
        }
    }

    pub fn length_s(&self, quick: bool) -> f64 {
        if quick {
            self.quick.length_s
        } else {
            self.length_s
        }
    }
}

fn parse_enum<T: clap::ValueEnum>(what: &str, s: &str) -> Result<T> {
    T::from_str(s, true).map_err(|_| {
        let valid: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_string()))
            .collect();
        anyhow!("unknown {what} '{s}': expected one of {}", valid.join(", "))
    })
}

impl Table {
    /// What `row` runs, or `Ok(None)` when `--quick` leaves it out (more instances than
    /// `quick.max_count`).
    pub fn run_of(&self, row: &Row, spec: &Spec, quick: bool) -> Result<Option<Run>> {
        let p = row.params.over(&self.params);
        let count = |default: u32| -> Result<Option<u32>> {
            let n = p.count.unwrap_or(default);
            if n == 0 {
                bail!("count must be at least 1");
            }
            if quick && n > spec.quick.max_count {
                // A table-level count is capped; a row's own count is the row's point.
                return Ok(if row.params.count.is_none() {
                    Some(spec.quick.max_count)
                } else {
                    None
                });
            }
            Ok(Some(n))
        };
        Ok(match self.kind {
            Kind::Net => {
                let mode: Mode = parse_enum(
                    "mode",
                    row.mode
                        .as_deref()
                        .ok_or_else(|| anyhow!("a net row needs mode = \"...\""))?,
                )?;
                let test: Test = p
                    .test
                    .as_deref()
                    .ok_or_else(|| anyhow!("a net table needs test = \"tcp_rr\" (or another)"))?
                    .parse()?;
                let rr = p.rr.clone().unwrap_or_else(|| "1,1".into());
                crate::workload::parse_rr(&rr)?;
                let send_size = p.send_size.clone();
                if let Some(m) = &send_size {
                    crate::workload::parse_size(m)?;
                }
                let placement = match (row.placement.as_deref(), mode) {
                    (None, Mode::Host) | (Some("H-H"), Mode::Host) => Placement::HostHost,
                    (Some("C-H"), Mode::Bridge) => Placement::ContainerHost,
                    (Some("H-C"), Mode::Bridge) => Placement::HostContainer,
                    (Some("VM-H"), Mode::Bridge) => Placement::VmHost,
                    // The nested lab's ends are the host and the inner container.
                    (None | Some("H-C"), Mode::Nested) => Placement::HostContainer,
                    (Some("C-H"), Mode::Nested) => Placement::ContainerHost,
                    (None | Some("C-C"), m) if m != Mode::Host && m != Mode::Nested => {
                        Placement::ContainerContainer
                    }
                    (p, m) => bail!(
                        "placement '{}' in mode {m}: host mode is H-H; bridge supports C-C, C-H, \
                         H-C and VM-H; nested C-H and H-C; other modes C-C",
                        p.unwrap_or("")
                    ),
                };
                Some(Run::Net(NetRun {
                    mode,
                    placement,
                    test,
                    rr,
                    send_size,
                }))
            }
            Kind::VmBoot => count(1)?.map(|count| Run::VmBoot { count }),
            Kind::ContainerBoot => {
                let net = parse_enum("net", p.net.as_deref().unwrap_or("none"))?;
                count(1)?.map(|count| Run::ContainerBoot { net, count })
            }
            Kind::Sysbench => {
                let env: Env = parse_enum(
                    "env",
                    row.env.as_deref().ok_or_else(|| {
                        anyhow!("a sysbench row needs env = \"host\" (or native, docker, vm)")
                    })?,
                )?;
                let time_s = if quick {
                    spec.quick.time_s
                } else {
                    self.time_s.unwrap_or(10.0)
                };
                Some(Run::Sysbench {
                    env,
                    max_prime: self.max_prime.unwrap_or(10000),
                    time_s,
                })
            }
            Kind::Oltp => {
                let env: Env = parse_enum(
                    "env",
                    row.env.as_deref().ok_or_else(|| {
                        anyhow!("an oltp row needs env = \"host\" (or native, docker, vm)")
                    })?,
                )?;
                let test = p.test.clone().unwrap_or_else(|| "oltp_read_write".into());
                if !["oltp_read_write", "oltp_read_only", "oltp_write_only"]
                    .contains(&test.as_str())
                {
                    bail!(
                        "unknown oltp test '{test}': expected oltp_read_write, oltp_read_only or oltp_write_only"
                    );
                }
                let time_s = if quick {
                    spec.quick.time_s
                } else {
                    self.time_s.unwrap_or(10.0)
                };
                let threads = self.threads.unwrap_or(1);
                let table_size = self.table_size.unwrap_or(10000);
                if threads == 0 || table_size == 0 {
                    bail!("threads and table_size must be at least 1");
                }
                count(1)?.map(|count| {
                    Run::Oltp(OltpRun {
                        env,
                        test,
                        count,
                        table_size,
                        threads,
                        time_s,
                    })
                })
            }
            Kind::Web => {
                let env = parse_enum(
                    "env",
                    row.env.as_deref().ok_or_else(|| {
                        anyhow!("a web row needs env = \"host\" (or native, docker)")
                    })?,
                )?;
                if env == crate::web::WebEnv::Vm {
                    bail!("{}", crate::web::VM_REFUSAL);
                }
                let connections = p
                    .connections
                    .ok_or_else(|| anyhow!("a web table needs connections = N"))?;
                if connections == 0 {
                    bail!("connections must be at least 1");
                }
                Some(Run::Web {
                    env,
                    connections,
                    size: self.size.unwrap_or(1024),
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_files_parse() {
        for f in [
            "amaral2015.toml",
            "suo2018.toml",
            "dhar2016.toml",
            "zheng.toml",
        ] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../configs")
                .join(f);
            let spec = Spec::load(&path).unwrap_or_else(|e| panic!("{f}: {e:#}"));
            assert!(!spec.tables.is_empty());
        }
    }

    #[test]
    fn a_web_row_needs_an_environment_and_connections() {
        let table = |row: &str, conns: &str| {
            format!(
                "paper = \"x\"\n[[table]]\nid = \"t\"\ntitle = \"t\"\nkind = \"web\"\n\
                 metric = \"server_cpu_pct\"\nunit = \"%\"\nbaseline = \"d\"\n{conns}\
                 rows = [{row}]\n"
            )
        };
        let ok = Spec::parse(&table(
            "{ setup = \"d\", env = \"docker\" }",
            "connections = 8\n",
        ))
        .unwrap();
        let t = &ok.tables[0];
        assert_eq!(
            t.run_of(&t.rows[0], &ok, false).unwrap(),
            Some(Run::Web {
                env: crate::web::WebEnv::Docker,
                connections: 8,
                size: 1024
            })
        );
        let e = Spec::parse(&table(
            "{ setup = \"d\", env = \"vm\" }",
            "connections = 8\n",
        ))
        .unwrap_err();
        assert!(e.to_string().contains("web has no VM environment"), "{e}");
        let e = Spec::parse(&table("{ setup = \"d\", env = \"host\" }", "")).unwrap_err();
        assert!(e.to_string().contains("connections"), "{e}");
    }

    #[test]
    fn a_typo_names_the_table_and_field() {
        let text = r#"
paper = "x"
[[table]]
id = "t"
title = "t"
kind = "net"
test = "tcp_rr"
metric = "rr_latency_us"
unit = "us"
baseline = "host"
rows = [{ setup = "host", mode = "hots" }]
"#;
        let e = Spec::parse(text).unwrap_err().to_string();
        assert!(
            e.contains("table 't', row 'host'") && e.contains("unknown mode 'hots'"),
            "{e}"
        );
        let e = Spec::parse(&text.replace("rr_latency_us", "latency"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("metric 'latency' is not one of"), "{e}");
        let e = Spec::parse(&text.replace("baseline = \"host\"", "baseline = \"none\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("baseline 'none' names no row"), "{e}");
        let e = Spec::parse("paper = 1").unwrap_err().to_string();
        assert!(e.starts_with("not an experiment file"), "{e}");
        let e =
            Spec::parse(&text.replace("mode = \"hots\"", "mode = \"host\", sned_size = \"1k\""))
                .unwrap_err()
                .to_string();
        assert_eq!(e, "table 't', row 'host': unknown field 'sned_size'");
        let e = Spec::parse(&text.replace("unit = \"us\"", "unit = \"us\"\nrepeats = 3"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "table 't': unknown field 'repeats'");
    }

    #[test]
    fn quick_leaves_out_rows_of_more_instances_and_caps_a_tables_count() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/dhar2016.toml");
        let spec = Spec::load(&p).unwrap();
        let t = &spec.tables[0];
        let runs: Vec<Option<Run>> = t
            .rows
            .iter()
            .map(|r| t.run_of(r, &spec, true).unwrap())
            .collect();
        assert_eq!(runs[0], Some(Run::VmBoot { count: 1 }));
        assert_eq!(runs[1], Some(Run::VmBoot { count: 2 }));
        assert_eq!(runs[2], None);
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/suo2018.toml");
        let spec = Spec::load(&p).unwrap();
        let t = spec
            .tables
            .iter()
            .find(|t| t.id == "table6-launch")
            .unwrap();
        assert!(matches!(
            t.run_of(&t.rows[0], &spec, true).unwrap(),
            Some(Run::ContainerBoot { count: 1, .. })
        ));
        assert!(matches!(
            t.run_of(&t.rows[0], &spec, false).unwrap(),
            Some(Run::ContainerBoot { count: 3, .. })
        ));
    }
}
