//! Choosing the next token from the logits: greedy at temperature 0, otherwise a seeded draw
//! from the temperature-scaled distribution cut to its top-p nucleus.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::argmax;

/// How tokens are drawn. `temperature == 0` is greedy decoding (`top_p` and `seed` unused).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub temperature: f64,
    /// The smallest set of most likely tokens whose probabilities sum to at least this; (0, 1].
    pub top_p: f64,
    pub seed: u64,
}

impl Sampling {
    pub const GREEDY: Sampling = Sampling {
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
    };

    /// Refuses values a draw cannot use, naming the field.
    pub fn check(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && (0.0..=100.0).contains(&self.temperature)) {
            return Err(format!(
                "temperature {} is not in [0, 100]",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p {} is not in (0, 1]", self.top_p));
        }
        Ok(())
    }
}

/// A [`Sampling`] with its random stream: the same seed draws the same tokens.
#[derive(Debug, Clone)]
pub struct Sampler {
    sampling: Sampling,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(sampling: Sampling) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(sampling.seed),
            sampling,
        }
    }

    pub fn next(&mut self, logits: &[f32]) -> u32 {
        if self.sampling.temperature == 0.0 {
            return argmax(logits);
        }
        let probs = nucleus(logits, self.sampling.temperature, self.sampling.top_p);
        let mut u = self.rng.random::<f64>() * probs.iter().map(|(_, p)| p).sum::<f64>();
        for &(id, p) in &probs {
            if u < p {
                return id;
            }
            u -= p;
        }
        probs.last().map_or(0, |&(id, _)| id)
    }
}

/// Softmax of `logits / temperature` (in f64), most likely first, cut after the token where
/// the cumulative probability reaches `top_p`; ties keep the lower id first.
fn nucleus(logits: &[f32], temperature: f64, top_p: f64) -> Vec<(u32, f64)> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, ((l as f64 - max) / temperature).exp()))
        .filter(|(_, p)| p.is_finite() && *p > 0.0)
        .collect();
    let total: f64 = probs.iter().map(|(_, p)| p).sum();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut cumulative = 0.0;
    let mut keep = probs.len();
    for (i, (_, p)) in probs.iter().enumerate() {
        cumulative += p / total;
        if cumulative >= top_p {
            keep = i + 1;
            break;
        }
    }
    probs.truncate(keep.max(1));
    probs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(temperature: f64, top_p: f64, seed: u64) -> Sampler {
        Sampler::new(Sampling {
            temperature,
            top_p,
            seed,
        })
    }

    #[test]
    fn temperature_zero_is_argmax() {
        let logits = [0.1, 2.0, -1.0, 1.9];
        assert_eq!(sampler(0.0, 0.5, 9).next(&logits), 1);
    }

    #[test]
    fn a_small_nucleus_keeps_only_the_top_token() {
        let logits = [0.0, 3.0, 1.0, 2.9];
        let mut s = sampler(1.0, 0.01, 4);
        assert!((0..50).all(|_| s.next(&logits) == 1));
    }

    #[test]
    fn draws_follow_the_distribution_and_the_seed() {
        let logits = [0.0_f32, (3.0_f32).ln()];
        let mut s = sampler(1.0, 1.0, 7);
        let ones = (0..4000).filter(|_| s.next(&logits) == 1).count();
        assert!(
            (2800..3200).contains(&ones),
            "{ones} of 4000 draws were token 1 (p = 0.75)"
        );
        let a: Vec<u32> = (0..20)
            .map({
                let mut s = sampler(1.0, 1.0, 3);
                move |_| s.next(&logits)
            })
            .collect();
        let b: Vec<u32> = (0..20)
            .map({
                let mut s = sampler(1.0, 1.0, 3);
                move |_| s.next(&logits)
            })
            .collect();
        assert_eq!(a, b);
    }

    #[test]
    fn bad_values_are_named() {
        let bad = Sampling {
            temperature: -1.0,
            ..Sampling::GREEDY
        };
        assert!(bad.check().unwrap_err().contains("temperature"));
        let bad = Sampling {
            top_p: 0.0,
            ..Sampling::GREEDY
        };
        assert!(bad.check().unwrap_err().contains("top_p"));
    }
}
