//! Token ids back to text: the raw bytes of every token, and incremental decoding that only
//! emits complete UTF-8 characters (a multi-byte character such as an emoji usually spans
//! several byte-level tokens).

use super::error::{Result, TokenizerError};
use super::Tokenizer;

/// GPT-2's byte-to-character table: printable bytes stand for themselves, the others are shifted
/// to U+0100 and up, in byte order, so that every token is printable text.
fn byte_level_chars() -> [char; 256] {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut table = ['\0'; 256];
    let mut shifted = 0u32;
    for b in 0..=255u8 {
        table[b as usize] = if printable(b) {
            char::from(b)
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).unwrap_or(char::REPLACEMENT_CHARACTER)
        };
    }
    table
}

/// The bytes every token id stands for, stored back to back.
#[derive(Debug, Clone)]
pub(super) struct TokenBytes {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl TokenBytes {
    /// `literal[id]` marks tokens whose text is used as is (control and user-defined tokens);
    /// the others are byte-level encoded. A character outside the byte-level alphabet is kept as
    /// its UTF-8 encoding, as llama.cpp and HF tokenizers do.
    pub(super) fn new(tokens: &[&str], literal: &[bool]) -> Self {
        let chars = byte_level_chars();
        let mut byte_of = std::collections::HashMap::with_capacity(256);
        for (b, c) in chars.iter().enumerate() {
            byte_of.insert(*c, b as u8);
        }
        let mut bytes = Vec::with_capacity(tokens.iter().map(|t| t.len()).sum());
        let mut ends = Vec::with_capacity(tokens.len());
        for (token, literal) in tokens.iter().zip(literal) {
            let decoded: Option<Vec<u8>> = if *literal {
                None
            } else {
                token.chars().map(|c| byte_of.get(&c).copied()).collect()
            };
            match decoded {
                Some(decoded) => bytes.extend_from_slice(&decoded),
                None => bytes.extend_from_slice(token.as_bytes()),
            }
            ends.push(bytes.len());
        }
        Self { bytes, ends }
    }

    pub(super) fn get(&self, id: u32) -> Option<&[u8]> {
        let id = id as usize;
        let end = *self.ends.get(id)?;
        let start = if id == 0 { 0 } else { self.ends[id - 1] };
        Some(&self.bytes[start..end])
    }
}

/// Turns generated ids into text one id at a time. Holds no reference to the tokenizer, so the
/// engine can keep it next to the tokenizer it decodes with.
#[derive(Debug, Clone)]
pub struct TextStream {
    skip_special: bool,
    pending: Vec<u8>,
}

impl TextStream {
    pub fn new(skip_special: bool) -> Self {
        Self {
            skip_special,
            pending: Vec::new(),
        }
    }

    /// Adds `id` and returns the text it completes: empty while a multi-byte character is still
    /// unfinished. The pieces of a stream concatenated with [`TextStream::finish`] equal
    /// [`Tokenizer::decode`] of all its ids.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String> {
        if self.skip_special && tokenizer.is_special(id) {
            return Ok(String::new());
        }
        let bytes = tokenizer.token_bytes(id).ok_or(TokenizerError::UnknownId {
            id,
            vocab_size: tokenizer.vocab_size(),
        })?;
        self.pending.extend_from_slice(bytes);
        let mut text = String::new();
        let mut used = 0;
        loop {
            match std::str::from_utf8(&self.pending[used..]) {
                Ok(valid) => {
                    text.push_str(valid);
                    used = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid_end = used + e.valid_up_to();
                    text.push_str(&String::from_utf8_lossy(&self.pending[used..valid_end]));
                    match e.error_len() {
                        // Invalid, not merely unfinished: replaced as `from_utf8_lossy` would.
                        Some(bad) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            used = valid_end + bad;
                        }
                        None => {
                            used = valid_end;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..used);
        Ok(text)
    }

    /// The text of a character left unfinished at the end of generation (as U+FFFD), if any.
    pub fn finish(self) -> String {
        String::from_utf8_lossy(&self.pending).into_owned()
    }
}
