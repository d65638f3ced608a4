//! A stand-in tokenizer for the task tests: the tests check generator logic, not the model's
//! tokenizer (which needs the `engine` feature), so this approximates byte-level BPE closely
//! enough to make length targeting non-trivial: a token is a run of up to 5 letters with an
//! optional leading space, a single digit (as SmolLM2 splits digits), or any other single
//! character. Ids are interned pieces, so `decode(encode(t)) == t`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Mutex;

use namm::tasks::{TokenCodec, TokenCounter, TokenizerError};

#[derive(Default)]
pub struct ApproxBpe {
    vocab: Mutex<(HashMap<String, u32>, Vec<String>)>,
}

impl ApproxBpe {
    pub fn pieces(text: &str) -> Vec<&str> {
        let mut pieces = Vec::new();
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        let mut i = 0;
        while i < chars.len() {
            let start = chars[i].0;
            let mut j = i;
            if chars[j].1 == ' ' && j + 1 < chars.len() && chars[j + 1].1.is_alphabetic() {
                j += 1;
            }
            if chars[j].1.is_alphabetic() {
                let mut letters = 0;
                while j < chars.len() && chars[j].1.is_alphabetic() && letters < 5 {
                    j += 1;
                    letters += 1;
                }
            } else {
                j += 1;
            }
            let end = chars.get(j).map_or(text.len(), |c| c.0);
            pieces.push(&text[start..end]);
            i = j;
        }
        pieces
    }
}

impl TokenCounter for ApproxBpe {
    fn count_tokens(&self, text: &str) -> usize {
        Self::pieces(text).len()
    }
}

impl TokenCodec for ApproxBpe {
    fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let mut vocab = self.vocab.lock().unwrap();
        let (ids, pieces) = &mut *vocab;
        Ok(Self::pieces(text)
            .into_iter()
            .map(|piece| {
                *ids.entry(piece.to_string()).or_insert_with(|| {
                    pieces.push(piece.to_string());
                    (pieces.len() - 1) as u32
                })
            })
            .collect())
    }

    fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let vocab = self.vocab.lock().unwrap();
        ids.iter()
            .map(|&id| {
                vocab
                    .1
                    .get(id as usize)
                    .map(String::as_str)
                    .ok_or_else(|| format!("unknown id {id}").into())
            })
            .collect()
    }
}

/// ChatML, as the tokenizer's `chat_prompt` writes it.
pub fn chatml(user: &str) -> String {
    format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
}
