//! The OpenAI API subset on the wire: request bodies as clients send them, responses and
//! stream chunks as clients parse them, and errors in OpenAI's shape.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// An error response: HTTP status, OpenAI's `error` object, naming the bad field in `param`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub message: String,
    pub param: Option<String>,
}

impl ApiError {
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self {
            status: 400,
            kind: "invalid_request_error",
            message: message.into(),
            param: Some(param.to_string()),
        }
    }

    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            param: None,
        }
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": null}})
    }
}

/// `stop`: one string or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The fields both endpoints share (unknown fields are ignored, as OpenAI's servers do).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Common {
    pub model: Option<String>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub n: Option<u64>,
    /// namm's extension: the memory policy of this request (`snapkv:budget=0.25`).
    pub memory_policy: Option<String>,
}

/// A message's content: a string, or a list of parts of which only text parts are read.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Option<Content>,
}

#[derive(Debug, Clone, Deserialize)]
struct ChatBody {
    messages: Vec<Message>,
}

#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub common: Common,
}

/// `prompt`: a string, or a list holding one.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
struct CompletionBody {
    prompt: Prompt,
}

#[derive(Debug, Clone)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    pub common: Common,
}

/// `usage`: OpenAI's counts plus what the memory policy did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    /// Mean over layers of the cached tokens over the tokens seen, at the end (1.0: full).
    pub kept_fraction: f64,
    /// Largest size the request's K and V entries reached (f32 bytes, all layers).
    pub peak_kv_bytes: usize,
    /// What the full cache would have held for the same tokens.
    pub full_kv_bytes: usize,
    pub memory_policy: String,
}

pub fn parse_chat(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let value = parse_object(body)?;
    let ChatBody { messages } = field_typed(&value)?;
    Ok(ChatRequest {
        messages,
        common: field_typed(&value)?,
    })
}

pub fn parse_completion(body: &[u8]) -> Result<CompletionRequest, ApiError> {
    let value = parse_object(body)?;
    let CompletionBody { prompt } = field_typed(&value)?;
    Ok(CompletionRequest {
        prompt,
        common: field_typed(&value)?,
    })
}

fn parse_object(body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            400,
            "invalid_request_error",
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    if !value.is_object() {
        return Err(ApiError::new(
            400,
            "invalid_request_error",
            "the body must be a JSON object",
        ));
    }
    Ok(value)
}

/// Reads `T` out of the request object, naming the field a type error is in.
fn field_typed<T: serde::de::DeserializeOwned>(value: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::new(
                400,
                "invalid_request_error",
                format!("the body is not a valid request: {inner}"),
            )
        } else {
            ApiError::invalid(&path, format!("{path}: {inner}"))
        }
    })
}

pub fn chat_response(
    id: &str,
    created: u64,
    model: &str,
    text: &str,
    finish: &str,
    usage: &Usage,
) -> Value {
    json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "logprobs": null, "finish_reason": finish}],
        "usage": usage,
    })
}

pub fn completion_response(
    id: &str,
    created: u64,
    model: &str,
    text: &str,
    finish: &str,
    usage: &Usage,
) -> Value {
    json!({
        "id": id, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}],
        "usage": usage,
    })
}

/// One stream chunk; `delta` is a chat delta object or, for completions, the text.
pub fn chunk(
    chat: bool,
    id: &str,
    created: u64,
    model: &str,
    delta: Option<Value>,
    finish: Option<&str>,
) -> Value {
    let (object, choice) = if chat {
        let delta = delta.unwrap_or_else(|| json!({}));
        (
            "chat.completion.chunk",
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}),
        )
    } else {
        let text = delta.unwrap_or_else(|| json!(""));
        (
            "text_completion",
            json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish}),
        )
    };
    json!({"id": id, "object": object, "created": created, "model": model, "choices": [choice]})
}

/// The last chunk of a stream asked to include usage: no choices.
pub fn usage_chunk(chat: bool, id: &str, created: u64, model: &str, usage: &Usage) -> Value {
    let object = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    json!({"id": id, "object": object, "created": created, "model": model, "choices": [], "usage": usage})
}

pub fn models(model: &str, created: u64) -> Value {
    json!({"object": "list", "data": [{"id": model, "object": "model", "created": created, "owned_by": "namm"}]})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_type_error_names_its_field() {
        let e = parse_chat(br#"{"messages": [], "temperature": "hot"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature"), "{e:?}");
        let e = parse_chat(br#"{"messages": [{"role": 1}]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"), "{e:?}");
    }

    #[test]
    fn malformed_json_and_trailing_bytes_are_refused() {
        assert_eq!(parse_chat(b"{\"messages\": [").unwrap_err().status, 400);
        assert_eq!(parse_chat(b"{\"messages\": []} x").unwrap_err().status, 400);
    }

    #[test]
    fn content_may_be_text_or_parts() {
        let r = parse_chat(
            br#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "stop": "x"}"#,
        )
        .unwrap();
        assert!(
            matches!(&r.messages[0].content, Some(Content::Parts(p)) if p[0].text.as_deref() == Some("hi"))
        );
        assert!(matches!(r.common.stop, Some(Stop::One(_))));
    }
}
