//! RULER's multi-key needle in a haystack (`niah_multikey_1` with the noise haystack): several
//! needles "One of the special magic numbers for <key> is: <value>." with different word keys,
//! one of which is asked for; the others are distractors.

use rand::seq::IndexedRandom;
use rand::Rng;

use super::fill::{fill_to_length, noise_sentences, resolve_depth, slot, weave, Parts};
use super::words::words;
use super::{ChatTemplate, Generated, NiahSpec, TaskError, TokenCounter};

const INTRO: &str = "Some special magic numbers are hidden within the following text. Make sure \
                     to memorize it. I will quiz you about the numbers afterwards.";

pub(super) fn generate(
    spec: &NiahSpec,
    rng: &mut impl Rng,
    counter: &dyn TokenCounter,
    template: ChatTemplate<'_>,
) -> Result<Generated, TaskError> {
    let asked_depth = resolve_depth(spec.depth, rng);
    let mut depths = vec![asked_depth];
    depths.extend((1..spec.keys).map(|_| rng.random::<f64>()));

    // Keys are word pairs ("fearless-oven") as RULER's wonderwords keys; values 7-digit numbers.
    let mut keys: Vec<String> = Vec::with_capacity(spec.keys);
    while keys.len() < spec.keys {
        let pair: Vec<&&str> = words().choose_multiple(rng, 2).collect();
        let key = format!("{}-{}", pair[0], pair[1]);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let mut values: Vec<u32> = Vec::with_capacity(spec.keys);
    while values.len() < spec.keys {
        let value = rng.random_range(1_000_000..=9_999_999);
        if !values.contains(&value) {
            values.push(value);
        }
    }
    let needles: Vec<String> = keys
        .iter()
        .zip(&values)
        .map(|(key, value)| format!("One of the special magic numbers for {key} is: {value}."))
        .collect();
    let query = &keys[0];
    // Singular question and answer (RULER asks "What are all the special magic numbers"):
    // there is exactly one value per key, and a small model follows the singular form better.
    let question =
        format!("What is the special magic number for {query} mentioned in the provided text?");
    let answer_prefix =
        format!("The special magic number for {query} mentioned in the provided text is");

    let mut build = |n: usize| {
        let placed: Vec<(usize, String)> = depths
            .iter()
            .zip(&needles)
            .map(|(&depth, needle)| (slot(depth, n), needle.clone()))
            .collect();
        let haystack = weave(&noise_sentences(n), &placed, " ");
        Parts {
            user: format!("{INTRO}\n{haystack}\n{question}"),
            answer_prefix: answer_prefix.clone(),
        }
    };
    let (_, parts) = fill_to_length(
        "niah-multikey",
        spec.len,
        0,
        usize::MAX,
        counter,
        template,
        &mut build,
    )?;
    Ok(Generated {
        user_prompt: parts.user,
        answer_prefix: parts.answer_prefix,
        answers: vec![values[0].to_string()],
        max_new_tokens: 16,
    })
}
