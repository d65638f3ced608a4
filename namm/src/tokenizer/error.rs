use std::path::PathBuf;

/// Everything that can go wrong while building or using a [`super::Tokenizer`]; every variant
/// names the file, metadata key or id at fault.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid GGUF file: {reason}")]
    BadGguf { path: PathBuf, reason: String },
    #[error(
        "{path} is truncated: tensor `{tensor}` ends at byte {end}, but the file has {len} bytes"
    )]
    Truncated {
        path: PathBuf,
        tensor: String,
        end: u64,
        len: u64,
    },
    #[error("GGUF metadata key `{key}` is missing")]
    MissingKey { key: &'static str },
    #[error("GGUF metadata key `{key}` holds {found}, expected {expected}")]
    WrongType {
        key: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error("GGUF metadata key `tokenizer.ggml.model` is `{0}`; only `gpt2` (byte-level BPE) is supported")]
    UnknownModel(String),
    #[error("GGUF metadata key `tokenizer.ggml.pre` is `{0}`; supported pre-tokenizers: {1}")]
    UnknownPreTokenizer(String, &'static str),
    #[error("`tokenizer.ggml.merges`[{index}] = {value:?} is not two tokens separated by a space")]
    BadMerge { index: usize, value: String },
    #[error("`tokenizer.ggml.token_type` has {types} entries for {tokens} tokens")]
    TokenTypeCount { types: usize, tokens: usize },
    #[error("GGUF metadata key `{key}` = {id} is outside the vocabulary of {vocab_size} tokens")]
    IdOutOfVocab {
        key: &'static str,
        id: u64,
        vocab_size: usize,
    },
    #[error("token id {id} is outside the vocabulary of {vocab_size} tokens")]
    UnknownId { id: u32, vocab_size: usize },
    #[error("tokenizers: {context}: {message}")]
    Tokenizers {
        context: &'static str,
        message: String,
    },
}

pub type Result<T> = std::result::Result<T, TokenizerError>;
