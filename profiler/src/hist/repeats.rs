//! Figures from a few repeated runs: the median, the range, and a distribution-free confidence
//! interval for the median from order statistics (no assumption about the drift's shape).

use serde::Serialize;

/// The repeats of one figure: median and range, with every value (the spread).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub values: Vec<f64>,
}

impl Spread {
    /// None without values.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut s: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if s.is_empty() {
            return None;
        }
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: s[0],
            max: s[n - 1],
            values: values.to_vec(),
        })
    }
}

/// A confidence interval for the median of repeated paired differences.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MedianInterval {
    pub median: f64,
    pub lo: f64,
    pub hi: f64,
    /// The interval's exact coverage (binomial), at least the confidence asked for.
    pub coverage: f64,
    /// The order statistics it spans (1-based): [k, n + 1 - k].
    pub ranks: (usize, usize),
}

/// P(X <= k) for X ~ Binomial(n, 1/2).
fn binomial_half_cdf(n: usize, k: usize) -> f64 {
    let mut c = 1.0f64; // C(n, 0)
    let mut sum = 0.0;
    for i in 0..=k.min(n) {
        if i > 0 {
            c = c * (n + 1 - i) as f64 / i as f64;
        }
        sum += c;
    }
    sum / 2f64.powi(n as i32)
}

/// The narrowest order-statistics interval [x(k), x(n+1-k)] whose coverage of the true median
/// is at least `confidence` (1 - 2 P(Bin(n, 1/2) <= k-1)); None when n is too small for it
/// (95% needs n >= 6).
pub fn median_interval(values: &[f64], confidence: f64) -> Option<MedianInterval> {
    let spread = Spread::of(values)?;
    let mut s = spread.values.clone();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let coverage = |k: usize| 1.0 - 2.0 * binomial_half_cdf(n, k - 1);
    // k = 1 is the whole range; widen inward while the coverage holds.
    if coverage(1) < confidence {
        return None;
    }
    let mut k = 1;
    while k < n.div_ceil(2) && coverage(k + 1) >= confidence {
        k += 1;
    }
    Some(MedianInterval {
        median: spread.median,
        lo: s[k - 1],
        hi: s[n - k],
        coverage: coverage(k),
        ranks: (k, n + 1 - k),
    })
}

/// The fewest repeats that give a `confidence` interval for the median.
pub fn repeats_for(confidence: f64) -> usize {
    (1..64)
        .find(|&n| 1.0 - 2.0 * binomial_half_cdf(n, 0) >= confidence)
        .unwrap_or(64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_even_and_odd() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert!(Spread::of(&[]).is_none());
    }

    #[test]
    fn order_statistics_interval_has_its_binomial_coverage() {
        // n = 5: the range covers 1 - 2/32 = 93.75% < 95%: no interval.
        assert!(median_interval(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.95).is_none());
        assert_eq!(repeats_for(0.95), 6);
        // n = 6: the range, 1 - 2/64 = 96.9%.
        let i = median_interval(&[6.0, 1.0, 5.0, 2.0, 4.0, 3.0], 0.95).unwrap();
        assert_eq!((i.lo, i.hi, i.ranks), (1.0, 6.0, (1, 6)));
        assert!((i.coverage - 0.96875).abs() < 1e-12);
        // n = 9: [x(2), x(8)], 1 - 2 * 10/512 = 96.1%.
        let v: Vec<f64> = (1..=9).map(f64::from).collect();
        let i = median_interval(&v, 0.95).unwrap();
        assert_eq!((i.lo, i.hi, i.median), (2.0, 8.0, 5.0));
        assert!((i.coverage - (1.0 - 20.0 / 512.0)).abs() < 1e-12);
    }
}
