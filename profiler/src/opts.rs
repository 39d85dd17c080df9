//! Value parsers for counts and durations, so a zero, negative or garbled value is refused by
//! the parser in one line naming the option (clap adds the option's name) and what to pass.

/// A whole number of at least `MIN` (negative numbers reach here: the commands that take
/// these allow them, so `--count -1` is this error, not "unexpected argument").
pub fn at_least<T: TryFrom<u64>, const MIN: u64>(s: &str) -> Result<T, String> {
    let bad = || {
        format!(
            "expected a whole number of at least {MIN}, e.g. {}",
            MIN.max(4)
        )
    };
    let n: i128 = s.trim().parse().map_err(|_| bad())?;
    if n < i128::from(MIN) {
        return Err(bad());
    }
    u64::try_from(n)
        .ok()
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| format!("{s} is too large"))
}

/// Seconds: a finite number greater than 0 and at most a day.
pub fn seconds(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err("expected seconds greater than 0 (at most 86400), e.g. 10 or 0.5".into()),
    }
}

/// [`seconds`], kept as the text given (it is handed on to a workload's own parser).
pub fn seconds_text(s: &str) -> Result<String, String> {
    seconds(s).map(|_| s.trim().to_string())
}

/// A clap error as one line: the message and its hints (e.g. the possible values), without
/// the usage and "--help" lines.
pub fn one_line(rendered: &str) -> String {
    let parts: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
        })
        .collect();
    let line = parts.join(" ");
    line.strip_prefix("error: ").unwrap_or(&line).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        assert_eq!(at_least::<u32, 1>("4"), Ok(4));
        assert_eq!(at_least::<u32, 0>("0"), Ok(0));
        for bad in ["0", "-1", "x", "1.5", ""] {
            let e = at_least::<u32, 1>(bad).unwrap_err();
            assert_eq!(e, "expected a whole number of at least 1, e.g. 4", "{bad}");
        }
        assert_eq!(
            at_least::<u32, 1>("99999999999").unwrap_err(),
            "99999999999 is too large"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(seconds("0.5"), Ok(0.5));
        assert_eq!(seconds_text(" 3 "), Ok("3".into()));
        for bad in ["0", "-1", "nan", "inf", "1e9", "x"] {
            assert!(seconds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn clap_errors_fold_into_one_line() {
        let e = "error: invalid value '-1' for '--count <N>': expected a whole number\n\n\
                 For more information, try '--help'.\n";
        assert_eq!(
            one_line(e),
            "invalid value '-1' for '--count <N>': expected a whole number"
        );
        let v = "error: invalid value 'bogus' for '--mode <MODE>'\n  [possible values: host, bridge]\n\n\
                 Usage: profiler lab up --mode <MODE>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            one_line(v),
            "invalid value 'bogus' for '--mode <MODE>' [possible values: host, bridge]"
        );
    }
}
