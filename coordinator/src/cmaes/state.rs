//! The persistent strategy state and its validation on restore.

use serde::{Deserialize, Serialize};

use super::error::CmaesError;
use super::Covariance;

/// Everything needed to continue a run bit for bit: [`super::Cmaes::from_state`] followed by
/// `ask` with the same RNG draws reproduces the population the uninterrupted object would
/// have produced. The population in flight is not part of it (it is a pure function of this
/// state and the normals drawn).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CmaesState {
    /// Number of completed tells.
    pub generation: u64,
    pub mean: Vec<f64>,
    pub sigma: f64,
    /// Covariance C: n×n row-major, or its n diagonal entries for a diagonal C (which keeps a
    /// NAMM-size state at ~170 KB instead of the full C's 139 MB).
    pub c: Vec<f64>,
    pub p_sigma: Vec<f64>,
    pub p_c: Vec<f64>,
    pub best_member: Vec<f64>,
    /// `f64::MIN` until a finite fitness was told (the float64 analogue of the reference's
    /// −float32max).
    pub best_fitness: f64,
    /// Adds 1e-6 to every entry of C before the generation-0 decomposition (NAMM.md §9.3);
    /// true for fresh runs. Kept but without effect for a diagonal C.
    pub shift_first_gen: bool,
    /// Lazy mode only: the generation whose C the reused decomposition came from, and that
    /// decomposition (`b` n×n row-major with eigenvectors as columns, `d` ascending axis
    /// lengths). `None` and empty vectors in exact mode, for a diagonal C or before the first
    /// `ask`.
    pub decomposed_at: Option<u64>,
    pub b: Vec<f64>,
    pub d: Vec<f64>,
}

impl CmaesState {
    /// Checks shapes and finiteness against `dim` and the covariance model so a truncated or
    /// corrupted record, or one of the other model, is rejected with the field that is wrong
    /// instead of panicking later.
    pub(super) fn validate(&self, dim: usize, covariance: Covariance) -> Result<(), CmaesError> {
        check_vec("mean", &self.mean, dim)?;
        let c_len = match covariance {
            Covariance::Full => dim * dim,
            Covariance::Diagonal => dim,
        };
        check_vec("c", &self.c, c_len)?;
        check_vec("p_sigma", &self.p_sigma, dim)?;
        check_vec("p_c", &self.p_c, dim)?;
        check_vec("best_member", &self.best_member, dim)?;
        if !(self.sigma.is_finite() && self.sigma > 0.0) {
            return Err(state_err("sigma", self.sigma, "must be finite and > 0"));
        }
        if !self.best_fitness.is_finite() {
            return Err(state_err(
                "best_fitness",
                self.best_fitness,
                "must be finite (f64::MIN before the first finite fitness)",
            ));
        }
        match self.decomposed_at {
            Some(at) if covariance == Covariance::Diagonal => {
                return Err(state_err(
                    "decomposed_at",
                    at,
                    "a diagonal covariance has no decomposition",
                ));
            }
            Some(at) => {
                if at > self.generation {
                    return Err(state_err("decomposed_at", at, "must not exceed generation"));
                }
                check_vec("b", &self.b, dim * dim)?;
                check_vec("d", &self.d, dim)?;
                if let Some(bad) = self.d.iter().find(|v| **v <= 0.0) {
                    return Err(state_err("d", bad, "axis lengths must be > 0"));
                }
            }
            None => {
                if !self.b.is_empty() || !self.d.is_empty() {
                    return Err(state_err(
                        "decomposed_at",
                        "None",
                        "b and d must be empty without a decomposition",
                    ));
                }
            }
        }
        Ok(())
    }
}

fn check_vec(field: &'static str, v: &[f64], len: usize) -> Result<(), CmaesError> {
    if v.len() != len {
        return Err(CmaesError::State {
            field,
            value: format!("{} values", v.len()),
            reason: "length does not match dim",
        });
    }
    if let Some((i, x)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(CmaesError::State {
            field,
            value: format!("[{i}] = {x}"),
            reason: "must be finite",
        });
    }
    Ok(())
}

fn state_err(
    field: &'static str,
    value: impl std::fmt::Display,
    reason: &'static str,
) -> CmaesError {
    CmaesError::State {
        field,
        value: value.to_string(),
        reason,
    }
}
