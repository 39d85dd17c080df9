//! Kernel-side latency histograms (`profiler_common::hist::Hist`: shared arrays with atomic
//! adds, or per-CPU where a report is per CPU) turned into `hdrhistogram` in user space, with
//! interval deltas and a percentile summary.
//!
//! The kernel's bucket layout equals HDR's with 2 significant figures, so each bucket's
//! representative lands in the HDR bucket of the same range: no second rounding.

pub mod repeats;

use anyhow::{Context as _, Result};
use aya::maps::{Array, MapData, PerCpuArray};
use hdrhistogram::Histogram;
use profiler_common::hist::{HIST_BUCKETS, HIST_OVERFLOW, HIST_OVERFLOW_NS, Hist, bucket_value};

/// Significant figures of the merged histogram; matches the kernel's 7 sub-bucket bits.
pub const SIGFIG: u8 = 2;
/// Highest trackable value: room for the overflow bucket's value (≈ 17.2 s).
pub const MAX_NS: u64 = HIST_OVERFLOW_NS * 2;

/// An empty histogram with the layout the kernel buckets map onto.
pub fn empty() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, SIGFIG).expect("constant bounds are valid")
}

/// Bucket-wise sum over CPUs (saturating).
pub fn sum(per_cpu: &[Hist]) -> Box<Hist> {
    let mut total = Box::new(Hist::ZERO);
    for h in per_cpu {
        for (t, c) in total.buckets.iter_mut().zip(h.buckets.iter()) {
            *t = t.saturating_add(*c);
        }
    }
    total
}

/// Records every non-zero bucket at its representative value.
pub fn to_histogram(h: &Hist) -> Histogram<u64> {
    let mut out = empty();
    for (i, &n) in h.buckets.iter().enumerate() {
        if n != 0 {
            // Clamps instead of failing; all representatives are within MAX_NS anyway.
            out.saturating_record_n(bucket_value(i as u32), n);
        }
    }
    out
}

/// Merges the per-CPU copies of one histogram.
pub fn merge(per_cpu: &[Hist]) -> Histogram<u64> {
    to_histogram(&sum(per_cpu))
}

/// Samples that fell beyond the top bucket (≥ `HIST_OVERFLOW_NS`), summed over CPUs.
pub fn overflow(per_cpu: &[Hist]) -> u64 {
    per_cpu.iter().fold(0, |t, h| {
        t.saturating_add(h.buckets[HIST_OVERFLOW as usize])
    })
}

fn read_per_cpu(map: &PerCpuArray<MapData, Hist>, index: u32) -> Result<Box<[Hist]>> {
    let values = map
        .get(&index, 0)
        .with_context(|| format!("reading histogram {index} from its per-CPU map"))?;
    Ok(values.iter().copied().collect())
}

/// The histogram at `index`, all CPUs merged, since the map was created.
pub fn read(map: &PerCpuArray<MapData, Hist>, index: u32) -> Result<Histogram<u64>> {
    Ok(merge(&read_per_cpu(map, index)?))
}

/// Interval reports: each call returns what was recorded since the previous call.
/// Keeps the previous CPU-summed buckets, so the difference is exact per bucket.
pub struct Delta {
    prev: Box<Hist>,
}

impl Default for Delta {
    fn default() -> Self {
        Self::new()
    }
}

impl Delta {
    pub fn new() -> Self {
        Delta {
            prev: Box::new(Hist::ZERO),
        }
    }

    /// The difference to the previous snapshot. A bucket that went down (the map was
    /// reset or recreated) counts from zero.
    pub fn next(&mut self, per_cpu: &[Hist]) -> Histogram<u64> {
        let now = sum(per_cpu);
        let mut diff = Box::new(Hist::ZERO);
        for i in 0..HIST_BUCKETS as usize {
            let (n, p) = (now.buckets[i], self.prev.buckets[i]);
            diff.buckets[i] = if n >= p { n - p } else { n };
        }
        self.prev = now;
        to_histogram(&diff)
    }

    /// Reads `index` from the map and returns the delta to the previous read.
    pub fn read(&mut self, map: &PerCpuArray<MapData, Hist>, index: u32) -> Result<Histogram<u64>> {
        Ok(self.next(&read_per_cpu(map, index)?))
    }
}

/// The histogram at `index` of a map shared by all CPUs (atomic adds), since its creation.
pub fn read_shared(map: &Array<MapData, Hist>, index: u32) -> Result<Histogram<u64>> {
    Ok(to_histogram(&map.get(&index, 0).with_context(|| {
        format!("reading histogram {index} from its map")
    })?))
}

/// Percentiles of one histogram, in ns. Each value is a bucket's representative,
/// within 1/256 of the true sample value for 100 ns .. 10 s.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Summary {
    pub count: u64,
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub max: u64,
    pub mean: f64,
    pub stddev: f64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        // HDR reports a bucket's top (quantiles, max) or bottom (min); its midpoint is what
        // was recorded and halves the worst error.
        let mid = |v: u64| h.median_equivalent(v.min(MAX_NS));
        let q = |q: f64| mid(h.value_at_quantile(q));
        Summary {
            count: h.len(),
            min: mid(h.min()),
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p99_9: q(0.999),
            max: mid(h.max()),
            mean: h.mean(),
            stddev: h.stdev(),
        }
    }
}

impl Summary {
    /// Of exact samples (start-up phases, up to an hour): min, max and mean exact, quantiles
    /// from a 3-digit HDR histogram, each a bucket's midpoint kept within the exact min and max.
    pub fn of_samples(values: &[u64]) -> Summary {
        let (Some(&min), Some(&max)) = (values.iter().min(), values.iter().max()) else {
            return Summary::default();
        };
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3)
            .expect("constant bounds are valid");
        for &v in values {
            h.saturating_record(v);
        }
        let q = |q: f64| h.median_equivalent(h.value_at_quantile(q)).clamp(min, max);
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = values
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        Summary {
            count: values.len() as u64,
            min,
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p99_9: q(0.999),
            max,
            mean,
            stddev: var.sqrt(),
        }
    }
}

/// A duration in ns as ns, µs, ms or s with 3 significant digits: `"999 ns"`, `"1.23 µs"`,
/// `"45.6 ms"`, `"2.00 s"`.
pub fn fmt_ns(ns: f64) -> String {
    if !ns.is_finite() {
        return format!("{ns} ns");
    }
    if ns == 0.0 {
        return "0 ns".to_string();
    }
    let sign = if ns < 0.0 { "-" } else { "" };
    let v = ns.abs();
    // Round to 3 significant digits first, so 999.7 ns becomes "1.00 µs", not "1000 ns".
    let exp = v.log10().floor() as i32;
    let scale = 10f64.powi(exp - 2);
    let v = (v / scale).round() * scale;
    let (div, unit) = match v {
        v if v < 1e3 => (1.0, "ns"),
        v if v < 1e6 => (1e3, "µs"),
        v if v < 1e9 => (1e6, "ms"),
        _ => (1e9, "s"),
    };
    let u = v / div;
    let decimals = (2 - u.log10().floor() as i32).max(0) as usize;
    format!("{sign}{u:.decimals$} {unit}")
}

/// Durations in ns as a table's columns: each [`fmt_ns`] right-aligned to 9, one space apart.
pub fn columns(ns: &[f64]) -> String {
    let cols: Vec<String> = ns.iter().map(|&v| format!("{:>9}", fmt_ns(v))).collect();
    cols.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use profiler_common::hist::bucket_range;

    fn hist_of(values: &[u64]) -> Hist {
        let mut h = Hist::ZERO;
        for &v in values {
            h.buckets[profiler_common::hist::bucket_index(v) as usize] += 1;
        }
        h
    }

    /// Deterministic log-uniform samples from 100 ns to 10 s (xorshift, no rand dependency).
    fn samples(n: usize, mut seed: u64) -> Vec<u64> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let f = (seed >> 11) as f64 / (1u64 << 53) as f64;
                (100.0 * 1e8f64.powf(f)) as u64
            })
            .collect()
    }

    #[test]
    fn kernel_buckets_align_with_hdr_buckets() {
        let h = empty();
        for i in 0..HIST_OVERFLOW {
            let (lo, hi) = bucket_range(i);
            let v = bucket_value(i);
            assert_eq!(h.lowest_equivalent(v), lo, "bucket {i}");
            assert_eq!(h.highest_equivalent(v), hi, "bucket {i}");
            assert_eq!(h.median_equivalent(v), v, "bucket {i}");
        }
    }

    #[test]
    fn merge_preserves_counts() {
        let cpus: Vec<Hist> = (0..4)
            .map(|c| hist_of(&samples(10_000, 0x9e37_79b9 + c)))
            .collect();
        let h = merge(&cpus);
        assert_eq!(h.len(), 40_000);
        let per_bucket = sum(&cpus);
        for (i, &n) in per_bucket.buckets.iter().enumerate() {
            assert_eq!(h.count_at(bucket_value(i as u32)), n, "bucket {i}");
        }
    }

    #[test]
    fn merge_saturates_and_keeps_overflow() {
        let mut a = Hist::ZERO;
        a.buckets[5] = u64::MAX;
        a.buckets[HIST_OVERFLOW as usize] = 3;
        let b = a;
        let h = merge(&[a, b]);
        assert_eq!(h.count_at(5), u64::MAX);
        assert_eq!(h.count_at(HIST_OVERFLOW_NS), 6);
        assert_eq!(overflow(&[a, b]), 6);
        assert!(merge(&[]).is_empty());
    }

    #[test]
    fn percentiles_within_one_percent() {
        let mut all = Vec::new();
        let mut cpus = Vec::new();
        for c in 0..8 {
            let s = samples(50_000, 0x1234_5678 ^ (c << 20) | 1);
            cpus.push(hist_of(&s));
            all.extend(s);
        }
        all.sort_unstable();
        let s = Summary::of(&merge(&cpus));
        let n = all.len();
        let truth = |q: f64| all[((q * n as f64).ceil() as usize).max(1) - 1];
        assert_eq!(s.count, n as u64);
        for (got, want, what) in [
            (s.min, all[0], "min"),
            (s.p50, truth(0.5), "p50"),
            (s.p90, truth(0.9), "p90"),
            (s.p99, truth(0.99), "p99"),
            (s.p99_9, truth(0.999), "p99.9"),
            (s.max, all[n - 1], "max"),
        ] {
            let err = (got as f64 - want as f64).abs() / want as f64;
            assert!(err <= 1.0 / 256.0 + 1e-9, "{what}: {got} vs {want} ({err})");
        }
        let mean = all.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        assert!((s.mean - mean).abs() / mean < 0.01, "{} vs {mean}", s.mean);
    }

    #[test]
    fn delta_subtracts_previous_snapshot() {
        let first = hist_of(&[100, 200, 1_000_000]);
        let mut d = Delta::new();
        assert_eq!(d.next(&[first]).len(), 3);
        let mut second = first;
        second.buckets[profiler_common::hist::bucket_index(5_000) as usize] += 2;
        let h = d.next(&[second]);
        assert_eq!(h.len(), 2);
        let rep = bucket_value(profiler_common::hist::bucket_index(5_000));
        assert_eq!(rep, 5_008, "bucket [4992, 5023]");
        assert_eq!(Summary::of(&h).p50, rep);
        assert!(d.next(&[second]).is_empty());
        // The map went away and came back: counts restart.
        let h = d.next(&[hist_of(&[300])]);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn empty_summary_is_zero() {
        assert_eq!(Summary::of(&empty()), Summary::default());
        assert_eq!(Summary::of_samples(&[]), Summary::default());
    }

    #[test]
    fn samples_keep_exact_extremes() {
        let s = Summary::of_samples(&[1_234_567, 2_000_000_001, 7]);
        assert_eq!((s.count, s.min, s.max), (3, 7, 2_000_000_001));
        assert!(s.p50.abs_diff(1_234_567) <= 1_234_567 / 1000, "{}", s.p50);
        assert_eq!(s.p99, 2_000_000_001);
        assert_eq!(s.mean, (1_234_567.0 + 2_000_000_001.0 + 7.0) / 3.0);
    }

    #[test]
    fn columns_are_nine_wide() {
        assert_eq!(columns(&[1_234.0, 2e9]), "  1.23 µs    2.00 s");
        assert_eq!(columns(&[]), "");
    }

    #[test]
    fn formatter() {
        for (ns, want) in [
            (0.0, "0 ns"),
            (0.5, "0.500 ns"),
            (7.0, "7.00 ns"),
            (999.0, "999 ns"),
            (999.7, "1.00 µs"),
            (1_234.0, "1.23 µs"),
            (12_345.0, "12.3 µs"),
            (123_456.0, "123 µs"),
            (45_600_000.0, "45.6 ms"),
            (999_999_999.0, "1.00 s"),
            (2e9, "2.00 s"),
            (17_179_869_184.0, "17.2 s"),
            (1.5e12, "1500 s"),
            (-1_234.0, "-1.23 µs"),
        ] {
            assert_eq!(fmt_ns(ns), want, "{ns}");
        }
    }
}
