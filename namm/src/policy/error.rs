//! Errors of policy construction, parameter files, invocations and replay.

use std::path::PathBuf;

use crate::stats::StatsError;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("unknown policy `{name}` in `{spec}` (valid: {valid})")]
    UnknownPolicy {
        spec: String,
        name: String,
        valid: &'static str,
    },
    #[error("unknown key `{key}` for policy `{policy}` (valid keys: {valid})")]
    UnknownKey {
        policy: &'static str,
        key: String,
        valid: &'static str,
    },
    #[error("bad value `{value}` for `{key}` of policy `{policy}`: {reason}")]
    BadValue {
        policy: &'static str,
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("malformed policy spec `{spec}`: {reason}")]
    Malformed { spec: String, reason: String },
    #[error("NAMM parameter vector has {got} values; known layouts have {expected}")]
    ParamCount { got: usize, expected: String },
    #[error("NAMM parameter {index} is not finite ({value})")]
    NonFiniteParam { index: usize, value: f64 },
    #[error("normalisation statistics have {got} features, the policy needs {expected}")]
    StatsDim { got: usize, expected: usize },
    #[error(transparent)]
    Stats(#[from] StatsError),
    /// The I/O error is part of the message rather than a `source`, so that reports do not
    /// print it twice.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("invalid policy input, field `{field}`: {reason}")]
    Input { field: &'static str, reason: String },
    #[error("replay input: {at}: {reason}")]
    Replay { at: String, reason: String },
}
