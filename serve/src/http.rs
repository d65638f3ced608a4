//! The HTTP side: routes, bearer check, body limits, and the translation between OpenAI's
//! wire format and the scheduler's jobs and events. Nothing here touches the model.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::StreamExt;
use namm::evaluate::{EvalError, Evaluator};
use namm_proto::bearer::BearerToken;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::openai::{self, ApiError, Usage};
use crate::request::{self, Ask, Defaults, Input};
use crate::scheduler::{Event, Finish, Job, Shutdown};

pub struct App {
    pub evaluator: Arc<Evaluator>,
    pub jobs: mpsc::Sender<Job>,
    pub defaults: Defaults,
    pub metrics: Arc<Metrics>,
    pub token: Option<BearerToken>,
    pub shutdown: Arc<Shutdown>,
    pub max_queue: usize,
    pub started: u64,
    pub next_id: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Completion,
}

impl Endpoint {
    fn name(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat.completions",
            Endpoint::Completion => "completions",
        }
    }
}

/// What a response needs to know about its request.
struct Meta {
    id: String,
    created: u64,
    model: String,
    endpoint: Endpoint,
    include_usage: bool,
}

pub fn router(app: Arc<App>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(app)
}

async fn chat(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    answer(&app, &headers, body, Endpoint::Chat).await
}

async fn completions(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    answer(&app, &headers, body, Endpoint::Completion).await
}

async fn models(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    match app.authorize(&headers) {
        Ok(()) => json_response(
            StatusCode::OK,
            &openai::models(&app.defaults.model, app.started),
        ),
        Err(e) => error_response(&e),
    }
}

async fn health(State(app): State<Arc<App>>) -> Response {
    let status = if app.shutdown.started() {
        "shutting down"
    } else {
        "ok"
    };
    json_response(
        StatusCode::OK,
        &json!({"status": status, "model": app.defaults.model, "memory_policy": app.defaults.policy,
                "in_flight": app.metrics.in_flight.get(), "queued": app.metrics.queued.get()}),
    )
}

async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    match app.authorize(&headers) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            app.metrics.render(),
        )
            .into_response(),
        Err(e) => error_response(&e),
    }
}

async fn not_found() -> Response {
    error_response(&ApiError::new(
        404,
        "not_found_error",
        "no such route: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health, GET /metrics",
    ))
}

async fn answer(
    app: &App,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    endpoint: Endpoint,
) -> Response {
    let response = match admit(app, headers, body, endpoint).await {
        Err(e) => error_response(&e),
        Ok((meta, true, events)) => stream_response(meta, events),
        Ok((meta, false, events)) => collect_response(&meta, events).await,
    };
    app.metrics
        .count(endpoint.name(), response.status().as_u16());
    response
}

/// Checks, parses and tokenises a request and queues it: its metadata, whether it streams,
/// and the receiver of its row's events.
async fn admit(
    app: &App,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    endpoint: Endpoint,
) -> Result<(Meta, bool, mpsc::UnboundedReceiver<Event>), ApiError> {
    app.authorize(headers)?;
    if app.shutdown.started() {
        return Err(ApiError::new(
            503,
            "server_error",
            "the server is shutting down",
        ));
    }
    let body = body
        .map_err(|e| ApiError::new(e.status().as_u16(), "invalid_request_error", e.body_text()))?;
    let ask = match endpoint {
        Endpoint::Chat => request::chat(openai::parse_chat(&body)?, &app.defaults)?,
        Endpoint::Completion => {
            request::completion(openai::parse_completion(&body)?, &app.defaults)?
        }
    };
    let n = app.next_id.fetch_add(1, Ordering::Relaxed);
    let prefix = if endpoint == Endpoint::Chat {
        "chatcmpl"
    } else {
        "cmpl"
    };
    let meta = Meta {
        id: format!("{prefix}-{:x}-{n}", app.started),
        created: now(),
        model: app.defaults.model.clone(),
        endpoint,
        include_usage: ask.include_usage,
    };
    let stream = ask.stream;
    let events = app.queue(&meta.id, ask).await?;
    Ok((meta, stream, events))
}

impl App {
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        match &self.token {
            None => Ok(()),
            Some(token) => token
                .check(headers.get(header::AUTHORIZATION).map(|h| h.as_bytes()))
                .map_err(|why| ApiError::new(401, "authentication_error", why)),
        }
    }

    /// Tokenises off the async threads (a long prompt takes a while) and hands the job over.
    async fn queue(&self, id: &str, ask: Ask) -> Result<mpsc::UnboundedReceiver<Event>, ApiError> {
        let evaluator = Arc::clone(&self.evaluator);
        let (job_id, input) = (id.to_string(), ask.input);
        let prompt = tokio::task::spawn_blocking(move || tokenize(&evaluator, &job_id, &input))
            .await
            .map_err(|e| ApiError::new(500, "server_error", format!("tokenising failed: {e}")))??;
        let (events, receiver) = mpsc::unbounded_channel();
        let job = Job {
            id: id.to_string(),
            prompt,
            policy: ask.policy,
            sampling: ask.sampling,
            max_tokens: ask.max_tokens,
            stop: ask.stop,
            events,
            arrived: Instant::now(),
        };
        match self.jobs.try_send(job) {
            Ok(()) => {
                self.metrics.queued.inc();
                Ok(receiver)
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(ApiError::new(
                503,
                "server_error",
                format!("the server is busy: {} requests are already waiting (--max-queue); retry later", self.max_queue),
            )),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(ApiError::new(503, "server_error", "the server is shutting down"))
            }
        }
    }
}

fn tokenize(evaluator: &Evaluator, id: &str, input: &Input) -> Result<Vec<u32>, ApiError> {
    let (field, text) = match input {
        Input::Text(t) => ("prompt", t.clone()),
        Input::Chat(turns) => {
            let turns: Vec<(&str, &str)> = turns
                .iter()
                .map(|(r, c)| (r.as_str(), c.as_str()))
                .collect();
            (
                "messages",
                evaluator
                    .tokenizer()
                    .chat_template()
                    .render_conversation(&turns),
            )
        }
    };
    let context = evaluator.model().config().context_length;
    let ids = evaluator.prompt_ids(id, &text).map_err(|e| match e {
        EvalError::PromptTooLong { tokens, .. } => too_long(field, tokens, context),
        other => ApiError::invalid(field, format!("{field}: {other}")),
    })?;
    if ids.len() >= context {
        return Err(too_long(field, ids.len(), context));
    }
    Ok(ids)
}

fn too_long(field: &str, tokens: usize, context: usize) -> ApiError {
    ApiError::invalid(
        field,
        format!("{field}: the prompt has {tokens} tokens; the model's context holds {context}, prompt and answer together"),
    )
}

fn usage(stats: &namm::engine::StreamStats, policy: String) -> Usage {
    Usage {
        prompt_tokens: stats.prompt_tokens,
        completion_tokens: stats.generated_tokens,
        total_tokens: stats.prompt_tokens + stats.generated_tokens,
        kept_fraction: stats.kept_fraction,
        peak_kv_bytes: stats.peak_kv_bytes,
        full_kv_bytes: stats.full_kv_bytes,
        memory_policy: policy,
    }
}

fn finish_name(finish: Finish) -> &'static str {
    match finish {
        Finish::Stop => "stop",
        Finish::Length => "length",
    }
}

async fn collect_response(meta: &Meta, mut events: mpsc::UnboundedReceiver<Event>) -> Response {
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Text(piece) => text.push_str(&piece),
            Event::Done {
                finish,
                stats,
                policy,
            } => {
                let usage = usage(&stats, policy);
                let body = match meta.endpoint {
                    Endpoint::Chat => openai::chat_response(
                        &meta.id,
                        meta.created,
                        &meta.model,
                        &text,
                        finish_name(finish),
                        &usage,
                    ),
                    Endpoint::Completion => openai::completion_response(
                        &meta.id,
                        meta.created,
                        &meta.model,
                        &text,
                        finish_name(finish),
                        &usage,
                    ),
                };
                return json_response(StatusCode::OK, &body);
            }
            Event::Failed { status, message } => {
                return error_response(&ApiError::new(status, "server_error", message))
            }
        }
    }
    error_response(&ApiError::new(
        500,
        "server_error",
        "the generation ended without an answer",
    ))
}

/// Server-sent events as OpenAI streams them: a chunk per piece of text, a last chunk with
/// the finish reason, the usage chunk when asked for, then `[DONE]`.
fn stream_response(meta: Meta, events: mpsc::UnboundedReceiver<Event>) -> Response {
    let meta = Arc::new(meta);
    let chat = meta.endpoint == Endpoint::Chat;
    let opening = chat.then(|| {
        vec![data(&openai::chunk(
            true,
            &meta.id,
            meta.created,
            &meta.model,
            Some(json!({"role": "assistant", "content": ""})),
            None,
        ))]
    });
    let body = futures::stream::iter(opening)
        .chain(futures::stream::unfold(Some(events), move |events| {
            let meta = Arc::clone(&meta);
            async move {
                let mut events = events?;
                let out = match events.recv().await? {
                    Event::Text(piece) => {
                        let delta = if chat {
                            json!({"content": piece})
                        } else {
                            json!(piece)
                        };
                        return Some((
                            vec![data(&openai::chunk(
                                chat,
                                &meta.id,
                                meta.created,
                                &meta.model,
                                Some(delta),
                                None,
                            ))],
                            Some(events),
                        ));
                    }
                    Event::Done {
                        finish,
                        stats,
                        policy,
                    } => {
                        let mut out = vec![data(&openai::chunk(
                            chat,
                            &meta.id,
                            meta.created,
                            &meta.model,
                            None,
                            Some(finish_name(finish)),
                        ))];
                        if meta.include_usage {
                            out.push(data(&openai::usage_chunk(
                                chat,
                                &meta.id,
                                meta.created,
                                &meta.model,
                                &usage(&stats, policy),
                            )));
                        }
                        out.push(SseEvent::default().data("[DONE]"));
                        out
                    }
                    Event::Failed { status, message } => {
                        vec![data(&ApiError::new(status, "server_error", message).body())]
                    }
                };
                Some((out, None))
            }
        }))
        .flat_map(|events| futures::stream::iter(events.into_iter().map(Ok::<_, Infallible>)));
    Sse::new(body)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn data(value: &Value) -> SseEvent {
    SseEvent::default().data(value.to_string())
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error_response(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &e.body())
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
