//! The engine thread: requests in flight are rows of one batch. Between two steps finished
//! rows leave, rows whose client went away are dropped, and queued requests join (up to
//! `--max-concurrent`); a joining prompt is fed in slices so that the rows already decoding
//! keep stepping.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use namm::engine::{step, Sampling, Step, StopReason, Stream, StreamStats};
use namm::evaluate::Evaluator;
use namm::policy::MemoryPolicy;
use namm::tokenizer::{TextStream, Tokenizer};
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// One request, tokenised, waiting for a row.
pub struct Job {
    pub id: String,
    pub prompt: Vec<u32>,
    pub policy: Box<dyn MemoryPolicy>,
    pub sampling: Sampling,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub events: mpsc::UnboundedSender<Event>,
    pub arrived: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// A stop token or a stop sequence.
    Stop,
    /// max_tokens or the model's context.
    Length,
}

/// What a request hears from its row.
#[derive(Debug, Clone)]
pub enum Event {
    Text(String),
    Done {
        finish: Finish,
        stats: StreamStats,
        policy: String,
    },
    Failed {
        status: u16,
        message: String,
    },
}

/// When the server stops: rows still running at the deadline are cancelled.
#[derive(Debug, Default)]
pub struct Shutdown {
    deadline: Mutex<Option<Instant>>,
}

impl Shutdown {
    pub fn begin(&self, grace: Duration) {
        *self.deadline.lock().expect("shutdown lock") = Some(Instant::now() + grace);
    }

    pub fn started(&self) -> bool {
        self.deadline.lock().expect("shutdown lock").is_some()
    }

    fn expired(&self) -> bool {
        self.deadline
            .lock()
            .expect("shutdown lock")
            .is_some_and(|d| Instant::now() >= d)
    }
}

pub struct Scheduler {
    pub evaluator: Arc<Evaluator>,
    pub jobs: mpsc::Receiver<Job>,
    pub max_concurrent: usize,
    pub prefill_slice: usize,
    pub metrics: Arc<Metrics>,
    pub shutdown: Arc<Shutdown>,
}

impl Scheduler {
    /// Runs until every sender of jobs is gone and the last row has ended.
    pub fn run(mut self) {
        let evaluator = Arc::clone(&self.evaluator);
        let tokenizer = evaluator.tokenizer();
        let stop_ids = tokenizer.stop_ids().to_vec();
        let mut rows: Vec<Row<'_>> = Vec::new();
        loop {
            if !self.admit(&mut rows, &evaluator, &stop_ids) {
                return;
            }
            self.drop_gone(&mut rows);
            if self.shutdown.expired() {
                for mut row in rows.drain(..) {
                    tracing::warn!(request = %row.id, "cancelled: the shutdown's grace period ended");
                    self.metrics.cancelled.inc();
                    row.fail(503, "cancelled: the server is shutting down".into());
                }
            }
            self.metrics.in_flight.set(rows.len() as i64);
            if rows.is_empty() {
                continue;
            }
            let steps = {
                let mut streams: Vec<&mut Stream<'_>> =
                    rows.iter_mut().map(|r| &mut r.stream).collect();
                step(&mut streams, self.prefill_slice)
            };
            match steps {
                Ok(steps) => {
                    for (row, s) in rows.iter_mut().zip(steps) {
                        row.take(s, tokenizer, &self.metrics);
                    }
                    rows.retain(|r| !r.ended);
                }
                Err(e) => {
                    tracing::error!("a batch step failed: {e}; its {} requests fail", rows.len());
                    for mut row in rows.drain(..) {
                        row.fail(500, format!("generation failed: {e}"));
                    }
                }
            }
            self.metrics.in_flight.set(rows.len() as i64);
        }
    }

    /// Takes queued jobs while rows are free, waiting for one when none runs; false once the
    /// queue is closed and nothing is left to do.
    fn admit<'m>(
        &mut self,
        rows: &mut Vec<Row<'m>>,
        evaluator: &'m Evaluator,
        stop_ids: &[u32],
    ) -> bool {
        while rows.len() < self.max_concurrent {
            let job = if rows.is_empty() {
                match self.jobs.blocking_recv() {
                    Some(job) => job,
                    None => return false,
                }
            } else {
                match self.jobs.try_recv() {
                    Ok(job) => job,
                    Err(_) => break,
                }
            };
            self.metrics.queued.dec();
            if job.events.is_closed() {
                tracing::info!(request = %job.id, "the client went away while the request was queued");
                self.metrics.disconnects.inc();
                continue;
            }
            if self.shutdown.expired() {
                self.metrics.cancelled.inc();
                let _ = job.events.send(Event::Failed {
                    status: 503,
                    message: "cancelled: the server is shutting down".into(),
                });
                continue;
            }
            match Row::start(job, evaluator, stop_ids) {
                Ok(row) => rows.push(row),
                Err((events, e)) => {
                    let _ = events.send(Event::Failed {
                        status: 500,
                        message: format!("could not start the generation: {e}"),
                    });
                }
            }
        }
        true
    }

    fn drop_gone(&self, rows: &mut Vec<Row<'_>>) {
        rows.retain(|r| {
            let gone = r.events.is_closed();
            if gone {
                tracing::info!(request = %r.id, generated = r.stream.stats().generated_tokens,
                    "the client went away; the row is dropped and its cache freed");
                self.metrics.disconnects.inc();
            }
            !gone
        });
    }
}

/// A request in the batch: its stream, and the text not yet sent (held back while it could
/// still be the start of a stop sequence).
struct Row<'m> {
    id: String,
    stream: Stream<'m>,
    events: mpsc::UnboundedSender<Event>,
    stop: Vec<String>,
    pieces: TextStream,
    text: String,
    sent: usize,
    arrived: Instant,
    first_token: bool,
    ended: bool,
}

type StartError = (mpsc::UnboundedSender<Event>, namm::engine::EngineError);

impl<'m> Row<'m> {
    fn start(job: Job, evaluator: &'m Evaluator, stop_ids: &[u32]) -> Result<Self, StartError> {
        let stream = Stream::new(
            evaluator.model(),
            job.prompt,
            job.policy,
            job.sampling,
            job.max_tokens,
            stop_ids.to_vec(),
        );
        match stream {
            Ok(stream) => Ok(Self {
                id: job.id,
                stream,
                events: job.events,
                stop: job.stop,
                pieces: TextStream::new(true),
                text: String::new(),
                sent: 0,
                arrived: job.arrived,
                first_token: false,
                ended: false,
            }),
            Err(e) => Err((job.events, e)),
        }
    }

    fn take(&mut self, step: Step, tokenizer: &Tokenizer, metrics: &Metrics) {
        let Some(token) = step.token else { return };
        if !self.first_token {
            self.first_token = true;
            metrics
                .time_to_first_token
                .observe(self.arrived.elapsed().as_secs_f64());
        }
        match self.pieces.push(tokenizer, token) {
            Ok(piece) => self.text.push_str(&piece),
            Err(e) => return self.fail(500, format!("decoding token {token}: {e}")),
        }
        if let Some(at) = self.stop_at() {
            self.text.truncate(at);
            return self.end(Finish::Stop, metrics);
        }
        match step.stopped {
            Some(reason) => {
                let tail = std::mem::replace(&mut self.pieces, TextStream::new(true)).finish();
                self.text.push_str(&tail);
                let finish = match reason {
                    StopReason::StopToken(_) => Finish::Stop,
                    StopReason::MaxTokens | StopReason::ContextFull => Finish::Length,
                };
                self.end(finish, metrics);
            }
            None => {
                let longest = self.stop.iter().map(String::len).max().unwrap_or(0);
                let mut safe = self.text.len().saturating_sub(longest.saturating_sub(1));
                while !self.text.is_char_boundary(safe) {
                    safe -= 1;
                }
                self.send_up_to(safe);
            }
        }
    }

    /// Where the first stop sequence in the text starts, if one has appeared.
    fn stop_at(&self) -> Option<usize> {
        let longest = self.stop.iter().map(String::len).max()?;
        let mut from = self.sent.saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        self.stop
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|at| from + at))
            .min()
    }

    fn send_up_to(&mut self, end: usize) {
        if end > self.sent {
            let _ = self
                .events
                .send(Event::Text(self.text[self.sent..end].to_string()));
            self.sent = end;
        }
    }

    fn end(&mut self, finish: Finish, metrics: &Metrics) {
        self.send_up_to(self.text.len());
        let stats = self.stream.stats();
        metrics.prompt_tokens.inc_by(stats.prompt_tokens as u64);
        metrics
            .completion_tokens
            .inc_by(stats.generated_tokens as u64);
        metrics.kept_fraction.observe(stats.kept_fraction);
        let _ = self.events.send(Event::Done {
            finish,
            stats,
            policy: self.stream.policy_name(),
        });
        self.ended = true;
    }

    fn fail(&mut self, status: u16, message: String) {
        let _ = self.events.send(Event::Failed { status, message });
        self.ended = true;
    }
}
