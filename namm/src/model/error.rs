use std::path::PathBuf;

/// Why a model could not be loaded or run. Every variant names the file and the offending
/// field so a user can tell a truncated download from an unsupported architecture.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot open model file {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a readable GGUF file: {reason}")]
    BadGguf { path: PathBuf, reason: String },
    #[error("{path}: general.architecture is {found:?}, only \"llama\" is supported")]
    UnsupportedArchitecture { path: PathBuf, found: String },
    #[error("{path}: metadata key {key} is missing")]
    MissingMetadata { path: PathBuf, key: String },
    #[error("{path}: metadata key {key} = {value}: {reason}")]
    BadMetadata {
        path: PathBuf,
        key: String,
        value: String,
        reason: String,
    },
    #[error("{path}: tensor {name}: {reason}")]
    BadTensor {
        path: PathBuf,
        name: String,
        reason: String,
    },
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error("position {position} is beyond the model's context length {context}")]
    ContextExceeded { position: usize, context: usize },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ModelError>;
