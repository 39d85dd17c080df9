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
td{{white-space:nowrap}} td:last-child{{white-space:normal}}
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

/// A timeline per instance: one row each, its phases stacked left to right on one time axis,
/// coloured by phase name (the legend above). `rows`: (label, [(phase, ns)]).
pub fn timeline(id: &str, rows: &[(String, Vec<(String, u64)>)]) -> String {
    let mut names: Vec<&str> = vec![];
    for (_, phases) in rows {
        for (p, _) in phases {
            if !names.contains(&p.as_str()) {
                names.push(p);
            }
        }
    }
    let longest = rows
        .iter()
        .map(|(_, p)| p.iter().map(|(_, ns)| ns).sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let (left, width, row, legend) = (120.0, 760.0, 24.0, 22.0 * names.len().div_ceil(4) as f64);
    let h = legend + row * rows.len() as f64 + 40.0;
    let scale = width / longest;
    let mut s = format!(
        r#"<svg id="{id}" class="timeline" width="{0}" height="{h}" viewBox="0 0 {0} {h}" role="img">"#,
        left + width + 90.0
    );
    for (i, n) in names.iter().enumerate() {
        let (x, y) = (left + (i % 4) as f64 * 190.0, 4.0 + (i / 4) as f64 * 22.0);
        let _ = write!(
            s,
            r#"<rect x="{x}" y="{y}" width="14" height="14" fill="{}"/><text x="{}" y="{}" class="phase">{}</text>"#,
            colour(i),
            x + 18.0,
            y + 12.0,
            esc(n)
        );
    }
    for (r, (label, phases)) in rows.iter().enumerate() {
        let y = legend + 10.0 + r as f64 * row;
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end" class="instance">{}</text>"#,
            left - 8.0,
            y + 14.0,
            esc(label)
        );
        let mut at = 0.0;
        for (p, ns) in phases {
            let c = names.iter().position(|n| n == p).unwrap_or(0);
            let _ = write!(
                s,
                r#"<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{} {}</title></rect>"#,
                left + at * scale,
                y + 2.0,
                (*ns as f64 * scale).max(0.5),
                row - 6.0,
                colour(c),
                esc(p),
                fmt_ns(*ns as f64)
            );
            at += *ns as f64;
        }
        let _ = write!(
            s,
            r#"<text x="{}" y="{}">{}</text>"#,
            left + at * scale + 4.0,
            y + 14.0,
            fmt_ns(at)
        );
    }
    let y = h - 12.0;
    let _ = write!(
        s,
        r##"<line x1="{left}" y1="{0}" x2="{1}" y2="{0}" stroke="#999"/><text x="{left}" y="{y}">0</text><text x="{1}" y="{y}" text-anchor="end">{2}</text></svg>"##,
        y - 14.0,
        left + width,
        fmt_ns(longest)
    );
    s
}

/// A curve through `points` (x, y) on linear axes from 0, with a dashed line at `reference`
/// (e.g. 1.0 = no slowdown) and each point labelled with its y.
pub fn curve(
    id: &str,
    points: &[(f64, f64)],
    x_label: &str,
    y_label: &str,
    reference: Option<f64>,
) -> String {
    let (w, h, pad) = (640.0, 360.0, 50.0);
    let max_x = points.iter().map(|p| p.0).fold(1.0, f64::max);
    let max_y = points
        .iter()
        .map(|p| p.1)
        .chain(reference)
        .fold(1.0, f64::max)
        * 1.15;
    let x = |v: f64| pad + v / max_x * (w - 2.0 * pad);
    let y = |v: f64| h - pad - v / max_y * (h - 2.0 * pad);
    let mut s = format!(r#"<svg id="{id}" class="curve" width="{w}" height="{h}" role="img">"#);
    let _ = write!(
        s,
        r##"<line x1="{pad}" y1="{0}" x2="{1}" y2="{0}" stroke="#999"/><line x1="{pad}" y1="{0}" x2="{pad}" y2="{pad}" stroke="#999"/><text x="{2}" y="{3}" text-anchor="middle">{4}</text><text x="14" y="{5}" transform="rotate(-90 14 {5})" text-anchor="middle">{6}</text>"##,
        y(0.0),
        w - pad,
        w / 2.0,
        h - 8.0,
        esc(x_label),
        h / 2.0,
        esc(y_label)
    );
    if let Some(r) = reference {
        let _ = write!(
            s,
            r##"<line x1="{pad}" y1="{0}" x2="{1}" y2="{0}" stroke="#999" stroke-dasharray="4 4"/><text x="{2}" y="{3}" text-anchor="end" class="note">{r}</text>"##,
            y(r),
            w - pad,
            pad - 6.0,
            y(r) + 4.0
        );
    }
    for &(px, _) in points {
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{px}</text>"#,
            x(px),
            y(0.0) + 16.0
        );
    }
    let pts: Vec<String> = points
        .iter()
        .map(|&(px, py)| format!("{:.1},{:.1}", x(px), y(py)))
        .collect();
    let _ = write!(
        s,
        r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
        colour(0),
        pts.join(" ")
    );
    for &(px, py) in points {
        let _ = write!(
            s,
            r#"<circle cx="{0}" cy="{1}" r="4" fill="{2}"/><text x="{0}" y="{3}" text-anchor="middle" class="point">{py:.2}</text>"#,
            x(px),
            y(py),
            colour(0),
            y(py) - 9.0
        );
    }
    s.push_str("</svg>");
    s
}
