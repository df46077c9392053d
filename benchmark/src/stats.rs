//! Summaries of latency samples: mean ± sample standard deviation, median and 95th
//! percentile, the columns of the printed Table 2.

use std::time::Duration;

use serde::Serialize;

/// One phase (or one measurement) over all its runs, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub n: usize,
    pub mean_ms: f64,
    /// Sample standard deviation (n - 1 in the denominator).
    pub stddev_ms: f64,
    pub median_ms: f64,
    pub p95_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    /// Summarise `samples`; `None` when there are none.
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        Summary::of_ms(&mut ms)
    }

    pub fn of_ms(ms: &mut [f64]) -> Option<Summary> {
        if ms.is_empty() {
            return None;
        }
        ms.sort_by(f64::total_cmp);
        let n = ms.len();
        let mean_ms = ms.iter().sum::<f64>() / n as f64;
        let stddev_ms = if n > 1 {
            let var = ms.iter().map(|x| (x - mean_ms).powi(2)).sum::<f64>() / (n - 1) as f64;
            var.sqrt()
        } else {
            0.0
        };
        Some(Summary {
            n,
            mean_ms,
            stddev_ms,
            median_ms: quantile_sorted(ms, 0.5),
            p95_ms: quantile_sorted(ms, 0.95),
            min_ms: ms[0],
            max_ms: ms[n - 1],
        })
    }
}

/// Linear interpolation between the closest ranks (the "type 7" estimator of R and
/// NumPy's default), on samples sorted ascending.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    assert!(!sorted.is_empty(), "quantile of no samples");
    assert!((0.0..=1.0).contains(&q), "quantile {q} outside [0, 1]");
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

/// Median of durations, in microseconds (for the micro-benchmarks' primitives).
pub fn median_us(samples: &mut [Duration]) -> f64 {
    assert!(!samples.is_empty(), "median of no samples");
    samples.sort();
    let us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    quantile_sorted(&us, 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_known_samples() {
        let mut ms = vec![4.0, 1.0, 3.0, 2.0, 5.0];
        let s = Summary::of_ms(&mut ms).expect("samples");
        assert_eq!(s.n, 5);
        assert!((s.mean_ms - 3.0).abs() < 1e-12);
        assert!((s.stddev_ms - 2.5f64.sqrt()).abs() < 1e-12);
        assert!((s.median_ms - 3.0).abs() < 1e-12);
        assert!((s.p95_ms - 4.8).abs() < 1e-12);
        assert_eq!((s.min_ms, s.max_ms), (1.0, 5.0));
    }

    #[test]
    fn one_sample_has_no_spread() {
        let s = Summary::of(&[Duration::from_millis(7)]).expect("one sample");
        assert_eq!(s.stddev_ms, 0.0);
        assert_eq!(s.median_ms, 7.0);
        assert_eq!(s.p95_ms, 7.0);
    }

    #[test]
    fn no_samples_no_summary() {
        assert!(Summary::of(&[]).is_none());
    }
}
