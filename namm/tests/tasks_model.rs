//! The task generators driven by the default model's real tokenizer: prompts land within a
//! few percent of the requested length in model tokens, and the gold answer is in the prompt.

mod common;

use namm::tasks::TaskSpec;
use namm::tokenizer::Tokenizer;

fn tokenizer() -> Tokenizer {
    let path = common::model_path();
    Tokenizer::from_gguf_file(&path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

#[test]
fn synthetic_prompts_fill_the_requested_model_length() {
    let tok = tokenizer();
    let template = |user: &str| tok.chat_prompt(user);
    for (spec, tolerance) in [
        ("passkey:len=1024", 0.03),
        ("niah-multikey:len=1536,keys=4", 0.03),
        ("common-words:len=1024", 0.03),
        ("variable-tracking:len=1024", 0.06),
        ("kv-retrieval:len=1024", 0.10),
    ] {
        let task = spec.parse::<TaskSpec>().unwrap().load().unwrap();
        let len: f64 = spec
            .split("len=")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .unwrap()
            .parse()
            .unwrap();
        for index in 0..3 {
            let sample = task.sample(0, index, &tok, &template).unwrap();
            let tokens = tok.count_tokens(&sample.prompt(&template)) as f64;
            assert!(
                tokens <= len && tokens >= len * (1.0 - tolerance),
                "{spec} sample {index}: {tokens} tokens for len {len}"
            );
            if spec.starts_with("passkey") || spec.starts_with("niah") {
                assert!(
                    sample.user_prompt.contains(&sample.answers[0]),
                    "{spec} sample {index}: answer {:?} not in the prompt",
                    sample.answers
                );
            }
        }
    }
}
