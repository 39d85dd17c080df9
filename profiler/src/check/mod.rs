//! `profiler check --baseline BASE.json CURRENT.json`: the regression gate for CI. Both files
//! are reports of one kind (`trace --json`, `bench --json`, `experiment --json`, each also as
//! `--repeat N`'s `{"repeat": N, "runs": [...]}`, `boot --json`, `sysbench ... --json`); each metric of the baseline is compared with
//! the current run against a threshold rule, and a regression must also exceed the
//! run-to-run spread when both files carry several runs. Exit 0: no regression; 1: one or
//! more (named); 2: bad input, in one line.

pub mod metrics;
pub mod output;
pub mod rules;

use std::path::PathBuf;

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Serialize;

pub use metrics::{Better, Metric, Report};
pub use rules::{Rule, parse_rules};

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The stored report to compare against.
    #[arg(long, value_name = "BASE.json")]
    pub baseline: PathBuf,
    /// This run's report, of the same kind.
    #[arg(value_name = "CURRENT.json")]
    pub current: PathBuf,
    /// Thresholds, applied after the defaults (the last matching rule wins), e.g.
    /// 'p99=+10%,throughput=-5%,layer:vxlan*=+20%'. `+`: an increase beyond it regresses, `-`:
    /// a decrease; no sign: a change in the metric's worse direction.
    #[arg(long, value_name = "RULES")]
    pub max_regress: Option<String>,
    /// Append a Markdown summary to FILE (e.g. "$GITHUB_STEP_SUMMARY").
    #[arg(long, value_name = "FILE")]
    pub summary: Option<PathBuf>,
    /// Write JUnit XML to FILE (one test case per gated metric).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
}

/// The rules every check starts from; `--max-regress` adds to them.
pub const DEFAULT_RULES: &str = "p50=20%,p99=50%,throughput=20%,one_way@*=30%,layer:*=50%,experiment:*=25%,total=25%,wall=25%,phase:*=50%";

/// A layer must also grow by this much before it counts (the tracer's buckets at µs scale).
pub const LAYER_FLOOR_NS: f64 = 500.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Regressed,
    /// No rule applies: reported, not gated.
    Ungated,
    /// In the baseline, not in the current report.
    Missing,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub metric: String,
    pub unit: String,
    pub baseline: f64,
    pub current: Option<f64>,
    /// (current - baseline) / baseline.
    pub change: Option<f64>,
    pub rule: Option<String>,
    pub verdict: Verdict,
    /// Why, in words.
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub kind: &'static str,
    pub baseline: String,
    pub current: String,
    pub baseline_runs: usize,
    pub current_runs: usize,
    pub outcomes: Vec<Outcome>,
    pub regressed: Vec<String>,
    /// The regressed layer that grew most, and by how much (ns): where to look first.
    pub worst_layer: Option<(String, f64)>,
}

fn load(path: &std::path::Path, what: &str) -> Result<Report> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the {what} {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        anyhow!(
            "the {what} {} is not JSON ({e}): pass a report written by `profiler trace --json`, `bench --json` or `experiment --json`",
            path.display()
        )
    })?;
    metrics::extract(&v).map_err(|e| anyhow!("the {what} {}: {e}", path.display()))
}

/// Compares the files; `Ok(false)`: something regressed. Errors are bad input.
pub fn main(args: &CheckArgs) -> Result<bool> {
    let mut rules = parse_rules(DEFAULT_RULES).expect("the default rules parse");
    if let Some(r) = &args.max_regress {
        rules.extend(parse_rules(r)?);
    }
    let base = load(&args.baseline, "baseline")?;
    let cur = load(&args.current, "current report")?;
    if base.kind != cur.kind {
        bail!(
            "the baseline {} is a {} report and {} is a {} report: compare reports of the same kind",
            args.baseline.display(),
            base.kind,
            args.current.display(),
            cur.kind
        );
    }
    let check = compare(
        &base,
        &cur,
        &rules,
        &args.baseline.display().to_string(),
        &args.current.display().to_string(),
    );
    output::print(&check);
    if let Some(p) = &args.summary {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .with_context(|| format!("opening {}", p.display()))?;
        f.write_all(output::markdown(&check).as_bytes())
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &args.junit {
        std::fs::write(p, output::junit(&check))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(check.regressed.is_empty())
}

pub fn compare(base: &Report, cur: &Report, rules: &[Rule], bname: &str, cname: &str) -> Check {
    let mut outcomes = vec![];
    for b in &base.metrics {
        let bm = median(&b.values);
        let rule = rules.iter().rev().find(|r| r.matches(&b.name));
        let Some(c) = cur.metrics.iter().find(|m| m.name == b.name) else {
            outcomes.push(Outcome {
                metric: b.name.clone(),
                unit: b.unit.clone(),
                baseline: bm,
                current: None,
                change: None,
                rule: rule.map(|r| r.text.clone()),
                verdict: Verdict::Missing,
                reason: "not in the current report".into(),
            });
            continue;
        };
        let cm = median(&c.values);
        let change = (bm != 0.0).then(|| (cm - bm) / bm.abs());
        let (verdict, reason) = match rule {
            None => (Verdict::Ungated, "no rule".to_string()),
            Some(r) => judge(r, b, c, bm, cm),
        };
        outcomes.push(Outcome {
            metric: b.name.clone(),
            unit: b.unit.clone(),
            baseline: bm,
            current: Some(cm),
            change,
            rule: rule.map(|r| r.text.clone()),
            verdict,
            reason,
        });
    }
    let regressed = outcomes
        .iter()
        .filter(|o| o.verdict == Verdict::Regressed)
        .map(|o| o.metric.clone())
        .collect();
    let worst_layer = outcomes
        .iter()
        .filter(|o| o.verdict == Verdict::Regressed && o.metric.starts_with("layer:"))
        .filter_map(|o| o.current.map(|c| (o.metric.clone(), c - o.baseline)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    Check {
        kind: base.kind,
        baseline: bname.into(),
        current: cname.into(),
        baseline_runs: base.runs,
        current_runs: cur.runs,
        outcomes,
        regressed,
        worst_layer,
    }
}

/// Whether `cur` regressed from `base` under `rule`: beyond its percentage in the bad
/// direction, beyond the spread (no overlap of the runs' ranges when both have several), and
/// for layers beyond [`LAYER_FLOOR_NS`].
pub fn judge(rule: &Rule, base: &Metric, cur: &Metric, bm: f64, cm: f64) -> (Verdict, String) {
    let up_is_bad = match rule.sign {
        Some(s) => s > 0,
        None => base.better == Better::Lower,
    };
    let worse = if up_is_bad { cm - bm } else { bm - cm };
    let limit = rule.fraction * bm.abs();
    let pct = |x: f64| {
        if bm != 0.0 {
            format!("{:.1}%", x / bm.abs() * 100.0)
        } else {
            format!("{x:.3}")
        }
    };
    if worse <= limit {
        return (
            Verdict::Pass,
            format!("{} worse, within {}", pct(worse.max(0.0)), rule.text),
        );
    }
    if base.name.starts_with("layer:") && worse < LAYER_FLOOR_NS {
        return (
            Verdict::Pass,
            format!(
                "{} worse but under the {} ns floor for layers",
                pct(worse),
                LAYER_FLOOR_NS
            ),
        );
    }
    if base.values.len() > 1 && cur.values.len() > 1 {
        let (bmin, bmax) = range(&base.values);
        let (cmin, cmax) = range(&cur.values);
        let overlap = if up_is_bad {
            cmin <= bmax
        } else {
            cmax >= bmin
        };
        if overlap {
            return (
                Verdict::Pass,
                format!(
                    "{} worse, beyond {}, but within the run-to-run spread ({}-{} against {}-{})",
                    pct(worse),
                    rule.text,
                    num(bmin),
                    num(bmax),
                    num(cmin),
                    num(cmax)
                ),
            );
        }
    }
    (
        Verdict::Regressed,
        format!("{} worse, beyond {}", pct(worse), rule.text),
    )
}

fn range(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        })
}

pub fn num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

pub fn median(v: &[f64]) -> f64 {
    crate::experiment::run::median(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, better: Better, values: &[f64]) -> Metric {
        Metric {
            name: name.into(),
            unit: "µs".into(),
            better,
            values: values.to_vec(),
        }
    }

    fn report(ms: Vec<Metric>) -> Report {
        Report {
            kind: "trace",
            runs: ms.first().map_or(1, |m| m.values.len()),
            metrics: ms,
        }
    }

    #[test]
    fn a_regression_beyond_the_threshold_is_named() {
        let rules = parse_rules(DEFAULT_RULES).unwrap();
        let base = report(vec![
            m("p99", Better::Lower, &[100.0]),
            m("throughput", Better::Higher, &[1000.0]),
            m(
                "layer:veth (container to host)@responses",
                Better::Lower,
                &[800.0],
            ),
        ]);
        let same = compare(&base, &base, &rules, "b", "c");
        assert!(same.regressed.is_empty(), "{:?}", same.outcomes);
        let cur = report(vec![
            m("p99", Better::Lower, &[140.0]),
            m("throughput", Better::Higher, &[850.0]),
            m(
                "layer:veth (container to host)@responses",
                Better::Lower,
                &[1_000_800.0],
            ),
        ]);
        let c = compare(&base, &cur, &rules, "b", "c");
        assert_eq!(c.regressed, ["layer:veth (container to host)@responses"]);
        assert_eq!(
            c.worst_layer,
            Some((
                "layer:veth (container to host)@responses".into(),
                1_000_000.0
            ))
        );
        let strict = parse_rules(&format!("{DEFAULT_RULES},p99=+10%,throughput=-5%")).unwrap();
        let c = compare(&base, &cur, &strict, "b", "c");
        assert_eq!(
            c.regressed,
            [
                "p99",
                "throughput",
                "layer:veth (container to host)@responses"
            ]
        );
    }

    #[test]
    fn improvements_pass_and_a_signed_rule_picks_the_direction() {
        let r = &parse_rules("p99=-10%").unwrap()[0];
        let b = m("p99", Better::Lower, &[100.0]);
        // A rule with "-" gates decreases, even of a latency.
        assert_eq!(judge(r, &b, &b, 100.0, 80.0).0, Verdict::Regressed);
        assert_eq!(judge(r, &b, &b, 100.0, 200.0).0, Verdict::Pass);
        let r = &parse_rules("p99=10%").unwrap()[0];
        assert_eq!(judge(r, &b, &b, 100.0, 80.0).0, Verdict::Pass);
        assert_eq!(judge(r, &b, &b, 100.0, 111.0).0, Verdict::Regressed);
    }

    #[test]
    fn a_change_within_the_spread_of_repeated_runs_passes() {
        let r = &parse_rules("p99=+10%").unwrap()[0];
        let b = m("p99", Better::Lower, &[90.0, 100.0, 130.0]);
        let c = m("p99", Better::Lower, &[115.0, 120.0, 125.0]);
        let (v, why) = judge(r, &b, &c, 100.0, 120.0);
        assert_eq!(v, Verdict::Pass, "{why}");
        assert!(why.contains("spread"), "{why}");
        let c = m("p99", Better::Lower, &[131.0, 140.0, 150.0]);
        assert_eq!(judge(r, &b, &c, 100.0, 140.0).0, Verdict::Regressed);
    }

    #[test]
    fn small_layers_need_the_floor_too() {
        let r = &parse_rules("layer:*=+20%").unwrap()[0];
        let b = m("layer:bridge@requests", Better::Lower, &[100.0]);
        assert_eq!(judge(r, &b, &b, 100.0, 300.0).0, Verdict::Pass);
        assert_eq!(judge(r, &b, &b, 100.0, 700.0).0, Verdict::Regressed);
    }

    #[test]
    fn a_missing_metric_is_reported_not_failed() {
        let rules = parse_rules(DEFAULT_RULES).unwrap();
        let base = report(vec![m("layer:vxlan@requests", Better::Lower, &[900.0])]);
        let cur = report(vec![]);
        let c = compare(&base, &cur, &rules, "b", "c");
        assert!(c.regressed.is_empty());
        assert_eq!(c.outcomes[0].verdict, Verdict::Missing);
    }
}
