//! Benchmark objectives: closed-form test functions that exercise the cluster and the strategy
//! without an LLM. Fitness is "higher is better" everywhere in namm, so a benchmark's fitness
//! is −f(x) and its optimum is 0.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A benchmark function of any dimension; every one has its minimum f = 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Benchmark {
    /// Σ xᵢ², minimum at 0.
    Sphere,
    /// Σ 10^(6·i/(n−1)) xᵢ², condition number 1e6, minimum at 0.
    Ellipsoid,
    /// Σ 100 (xᵢ₊₁ − xᵢ²)² + (1 − xᵢ)², minimum at (1, …, 1).
    Rosenbrock,
    /// 10 n + Σ xᵢ² − 10 cos(2π xᵢ), minimum at 0.
    Rastrigin,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown benchmark objective {0:?} (expected sphere, ellipsoid, rosenbrock or rastrigin)")]
pub struct UnknownBenchmark(pub String);

impl Benchmark {
    pub const ALL: [Benchmark; 4] = [
        Benchmark::Sphere,
        Benchmark::Ellipsoid,
        Benchmark::Rosenbrock,
        Benchmark::Rastrigin,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Benchmark::Sphere => "sphere",
            Benchmark::Ellipsoid => "ellipsoid",
            Benchmark::Rosenbrock => "rosenbrock",
            Benchmark::Rastrigin => "rastrigin",
        }
    }

    /// f(x), to be minimised.
    pub fn value(self, x: &[f64]) -> f64 {
        match self {
            Benchmark::Sphere => x.iter().map(|v| v * v).sum(),
            Benchmark::Ellipsoid => {
                let n = x.len();
                x.iter()
                    .enumerate()
                    .map(|(i, v)| {
                        // A 1-D ellipsoid has no axes to spread the conditioning over.
                        let exponent = if n > 1 {
                            6.0 * i as f64 / (n - 1) as f64
                        } else {
                            0.0
                        };
                        10f64.powf(exponent) * v * v
                    })
                    .sum()
            }
            Benchmark::Rosenbrock => x
                .windows(2)
                .map(|w| 100.0 * (w[1] - w[0] * w[0]).powi(2) + (1.0 - w[0]).powi(2))
                .sum(),
            Benchmark::Rastrigin => {
                10.0 * x.len() as f64
                    + x.iter()
                        .map(|v| v * v - 10.0 * (2.0 * std::f64::consts::PI * v).cos())
                        .sum::<f64>()
            }
        }
    }

    /// −f(x): the fitness the strategy maximises.
    pub fn fitness(self, x: &[f64]) -> f64 {
        -self.value(x)
    }
}

impl fmt::Display for Benchmark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Benchmark {
    type Err = UnknownBenchmark;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Benchmark::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| UnknownBenchmark(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optima_are_zero() {
        for n in [1, 2, 10, 40] {
            let zeros = vec![0.0; n];
            let ones = vec![1.0; n];
            assert_eq!(Benchmark::Sphere.value(&zeros), 0.0);
            assert_eq!(Benchmark::Ellipsoid.value(&zeros), 0.0);
            assert_eq!(Benchmark::Rastrigin.value(&zeros), 0.0);
            assert_eq!(Benchmark::Rosenbrock.value(&ones), 0.0);
        }
    }

    #[test]
    fn known_values() {
        assert_eq!(Benchmark::Sphere.value(&[1.0, 2.0, 3.0]), 14.0);
        // Axis weights 1, 1e3, 1e6 for n = 3.
        let e = Benchmark::Ellipsoid.value(&[1.0, 1.0, 1.0]);
        assert!((e - (1.0 + 1e3 + 1e6)).abs() < 1e-6, "{e}");
        // Rosenbrock at 0: one (1 − 0)² term per pair.
        assert_eq!(Benchmark::Rosenbrock.value(&[0.0, 0.0, 0.0]), 2.0);
        // Rastrigin at integers: only the quadratic part remains.
        let r = Benchmark::Rastrigin.value(&[1.0, -2.0]);
        assert!((r - 5.0).abs() < 1e-9, "{r}");
        assert_eq!(Benchmark::Sphere.fitness(&[2.0]), -4.0);
    }

    #[test]
    fn names_round_trip() {
        for b in Benchmark::ALL {
            assert_eq!(b.name().parse::<Benchmark>(), Ok(b));
        }
        let err = "spheres".parse::<Benchmark>().unwrap_err();
        assert!(err.to_string().contains("\"spheres\""), "{err}");
    }
}
