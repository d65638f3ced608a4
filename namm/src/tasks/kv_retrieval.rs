//! Key-value retrieval ("Lost in the Middle", Liu et al. 2023): a JSON object of random UUID
//! keys and UUID values; the value of one key is asked for.

use rand::RngCore;
use rand_chacha::ChaCha8Rng;

use super::fill::{fill_to_length, resolve_depth, Parts};
use super::spec::KvSize;
use super::{ChatTemplate, Generated, KvRetrievalSpec, TaskError, TokenCounter};

const INTRO: &str =
    "Extract the value corresponding to the specified key in the JSON object below.";

pub(super) fn generate(
    spec: &KvRetrievalSpec,
    rng: &mut ChaCha8Rng,
    counter: &dyn TokenCounter,
    template: ChatTemplate<'_>,
) -> Result<Generated, TaskError> {
    let depth = resolve_depth(spec.depth, rng);
    // Pair i is always the i-th draw of this stream, so a prompt with n pairs is a prefix of
    // one with more, whatever n the length search settles on.
    let mut stream = PairStream {
        rng: rng.clone(),
        pairs: Vec::new(),
    };
    let n = match spec.size {
        KvSize::Pairs(n) => n,
        KvSize::Len(len) => {
            let mut build = |n: usize| prompt(stream.first(n), depth).0;
            fill_to_length(
                "kv-retrieval",
                len,
                1,
                usize::MAX,
                counter,
                template,
                &mut build,
            )?
            .0
        }
    };
    let (parts, answer) = prompt(stream.first(n), depth);
    Ok(Generated {
        user_prompt: parts.user,
        answer_prefix: parts.answer_prefix,
        answers: vec![answer],
        max_new_tokens: 48,
    })
}

/// The prompt over `pairs` asking for the pair at `depth`, and that pair's value.
fn prompt(pairs: &[(String, String)], depth: f64) -> (Parts, String) {
    let asked = ((depth * (pairs.len() - 1) as f64).round() as usize).min(pairs.len() - 1);
    let body: Vec<String> = pairs
        .iter()
        .map(|(key, value)| format!(" \"{key}\": \"{value}\""))
        .collect();
    let (key, value) = &pairs[asked];
    let parts = Parts {
        user: format!(
            "{INTRO}\n\nJSON data:\n{{\n{}\n}}\n\nKey: \"{key}\"\nWhat is the value \
             corresponding to this key?",
            body.join(",\n")
        ),
        // Ends in the opening quote so that the model's first tokens are the value itself.
        answer_prefix: format!("The value corresponding to the key \"{key}\" is \""),
    };
    (parts, value.clone())
}

struct PairStream {
    rng: ChaCha8Rng,
    pairs: Vec<(String, String)>,
}

impl PairStream {
    fn first(&mut self, n: usize) -> &[(String, String)] {
        while self.pairs.len() < n {
            let key = uuid4(&mut self.rng);
            let value = uuid4(&mut self.rng);
            self.pairs.push((key, value));
        }
        &self.pairs[..n]
    }
}

/// A random (version 4) UUID in the usual 8-4-4-4-12 lowercase hex form.
fn uuid4(rng: &mut ChaCha8Rng) -> String {
    let mut bytes = [0u8; 16];
    rng.fill_bytes(&mut bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}
