//! Median and spread of repeated measurements.

use serde::Serialize;

/// Median, minimum and maximum of a set of repeated measurements.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub count: usize,
}

impl Spread {
    /// `None` for no values; NaNs are ignored.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: sorted[0],
            max: sorted[n - 1],
            count: n,
        })
    }

    /// Half the range relative to the median, in percent: "±x%".
    pub fn relative_half_range_percent(&self) -> f64 {
        if self.median == 0.0 {
            return 0.0;
        }
        (self.max - self.min) / 2.0 / self.median * 100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: medians of odd and even counts, and extremes, come out right whatever the order.
    #[test]
    fn median_and_extremes() {
        let odd = Spread::of(&[3.0, 1.0, 2.0]).expect("values");
        assert_eq!(
            (odd.median, odd.min, odd.max, odd.count),
            (2.0, 1.0, 3.0, 3)
        );
        let even = Spread::of(&[4.0, 1.0, 3.0, 2.0]).expect("values");
        assert_eq!(even.median, 2.5);
        assert!((even.relative_half_range_percent() - 60.0).abs() < 1e-9);
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(Spread::of(&[f64::NAN, 5.0]).map(|s| s.median), Some(5.0));
    }
}
