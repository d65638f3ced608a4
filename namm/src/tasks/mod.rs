//! Benchmark tasks: synthetic long-context tasks generated deterministically from
//! (spec, seed, index), and a loader for LongBench-format JSONL files.
//!
//! A task is named by a [`TaskSpec`] string such as `passkey:len=1024,depth=0.5` (see
//! [`spec`] for the syntax); [`TaskSpec::load`] gives a [`Task`] whose [`Task::sample`] builds
//! the [`Sample`] at an index: the user message, the answer prefix that opens the assistant's
//! turn, the gold answers, the [`Metric`] and the generation length.
//!
//! Lengths are in model tokens. The tokenizer belongs to the `engine` feature, so generation
//! takes it through the small [`TokenCounter`] / [`TokenCodec`] traits, and the chat template
//! as a closure from user message to templated text ([`Sample::prompt`]); synthetic prompts are
//! filled until the templated prompt plus answer prefix is as close to `len` tokens as the
//! filler's granularity allows, without exceeding it.

mod common_words;
mod error;
mod fill;
mod kv_retrieval;
mod longbench;
mod niah;
mod passkey;
mod rng;
pub mod spec;
mod variable_tracking;
mod words;

pub use error::TaskError;
pub use longbench::{
    dataset_max_new_tokens, dataset_metric, dataset_prompt, truncate_middle, LongBenchRecord,
    LONGBENCH_DATASETS,
};
pub use spec::{
    CommonWordsSpec, Depth, KvRetrievalSpec, LongBenchSpec, NiahSpec, PasskeySpec, TaskSpec,
    VariableTrackingSpec,
};

use serde::{Deserialize, Serialize};

use crate::metrics::Metric;

/// Counts the tokens a text becomes; the model's tokenizer implements it.
pub trait TokenCounter {
    fn count_tokens(&self, text: &str) -> usize;
}

/// Turns text into token ids and back; needed for LongBench's middle truncation, which, as
/// LongBench does, cuts the token sequence and decodes both halves. `encode` adds no BOS and
/// treats control-token text literally (the model tokenizer's `encode(text, false)`); `decode`
/// leaves control tokens out (`decode(ids, true)`).
pub trait TokenCodec: TokenCounter {
    fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError>;
    fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError>;
}

/// A failure of the tokenizer behind [`TokenCodec`].
pub type TokenizerError = Box<dyn std::error::Error + Send + Sync>;

/// Wraps a user message into the model's chat template (e.g. the tokenizer's `chat_prompt`,
/// ChatML `<|im_start|>user\n…<|im_end|>\n<|im_start|>assistant\n`).
pub type ChatTemplate<'a> = &'a dyn Fn(&str) -> String;

/// One prompt of a task with what is needed to score the model's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Position of the sample in its task (the index it was generated or loaded for).
    pub index: u64,
    /// Stable name of the sample: `<task>/<index>` for synthetic tasks, the record's `_id`
    /// (or `<dataset>/<index>`) for LongBench.
    pub id: String,
    /// The user message.
    pub user_prompt: String,
    /// Text that opens the assistant's turn after the template ("The pass key is"); the model
    /// continues it. Empty for LongBench, whose prompts end in "Answer:" themselves.
    pub answer_prefix: String,
    /// Whether the user message goes through the chat template. False for the LongBench tasks
    /// that LongBench's `pred.py` runs without one (few-shot and code completion).
    pub chat: bool,
    /// Gold answers.
    pub answers: Vec<String>,
    pub metric: Metric,
    pub max_new_tokens: usize,
    /// Score only the first line of the prediction (after leading newlines), as LongBench's
    /// `eval.py` does for trec, triviaqa, samsum and lsht.
    pub first_line_only: bool,
}

impl Sample {
    /// The full text to feed the model: the templated user message (or the raw one when
    /// `chat` is false) followed by the answer prefix.
    pub fn prompt(&self, template: ChatTemplate<'_>) -> String {
        render(&self.user_prompt, &self.answer_prefix, self.chat, template)
    }

    /// Score of a prediction (the generated text after the prompt) in [0, 1].
    pub fn score(&self, prediction: &str) -> f64 {
        let prediction = if self.first_line_only {
            prediction
                .trim_start_matches('\n')
                .split('\n')
                .next()
                .unwrap_or("")
        } else {
            prediction
        };
        self.metric.score(prediction, &self.answers)
    }
}

fn render(user: &str, answer_prefix: &str, chat: bool, template: ChatTemplate<'_>) -> String {
    let mut text = if chat {
        template(user)
    } else {
        user.to_string()
    };
    text.push_str(answer_prefix);
    text
}

/// A task ready to produce samples: a synthetic generator, or a loaded LongBench file.
#[derive(Debug, Clone)]
pub struct Task {
    spec: TaskSpec,
    records: Vec<LongBenchRecord>,
}

impl Task {
    pub fn spec(&self) -> &TaskSpec {
        &self.spec
    }

    /// Number of samples: the records of a LongBench file; `None` for a synthetic task, which
    /// has one for every index.
    pub fn len(&self) -> Option<usize> {
        match self.spec {
            TaskSpec::LongBench(_) => Some(self.records.len()),
            _ => None,
        }
    }

    /// Whether a LongBench file had no (matching) records.
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// The sample at `index`. Synthetic samples are a pure function of (spec, seed, index,
    /// tokenizer, template): sample i is the same however many others are generated. LongBench
    /// samples are the file's records in order and ignore the seed.
    pub fn sample<T>(
        &self,
        seed: u64,
        index: u64,
        tokenizer: &T,
        template: ChatTemplate<'_>,
    ) -> Result<Sample, TaskError>
    where
        T: TokenCodec + ?Sized,
    {
        let seed = self.spec.seed_override().unwrap_or(seed);
        let mut rng = rng::sample_rng(self.spec.name(), seed, index);
        let id = format!("{}/{index}", self.spec.name());
        let counter = Counter(tokenizer);
        let generated = match &self.spec {
            TaskSpec::Passkey(spec) => passkey::generate(spec, &mut rng, &counter, template)?,
            TaskSpec::NiahMultikey(spec) => niah::generate(spec, &mut rng, &counter, template)?,
            TaskSpec::KvRetrieval(spec) => {
                kv_retrieval::generate(spec, &mut rng, &counter, template)?
            }
            TaskSpec::VariableTracking(spec) => {
                variable_tracking::generate(spec, &mut rng, &counter, template)?
            }
            TaskSpec::CommonWords(spec) => {
                common_words::generate(spec, &mut rng, &counter, template)?
            }
            TaskSpec::LongBench(spec) => {
                return longbench::sample(spec, &self.records, index, tokenizer)
            }
        };
        Ok(Sample {
            index,
            id,
            user_prompt: generated.user_prompt,
            answer_prefix: generated.answer_prefix,
            chat: true,
            answers: generated.answers,
            metric: Metric::AllFound,
            max_new_tokens: generated.max_new_tokens,
            first_line_only: false,
        })
    }
}

impl TaskSpec {
    /// Prepares the task: reads and validates a LongBench file; synthetic tasks need nothing.
    pub fn load(&self) -> Result<Task, TaskError> {
        let records = match self {
            TaskSpec::LongBench(spec) => longbench::load(spec)?,
            _ => Vec::new(),
        };
        Ok(Task {
            spec: self.clone(),
            records,
        })
    }
}

/// What a synthetic generator returns; [`Task::sample`] completes it into a [`Sample`].
struct Generated {
    user_prompt: String,
    answer_prefix: String,
    answers: Vec<String>,
    max_new_tokens: usize,
}

/// Lets the generators take `&dyn TokenCounter` whatever the caller's tokenizer type.
struct Counter<'a, T: ?Sized>(&'a T);

impl<T: TokenCounter + ?Sized> TokenCounter for Counter<'_, T> {
    fn count_tokens(&self, text: &str) -> usize {
        self.0.count_tokens(text)
    }
}
