//! LongBench-format JSONL files (fields `input`, `context`, `answers`, `all_classes`, `dataset`,
//! `length`, `_id`) with LongBench's prompt templates (`config/dataset2prompt.json`), generation
//! lengths (`config/dataset2maxlen.json`), metrics (`eval.py:dataset2metric`) and middle
//! truncation (`pred.py`), for the English datasets.

use std::path::Path;

use serde_json::Value;

use super::{LongBenchSpec, Sample, TaskError, TokenCodec};
use crate::metrics::Metric;

/// The English LongBench datasets this loader knows.
pub const LONGBENCH_DATASETS: [&str; 16] = [
    "narrativeqa",
    "qasper",
    "multifieldqa_en",
    "hotpotqa",
    "2wikimqa",
    "musique",
    "gov_report",
    "qmsum",
    "multi_news",
    "trec",
    "triviaqa",
    "samsum",
    "passage_count",
    "passage_retrieval_en",
    "lcc",
    "repobench-p",
];

const MULTI_DOC_QA: &str = "Answer the question based on the given passages. Only give me the \
answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\n\
Answer the question based on the given passages. Only give me the answer and do not output any \
other words.\n\nQuestion: {input}\nAnswer:";

/// LongBench's prompt template of a dataset (`dataset2prompt.json`), with `{context}` and
/// `{input}` placeholders.
pub fn dataset_prompt(dataset: &str) -> Option<&'static str> {
    Some(match dataset {
        "narrativeqa" => {
            "You are given a story, which can be either a novel or a movie script, \
and a question. Answer the question as concisely as you can, using a single phrase if possible. \
Do not provide any explanation.\n\nStory: {context}\n\nNow, answer the question based on the \
story as concisely as you can, using a single phrase if possible. Do not provide any \
explanation.\n\nQuestion: {input}\n\nAnswer:"
        }
        "qasper" => {
            "You are given a scientific article and a question. Answer the question as \
concisely as you can, using a single phrase or sentence if possible. If the question cannot be \
answered based on the information in the article, write \"unanswerable\". If the question is a \
yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\
\n\nArticle: {context}\n\n Answer the question based on the above article as concisely as you \
can, using a single phrase or sentence if possible. If the question cannot be answered based on \
the information in the article, write \"unanswerable\". If the question is a yes/no question, \
answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nQuestion: \
{input}\n\nAnswer:"
        }
        "multifieldqa_en" => {
            "Read the following text and answer briefly.\n\n{context}\n\nNow, \
answer the following question based on the above text, only give me the answer and do not \
output any other words.\n\nQuestion: {input}\nAnswer:"
        }
        "hotpotqa" | "2wikimqa" | "musique" => MULTI_DOC_QA,
        "gov_report" => {
            "You are given a report by a government agency. Write a one-page summary \
of the report.\n\nReport:\n{context}\n\nNow, write a one-page summary of the report.\n\nSummary:"
        }
        "qmsum" => {
            "You are given a meeting transcript and a query containing a question or \
instruction. Answer the query in one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer \
the query based on the above meeting transcript in one or more sentences.\n\nQuery: \
{input}\nAnswer:"
        }
        "multi_news" => {
            "You are given several news passages. Write a one-page summary of all \
news. \n\nNews:\n{context}\n\nNow, write a one-page summary of all the news.\n\nSummary:"
        }
        "trec" => {
            "Please determine the type of the question below. Here are some examples of \
questions.\n\n{context}\n{input}"
        }
        "triviaqa" => {
            "Answer the question based on the given passage. Only give me the answer \
and do not output any other words. The following are some examples.\n\n{context}\n\n{input}"
        }
        "samsum" => {
            "Summarize the dialogue into a few short sentences. The following are some \
examples.\n\n{context}\n\n{input}"
        }
        "passage_count" => {
            "There are some paragraphs below sourced from Wikipedia. Some of them \
may be duplicates. Please carefully read these paragraphs and determine how many unique \
paragraphs there are after removing duplicates. In other words, how many non-repeating \
paragraphs are there in total?\n\n{context}\n\nPlease enter the final count of unique paragraphs \
after removing duplicates. The output format should only contain the number, such as 1, 2, 3, \
and so on.\n\nThe final answer is: "
        }
        "passage_retrieval_en" => {
            "Here are 30 paragraphs from Wikipedia, along with an \
abstract. Please determine which paragraph the abstract is from.\n\n{context}\n\nThe following \
is an abstract.\n\n{input}\n\nPlease enter the number of the paragraph that the abstract is \
from. The answer format must be like \"Paragraph 1\", \"Paragraph 2\", etc.\n\nThe answer is: "
        }
        "lcc" => "Please complete the code given below. \n{context}Next line of code:\n",
        "repobench-p" => {
            "Please complete the code given below. \n{context}{input}Next line of \
code:\n"
        }
        _ => return None,
    })
}

/// LongBench's generation length of a dataset (`dataset2maxlen.json`).
pub fn dataset_max_new_tokens(dataset: &str) -> Option<usize> {
    Some(match dataset {
        "narrativeqa" | "qasper" => 128,
        "multifieldqa_en" => 64,
        "hotpotqa" | "2wikimqa" | "musique" => 32,
        "gov_report" | "qmsum" | "multi_news" => 512,
        "trec" => 64,
        "triviaqa" => 32,
        "samsum" => 128,
        "passage_count" | "passage_retrieval_en" => 32,
        "lcc" | "repobench-p" => 64,
        _ => return None,
    })
}

/// LongBench's metric of a dataset (`eval.py:dataset2metric`); trec's classes come from the
/// record's `all_classes`.
pub fn dataset_metric(dataset: &str, all_classes: &[String]) -> Option<Metric> {
    Some(match dataset {
        "narrativeqa" | "qasper" | "multifieldqa_en" | "hotpotqa" | "2wikimqa" | "musique"
        | "triviaqa" => Metric::QaF1,
        "gov_report" | "qmsum" | "multi_news" | "samsum" => Metric::RougeL,
        "trec" => Metric::Classification {
            all_classes: all_classes.to_vec(),
        },
        "passage_count" => Metric::Count,
        "passage_retrieval_en" => Metric::Retrieval,
        "lcc" | "repobench-p" => Metric::CodeSim,
        _ => return None,
    })
}

/// Datasets LongBench's `pred.py` prompts without the chat template (few-shot and completion).
fn without_chat(dataset: &str) -> bool {
    matches!(
        dataset,
        "trec" | "triviaqa" | "samsum" | "lsht" | "lcc" | "repobench-p"
    )
}

/// Datasets whose predictions LongBench's `eval.py` cuts to their first line.
fn first_line_only(dataset: &str) -> bool {
    matches!(dataset, "trec" | "triviaqa" | "samsum" | "lsht")
}

/// One line of a LongBench JSONL file.
#[derive(Debug, Clone, PartialEq)]
pub struct LongBenchRecord {
    pub input: String,
    pub context: String,
    pub answers: Vec<String>,
    pub all_classes: Vec<String>,
    pub dataset: Option<String>,
    pub length: Option<u64>,
    pub id: Option<String>,
}

/// Middle truncation as LongBench's `pred.py` (and spec §11): if `text` has more than `budget`
/// tokens, keep its first and last ⌊budget/2⌋ tokens, decode both halves and concatenate.
/// Done on token ids, not characters, so the cut is where LongBench's is; `encode` must not add
/// special tokens (budgets count text tokens, as LongBench's decode drops BOS). A budget below 2
/// would keep nothing (and in Python `ids[-0:]` keeps everything), so it is clamped to 2.
pub fn truncate_middle<T: TokenCodec + ?Sized>(
    text: &str,
    budget: usize,
    tokenizer: &T,
) -> Result<String, TaskError> {
    let ids = tokenizer.encode(text).map_err(TaskError::Tokenizer)?;
    if ids.len() <= budget {
        return Ok(text.to_string());
    }
    let half = budget.max(2) / 2;
    let mut out = tokenizer
        .decode(&ids[..half])
        .map_err(TaskError::Tokenizer)?;
    out.push_str(
        &tokenizer
            .decode(&ids[ids.len() - half..])
            .map_err(TaskError::Tokenizer)?,
    );
    Ok(out)
}

/// Reads the file of a `longbench` spec: every non-empty line must be a record of a known
/// dataset (the spec's `task`, or the record's own `dataset`). With `task`, records of other
/// datasets are skipped.
pub(super) fn load(spec: &LongBenchSpec) -> Result<Vec<LongBenchRecord>, TaskError> {
    let text = std::fs::read_to_string(&spec.path).map_err(|source| TaskError::Io {
        path: spec.path.clone(),
        source,
    })?;
    let mut records = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if line.len() > MAX_RECORD_BYTES {
            return Err(record_error(
                &spec.path,
                number + 1,
                format!(
                    "{} bytes; a record holds at most {MAX_RECORD_BYTES} (~2M tokens, beyond \
                     any model's context)",
                    line.len()
                ),
            ));
        }
        let record = parse_record(&spec.path, number + 1, line)?;
        match (&spec.task, &record.dataset) {
            (Some(task), Some(dataset)) if task != dataset => continue,
            (None, None) => {
                return Err(record_error(
                    &spec.path,
                    number + 1,
                    "no `dataset` field: name the dataset with `task=` in the spec".into(),
                ))
            }
            (None, Some(dataset)) if dataset_prompt(dataset).is_none() => {
                return Err(record_error(
                    &spec.path,
                    number + 1,
                    format!(
                        "unknown dataset `{dataset}`; valid: {}",
                        LONGBENCH_DATASETS.join(", ")
                    ),
                ))
            }
            _ => {}
        }
        records.push(record);
    }
    Ok(records)
}

pub(super) fn sample<T: TokenCodec + ?Sized>(
    spec: &LongBenchSpec,
    records: &[LongBenchRecord],
    index: u64,
    tokenizer: &T,
) -> Result<Sample, TaskError> {
    let record = usize::try_from(index)
        .ok()
        .and_then(|i| records.get(i))
        .ok_or_else(|| TaskError::IndexOutOfRange {
            path: spec.path.clone(),
            index,
            len: records.len(),
        })?;
    let dataset = spec
        .task
        .as_deref()
        .or(record.dataset.as_deref())
        .unwrap_or_default();
    let unknown = || TaskError::Invalid {
        task: "longbench".into(),
        reason: format!("unknown dataset `{dataset}`"),
    };
    let template = dataset_prompt(dataset).ok_or_else(unknown)?;
    let mut prompt = fill_template(template, &record.context, &record.input);
    if let Some(budget) = spec.budget {
        prompt = truncate_middle(&prompt, budget, tokenizer)?;
    }
    Ok(Sample {
        index,
        id: record
            .id
            .clone()
            .unwrap_or_else(|| format!("{dataset}/{index}")),
        user_prompt: prompt,
        answer_prefix: String::new(),
        chat: spec.chat.unwrap_or(!without_chat(dataset)),
        answers: record.answers.clone(),
        metric: dataset_metric(dataset, &record.all_classes).ok_or_else(unknown)?,
        max_new_tokens: dataset_max_new_tokens(dataset).ok_or_else(unknown)?,
        first_line_only: first_line_only(dataset),
    })
}

/// `template.format(context=…, input=…)` in one pass, so braces inside the context are left
/// alone, as Python's `str.format` leaves them.
fn fill_template(template: &str, context: &str, input: &str) -> String {
    let mut out = String::with_capacity(template.len() + context.len() + input.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open..];
        if let Some(tail) = after.strip_prefix("{context}") {
            out.push_str(context);
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("{input}") {
            out.push_str(input);
            rest = tail;
        } else {
            out.push('{');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Longest record line read: far more than any context holds, so a larger one is a mistake
/// to report before it is parsed and tokenised.
const MAX_RECORD_BYTES: usize = 8 << 20;

/// A JSON value as an error message shows it: cut short, so that a wrong type in a
/// megabyte-long field does not print the field.
fn brief(value: &Value) -> String {
    const MAX: usize = 80;
    let text = value.to_string();
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], text.len()),
        None => text,
    }
}

fn record_error(path: &Path, line: usize, reason: String) -> TaskError {
    TaskError::Record {
        path: path.to_path_buf(),
        line,
        reason,
    }
}

fn parse_record(path: &Path, line: usize, text: &str) -> Result<LongBenchRecord, TaskError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| record_error(path, line, format!("not valid JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(record_error(path, line, "not a JSON object".into()));
    };
    let string = |key: &str, required: bool| -> Result<Option<String>, TaskError> {
        match fields.get(key) {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            None | Some(Value::Null) if !required => Ok(None),
            None | Some(Value::Null) => {
                Err(record_error(path, line, format!("missing field `{key}`")))
            }
            Some(other) => Err(record_error(
                path,
                line,
                format!("field `{key}` must be a string, got {}", brief(other)),
            )),
        }
    };
    // LongBench answers are strings; a number (e.g. a passage count) is taken as Python's str().
    let strings = |key: &str, required: bool| -> Result<Vec<String>, TaskError> {
        match fields.get(key) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) => Ok(n.to_string()),
                    other => Err(record_error(
                        path,
                        line,
                        format!("field `{key}` must hold strings, got {}", brief(other)),
                    )),
                })
                .collect(),
            None | Some(Value::Null) if !required => Ok(Vec::new()),
            None | Some(Value::Null) => {
                Err(record_error(path, line, format!("missing field `{key}`")))
            }
            Some(other) => Err(record_error(
                path,
                line,
                format!("field `{key}` must be a list, got {}", brief(other)),
            )),
        }
    };
    let length = match fields.get("length") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
        Some(other) => {
            return Err(record_error(
                path,
                line,
                format!(
                    "field `length` must be a whole number, got {}",
                    brief(other)
                ),
            ))
        }
    };
    Ok(LongBenchRecord {
        input: string("input", true)?.unwrap_or_default(),
        context: string("context", true)?.unwrap_or_default(),
        answers: strings("answers", true)?,
        all_classes: strings("all_classes", false)?,
        dataset: string("dataset", false)?,
        length,
        id: string("_id", false)?,
    })
}
