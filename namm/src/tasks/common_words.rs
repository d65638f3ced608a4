//! RULER's common words extraction (`cwe`): a numbered list of words in which `top` words occur
//! `freq` times each and many others `ufreq` times; the answer is the `top` frequent words.
//! RULER's one-shot example is left out: it would take a large share of short prompts.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::fill::{fill_to_length, Parts};
use super::words::words;
use super::{ChatTemplate, CommonWordsSpec, Generated, TaskError, TokenCounter};

pub(super) fn generate(
    spec: &CommonWordsSpec,
    rng: &mut impl Rng,
    counter: &dyn TokenCounter,
    template: ChatTemplate<'_>,
) -> Result<Generated, TaskError> {
    let available = words().len();
    if spec.top >= available {
        return Err(TaskError::BadValue {
            task: "common-words".into(),
            key: "top".into(),
            value: spec.top.to_string(),
            reason: format!("the built-in list has only {available} words"),
        });
    }
    // One permutation of the word list: the first `top` are the common words, the next ones the
    // uncommon words, so more filler only appends uncommon words.
    let mut order: Vec<&str> = words().to_vec();
    order.shuffle(rng);
    let shuffle_seed: u64 = rng.random();
    let top = spec.top;
    let intro = "Below is a numbered list of words. In these words, some appear more often than \
                 others. Memorize the ones that appear most often.";
    let question = format!("Question: What are the {top} most common words in the above list?");
    let answer_prefix =
        format!("Answer: The top {top} words that appear most often in the list are:");

    let mut build = |uncommon: usize| {
        let mut list: Vec<&str> = Vec::with_capacity(top * spec.freq + uncommon * spec.ufreq);
        for word in &order[..top] {
            list.extend(std::iter::repeat_n(*word, spec.freq));
        }
        for word in &order[top..top + uncommon] {
            list.extend(std::iter::repeat_n(*word, spec.ufreq));
        }
        list.shuffle(&mut ChaCha8Rng::seed_from_u64(shuffle_seed));
        let numbered: Vec<String> = list
            .iter()
            .enumerate()
            .map(|(i, word)| format!("{}. {word}", i + 1))
            .collect();
        Parts {
            user: format!("{intro}\n{}\n{question}", numbered.join(" ")),
            answer_prefix: answer_prefix.clone(),
        }
    };
    let max_uncommon = available - top;
    let (uncommon, parts) = fill_to_length(
        "common-words",
        spec.len,
        0,
        max_uncommon,
        counter,
        template,
        &mut build,
    )?;
    if uncommon == max_uncommon {
        let full = counter.count_tokens(&super::render(
            &parts.user,
            &parts.answer_prefix,
            true,
            template,
        ));
        if full * 100 < spec.len * 95 {
            return Err(TaskError::Invalid {
                task: "common-words".into(),
                reason: format!(
                    "len={} needs more than the {available} built-in words at ufreq={}; raise \
                     ufreq or freq, or lower len",
                    spec.len, spec.ufreq
                ),
            });
        }
    }
    Ok(Generated {
        user_prompt: parts.user,
        answer_prefix: parts.answer_prefix,
        answers: order[..top].iter().map(|w| w.to_string()).collect(),
        max_new_tokens: 12 * top,
    })
}
