//! LongBench's English metrics (`LongBench/metrics.py`), one function each.

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;

use super::difflib::fuzz_ratio;
use super::python;

static ARTICLES: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b(a|an|the)\b").expect("valid article pattern"));
static DIGIT_RUNS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\d+").expect("valid digit pattern"));
static PARAGRAPH_ID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"Paragraph (\d+)").expect("valid paragraph pattern"));

/// LongBench `normalize_answer` (SQuAD's): lower-case, drop ASCII punctuation
/// (`string.punctuation`), replace the words a/an/the with a space, collapse whitespace.
/// `\b` and `\d` are Unicode-aware in both Python 3 and the `regex` crate.
pub fn normalize_answer(s: &str) -> String {
    let lowered = s.to_lowercase();
    let no_punct: String = lowered
        .chars()
        .filter(|&c| !python::is_ascii_punctuation(c))
        .collect();
    let no_articles = ARTICLES.replace_all(&no_punct, " ");
    python::split_whitespace(&no_articles)
        .collect::<Vec<_>>()
        .join(" ")
}

/// LongBench `qa_f1_score`: token F1 between the normalised prediction and gold answer
/// (multiset overlap as `Counter(a) & Counter(b)`), 0 without overlap.
pub fn qa_f1_score(prediction: &str, ground_truth: &str) -> f64 {
    let prediction = normalize_answer(prediction);
    let ground_truth = normalize_answer(ground_truth);
    let pred_tokens: Vec<&str> = python::split_whitespace(&prediction).collect();
    let gold_tokens: Vec<&str> = python::split_whitespace(&ground_truth).collect();
    f1_score(&pred_tokens, &gold_tokens)
}

/// LongBench `f1_score` on token lists.
fn f1_score(prediction: &[&str], ground_truth: &[&str]) -> f64 {
    let mut gold_counts: HashMap<&str, usize> = HashMap::new();
    for token in ground_truth {
        *gold_counts.entry(token).or_default() += 1;
    }
    let mut num_same = 0usize;
    for token in prediction {
        if let Some(count) = gold_counts.get_mut(token) {
            if *count > 0 {
                *count -= 1;
                num_same += 1;
            }
        }
    }
    if num_same == 0 {
        return 0.0;
    }
    let precision = 1.0 * num_same as f64 / prediction.len() as f64;
    let recall = 1.0 * num_same as f64 / ground_truth.len() as f64;
    (2.0 * precision * recall) / (precision + recall)
}

/// LongBench `count_score` (passage_count): of all digit runs in the prediction, the fraction
/// equal to the gold count; 0 when the prediction has no digits.
pub fn count_score(prediction: &str, ground_truth: &str) -> f64 {
    fraction_of_numbers_equal(prediction, ground_truth)
}

/// LongBench `retrieval_score` (passage_retrieval_en): the gold id is the digits after
/// "Paragraph " in the gold answer; score = fraction of the prediction's digit runs equal to it,
/// 0 when it has none. A gold answer without "Paragraph N" (LongBench raises IndexError) scores 0.
pub fn retrieval_score(prediction: &str, ground_truth: &str) -> f64 {
    match PARAGRAPH_ID.captures(ground_truth) {
        Some(captures) => fraction_of_numbers_equal(prediction, &captures[1]),
        None => 0.0,
    }
}

fn fraction_of_numbers_equal(prediction: &str, target: &str) -> f64 {
    let numbers: Vec<&str> = DIGIT_RUNS
        .find_iter(prediction)
        .map(|m| m.as_str())
        .collect();
    if numbers.is_empty() {
        return 0.0;
    }
    let right = numbers.iter().filter(|&&n| n == target).count();
    right as f64 / numbers.len() as f64
}

/// LongBench `code_sim_score` (lcc, repobench-p): the first line of the prediction (after
/// leading newlines) that contains none of "`", "#", "//" ("" if there is none), compared with
/// the gold line by fuzzywuzzy `fuzz.ratio` / 100 ([`fuzz_ratio`]).
pub fn code_sim_score(prediction: &str, ground_truth: &str) -> f64 {
    let line = prediction
        .trim_start_matches('\n')
        .split('\n')
        .find(|line| !line.contains('`') && !line.contains('#') && !line.contains("//"))
        .unwrap_or("");
    fuzz_ratio(line, ground_truth) as f64 / 100.0
}

/// LongBench `classification_score` (trec), quirks included:
/// - the classes of `all_classes` that occur in the prediction are collected in order;
/// - LongBench then removes, while iterating over the same list, every match that is a proper
///   substring of the gold class; Python's list iterator skips the element after each removal,
///   and that is mirrored, so e.g. two consecutive such matches keep the second;
/// - its fallback to difflib similarity is unreachable (`if em_match_list != 0` compares a
///   list with 0, always true), so the score is 1/len(matches) if the gold class is among the
///   matches and 0 otherwise.
pub fn classification_score(prediction: &str, ground_truth: &str, all_classes: &[String]) -> f64 {
    let mut matches: Vec<&str> = all_classes
        .iter()
        .map(String::as_str)
        .filter(|class| prediction.contains(class))
        .collect();
    let mut position = 0;
    while position < matches.len() {
        let term = matches[position];
        if ground_truth.contains(term) && term != ground_truth {
            if let Some(first) = matches.iter().position(|&m| m == term) {
                matches.remove(first);
            }
        }
        position += 1;
    }
    if matches.contains(&ground_truth) {
        1.0 / matches.len() as f64
    } else {
        0.0
    }
}
