//! Errors of an evaluation; each names the sample, policy or file that failed.

use std::path::PathBuf;

use crate::engine::EngineError;
use crate::model::ModelError;
use crate::tasks::TaskError;
use crate::tokenizer::TokenizerError;

/// Large sources are boxed so that `Result<_, EvalError>` stays small on the happy path.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(
        "model file {path} not found: run scripts/fetch-model.sh, or point --model / NAMM_MODEL \
         at a llama GGUF file"
    )]
    ModelMissing { path: PathBuf },
    #[error("--model {path} is a directory; give the GGUF file in it")]
    ModelIsDirectory { path: PathBuf },
    #[error("model file {path} is not a usable GGUF file (a damaged or cut-short download? scripts/fetch-model.sh fetches the default model again)")]
    ModelFile {
        path: PathBuf,
        #[source]
        source: TokenizerError,
    },
    #[error("loading the model {path}")]
    Model {
        path: PathBuf,
        #[source]
        source: Box<ModelError>,
    },
    #[error("building the tokenizer of {path}")]
    Tokenizer {
        path: PathBuf,
        #[source]
        source: TokenizerError,
    },
    #[error("{path}: metadata key {key} is {found}, expected a boolean")]
    BadMetadata {
        path: PathBuf,
        key: &'static str,
        found: String,
    },
    #[error("device `{spec}`: {reason}")]
    Device { spec: String, reason: String },
    #[error("no policies to evaluate")]
    NoPolicies,
    #[error("task `{task}`: generating sample {index}")]
    Task {
        task: String,
        index: u64,
        #[source]
        source: Box<TaskError>,
    },
    #[error("sample {sample}: tokenizing the prompt")]
    Encode {
        sample: String,
        #[source]
        source: TokenizerError,
    },
    #[error("sample {sample}: the prompt is empty")]
    EmptyPrompt { sample: String },
    #[error(
        "sample {sample}: the prompt has {tokens} tokens, more than the model's context length \
         {context}"
    )]
    PromptTooLong {
        sample: String,
        tokens: usize,
        context: usize,
    },
    #[error("sample {sample}: feeding the shared prefix of {tokens} tokens")]
    Prefix {
        sample: String,
        tokens: usize,
        #[source]
        source: Box<EngineError>,
    },
    #[error("sample {sample}, policy {policy}: generation failed")]
    Generate {
        sample: String,
        policy: String,
        #[source]
        source: Box<EngineError>,
    },
    #[error("sample {sample} has no gold answer to score")]
    NoAnswer { sample: String },
    #[error("sample {sample}, policy {policy}: scoring the gold answer failed")]
    ScoreAnswer {
        sample: String,
        policy: String,
        #[source]
        source: Box<EngineError>,
    },
    #[error("sample {sample}, policy {policy}: decoding the generated tokens")]
    Decode {
        sample: String,
        policy: String,
        #[source]
        source: TokenizerError,
    },
}

pub type Result<T> = std::result::Result<T, EvalError>;
