//! `--max-regress 'p99=+10%,throughput=-5%,layer:vxlan*=+20%'`: metric patterns (`*` matches
//! any run of characters) with the change that counts as a regression.

use anyhow::{Result, anyhow, bail};

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub pattern: String,
    /// Some(+1): an increase beyond `fraction` regresses; Some(-1): a decrease; None: a change
    /// in the metric's worse direction.
    pub sign: Option<i8>,
    pub fraction: f64,
    /// As written, for the report.
    pub text: String,
}

impl Rule {
    pub fn matches(&self, metric: &str) -> bool {
        glob(&self.pattern, metric)
    }
}

/// `*` matches any (possibly empty) run of characters; everything else itself.
pub fn glob(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) || s.len() < first.len() + last.len() || !s.ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

pub fn parse_rules(s: &str) -> Result<Vec<Rule>> {
    let bad = |part: &str, why: &str| {
        anyhow!(
            "bad --max-regress rule '{part}': {why}; expected METRIC=[+|-]PCT% separated by commas, e.g. 'p99=+10%,throughput=-5%,layer:vxlan*=+20%'"
        )
    };
    let mut rules = vec![];
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (pat, val) = part.split_once('=').ok_or_else(|| bad(part, "no '='"))?;
        let pat = pat.trim();
        if pat.is_empty() {
            return Err(bad(part, "no metric before '='"));
        }
        let val = val.trim();
        let (sign, num) = match val.as_bytes().first() {
            Some(b'+') => (Some(1), &val[1..]),
            Some(b'-') => (Some(-1), &val[1..]),
            _ => (None, val),
        };
        let num = num
            .strip_suffix('%')
            .ok_or_else(|| bad(part, "the threshold is a percentage and ends in '%'"))?;
        let pct: f64 = num
            .trim()
            .parse()
            .map_err(|_| bad(part, "the threshold is not a number"))?;
        if !(pct.is_finite() && pct >= 0.0) {
            return Err(bad(part, "the threshold must be 0% or more"));
        }
        rules.push(Rule {
            pattern: pat.to_string(),
            sign,
            fraction: pct / 100.0,
            text: part.to_string(),
        });
    }
    if rules.is_empty() && !s.trim().is_empty() {
        bail!("bad --max-regress '{s}': no rule in it");
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issues_example_parses() {
        let r = parse_rules("p99=+10%,throughput=-5%,layer:vxlan*=+20%").unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(
            (r[0].pattern.as_str(), r[0].sign, r[0].fraction),
            ("p99", Some(1), 0.10)
        );
        assert_eq!(
            (r[1].pattern.as_str(), r[1].sign, r[1].fraction),
            ("throughput", Some(-1), 0.05)
        );
        assert_eq!(r[2].pattern, "layer:vxlan*");
        assert!(r[2].matches("layer:vxlan encap + route + netfilter out@requests"));
        assert!(!r[2].matches("layer:bridge@requests"));
        assert_eq!(parse_rules("p50=15%").unwrap()[0].sign, None);
    }

    #[test]
    fn bad_rules_are_one_line_naming_the_rule() {
        for (s, why) in [
            ("p99", "no '='"),
            ("p99=10", "ends in '%'"),
            ("p99=+ten%", "not a number"),
            ("=10%", "no metric"),
            ("p99=+inf%", "0% or more"),
        ] {
            let e = parse_rules(s).unwrap_err().to_string();
            assert!(
                e.contains(why) && e.contains(s) && !e.contains('\n'),
                "{s}: {e}"
            );
        }
    }

    #[test]
    fn globs() {
        assert!(glob("*", ""));
        assert!(glob("layer:*", "layer:x@requests"));
        assert!(glob("*/*", "table2-rr/C-H bridge"));
        assert!(!glob("*/*", "p99"));
        assert!(glob("a*b*c", "aXbYc"));
        assert!(!glob("a*b*c", "aXcYb"));
        assert!(!glob("ab*ba", "aba"));
        assert!(glob("p99", "p99") && !glob("p99", "p99.9"));
    }
}
