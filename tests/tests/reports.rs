//! `boot --hdr-log` and `--html`, `kvm --hdr-log`, `density --html`: decoded by HdrHistogram's own decoder (the
//! Python `hdrhistogram` package) and rendered by headless Chromium (both installed by setup),
//! each checked against the run's JSON report.

use std::path::{Path, PathBuf};
use std::process::Command;

use profiler_tests::{profiler, require_root, run_ok};
use serde_json::Value;

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("profiler-test-{}-{name}", std::process::id()))
}

/// The page as Chromium renders it (its DOM after layout); a screenshot is taken too (and
/// removed), so a page Chromium cannot lay out fails here.
fn rendered(html: &Path) -> String {
    let page = std::fs::read_to_string(html).unwrap();
    assert!(
        !page.contains("<script") && !page.contains("http://") && !page.contains("https://"),
        "not self-contained"
    );
    let chromium = |extra: &[&str]| {
        run_ok(
            Command::new("chromium")
                .args(["--headless", "--no-sandbox", "--disable-gpu"])
                .args(extra)
                .arg(format!("file://{}", html.display())),
        )
    };
    let shot = html.with_extension("png");
    chromium(&[
        "--window-size=1200,900",
        &format!("--screenshot={}", shot.display()),
    ]);
    let taken = std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000);
    let _ = std::fs::remove_file(&shot);
    assert!(taken, "no screenshot");
    String::from_utf8_lossy(&chromium(&["--dump-dom"]).stdout).into_owned()
}

/// The `<svg id=ID>` element of a DOM.
fn svg<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no svg {id} in the page"));
    &dom[start..start + dom[start..].find("</svg>").unwrap()]
}

#[test]
fn boot_hdr_log_decodes_with_hdrhistogram_and_matches_the_report() {
    require_root();
    let (log, json) = (temp("boot.hlog"), temp("boot-hlog.json"));
    run_ok(
        profiler()
            .args(["boot", "--vm", "micro", "--count", "4"])
            .args([
                "--hdr-log".as_ref(),
                log.as_os_str(),
                "--json".as_ref(),
                json.as_os_str(),
            ]),
    );
    let script = r#"
import json, sys
from hdrh.log import HistogramLogReader
from hdrh.histogram import HdrHistogram
new = lambda: HdrHistogram(1, 3600 * 10**9, 3)
reader = HistogramLogReader(sys.argv[1], new())
total = {}
while True:
    h = reader.get_next_interval_histogram()
    if h is None:
        break
    total.setdefault(h.get_tag(), new()).add(h)
print(json.dumps({t: [h.get_total_count(), h.get_min_value(), h.get_max_value()]
                  for t, h in total.items()}))
"#;
    let out = run_ok(Command::new("python3").args(["-c", script]).arg(&log));
    let decoded: Value = serde_json::from_slice(&out.stdout).unwrap();
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = (std::fs::remove_file(&log), std::fs::remove_file(&json));
    let summary = report["summary"].as_array().expect("summary");
    assert!(summary.len() >= 3, "{report}");
    for s in summary {
        let name = s["name"].as_str().unwrap();
        let tag = format!("phase/{name}").replace([' ', ','], "_");
        let t = &decoded[&tag];
        assert_eq!(t[0], s["count"], "{tag}: count ({decoded})");
        // Three significant figures: min and max within 0.1% of the report's exact ones.
        for (i, k) in [(1, "min_ns"), (2, "max_ns")] {
            let (ours, theirs) = (s[k].as_f64().unwrap(), t[i].as_f64().unwrap());
            assert!(
                (ours - theirs).abs() <= 0.001 * ours + 1.0,
                "{tag} {k}: report {ours}, hdrhistogram {theirs}"
            );
        }
    }
}

/// Each tag's count, min and max as HdrHistogram's Python decoder reads the log.
fn decode(log: &Path, lowest: u64, highest: u64, digits: u32) -> Value {
    let script = format!(
        r#"
import json, sys
from hdrh.log import HistogramLogReader
from hdrh.histogram import HdrHistogram
new = lambda: HdrHistogram({lowest}, {highest}, {digits})
reader = HistogramLogReader(sys.argv[1], new())
total = {{}}
while True:
    h = reader.get_next_interval_histogram()
    if h is None:
        break
    total.setdefault(h.get_tag(), new()).add(h)
print(json.dumps({{t: [h.get_total_count(), h.get_min_value(), h.get_max_value(),
                      h.get_value_at_percentile(50)] for t, h in total.items()}}))
"#
    );
    let out = run_ok(Command::new("python3").args(["-c", &script]).arg(log));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `kvm --hdr-log`: per KVM_RUN side and reason, the decoded counts equal the report's and
/// the p50s agree within the histogram's two significant figures.
#[test]
fn kvm_hdr_log_decodes_with_hdrhistogram_and_matches_the_report() {
    require_root();
    let (log, json) = (temp("kvm.hlog"), temp("kvm-hlog.json"));
    run_ok(
        profiler()
            .args(["kvm", "--micro-vm", "pio", "--count", "20000"])
            .args([
                "--hdr-log".as_ref(),
                log.as_os_str(),
                "--json".as_ref(),
                json.as_os_str(),
            ]),
    );
    let decoded = decode(&log, 1, 1 << 35, 2);
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = (std::fs::remove_file(&log), std::fs::remove_file(&json));
    let mut checked = 0;
    let mut check = |tag: String, s: &Value| {
        if s["count"].as_u64().unwrap_or(0) == 0 {
            return;
        }
        let t = &decoded[&tag.replace([' ', ','], "_")];
        assert_eq!(t[0], s["count"], "{tag}: count ({decoded})");
        let (ours, theirs) = (s["p50"].as_f64().unwrap(), t[3].as_f64().unwrap());
        assert!(
            (ours - theirs).abs() <= 0.02 * ours + 1.0,
            "{tag} p50: report {ours}, hdrhistogram {theirs}"
        );
        checked += 1;
    };
    let run = &report["run"];
    check("run_in_kvm/all".into(), &run["in_kvm"]);
    check("run_in_vmm/all".into(), &run["in_vmm"]);
    for r in run["by_reason"].as_array().unwrap() {
        let name = r["name"].as_str().unwrap();
        check(format!("run_in_kvm/{name}"), &r["in_kvm"]);
        check(format!("run_in_vmm/{name}"), &r["in_vmm"]);
    }
    for e in report["exits"].as_array().unwrap() {
        check(
            format!("exit/{}", e["name"].as_str().unwrap()),
            &e["handling"],
        );
    }
    // At least both sides' totals and the port I/O reason's.
    assert!(checked >= 4, "{checked} tags checked: {decoded}");
}

#[test]
fn boot_html_has_a_timeline_row_per_instance_with_every_phase() {
    require_root();
    let (html, json) = (temp("boot.html"), temp("boot-html.json"));
    run_ok(
        profiler()
            .args(["boot", "--vm", "micro", "--count", "3"])
            .args([
                "--html".as_ref(),
                html.as_os_str(),
                "--json".as_ref(),
                json.as_os_str(),
            ]),
    );
    let dom = rendered(&html);
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = (std::fs::remove_file(&html), std::fs::remove_file(&json));
    let timeline = svg(&dom, "timeline");
    let boots = report["boots"].as_array().unwrap();
    assert_eq!(boots.len(), 3);
    for b in boots {
        let label = format!(">instance {}<", b["index"]);
        assert!(
            timeline.contains(&label),
            "{label} missing from the timeline"
        );
        for p in b["phases"].as_array().unwrap() {
            let name = p["name"].as_str().unwrap();
            assert!(
                timeline.contains(&format!("class=\"phase\">{name}<")),
                "phase {name} missing from the legend"
            );
        }
        // One bar per phase: the instance's bars carry each phase's name in their title.
        let bars = timeline.matches("<rect").count();
        assert!(
            bars >= boots.len() * b["phases"].as_array().unwrap().len(),
            "{bars} bars"
        );
    }
    let table = &dom[dom.find("id=\"phases\"").expect("the phase table")..];
    assert!(table.contains(">total<"));
}

#[test]
fn density_html_draws_the_slowdown_curve_of_the_report() {
    require_root();
    let (html, json) = (temp("density.html"), temp("density-html.json"));
    run_ok(
        profiler()
            .args([
                "density",
                "--env",
                "native",
                "--instances",
                "1,2,4",
                "--time",
                "1",
            ])
            .args([
                "--html".as_ref(),
                html.as_os_str(),
                "--json".as_ref(),
                json.as_os_str(),
            ]),
    );
    let dom = rendered(&html);
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = (std::fs::remove_file(&html), std::fs::remove_file(&json));
    let curve = svg(&dom, "slowdown");
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(curve.matches("<circle").count(), rows.len());
    for r in rows {
        let label = format!("class=\"point\">{:.2}<", r["slowdown"].as_f64().unwrap());
        assert!(curve.contains(&label), "no point labelled {label}");
    }
}
