//! Pass-key retrieval (Mohtashami & Jaggi's landmark-attention test, as in LongBench's and
//! InfiniteBench's passkey): a 5-digit key stated once in a long stretch of RULER's noise
//! sentences, asked for at the end.

use rand::Rng;

use super::fill::{fill_to_length, noise_sentences, resolve_depth, slot, weave, Parts};
use super::{ChatTemplate, Generated, PasskeySpec, TaskError, TokenCounter};

const INTRO: &str = "There is an important piece of information hidden inside a lot of irrelevant \
                     text. Find it and memorize it. I will quiz you about the important \
                     information there.";
const QUESTION: &str = "What is the pass key?";
/// Opens the assistant's turn: a 135M model then answers with the digits right away instead of
/// a preamble, and the short generation budget suffices.
const ANSWER_PREFIX: &str = "The pass key is";

pub(super) fn generate(
    spec: &PasskeySpec,
    rng: &mut impl Rng,
    counter: &dyn TokenCounter,
    template: ChatTemplate<'_>,
) -> Result<Generated, TaskError> {
    let depth = resolve_depth(spec.depth, rng);
    let key: u32 = rng.random_range(10_000..=99_999);
    let needle = format!("The pass key is {key}. Remember it. {key} is the pass key.");
    let mut build = |n: usize| {
        let haystack = weave(
            &noise_sentences(n),
            &[(slot(depth, n), needle.clone())],
            " ",
        );
        Parts {
            user: format!("{INTRO}\n\n{haystack}\n\n{QUESTION}"),
            answer_prefix: ANSWER_PREFIX.to_string(),
        }
    };
    let (_, parts) = fill_to_length(
        "passkey",
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
        answers: vec![key.to_string()],
        max_new_tokens: 16,
    })
}
