//! Feature-normalisation statistics (spec §4.4): per-feature mean and population variance
//! with a sample count, merged with Chan's parallel rule. Workers accumulate them in the
//! generation-0 pass; the coordinator merges the workers' sets with [`NormStats::merge`].

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StatsError {
    #[error("cannot merge statistics of {left} features with statistics of {right} features")]
    DimensionMismatch { left: usize, right: usize },
    #[error("statistics field `{field}` has {got} entries, expected {expected}")]
    Length {
        field: &'static str,
        got: usize,
        expected: usize,
    },
    #[error("statistics field `{field}` holds an invalid value {value}")]
    Value { field: &'static str, value: f64 },
}

/// Mean, population variance and count of a set of feature vectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NormStats {
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
    pub count: f64,
}

impl NormStats {
    /// No samples yet: zero mean, zero variance, count 0 (the reference's initial buffers).
    pub fn empty(dim: usize) -> Self {
        NormStats {
            mean: vec![0.0; dim],
            var: vec![0.0; dim],
            count: 0.0,
        }
    }

    /// Builds and validates a set (equal lengths, finite values, variance and count ≥ 0).
    pub fn new(mean: Vec<f64>, var: Vec<f64>, count: f64) -> Result<Self, StatsError> {
        if var.len() != mean.len() {
            return Err(StatsError::Length {
                field: "var",
                got: var.len(),
                expected: mean.len(),
            });
        }
        if let Some(&value) = mean.iter().find(|v| !v.is_finite()) {
            return Err(StatsError::Value {
                field: "mean",
                value,
            });
        }
        if let Some(&value) = var.iter().find(|v| !v.is_finite() || **v < 0.0) {
            return Err(StatsError::Value {
                field: "var",
                value,
            });
        }
        if !count.is_finite() || count < 0.0 {
            return Err(StatsError::Value {
                field: "count",
                value: count,
            });
        }
        Ok(NormStats { mean, var, count })
    }

    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Statistics of `rows` (row-major, `dim` values per row): mean and population variance.
    pub fn from_rows<I>(dim: usize, rows: I) -> Self
    where
        I: IntoIterator<Item = f64>,
        I::IntoIter: Clone,
    {
        let values = rows.into_iter();
        let mut mean = vec![0.0; dim];
        let mut count = 0usize;
        for (i, v) in values.clone().enumerate() {
            mean[i % dim] += v;
            count = i / dim + 1;
        }
        let denom = count.max(1) as f64;
        mean.iter_mut().for_each(|m| *m /= denom);
        let mut var = vec![0.0; dim];
        for (i, v) in values.enumerate() {
            let d = v - mean[i % dim];
            var[i % dim] += d * d;
        }
        var.iter_mut().for_each(|s| *s /= denom);
        NormStats {
            mean,
            var,
            count: count as f64,
        }
    }

    /// Chan's parallel merge, in the reference's operand order (`self` is the `a` side):
    /// `c = c_a + c_b; a = c_a / max(c, 1); b = 1 − a; μ = aμ_a + bμ_b;
    /// σ² = aσ²_a + bσ²_b + ab(μ_b − μ_a)²`.
    pub fn merge(&self, other: &NormStats) -> Result<NormStats, StatsError> {
        if self.dim() != other.dim() {
            return Err(StatsError::DimensionMismatch {
                left: self.dim(),
                right: other.dim(),
            });
        }
        let count = self.count + other.count;
        let a = self.count / count.max(1.0);
        let b = 1.0 - a;
        let mean = self
            .mean
            .iter()
            .zip(&other.mean)
            .map(|(ma, mb)| a * ma + b * mb)
            .collect();
        let var = (0..self.dim())
            .map(|k| {
                let d = other.mean[k] - self.mean[k];
                a * self.var[k] + b * other.var[k] + d * d * a * b
            })
            .collect();
        Ok(NormStats { mean, var, count })
    }

    /// The divisor of normalisation, `max(√σ², 1e-7)` per feature.
    pub fn scale(&self) -> Vec<f64> {
        self.var.iter().map(|v| v.sqrt().max(1e-7)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_parts_equals_statistics_of_the_whole() {
        let data: Vec<f64> = (0..60)
            .map(|i| ((i * 37) % 23) as f64 * 0.5 - 3.0)
            .collect();
        let whole = NormStats::from_rows(3, data.iter().copied());
        let left = NormStats::from_rows(3, data[..21].iter().copied());
        let right = NormStats::from_rows(3, data[21..].iter().copied());
        let merged = left.merge(&right).unwrap();
        assert_eq!(merged.count, 20.0);
        for k in 0..3 {
            assert!((merged.mean[k] - whole.mean[k]).abs() < 1e-12);
            assert!((merged.var[k] - whole.var[k]).abs() < 1e-12);
        }
    }

    #[test]
    fn merging_with_empty_is_identity() {
        let s = NormStats::from_rows(2, [1.0, 2.0, 3.0, 6.0]);
        assert_eq!(NormStats::empty(2).merge(&s).unwrap(), s);
        assert_eq!(s.merge(&NormStats::empty(2)).unwrap(), s);
        assert_eq!(s.var, vec![1.0, 4.0]);
    }

    #[test]
    fn bad_statistics_are_rejected_by_name() {
        let e = NormStats::empty(2).merge(&NormStats::empty(3)).unwrap_err();
        assert_eq!(e, StatsError::DimensionMismatch { left: 2, right: 3 });
        let e = NormStats::new(vec![0.0], vec![-1.0], 1.0).unwrap_err();
        assert!(e.to_string().contains("`var`") && e.to_string().contains("-1"));
        assert!(NormStats::new(vec![0.0], vec![0.0, 1.0], 1.0).is_err());
    }
}
