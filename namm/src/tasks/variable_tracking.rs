//! RULER's variable tracking (`vt`, noise haystack): chains of assignments
//! `VAR ABCDE = 12345`, `VAR FGHIJ = VAR ABCDE`, … hidden as separate lines among lines of noise;
//! the answer is every variable of the chain that holds the asked value.

use rand::Rng;

use super::fill::{fill_to_length, weave, Parts, NOISE};
use super::{ChatTemplate, Generated, TaskError, TokenCounter, VariableTrackingSpec};

const INTRO: &str =
    "Memorize and track the chain(s) of variable assignment hidden in the following text.";

pub(super) fn generate(
    spec: &VariableTrackingSpec,
    rng: &mut impl Rng,
    counter: &dyn TokenCounter,
    template: ChatTemplate<'_>,
) -> Result<Generated, TaskError> {
    let per_chain = spec.hops + 1;
    let mut names: Vec<String> = Vec::with_capacity(spec.chains * per_chain);
    while names.len() < spec.chains * per_chain {
        let name: String = (0..5)
            .map(|_| char::from(b'A' + rng.random_range(0..26u8)))
            .collect();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let mut values: Vec<u32> = Vec::with_capacity(spec.chains);
    while values.len() < spec.chains {
        let value = rng.random_range(10_000..=99_999);
        if !values.contains(&value) {
            values.push(value);
        }
    }
    // Each statement gets a relative position; sorted within a chain, so that every chain reads
    // in assignment order as in RULER.
    let mut statements: Vec<(f64, String)> = Vec::with_capacity(names.len());
    for (chain, vars) in names.chunks(per_chain).enumerate() {
        let mut positions: Vec<f64> = (0..per_chain).map(|_| rng.random::<f64>()).collect();
        positions.sort_by(f64::total_cmp);
        for (hop, position) in positions.into_iter().enumerate() {
            let statement = if hop == 0 {
                format!("VAR {} = {}", vars[0], values[chain])
            } else {
                format!("VAR {} = VAR {}", vars[hop], vars[hop - 1])
            };
            statements.push((position, statement));
        }
    }
    let value = values[0];
    let question = format!(
        "Question: Find all variables that are assigned the value {value} in the text above."
    );
    // RULER's prefix without its trailing space, which would leave the model to start a word
    // without the space byte-level BPE puts in front of it.
    let answer_prefix = format!(
        "Answer: According to the chain(s) of variable assignment in the text above, {per_chain} \
         variables are assigned the value {value}, they are:"
    );
    let noise_line = NOISE.join(" ");

    let mut build = |n: usize| {
        let lines = vec![noise_line.clone(); n];
        let placed: Vec<(usize, String)> = statements
            .iter()
            .map(|(position, statement)| {
                let slot = ((position * (n + 1) as f64) as usize).min(n);
                (slot, statement.clone())
            })
            .collect();
        Parts {
            user: format!("{INTRO}\n\n{}\n{question}", weave(&lines, &placed, "\n")),
            answer_prefix: answer_prefix.clone(),
        }
    };
    let (_, parts) = fill_to_length(
        "variable-tracking",
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
        answers: names[..per_chain].to_vec(),
        max_new_tokens: 10 + 6 * per_chain,
    })
}
