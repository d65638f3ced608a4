//! ROUGE-L F as LongBench's `rouge_score` computes it: `Rouge().get_scores([prediction],
//! [ground_truth], avg=True)["rouge-l"]["f"]` of the `rouge` package (pltrdy, 1.0.1), i.e.
//! `rouge_score.rouge_l_summary_level` with its defaults.

use std::collections::HashSet;

use super::python;

/// Mirrors LongBench `rouge_score` (English). Step by step as the package does it:
/// - split each text on "." into sentences, drop empty pieces, collapse whitespace inside each
///   (`" ".join(s.split())`); a text without sentences raises in the package, which LongBench
///   turns into 0.0;
/// - words = each sentence split on " "; with the package's default `exclusive=True` every count
///   is of *distinct* words: m = distinct reference words, n = distinct prediction words;
/// - for every (reference sentence, prediction sentence) pair one LCS is reconstructed (ties
///   broken as the package's `_recon_lcs` does) and its words are added to one union set;
///   LCS = size of that set;
/// - P = LCS/n, R = LCS/m, F = 2·P·R / (P + R + 1e-8).
///
/// Known difference: the package reconstructs the LCS recursively, so a sentence pair longer
/// than about 1000 words in total exceeds Python's recursion limit, and LongBench's bare
/// `except` scores it 0.0; here it gets its real score.
pub fn rouge_l_f(prediction: &str, ground_truth: &str) -> f64 {
    let hyp = sentences(prediction);
    let reference = sentences(ground_truth);
    if hyp.is_empty() || reference.is_empty() {
        return 0.0;
    }
    let hyp_words: Vec<Vec<&str>> = hyp.iter().map(|s| s.split(' ').collect()).collect();
    let ref_words: Vec<Vec<&str>> = reference.iter().map(|s| s.split(' ').collect()).collect();
    let distinct = |words: &[Vec<&str>]| words.iter().flatten().collect::<HashSet<_>>().len();
    let m = distinct(&ref_words);
    let n = distinct(&hyp_words);

    let mut union: HashSet<&str> = HashSet::new();
    for r in &ref_words {
        for h in &hyp_words {
            union.extend(reconstructed_lcs(r, h));
        }
    }
    let llcs = union.len() as f64;
    let r_lcs = llcs / m as f64;
    let p_lcs = llcs / n as f64;
    2.0 * ((p_lcs * r_lcs) / (p_lcs + r_lcs + 1e-8))
}

/// `[" ".join(s.split()) for s in text.split(".") if len(s) > 0]`.
fn sentences(text: &str) -> Vec<String> {
    text.split('.')
        .filter(|s| !s.is_empty())
        .map(|s| python::split_whitespace(s).collect::<Vec<_>>().join(" "))
        .collect()
}

/// The words of one longest common subsequence of `x` (reference) and `y` (prediction),
/// walking back through the DP table with `_recon_lcs`'s preference: a match first, then up
/// (`x` shorter) only when strictly better, else left.
fn reconstructed_lcs<'a>(x: &[&'a str], y: &[&str]) -> Vec<&'a str> {
    let cols = y.len() + 1;
    let mut table = vec![0u32; (x.len() + 1) * cols];
    for i in 1..=x.len() {
        for j in 1..=y.len() {
            table[i * cols + j] = if x[i - 1] == y[j - 1] {
                table[(i - 1) * cols + j - 1] + 1
            } else {
                table[(i - 1) * cols + j].max(table[i * cols + j - 1])
            };
        }
    }
    let (mut i, mut j) = (x.len(), y.len());
    let mut words = Vec::new();
    while i > 0 && j > 0 {
        if x[i - 1] == y[j - 1] {
            words.push(x[i - 1]);
            i -= 1;
            j -= 1;
        } else if table[(i - 1) * cols + j] > table[i * cols + j - 1] {
            i -= 1;
        } else {
            j -= 1;
        }
    }
    words
}
