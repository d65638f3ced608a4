//! Task metrics: LongBench's (`LongBench/metrics.py`, ported function by function so that a
//! prediction scores here what it scores there) and RULER's string match for the synthetic
//! tasks. [`Metric`] names the metric of a sample; [`Metric::score`] gives the per-sample score
//! in [0, 1] the way LongBench's `scorer` does (max over the gold answers).

mod difflib;
mod longbench;
mod python;
mod rouge;
mod ruler;

pub use difflib::{fuzz_ratio, sequence_matcher_ratio};
pub use longbench::{
    classification_score, code_sim_score, count_score, normalize_answer, qa_f1_score,
    retrieval_score,
};
pub use rouge::rouge_l_f;
pub use ruler::all_found;

use serde::{Deserialize, Serialize};

/// How a prediction is scored against the gold answers of a sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Metric {
    /// Fraction of the gold answers found in the prediction ([`all_found`], RULER's
    /// `string_match_all`); the synthetic tasks use it.
    AllFound,
    /// LongBench `qa_f1_score`.
    QaF1,
    /// LongBench `rouge_score` (ROUGE-L F of the `rouge` package).
    RougeL,
    /// LongBench `classification_score` with the sample's `all_classes`.
    Classification { all_classes: Vec<String> },
    /// LongBench `retrieval_score` (passage_retrieval_en).
    Retrieval,
    /// LongBench `count_score` (passage_count).
    Count,
    /// LongBench `code_sim_score` (lcc, repobench-p).
    CodeSim,
}

impl Metric {
    /// Short name for tables and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Metric::AllFound => "all_found",
            Metric::QaF1 => "qa_f1",
            Metric::RougeL => "rouge_l",
            Metric::Classification { .. } => "classification",
            Metric::Retrieval => "retrieval",
            Metric::Count => "count",
            Metric::CodeSim => "code_sim",
        }
    }

    /// Per-sample score in [0, 1]. The LongBench metrics take the maximum over the gold answers
    /// starting from 0, as LongBench's `eval.py:scorer` does; [`Metric::AllFound`] is a recall
    /// over all of them. No answers score 0.
    pub fn score(&self, prediction: &str, answers: &[String]) -> f64 {
        let per_answer: fn(&str, &str, &[String]) -> f64 = match self {
            Metric::AllFound => return all_found(prediction, answers),
            Metric::QaF1 => |p, g, _| qa_f1_score(p, g),
            Metric::RougeL => |p, g, _| rouge_l_f(p, g),
            Metric::Classification { .. } => classification_score,
            Metric::Retrieval => |p, g, _| retrieval_score(p, g),
            Metric::Count => |p, g, _| count_score(p, g),
            Metric::CodeSim => |p, g, _| code_sim_score(p, g),
        };
        let classes: &[String] = match self {
            Metric::Classification { all_classes } => all_classes,
            _ => &[],
        };
        answers
            .iter()
            .map(|gold| per_answer(prediction, gold, classes))
            .fold(0.0, f64::max)
    }
}
