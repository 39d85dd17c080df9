//! One self-contained HTML page: inline styles and inline SVG, no scripts, no fetches. The
//! pictures are drawn here from the report's numbers, so the page is the report.

use std::fmt::Write as _;

pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A page around `body` (already HTML).
pub fn page(title: &str, body: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{t}</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}}
h1{{font-size:20px}} h2{{font-size:16px;margin-top:28px}}
table{{border-collapse:collapse;margin:8px 0}} td,th{{padding:3px 10px;border-bottom:1px solid #ddd;text-align:right}}
td:first-child,th:first-child{{text-align:left}} .note{{color:#666}}
svg text{{font:12px system-ui,sans-serif}}
</style></head><body><h1>{t}</h1>
{body}</body></html>
"#,
        t = esc(title)
    )
}

/// Colours for series, cycled.
pub fn colour(i: usize) -> &'static str {
    const C: [&str; 10] = [
        "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
        "#9c755f", "#bab0ac",
    ];
    C[i % C.len()]
}

pub fn fmt_ns(ns: f64) -> String {
    crate::hist::fmt_ns(ns)
}

/// A waterfall: one bar per segment, each starting where the previous ended, widths in ns.
/// `segments`: (label, start ns, width ns, note).
pub fn waterfall(id: &str, segments: &[(String, f64, f64, String)], total: f64) -> String {
    let (left, width, row) = (330.0, 700.0, 22.0);
    let h = row * segments.len() as f64 + 40.0;
    let scale = if total > 0.0 { width / total } else { 0.0 };
    let mut s = format!(
        r#"<svg id="{id}" class="waterfall" width="{}" height="{h}" viewBox="0 0 {} {h}" role="img">"#,
        left + width + 140.0,
        left + width + 140.0
    );
    for (i, (label, start, w, note)) in segments.iter().enumerate() {
        let y = 10.0 + i as f64 * row;
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end" class="layer">{}</text><rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{} {}</title></rect><text x="{}" y="{}">{}</text>"#,
            left - 8.0,
            y + 14.0,
            esc(label),
            left + start * scale,
            y + 2.0,
            (w * scale).max(1.0),
            row - 6.0,
            colour(i),
            esc(label),
            esc(note),
            left + (start + w) * scale + 4.0,
            y + 14.0,
            esc(note)
        );
    }
    let y = h - 12.0;
    let _ = write!(
        s,
        r##"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="#999"/><text x="{left}" y="{y}">0</text><text x="{}" y="{y}" text-anchor="end">{}</text></svg>"##,
        y - 14.0,
        left + width,
        y - 14.0,
        left + width,
        fmt_ns(total)
    );
    s
}

/// Latency CDFs on a log axis: (label, [(value ns, count)]).
pub fn cdfs(id: &str, series: &[(String, Vec<(u64, u64)>)]) -> String {
    let (w, h, pad) = (760.0, 320.0, 40.0);
    let lo = series
        .iter()
        .flat_map(|s| s.1.first().map(|v| v.0))
        .min()
        .unwrap_or(1)
        .max(1) as f64;
    let hi = series
        .iter()
        .flat_map(|s| s.1.last().map(|v| v.0))
        .max()
        .unwrap_or(2)
        .max(2) as f64;
    let (llo, lhi) = (
        lo.log10().floor(),
        hi.log10().ceil().max(lo.log10().floor() + 1.0),
    );
    let x = |v: f64| pad + (v.max(1.0).log10() - llo) / (lhi - llo) * (w - 2.0 * pad);
    let y = |f: f64| h - pad - f * (h - 2.0 * pad);
    let mut s = format!(
        r#"<svg id="{id}" class="cdf" width="{}" height="{h}" role="img">"#,
        w + 260.0
    );
    for d in (llo as i32)..=(lhi as i32) {
        let v = 10f64.powi(d);
        let _ = write!(
            s,
            r##"<line x1="{0}" y1="{1}" x2="{0}" y2="{2}" stroke="#eee"/><text x="{0}" y="{3}" text-anchor="middle">{4}</text>"##,
            x(v),
            y(0.0),
            y(1.0),
            h - pad + 16.0,
            fmt_ns(v)
        );
    }
    for f in [0.0, 0.5, 0.9, 1.0] {
        let _ = write!(
            s,
            r##"<line x1="{pad}" y1="{0}" x2="{1}" y2="{0}" stroke="#eee"/><text x="{2}" y="{0}" text-anchor="end">{f}</text>"##,
            y(f),
            w - pad,
            pad - 4.0
        );
    }
    for (i, (label, values)) in series.iter().enumerate() {
        let total: u64 = values.iter().map(|v| v.1).sum();
        if total == 0 {
            continue;
        }
        let mut cum = 0u64;
        let pts: Vec<String> = values
            .iter()
            .map(|&(v, n)| {
                cum += n;
                format!("{:.1},{:.1}", x(v as f64), y(cum as f64 / total as f64))
            })
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"><title>{}</title></polyline><text x="{}" y="{}" fill="{}">{}</text>"#,
            colour(i),
            pts.join(" "),
            esc(label),
            w - pad + 10.0,
            pad + 14.0 * i as f64,
            colour(i),
            esc(label)
        );
    }
    s.push_str("</svg>");
    s
}
