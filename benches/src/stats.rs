//! Latency summaries: exact percentiles over every sample (a run holds at most a few hundred
//! thousand, so sorting beats a histogram's rounding).

use serde_json::{json, Value};

/// Percentiles of one latency, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    /// Summarises samples given in nanoseconds (sorts them in place). `None` when empty.
    pub fn from_nanos(samples: &mut [u64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let us = |ns: u64| ns as f64 / 1000.0;
        let sum: u128 = samples.iter().map(|&s| u128::from(s)).sum();
        Some(Self {
            count: samples.len(),
            p50: us(nearest_rank(samples, 50.0)),
            p90: us(nearest_rank(samples, 90.0)),
            p99: us(nearest_rank(samples, 99.0)),
            max: us(samples[samples.len() - 1]),
            mean: sum as f64 / samples.len() as f64 / 1000.0,
        })
    }

    /// The summary as a JSON object (values in µs, one decimal).
    pub fn to_json(&self) -> Value {
        let r = |v: f64| (v * 10.0).round() / 10.0;
        json!({
            "count": self.count, "p50": r(self.p50), "p90": r(self.p90),
            "p99": r(self.p99), "max": r(self.max), "mean": r(self.mean),
        })
    }
}

/// The nearest-rank percentile of sorted samples.
fn nearest_rank(sorted: &[u64], pct: f64) -> u64 {
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u64> = (1..=100).rev().map(|i| i * 1000).collect();
        let s = Summary::from_nanos(&mut v).unwrap();
        assert_eq!((s.p50, s.p90, s.p99, s.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(s.mean, 50.5);
        assert!(Summary::from_nanos(&mut []).is_none());
        let one = Summary::from_nanos(&mut [7000]).unwrap();
        assert_eq!((one.p50, one.p99), (7.0, 7.0));
    }
}
