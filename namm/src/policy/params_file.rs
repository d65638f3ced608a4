//! NAMM parameter files (`namm:PATH.safetensors`): θ as an f32 tensor `params`, the frozen
//! normalisation statistics as f64 tensors `norm_mean`, `norm_var` [17] and `norm_count` [1],
//! and free-form string metadata (run id, generation, …).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::baselines::Budget;
use super::error::PolicyError;
use super::features::{FeatureSet, N_BINS};
use super::layout::BamLayout;
use super::namm::{NammPolicy, NormMode};
use super::parse::parse_budget;
use crate::stats::NormStats;

/// Metadata key naming the file format; written on save, not required on load.
const FORMAT_KEY: &str = "format";
/// Metadata key of the memory budget the NAMM was trained at (`0.25`, `512`), which
/// `namm:FILE` applies unless the spec gives its own.
pub const BUDGET_KEY: &str = "budget";
/// Metadata key of the NAMM's [`FeatureSet`] (`window`); absent: the paper's spectrogram.
pub const FEATURES_KEY: &str = "features";
const FORMAT: &str = "namm-params-v1";

/// The contents of a parameter file.
#[derive(Debug, Clone, PartialEq)]
pub struct NammParams {
    pub params: Vec<f32>,
    /// Frozen statistics; a count of 0 means none were collected, and a policy built from
    /// the file then accumulates its own (the reference's behaviour before the first merge).
    pub stats: NormStats,
    pub metadata: BTreeMap<String, String>,
}

impl NammParams {
    /// Writes the file (through a temporary file and a rename, so a crash leaves either the
    /// old or the new file).
    pub fn save(&self, path: &Path) -> Result<(), PolicyError> {
        let io = |error| PolicyError::Io {
            path: path.to_path_buf(),
            error,
        };
        let bytes = self.to_bytes().map_err(|reason| PolicyError::File {
            path: path.to_path_buf(),
            reason,
        })?;
        let tmp = path.with_extension("safetensors.tmp");
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let f32_bytes: Vec<u8> = self.params.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f64_bytes = |v: &[f64]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let mean = f64_bytes(&self.stats.mean);
        let var = f64_bytes(&self.stats.var);
        let count = f64_bytes(&[self.stats.count]);
        fn view(
            dtype: Dtype,
            len: usize,
            data: &[u8],
        ) -> Result<TensorView<'_>, safetensors::SafeTensorError> {
            TensorView::new(dtype, vec![len], data)
        }
        let tensors = [
            ("params", view(Dtype::F32, self.params.len(), &f32_bytes)),
            ("norm_mean", view(Dtype::F64, self.stats.dim(), &mean)),
            ("norm_var", view(Dtype::F64, self.stats.dim(), &var)),
            ("norm_count", view(Dtype::F64, 1, &count)),
        ];
        let mut named = Vec::with_capacity(tensors.len());
        for (name, t) in tensors {
            named.push((name, t.map_err(|e| format!("tensor `{name}`: {e}"))?));
        }
        let mut meta: HashMap<String, String> = self.metadata.clone().into_iter().collect();
        meta.insert(FORMAT_KEY.into(), FORMAT.into());
        safetensors::serialize(named, Some(meta)).map_err(|e| e.to_string())
    }

    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let bytes = std::fs::read(path).map_err(|error| PolicyError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Self::from_bytes(&bytes).map_err(|reason| PolicyError::File {
            path: path.to_path_buf(),
            reason,
        })
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let st =
            SafeTensors::deserialize(bytes).map_err(|e| format!("not a safetensors file: {e}"))?;
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| format!("bad safetensors header: {e}"))?;
        let metadata: BTreeMap<String, String> = header
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| k != FORMAT_KEY)
            .collect();
        let read = |name: &str| -> Result<Vec<f64>, String> {
            let t = st
                .tensor(name)
                .map_err(|_| format!("missing tensor `{name}`"))?;
            if t.shape().len() != 1 {
                return Err(format!(
                    "tensor `{name}` has shape {:?}, expected 1-D",
                    t.shape()
                ));
            }
            match t.dtype() {
                Dtype::F32 => Ok(t
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64)
                    .collect()),
                Dtype::F64 => Ok(t
                    .data()
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect()),
                other => Err(format!(
                    "tensor `{name}` has dtype {other:?}, expected F32 or F64"
                )),
            }
        };
        let params: Vec<f32> = read("params")?.into_iter().map(|v| v as f32).collect();
        if BamLayout::for_param_count(params.len()).is_none() {
            return Err(format!(
                "tensor `params` has {} values; known layouts have {} or {}",
                params.len(),
                BamLayout::I1.param_count(),
                BamLayout::BASE.param_count()
            ));
        }
        let count = read("norm_count")?;
        let count = match count.as_slice() {
            [c] => *c,
            _ => {
                return Err(format!(
                    "tensor `norm_count` has {} values, expected 1",
                    count.len()
                ))
            }
        };
        let (mean, var) = (read("norm_mean")?, read("norm_var")?);
        for (name, values) in [("norm_mean", &mean), ("norm_var", &var)] {
            if values.len() != N_BINS {
                return Err(format!(
                    "tensor `{name}` has {} values, expected {N_BINS}",
                    values.len()
                ));
            }
        }
        let stats = NormStats::new(mean, var, count).map_err(|e| e.to_string())?;
        Ok(NammParams {
            params,
            stats,
            metadata,
        })
    }

    /// The statistics mode a policy built from this file uses.
    pub fn norm_mode(&self) -> NormMode {
        if self.stats.count > 0.0 {
            NormMode::Frozen(self.stats.clone())
        } else {
            NormMode::accumulate()
        }
    }

    /// The budget recorded in the metadata (none when the file has none).
    pub fn budget(&self) -> Result<Option<Budget>, PolicyError> {
        self.metadata
            .get(BUDGET_KEY)
            .map(|v| parse_budget("namm", v))
            .transpose()
    }

    /// The feature set recorded in the metadata (the paper's spectrogram when absent).
    pub fn feature_set(&self) -> Result<FeatureSet, String> {
        match self.metadata.get(FEATURES_KEY) {
            None => Ok(FeatureSet::Spectral),
            Some(v) => FeatureSet::parse(v).ok_or_else(|| {
                format!(
                    "metadata `{FEATURES_KEY}` is {v:?}; expected one of {}",
                    FeatureSet::NAMES
                )
            }),
        }
    }
}

impl NammPolicy {
    /// Loads a parameter file with the budget it records; the policy is named `namm:<path>`.
    pub fn from_file(path: &Path) -> Result<Self, PolicyError> {
        Self::from_file_with_budget(path, None)
    }

    /// Loads a parameter file; `budget` overrides the one the file records. The policy is
    /// named `namm:<path>[,budget=B]`.
    pub fn from_file_with_budget(path: &Path, budget: Option<Budget>) -> Result<Self, PolicyError> {
        let file = NammParams::load(path)?;
        let budget = match budget {
            Some(b) => Some(b),
            None => file.budget().map_err(|e| PolicyError::File {
                path: path.to_path_buf(),
                reason: format!("metadata `{BUDGET_KEY}`: {e}"),
            })?,
        };
        let features = file.feature_set().map_err(|reason| PolicyError::File {
            path: path.to_path_buf(),
            reason,
        })?;
        let mode = file.norm_mode();
        if matches!(mode, NormMode::Accumulate(_)) {
            warn_no_statistics(path);
        }
        let label = match budget {
            Some(b) => format!("namm:{},budget={b}", path.display()),
            None => format!("namm:{}", path.display()),
        };
        Ok(NammPolicy::new(file.params, mode)?
            .with_feature_set(features)
            .with_budget(budget)
            .with_label(label))
    }
}

/// Once per file and process: a file without frozen statistics (norm_count 0, e.g. a
/// hand-set start) normalises its features with statistics it accumulates over the prompts it
/// sees, so its scores depend on what ran before them.
fn warn_no_statistics(path: &Path) {
    // Specs checked while arguments are parsed, before logging is set up, do not count.
    if !tracing::dispatcher::has_been_set() {
        return;
    }
    static WARNED: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());
    let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if !warned.iter().any(|p| p == path) {
        warned.push(path.to_path_buf());
        tracing::warn!(
            "{}: norm_count is 0 (no frozen feature statistics): the NAMM normalises with \
             statistics it accumulates over the prompts it sees, as a run's reference pass does; \
             export a trained NAMM with `namm best --export` for fixed statistics",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::MemoryPolicy;

    fn sample() -> NammParams {
        NammParams {
            params: (0..4172).map(|i| i as f32 * 1e-3 - 2.0).collect(),
            stats: NormStats::new(
                (0..17).map(|k| k as f64 * 0.1).collect(),
                (0..17).map(|k| 1.0 + k as f64).collect(),
                768.0,
            )
            .unwrap(),
            metadata: [("run".to_string(), "r1".to_string())].into(),
        }
    }

    #[test]
    fn save_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("best.safetensors");
        let p = sample();
        p.save(&path).unwrap();
        assert_eq!(NammParams::load(&path).unwrap(), p);
        let policy = NammPolicy::from_file(&path).unwrap();
        assert_eq!(policy.norm_stats(), &p.stats);
    }

    #[test]
    fn the_recorded_budget_applies_unless_the_spec_overrides_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.safetensors");
        let mut p = sample();
        p.metadata.insert(BUDGET_KEY.into(), "0.25".into());
        p.save(&path).unwrap();
        let own = NammPolicy::from_file(&path).unwrap();
        assert_eq!(own.budget(), Some(Budget::Fraction(0.25)));
        assert!(own.name().ends_with(",budget=0.25"), "{}", own.name());
        let spec = format!("namm:{},budget=512", path.display());
        let over = crate::policy::parse_policy(&spec).unwrap();
        assert!(over.name().ends_with(",budget=512"), "{}", over.name());
        p.metadata.insert(BUDGET_KEY.into(), "lots".into());
        p.save(&path).unwrap();
        let e = NammPolicy::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("metadata `budget`") && e.contains("lots"), "{e}");
        let e = crate::policy::parse_policy(&format!("namm:{},bugdet=1", path.display()))
            .err()
            .expect("an unknown key is refused")
            .to_string();
        assert!(e.contains("bugdet"), "{e}");
    }

    #[test]
    fn bad_files_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        std::fs::write(&path, b"garbage").unwrap();
        let e = NammParams::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("x.safetensors") && e.contains("not a safetensors file"),
            "{e}"
        );
        let mut p = sample();
        p.params.truncate(100);
        p.save(&path).unwrap();
        let e = NammParams::load(&path).unwrap_err().to_string();
        assert!(e.contains("`params` has 100 values"), "{e}");
        // 16 means beside 17 variances: the short tensor is the one named.
        let bytes = |n: usize| -> Vec<u8> { (0..n).flat_map(|_| 1f64.to_le_bytes()).collect() };
        let (params, mean, var, count) = (
            sample()
                .params
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
            bytes(16),
            bytes(17),
            bytes(1),
        );
        let tensors = [
            (
                "params",
                TensorView::new(Dtype::F32, vec![4172], &params).unwrap(),
            ),
            (
                "norm_mean",
                TensorView::new(Dtype::F64, vec![16], &mean).unwrap(),
            ),
            (
                "norm_var",
                TensorView::new(Dtype::F64, vec![17], &var).unwrap(),
            ),
            (
                "norm_count",
                TensorView::new(Dtype::F64, vec![1], &count).unwrap(),
            ),
        ];
        std::fs::write(&path, safetensors::serialize(tensors, None).unwrap()).unwrap();
        let e = NammParams::load(&path).unwrap_err().to_string();
        assert!(e.contains("`norm_mean` has 16 values, expected 17"), "{e}");
        let missing = dir.path().join("absent.safetensors");
        assert!(NammParams::load(&missing)
            .unwrap_err()
            .to_string()
            .contains("absent"));
    }
}
