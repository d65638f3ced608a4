//! The LLM's tokenizer, built from a GGUF file's `tokenizer.ggml.*` metadata so that token ids
//! match llama.cpp's for the same model: byte-level BPE (`tokenizer.ggml.model = "gpt2"`) run by
//! the `tokenizers` crate, with the pre-tokenizer `tokenizer.ggml.pre` names.
//!
//! candle-core's `TokenizerFromGguf` is not used: for SmolLM2 (`pre = "smollm"`) it adds a
//! leading space and keeps digit runs whole, while llama.cpp splits every digit and adds no space.

mod chat;
mod error;
mod gguf;
mod stream;

pub use chat::ChatTemplate;
pub use error::{Result, TokenizerError};
pub use gguf::read_gguf_content;
pub use stream::TextStream;

use candle_core::quantized::gguf_file::Content;
use std::path::Path;
use stream::TokenBytes;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::AddedToken;

/// `tokenizer.ggml.pre` values whose llama.cpp pre-tokenizer is "each digit alone, then the
/// GPT-2 regex" (llama-vocab.cpp groups them on one regex list).
const DIGIT_SPLITTING_PRE: &[&str] = &[
    "smollm",
    "starcoder",
    "refact",
    "command-r",
    "codeshell",
    "exaone",
    "minerva-7b",
];
/// `tokenizer.ggml.pre` values whose llama.cpp pre-tokenizer is the GPT-2 regex alone.
const GPT2_PRE: &[&str] = &["gpt2", "mpt", "olmo", "jais"];
const SUPPORTED_PRE: &str =
    "smollm, starcoder, refact, command-r, codeshell, exaone, minerva-7b, gpt2, mpt, olmo, jais";

/// llama.cpp's `tokenizer.ggml.token_type` values.
const TOKEN_TYPE_NORMAL: u64 = 1;
const TOKEN_TYPE_UNKNOWN: u64 = 2;
const TOKEN_TYPE_CONTROL: u64 = 3;
const TOKEN_TYPE_USER_DEFINED: u64 = 4;

/// A byte-level BPE tokenizer equivalent to llama.cpp's for the same GGUF. Cheap to share:
/// every method takes `&self`.
#[derive(Clone)]
pub struct Tokenizer {
    /// Splits control tokens written in the text out as single ids.
    parsing_special: tokenizers::Tokenizer,
    /// Treats control tokens written in the text as plain text.
    literal_special: tokenizers::Tokenizer,
    bytes: TokenBytes,
    special: Vec<bool>,
    bos_id: Option<u32>,
    eos_id: u32,
    pad_id: Option<u32>,
    stop_ids: Vec<u32>,
    chat: ChatTemplate,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("pad_id", &self.pad_id)
            .field("stop_ids", &self.stop_ids)
            .field("chat", &self.chat)
            .finish()
    }
}

impl Tokenizer {
    /// Reads the GGUF file at `path` (header only, after checking the file is complete) and
    /// builds its tokenizer.
    pub fn from_gguf_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_gguf(&read_gguf_content(path.as_ref())?)
    }

    pub fn from_gguf(content: &Content) -> Result<Self> {
        let model = gguf::string(content, "tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(TokenizerError::UnknownModel(model.to_string()));
        }
        let pre = gguf::string(content, "tokenizer.ggml.pre")?;
        let pre_tokenizer = pre_tokenizer(pre)?;

        let tokens = gguf::string_array(content, "tokenizer.ggml.tokens")?;
        if tokens.is_empty() {
            return Err(TokenizerError::WrongType {
                key: "tokenizer.ggml.tokens",
                expected: "a non-empty array of strings",
                found: "an empty array".into(),
            });
        }
        let vocab_size = tokens.len();
        let types = match gguf::optional_int_array(content, "tokenizer.ggml.token_type")? {
            Some(types) if types.len() != vocab_size => {
                return Err(TokenizerError::TokenTypeCount {
                    types: types.len(),
                    tokens: vocab_size,
                })
            }
            Some(types) => types,
            None => vec![TOKEN_TYPE_NORMAL; vocab_size],
        };
        let merges = gguf::string_array(content, "tokenizer.ggml.merges")?
            .into_iter()
            .enumerate()
            .map(|(index, merge)| {
                merge
                    .split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| TokenizerError::BadMerge {
                        index,
                        value: merge.to_string(),
                    })
            })
            .collect::<Result<Vec<_>>>()?;

        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(id, token)| (token.to_string(), id as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| TokenizerError::Tokenizers {
                context:
                    "building the BPE model from tokenizer.ggml.tokens and tokenizer.ggml.merges",
                message: e.to_string(),
            })?;
        let mut parsing_special = tokenizers::Tokenizer::new(bpe);
        parsing_special.with_pre_tokenizer(Some(pre_tokenizer));

        // llama.cpp parses control (and unknown) tokens only when asked to, user-defined tokens
        // always: exactly HF's special and non-special added tokens.
        let special: Vec<bool> = types
            .iter()
            .map(|t| matches!(*t, TOKEN_TYPE_CONTROL | TOKEN_TYPE_UNKNOWN))
            .collect();
        let user_defined: Vec<bool> = types
            .iter()
            .map(|t| *t == TOKEN_TYPE_USER_DEFINED)
            .collect();
        let added = |flags: &[bool], is_special: bool| -> Vec<AddedToken> {
            tokens
                .iter()
                .zip(flags)
                .filter(|(_, flag)| **flag)
                .map(|(token, _)| AddedToken::from(token.to_string(), is_special).normalized(false))
                .collect()
        };
        let tokenizers_err = |context| {
            move |e: tokenizers::Error| TokenizerError::Tokenizers {
                context,
                message: e.to_string(),
            }
        };
        parsing_special
            .add_special_tokens(added(&special, true))
            .map_err(tokenizers_err("adding the control tokens"))?;
        parsing_special
            .add_tokens(added(&user_defined, false))
            .map_err(tokenizers_err("adding the user-defined tokens"))?;
        let mut literal_special = parsing_special.clone();
        literal_special.set_encode_special_tokens(true);

        let literal: Vec<bool> = special
            .iter()
            .zip(&user_defined)
            .map(|(s, u)| *s || *u)
            .collect();
        let bytes = TokenBytes::new(&tokens, &literal);

        let bos_id = gguf::optional_token_id(content, "tokenizer.ggml.bos_token_id", vocab_size)?;
        let eos_id = gguf::optional_token_id(content, "tokenizer.ggml.eos_token_id", vocab_size)?
            .ok_or(TokenizerError::MissingKey {
            key: "tokenizer.ggml.eos_token_id",
        })?;
        let pad_id =
            gguf::optional_token_id(content, "tokenizer.ggml.padding_token_id", vocab_size)?;

        let im_end = parsing_special.token_to_id("<|im_end|>");
        let mut stop_ids = vec![eos_id];
        stop_ids.extend(im_end.filter(|id| *id != eos_id));

        let template = gguf::optional_string(content, "tokenizer.chat_template")?;
        let chat = ChatTemplate::from_jinja(template.unwrap_or_default());
        if im_end.is_none() || template.is_some_and(|t| !t.contains("<|im_start|>")) {
            tracing::warn!(
                "this GGUF's chat format is not ChatML; chat prompts will still be written as ChatML"
            );
        }

        Ok(Self {
            parsing_special,
            literal_special,
            bytes,
            special,
            bos_id,
            eos_id,
            pad_id,
            stop_ids,
            chat,
        })
    }

    /// Token ids of `text`, without BOS. With `parse_special`, control tokens written in the
    /// text (`<|im_start|>`) become their single ids; without it they are spelled out as text.
    /// Bytes the vocabulary has no token for (SmolLM2 lacks a few control characters such as
    /// U+0004) are dropped, as llama.cpp drops them.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let tokenizer = if parse_special {
            &self.parsing_special
        } else {
            &self.literal_special
        };
        let encoding =
            tokenizer
                .encode_fast(text, false)
                .map_err(|e| TokenizerError::Tokenizers {
                    context: "encoding",
                    message: e.to_string(),
                })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The number of tokens `encode(text, true)` gives. Should the tokenizer ever fail on `text`,
    /// returns its byte length instead, an upper bound (every byte has its own token).
    pub fn count_tokens(&self, text: &str) -> usize {
        match self.encode(text, true) {
            Ok(ids) => ids.len(),
            Err(e) => {
                tracing::warn!("count_tokens falls back to the byte count: {e}");
                text.len()
            }
        }
    }

    /// The text of `ids`; with `skip_special`, control tokens are left out. Bytes that do not
    /// form valid UTF-8 (a character cut off by the end of `ids`) become U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            if skip_special && self.is_special(id) {
                continue;
            }
            let piece = self.token_bytes(id).ok_or(TokenizerError::UnknownId {
                id,
                vocab_size: self.vocab_size(),
            })?;
            bytes.extend_from_slice(piece);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// An incremental decoder for generated ids; see [`TextStream::push`].
    pub fn stream(&self, skip_special: bool) -> TextStream {
        TextStream::new(skip_special)
    }

    /// The raw bytes token `id` stands for.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.bytes.get(id)
    }

    /// The id of a token given by its exact text, e.g. `"<|im_end|>"`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.parsing_special.token_to_id(token)
    }

    /// Whether `id` is a control token (skipped by `decode(…, true)`).
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    pub fn vocab_size(&self) -> usize {
        self.special.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id
    }

    /// Ids that end a generation: EOS and, if the vocabulary has it, `<|im_end|>`.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    pub fn chat_template(&self) -> &ChatTemplate {
        &self.chat
    }

    /// A one-turn ChatML prompt ending where the assistant's answer starts. Like the GGUF's chat
    /// template, it begins with the template's default system turn (SmolLM2: "You are a helpful
    /// AI assistant named SmolLM, trained by Hugging Face").
    pub fn chat_prompt(&self, user: &str) -> String {
        self.chat.render(None, user)
    }

    /// As [`Tokenizer::chat_prompt`], with `system` instead of the default system turn.
    pub fn chat_prompt_with_system(&self, system: &str, user: &str) -> String {
        self.chat.render(Some(system), user)
    }
}

fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    // HF's ByteLevel regex is llama.cpp's GPT-2 regex plus a final `\s+`, which only matches
    // what llama.cpp keeps as an unmatched piece anyway.
    let byte_level = ByteLevel::new(false, false, true);
    if DIGIT_SPLITTING_PRE.contains(&pre) {
        Ok(Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into())
    } else if GPT2_PRE.contains(&pre) {
        Ok(byte_level.into())
    } else {
        Err(TokenizerError::UnknownPreTokenizer(
            pre.to_string(),
            SUPPORTED_PRE,
        ))
    }
}
