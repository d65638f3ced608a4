//! A request checked and turned into plain values: what to feed, how to sample, when to stop,
//! under which memory policy. Every refusal names the field.

use namm::engine::Sampling;
use namm::policy::{parse_policy, MemoryPolicy};

use crate::openai::{ApiError, ChatRequest, Common, CompletionRequest, Content, Prompt, Stop};

/// At most this many stop sequences (OpenAI's limit), each at most this many bytes.
const MAX_STOPS: usize = 4;
const MAX_STOP_BYTES: usize = 256;

/// The server's defaults, which a request's fields override.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub model: String,
    pub policy: String,
    pub temperature: f64,
    pub max_tokens: usize,
}

/// What to feed the model.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Raw text (`/v1/completions`).
    Text(String),
    /// `(role, content)` turns for the chat template (`/v1/chat/completions`).
    Chat(Vec<(String, String)>),
}

pub struct Ask {
    pub input: Input,
    pub sampling: Sampling,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub policy: Box<dyn MemoryPolicy>,
}

pub fn chat(req: ChatRequest, defaults: &Defaults) -> Result<Ask, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "messages is empty: give at least one message",
        ));
    }
    let mut turns = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.into_iter().enumerate() {
        if !matches!(
            m.role.as_str(),
            "system" | "developer" | "user" | "assistant"
        ) {
            return Err(ApiError::invalid(
                &format!("messages[{i}].role"),
                format!(
                    "messages[{i}].role {:?} is not one of system, developer, user, assistant",
                    m.role
                ),
            ));
        }
        let role = if m.role == "developer" {
            "system".to_string()
        } else {
            m.role
        };
        turns.push((role, content_text(m.content, i)?));
    }
    ask(Input::Chat(turns), req.common, defaults)
}

pub fn completion(req: CompletionRequest, defaults: &Defaults) -> Result<Ask, ApiError> {
    let text = match req.prompt {
        Prompt::One(s) => s,
        Prompt::Many(mut v) if v.len() == 1 => v.remove(0),
        Prompt::Many(v) => {
            return Err(ApiError::invalid(
                "prompt",
                format!(
                    "prompt holds {} strings; this server answers one prompt per request",
                    v.len()
                ),
            ))
        }
    };
    if text.is_empty() {
        return Err(ApiError::invalid("prompt", "prompt is empty"));
    }
    ask(Input::Text(text), req.common, defaults)
}

fn content_text(content: Option<Content>, i: usize) -> Result<String, ApiError> {
    match content {
        None => Ok(String::new()),
        Some(Content::Text(s)) => Ok(s),
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for (j, p) in parts.into_iter().enumerate() {
                match (p.kind.as_str(), p.text) {
                    ("text", Some(t)) => text.push_str(&t),
                    (kind, _) => {
                        return Err(ApiError::invalid(
                            &format!("messages[{i}].content[{j}]"),
                            format!("messages[{i}].content[{j}]: only text parts are supported, not {kind:?}"),
                        ))
                    }
                }
            }
            Ok(text)
        }
    }
}

fn ask(input: Input, c: Common, defaults: &Defaults) -> Result<Ask, ApiError> {
    if let Some(model) = &c.model {
        if model != &defaults.model {
            return Err(ApiError {
                status: 404,
                kind: "invalid_request_error",
                message: format!(
                    "model {model:?} is not served here; this server serves {:?}",
                    defaults.model
                ),
                param: Some("model".into()),
            });
        }
    }
    if let Some(n) = c.n.filter(|&n| n != 1) {
        return Err(ApiError::invalid(
            "n",
            format!("n = {n}: this server answers with one choice"),
        ));
    }
    let sampling = Sampling {
        temperature: c.temperature.unwrap_or(defaults.temperature),
        top_p: c.top_p.unwrap_or(1.0),
        seed: c.seed.unwrap_or(0),
    };
    sampling.check().map_err(|e| {
        let field = if e.starts_with("temperature") {
            "temperature"
        } else {
            "top_p"
        };
        ApiError::invalid(field, e)
    })?;
    let max_tokens = match c.max_completion_tokens.or(c.max_tokens) {
        None => defaults.max_tokens,
        Some(0) => {
            return Err(ApiError::invalid(
                "max_tokens",
                "max_tokens must be at least 1",
            ))
        }
        Some(n) => n.min(usize::MAX as u64) as usize,
    };
    let stop = stops(c.stop)?;
    let spec = c.memory_policy.unwrap_or_else(|| defaults.policy.clone());
    let policy = policy_of(&spec, &defaults.policy)?;
    Ok(Ask {
        input,
        sampling,
        max_tokens,
        stop,
        stream: c.stream,
        include_usage: c.stream_options.is_some_and(|o| o.include_usage),
        policy,
    })
}

fn stops(stop: Option<Stop>) -> Result<Vec<String>, ApiError> {
    let list = match stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if list.len() > MAX_STOPS {
        return Err(ApiError::invalid(
            "stop",
            format!("stop holds {} sequences; at most {MAX_STOPS}", list.len()),
        ));
    }
    if let Some(s) = list
        .iter()
        .find(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
    {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "stop sequence of {} bytes: give 1 to {MAX_STOP_BYTES}",
                s.len()
            ),
        ));
    }
    Ok(list)
}

/// A request may pick any baseline and `namm:default`; a NAMM file only if it is the server's
/// own (a client must not make the server open files of its choosing).
fn policy_of(spec: &str, server: &str) -> Result<Box<dyn MemoryPolicy>, ApiError> {
    let file = |s: &str| {
        s.strip_prefix("namm:")
            .map(|rest| rest.split(',').next().unwrap_or("").to_string())
            .filter(|f| f != "default")
    };
    if let Some(f) = file(spec) {
        if file(server).as_deref() != Some(f.as_str()) {
            return Err(ApiError::invalid(
                "memory_policy",
                format!(
                    "memory_policy {spec:?}: a request may name namm:default or the server's own \
                     NAMM file, not {f:?}"
                ),
            ));
        }
    }
    parse_policy(spec)
        .map_err(|e| ApiError::invalid("memory_policy", format!("memory_policy {spec:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::parse_chat;

    fn defaults() -> Defaults {
        Defaults {
            model: "m".into(),
            policy: "full".into(),
            temperature: 1.0,
            max_tokens: 64,
        }
    }

    fn chat_of(body: &str) -> Result<Ask, ApiError> {
        chat(parse_chat(body.as_bytes())?, &defaults())
    }

    #[test]
    fn a_chat_request_becomes_turns_and_sampling() {
        let a = chat_of(
            r#"{"model": "m", "messages": [{"role": "developer", "content": "be brief"},
                {"role": "user", "content": "hi"}], "temperature": 0, "max_tokens": 5,
                "stop": ["\n"], "memory_policy": "snapkv:budget=0.25"}"#,
        )
        .unwrap();
        assert_eq!(
            a.input,
            Input::Chat(vec![
                ("system".into(), "be brief".into()),
                ("user".into(), "hi".into())
            ])
        );
        assert_eq!((a.sampling.temperature, a.max_tokens), (0.0, 5));
        assert_eq!(a.stop, vec!["\n".to_string()]);
        assert_eq!(a.policy.name(), "snapkv:budget=0.25,window=32,kernel=7");
    }

    #[test]
    fn bad_fields_are_named() {
        let param = |body: &str| chat_of(body).err().expect("refused").param.unwrap();
        let msg = r#""messages": [{"role": "user", "content": "hi"}]"#;
        assert_eq!(param(r#"{"messages": []}"#), "messages");
        assert_eq!(
            param(&format!(
                r#"{{{msg}, "memory_policy": "snapkv:budget=7x"}}"#
            )),
            "memory_policy"
        );
        assert_eq!(
            param(&format!(
                r#"{{{msg}, "memory_policy": "namm:/etc/passwd"}}"#
            )),
            "memory_policy"
        );
        assert_eq!(
            param(&format!(r#"{{{msg}, "temperature": -2}}"#)),
            "temperature"
        );
        assert_eq!(param(&format!(r#"{{{msg}, "top_p": 0}}"#)), "top_p");
        assert_eq!(
            param(&format!(r#"{{{msg}, "max_tokens": 0}}"#)),
            "max_tokens"
        );
        assert_eq!(param(&format!(r#"{{{msg}, "n": 2}}"#)), "n");
        assert_eq!(
            param(&format!(r#"{{{msg}, "stop": ["a","b","c","d","e"]}}"#)),
            "stop"
        );
        assert_eq!(param(&format!(r#"{{{msg}, "model": "other"}}"#)), "model");
        assert_eq!(
            param(r#"{"messages": [{"role": "robot", "content": "x"}]}"#),
            "messages[0].role"
        );
    }
}
