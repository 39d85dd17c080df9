//! The check's outcome for a terminal, a CI step summary (Markdown) and a test report (JUnit).

use super::{Check, Outcome, Verdict, num};

fn change(o: &Outcome) -> String {
    o.change
        .map_or("-".into(), |c| format!("{:+.1}%", c * 100.0))
}

fn verdict(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "ok",
        Verdict::Regressed => "REGRESSED",
        Verdict::Ungated => "not gated",
        Verdict::Missing => "missing",
    }
}

fn cur(o: &Outcome) -> String {
    o.current.map_or("-".into(), num)
}

pub fn print(c: &Check) {
    println!(
        "profiler check — {} report {} ({} run(s)) against the baseline {} ({} run(s))",
        c.kind, c.current, c.current_runs, c.baseline, c.baseline_runs
    );
    println!(
        "  {:<56} {:>12} {:>12} {:>9}  verdict",
        "metric", "baseline", "current", "change"
    );
    for o in &c.outcomes {
        println!(
            "  {:<56} {:>12} {:>12} {:>9}  {}: {}",
            format!("{} ({})", o.metric, o.unit),
            num(o.baseline),
            cur(o),
            change(o),
            verdict(o.verdict),
            o.reason
        );
    }
    if c.regressed.is_empty() {
        println!("no regression");
    } else {
        println!("regressed: {}", c.regressed.join("; "));
    }
    if let Some((l, d)) = &c.worst_layer {
        println!(
            "the layer that grew most: {} (+{})",
            l.trim_start_matches("layer:"),
            crate::hist::fmt_ns(*d)
        );
    }
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
}

pub fn markdown(c: &Check) -> String {
    let mut s = String::new();
    s += &format!(
        "### profiler check: {}\n\n",
        if c.regressed.is_empty() {
            "no regression".to_string()
        } else {
            format!("{} regressed", c.regressed.len())
        }
    );
    s += &format!(
        "{} report `{}` ({} run(s)) against `{}` ({} run(s)).\n\n",
        c.kind, c.current, c.current_runs, c.baseline, c.baseline_runs
    );
    if !c.regressed.is_empty() {
        s += &format!(
            "Regressed: {}\n\n",
            c.regressed
                .iter()
                .map(|m| format!("**{}**", md_escape(m)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some((l, d)) = &c.worst_layer {
        s += &format!(
            "The layer that grew most: **{}** (+{})\n\n",
            md_escape(l.trim_start_matches("layer:")),
            crate::hist::fmt_ns(*d)
        );
    }
    s += "| metric | baseline | current | change | verdict |\n|---|---:|---:|---:|---|\n";
    for o in &c.outcomes {
        s += &format!(
            "| {} ({}) | {} | {} | {} | {}: {} |\n",
            md_escape(&o.metric),
            o.unit,
            num(o.baseline),
            cur(o),
            change(o),
            verdict(o.verdict),
            md_escape(&o.reason)
        );
    }
    s += "\n";
    s
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One test case per gated metric; a regression is a failure with its reason.
pub fn junit(c: &Check) -> String {
    let gated: Vec<&Outcome> = c
        .outcomes
        .iter()
        .filter(|o| matches!(o.verdict, Verdict::Pass | Verdict::Regressed))
        .collect();
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    s += &format!(
        "<testsuites><testsuite name=\"profiler check {}\" tests=\"{}\" failures=\"{}\">\n",
        xml(c.kind),
        gated.len(),
        c.regressed.len()
    );
    for o in gated {
        s += &format!(
            "  <testcase classname=\"profiler.check.{}\" name=\"{}\">",
            xml(c.kind),
            xml(&o.metric)
        );
        if o.verdict == Verdict::Regressed {
            s += &format!(
                "<failure message=\"{} regressed: {} -&gt; {} {} ({})\">{}</failure>",
                xml(&o.metric),
                num(o.baseline),
                cur(o),
                xml(&o.unit),
                change(o),
                xml(&o.reason)
            );
        }
        s += "</testcase>\n";
    }
    s += "</testsuite></testsuites>\n";
    s
}
