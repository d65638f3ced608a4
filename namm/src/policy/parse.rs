//! One-line policy specs: `full`, `namm:PATH.safetensors`, `namm:default,budget=0.25`,
//! `h2o:budget=0.25`, `streaming:sinks=4,budget=512`, `random:budget=0.5,seed=3`, …
//!
//! `budget` is a fraction of the tokens seen when it contains a `.` (in (0, 1]), a token
//! count otherwise (≥ 1); it defaults to 0.25 for every budget-driven policy.

use std::path::{Path, PathBuf};

use super::baselines::{Baseline, BaselineKind, Budget, FullCache};
use super::error::PolicyError;
use super::namm::NammPolicy;
use super::MemoryPolicy;

/// Policies and their key=value parameters, as listed in error messages.
pub const VALID_POLICIES: &str =
    "full, namm:PATH.safetensors[,budget=B], namm:default[,budget=B], \
     streaming[:budget=B,sinks=4], h2o[:budget=B,recent=0.5], \
     snapkv[:budget=B,window=32,kernel=7], tova[:budget=B], knorm[:budget=B,recent=0], \
     random[:budget=B,seed=0]";

/// Where `namm:default` looks, relative to the working directory and then to the repository.
pub const DEFAULT_NAMM_PATH: &str = "assets/namm-smollm2-135m.safetensors";

const DEFAULT_BUDGET: Budget = Budget::Fraction(0.25);
/// Largest sink count, window or kernel a baseline takes: an eighth of the longest context
/// the engine holds, already far more than any of them needs (StreamingLLM keeps 4 sinks).
const MAX_COUNT: usize = 4096;

/// Builds the policy a spec names.
pub fn parse_policy(spec: &str) -> Result<Box<dyn MemoryPolicy>, PolicyError> {
    let spec = spec.trim();
    let (name, rest) = match spec.split_once(':') {
        Some((n, r)) => (n, Some(r)),
        None => (spec, None),
    };
    match name {
        "full" => {
            if let Some(r) = rest.filter(|r| !r.is_empty()) {
                return Err(PolicyError::Malformed {
                    spec: spec.into(),
                    reason: format!("`full` takes no parameters, found `{r}`"),
                });
            }
            Ok(Box::new(FullCache))
        }
        "namm" => {
            let rest = rest
                .filter(|r| !r.is_empty())
                .ok_or_else(|| PolicyError::Malformed {
                    spec: spec.into(),
                    reason: "`namm` needs a parameter file: namm:PATH.safetensors or namm:default"
                        .into(),
                })?;
            let (path, budget) = namm_params(spec, rest)?;
            let path = if path == "default" {
                default_namm_path()?
            } else {
                PathBuf::from(path)
            };
            Ok(Box::new(NammPolicy::from_file_with_budget(&path, budget)?))
        }
        _ => Ok(Box::new(parse_baseline(spec, name, rest.unwrap_or(""))?)),
    }
}

fn default_namm_path() -> Result<PathBuf, PolicyError> {
    let in_repo = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join(DEFAULT_NAMM_PATH);
    [PathBuf::from(DEFAULT_NAMM_PATH), in_repo.clone()]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or(PolicyError::File {
            path: in_repo,
            reason: format!(
                "`namm:default` needs the exported parameters at {DEFAULT_NAMM_PATH} (relative \
                 to the working directory or the repository); they are not there"
            ),
        })
}

/// `PATH[,budget=B]` of a `namm:` spec: the parameter file and the budget that overrides the
/// file's own. A path that is an existing file is taken whole, commas and all.
fn namm_params<'a>(spec: &str, rest: &'a str) -> Result<(&'a str, Option<Budget>), PolicyError> {
    let (path, params) = match rest.split_once(',') {
        Some(_) if Path::new(rest).is_file() => (rest, ""),
        Some((path, params)) => (path, params),
        None => (rest, ""),
    };
    let pairs = key_values(spec, "namm", params, "budget")?;
    let budget = pairs
        .first()
        .map(|(_, v)| parse_budget("namm", v))
        .transpose()?;
    Ok((path, budget))
}

/// The `k=v,k=v` parameters of a policy spec, each key one of `valid` (comma-separated) and
/// given at most once.
fn key_values<'a>(
    spec: &str,
    policy: &'static str,
    params: &'a str,
    valid: &'static str,
) -> Result<Vec<(&'a str, &'a str)>, PolicyError> {
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for item in params.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (k, v) = item.split_once('=').ok_or_else(|| PolicyError::Malformed {
            spec: spec.into(),
            reason: format!("`{item}` is not key=value"),
        })?;
        let (k, v) = (k.trim(), v.trim());
        if !valid.split(", ").any(|x| x == k) {
            return Err(PolicyError::UnknownKey {
                policy,
                key: k.into(),
                valid,
            });
        }
        if pairs.iter().any(|(seen, _)| *seen == k) {
            return Err(PolicyError::Malformed {
                spec: spec.into(),
                reason: format!("key `{k}` is given twice"),
            });
        }
        pairs.push((k, v));
    }
    Ok(pairs)
}

/// A budget-driven baseline from `name` and its `k=v,k=v` parameters.
pub fn parse_baseline(spec: &str, name: &str, params: &str) -> Result<Baseline, PolicyError> {
    let (policy, valid): (&'static str, &'static str) = match name {
        "streaming" => ("streaming", "budget, sinks"),
        "h2o" => ("h2o", "budget, recent"),
        "snapkv" => ("snapkv", "budget, window, kernel"),
        "tova" => ("tova", "budget"),
        "knorm" => ("knorm", "budget, recent"),
        "random" => ("random", "budget, seed"),
        _ => {
            return Err(PolicyError::UnknownPolicy {
                spec: spec.into(),
                name: name.into(),
                valid: VALID_POLICIES,
            })
        }
    };
    let pairs = key_values(spec, policy, params, valid)?;
    let get = |k: &str| pairs.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    let budget = match get("budget") {
        Some(v) => parse_budget(policy, v)?,
        None => DEFAULT_BUDGET,
    };
    let count = |key: &'static str, default: usize, min: usize| -> Result<usize, PolicyError> {
        let Some(v) = get(key) else {
            return Ok(default);
        };
        match v.parse::<usize>() {
            Ok(x) if (min..=MAX_COUNT).contains(&x) => Ok(x),
            _ => Err(PolicyError::BadValue {
                policy,
                key,
                value: v.into(),
                reason: format!("expected an integer from {min} to {MAX_COUNT}"),
            }),
        }
    };
    let ratio = |key: &'static str, default: f64| -> Result<f64, PolicyError> {
        let Some(v) = get(key) else {
            return Ok(default);
        };
        match v.parse::<f64>() {
            Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
            _ => Err(PolicyError::BadValue {
                policy,
                key,
                value: v.into(),
                reason: "expected a fraction of the budget in [0, 1]".into(),
            }),
        }
    };
    let kind = match policy {
        "streaming" => BaselineKind::Streaming {
            sinks: count("sinks", 4, 0)?,
        },
        "h2o" => BaselineKind::H2o {
            recent: ratio("recent", 0.5)?,
        },
        "snapkv" => {
            let kernel = count("kernel", 7, 1)?;
            if kernel % 2 == 0 {
                return Err(PolicyError::BadValue {
                    policy,
                    key: "kernel",
                    value: kernel.to_string(),
                    reason: "the pooling kernel must be odd (centred on the key)".into(),
                });
            }
            BaselineKind::SnapKv {
                window: count("window", 32, 1)?,
                kernel,
            }
        }
        "tova" => BaselineKind::Tova,
        "knorm" => BaselineKind::KNorm {
            recent: ratio("recent", 0.0)?,
        },
        _ => BaselineKind::Random {
            seed: get("seed")
                .map(|v| {
                    v.parse::<u64>().map_err(|_| PolicyError::BadValue {
                        policy,
                        key: "seed",
                        value: v.into(),
                        reason: "expected a non-negative integer".into(),
                    })
                })
                .transpose()?
                .unwrap_or(0),
        },
    };
    Ok(Baseline::new(kind, budget))
}

/// `0.25` → a fraction of the tokens seen; `512` → a token count.
pub fn parse_budget(policy: &'static str, v: &str) -> Result<Budget, PolicyError> {
    let bad = |reason: &str| PolicyError::BadValue {
        policy,
        key: "budget",
        value: v.into(),
        reason: reason.into(),
    };
    if v.contains(['.', 'e', 'E']) {
        match v.parse::<f64>() {
            Ok(f) if f > 0.0 && f <= 1.0 => Ok(Budget::Fraction(f)),
            _ => Err(bad(
                "expected a fraction in (0, 1] (e.g. 0.25) or a token count (e.g. 512)",
            )),
        }
    } else {
        match v.parse::<usize>() {
            Ok(t) if t >= 1 => Ok(Budget::Tokens(t)),
            _ => Err(bad(
                "expected a token count ≥ 1 (e.g. 512) or a fraction in (0, 1] (e.g. 0.25)",
            )),
        }
    }
}
