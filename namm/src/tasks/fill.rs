//! Filling a prompt to a token length, and the noise filler the needles hide in.

use super::{render, ChatTemplate, TaskError, TokenCounter};

/// RULER's noise haystack ("noise" type), one sentence per filler unit so that the length can
/// be hit within a few tokens.
pub(crate) const NOISE: [&str; 5] = [
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
];

/// A prompt under construction: the user message and the answer prefix.
pub(crate) struct Parts {
    pub user: String,
    pub answer_prefix: String,
}

/// Finds the largest filler amount `n >= min_n` (and `<= max_n`) whose rendered prompt (chat
/// template + user message + answer prefix) has at most `target` tokens, by doubling and then
/// bisecting on the real token count, and returns it with its parts. `build(n)` must grow with
/// `n`. Errors when even `min_n` does not fit.
pub(crate) fn fill_to_length(
    task: &str,
    target: usize,
    min_n: usize,
    max_n: usize,
    counter: &dyn TokenCounter,
    template: ChatTemplate<'_>,
    build: &mut dyn FnMut(usize) -> Parts,
) -> Result<(usize, Parts), TaskError> {
    let count = |parts: &Parts| {
        counter.count_tokens(&render(&parts.user, &parts.answer_prefix, true, template))
    };
    let smallest = build(min_n);
    let smallest_tokens = count(&smallest);
    if smallest_tokens > target {
        return Err(TaskError::Invalid {
            task: task.to_string(),
            reason: format!(
                "len={target} is too short: the prompt has {smallest_tokens} tokens before any filler"
            ),
        });
    }
    let (mut fits, mut fits_parts) = (min_n, smallest);
    let mut step = 16;
    let mut too_big = loop {
        let probe = fits.saturating_add(step).min(max_n);
        if probe == fits {
            return Ok((fits, fits_parts));
        }
        let parts = build(probe);
        if count(&parts) > target {
            break probe;
        }
        fits = probe;
        fits_parts = parts;
        step = step.saturating_mul(2);
    };
    while too_big - fits > 1 {
        let mid = fits + (too_big - fits) / 2;
        let parts = build(mid);
        if count(&parts) > target {
            too_big = mid;
        } else {
            fits = mid;
            fits_parts = parts;
        }
    }
    Ok((fits, fits_parts))
}

/// Where a needle at `depth` in [0, 1] goes among `n` filler units: before unit
/// round(depth·n), so 0 is the very start and 1 the very end.
pub(crate) fn slot(depth: f64, n: usize) -> usize {
    ((depth * n as f64).round() as usize).min(n)
}

/// `units` with each needle `(slot, text)` placed before unit `slot` (a slot equal to
/// `units.len()` is after the last); needles sharing a slot keep their order. Joined by `sep`.
pub(crate) fn weave(units: &[String], needles: &[(usize, String)], sep: &str) -> String {
    let mut order: Vec<usize> = (0..needles.len()).collect();
    order.sort_by_key(|&i| needles[i].0);
    let mut pieces: Vec<&str> = Vec::with_capacity(units.len() + needles.len());
    let mut next = order.iter().peekable();
    for (position, unit) in units.iter().enumerate() {
        while let Some(&&i) = next.peek() {
            if needles[i].0 > position {
                break;
            }
            pieces.push(&needles[i].1);
            next.next();
        }
        pieces.push(unit);
    }
    pieces.extend(next.map(|&i| needles[i].1.as_str()));
    pieces.join(sep)
}

/// The first `n` noise sentences, cycling through [`NOISE`].
pub(crate) fn noise_sentences(n: usize) -> Vec<String> {
    NOISE
        .iter()
        .cycle()
        .take(n)
        .map(|s| s.to_string())
        .collect()
}

/// The depth of one sample: the fixed one, or a uniform draw.
pub(crate) fn resolve_depth(depth: super::Depth, rng: &mut impl rand::Rng) -> f64 {
    match depth {
        super::Depth::Fixed(depth) => depth,
        super::Depth::Random => rng.random::<f64>(),
    }
}
