//! Reading a GGUF file's header and the typed metadata lookups the tokenizer needs.

use super::error::{Result, TokenizerError};
use candle_core::quantized::gguf_file::{Content, Value};
use std::fs::File;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

/// Reads the header (metadata and tensor table) of the GGUF file at `path` and checks that every
/// tensor the table declares lies inside the file, so a truncated download is reported here
/// rather than when a tensor is first loaded.
pub fn read_gguf_content(path: &Path) -> Result<Content> {
    let io_err = |source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    // candle divides by `general.alignment` without checking it for zero; a crafted header must
    // come back as an error, not abort the caller.
    let content = catch_unwind(AssertUnwindSafe(|| Content::read(&mut file)))
        .map_err(|_| TokenizerError::BadGguf {
            path: path.to_path_buf(),
            reason: "the GGUF reader panicked on the header (is `general.alignment` zero?)".into(),
        })?
        .map_err(|e| TokenizerError::BadGguf {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    // The tensor that reaches furthest is named, so the same file gets the same message.
    let mut furthest: Option<(u64, &String)> = None;
    for (name, info) in &content.tensor_infos {
        let elems = info.shape.elem_count() as u64;
        let block = info.ggml_dtype.block_size() as u64;
        if !elems.is_multiple_of(block) {
            return Err(TokenizerError::BadGguf {
                path: path.to_path_buf(),
                reason: format!(
                    "tensor `{name}` has {elems} elements, not a multiple of the {:?} block size {block}",
                    info.ggml_dtype
                ),
            });
        }
        let bytes = elems / block * info.ggml_dtype.type_size() as u64;
        let end = content
            .tensor_data_offset
            .saturating_add(info.offset)
            .saturating_add(bytes);
        if furthest.is_none_or(|(e, n)| (end, name) > (e, n)) {
            furthest = Some((end, name));
        }
    }
    if let Some((end, name)) = furthest.filter(|&(end, _)| end > len) {
        return Err(TokenizerError::Truncated {
            path: path.to_path_buf(),
            tensor: name.clone(),
            end,
            len,
        });
    }
    Ok(content)
}

pub(super) fn get<'a>(content: &'a Content, key: &'static str) -> Result<&'a Value> {
    content
        .metadata
        .get(key)
        .ok_or(TokenizerError::MissingKey { key })
}

pub(super) fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(items) => format!("an array of {} values", items.len()),
        other => format!("{other:?}"),
    }
}

fn wrong_type(key: &'static str, expected: &'static str, value: &Value) -> TokenizerError {
    TokenizerError::WrongType {
        key,
        expected,
        found: describe(value),
    }
}

pub(super) fn string<'a>(content: &'a Content, key: &'static str) -> Result<&'a str> {
    match get(content, key)? {
        Value::String(s) => Ok(s),
        other => Err(wrong_type(key, "a string", other)),
    }
}

pub(super) fn optional_string<'a>(
    content: &'a Content,
    key: &'static str,
) -> Result<Option<&'a str>> {
    match content.metadata.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(wrong_type(key, "a string", other)),
    }
}

fn as_u64(value: &Value) -> Option<u64> {
    match *value {
        Value::U8(v) => Some(v.into()),
        Value::U16(v) => Some(v.into()),
        Value::U32(v) => Some(v.into()),
        Value::U64(v) => Some(v),
        Value::I8(v) => u64::try_from(v).ok(),
        Value::I16(v) => u64::try_from(v).ok(),
        Value::I32(v) => u64::try_from(v).ok(),
        Value::I64(v) => u64::try_from(v).ok(),
        _ => None,
    }
}

/// A token id stored under `key`, checked against the vocabulary size.
pub(super) fn optional_token_id(
    content: &Content,
    key: &'static str,
    vocab_size: usize,
) -> Result<Option<u32>> {
    let Some(value) = content.metadata.get(key) else {
        return Ok(None);
    };
    let id = as_u64(value).ok_or_else(|| wrong_type(key, "a non-negative integer", value))?;
    match u32::try_from(id) {
        Ok(id32) if (id32 as usize) < vocab_size => Ok(Some(id32)),
        _ => Err(TokenizerError::IdOutOfVocab {
            key,
            id,
            vocab_size,
        }),
    }
}

pub(super) fn string_array<'a>(content: &'a Content, key: &'static str) -> Result<Vec<&'a str>> {
    let value = get(content, key)?;
    let Value::Array(items) = value else {
        return Err(wrong_type(key, "an array of strings", value));
    };
    items
        .iter()
        .map(|item| match item {
            Value::String(s) => Ok(s.as_str()),
            other => Err(TokenizerError::WrongType {
                key,
                expected: "an array of strings",
                found: format!("an element {}", describe(other)),
            }),
        })
        .collect()
}

/// An array of integers (llama.cpp stores token types as i32) under `key`, if present.
pub(super) fn optional_int_array(content: &Content, key: &'static str) -> Result<Option<Vec<u64>>> {
    let Some(value) = content.metadata.get(key) else {
        return Ok(None);
    };
    let Value::Array(items) = value else {
        return Err(wrong_type(key, "an array of integers", value));
    };
    items
        .iter()
        .map(|item| {
            as_u64(item).ok_or_else(|| TokenizerError::WrongType {
                key,
                expected: "an array of non-negative integers",
                found: format!("an element {}", describe(item)),
            })
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}
