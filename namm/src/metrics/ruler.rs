//! The string match of RULER's evaluator, used by the synthetic tasks.

/// Fraction of `answers` that occur in `prediction`, case-insensitively: RULER's
/// `string_match_all` for one sample, with one stricter rule: an occurrence only counts when it
/// is not glued to further letters or digits, so "712345" does not contain the pass key 12345
/// and "VAR ABCDEFG" does not name variable ABCDE. No answers score 0.
pub fn all_found(prediction: &str, answers: &[String]) -> f64 {
    if answers.is_empty() {
        return 0.0;
    }
    let prediction = prediction.to_lowercase();
    let found = answers
        .iter()
        .filter(|answer| contains_whole(&prediction, &answer.to_lowercase()))
        .count();
    found as f64 / answers.len() as f64
}

fn contains_whole(haystack: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return false;
    }
    haystack.match_indices(needle).any(|(start, m)| {
        let before = haystack[..start].chars().next_back();
        let after = haystack[start + m.len()..].chars().next();
        let glued = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
        !glued(before) && !glued(after)
    })
}
