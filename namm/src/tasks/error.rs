//! Errors of task parsing, loading and generation.

use std::path::PathBuf;

/// Everything that can go wrong with a task spec or a task file; each names the offending
/// field and value.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("unknown task `{name}`; valid tasks: {valid}")]
    UnknownTask { name: String, valid: String },
    #[error("task `{task}`: unknown parameter `{key}`; valid parameters: {valid}")]
    UnknownKey {
        task: String,
        key: String,
        valid: String,
    },
    #[error("task `{task}`: parameter `{key}` has bad value `{value}`: {reason}")]
    BadValue {
        task: String,
        key: String,
        value: String,
        reason: String,
    },
    #[error("task `{task}`: parameter `{key}` is required")]
    MissingKey { task: String, key: String },
    #[error("task `{task}`: {reason}")]
    Invalid { task: String, reason: String },
    #[error("cannot read LongBench file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("LongBench file {path}, line {line}: {reason}")]
    Record {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("tokenizer failed on a LongBench prompt: {0}")]
    Tokenizer(#[source] super::TokenizerError),
    #[error("sample index {index} is out of range: {path} has {len} samples")]
    IndexOutOfRange {
        path: PathBuf,
        index: u64,
        len: usize,
    },
}
