//! Synthetic task generators and task-spec parsing.

mod tasks_common;

use std::collections::{HashMap, HashSet};

use namm::metrics::Metric;
use namm::tasks::{Depth, Sample, Task, TaskError, TaskSpec, TokenCounter};
use tasks_common::{chatml, ApproxBpe};

fn task(spec: &str) -> Task {
    spec.parse::<TaskSpec>()
        .unwrap_or_else(|e| panic!("{spec}: {e}"))
        .load()
        .unwrap()
}

fn sample(spec: &str, seed: u64, index: u64) -> Sample {
    task(spec)
        .sample(seed, index, &ApproxBpe::default(), &chatml)
        .unwrap_or_else(|e| panic!("{spec}: {e}"))
}

fn prompt_tokens(sample: &Sample) -> usize {
    ApproxBpe::default().count_tokens(&sample.prompt(&chatml))
}

#[test]
fn samples_are_deterministic_and_independent_of_each_other() {
    for spec in [
        "passkey:len=512",
        "niah-multikey:len=512",
        "kv-retrieval:len=512",
        "variable-tracking:len=512",
        "common-words:len=512",
    ] {
        let t = task(spec);
        let tok = ApproxBpe::default();
        let forward: Vec<Sample> = (0..4)
            .map(|i| t.sample(7, i, &tok, &chatml).unwrap())
            .collect();
        let backward: Vec<Sample> = (0..4)
            .rev()
            .map(|i| t.sample(7, i, &tok, &chatml).unwrap())
            .collect();
        for (i, s) in forward.iter().enumerate() {
            assert_eq!(s, &backward[3 - i], "{spec} sample {i} depends on order");
            assert_eq!(s.index, i as u64);
        }
        assert_ne!(forward[0].answers, forward[1].answers, "{spec}");
        assert_ne!(
            forward[0].answers,
            t.sample(8, 0, &tok, &chatml).unwrap().answers,
            "{spec}: the seed must matter"
        );
    }
}

#[test]
fn spec_seed_replaces_the_caller_seed() {
    let a = sample("passkey:len=256,seed=5", 1, 0);
    let b = sample("passkey:len=256,seed=5", 2, 0);
    let c = sample("passkey:len=256", 5, 0);
    assert_eq!(a, b);
    assert_eq!(a.answers, c.answers);
}

#[test]
fn prompts_fill_to_within_a_few_percent_of_len() {
    // The shortfall is at most 3% of len or one filler unit, whichever is larger: a noise
    // sentence, a numbered word, or (coarser) a JSON pair of two UUIDs (~90 tokens here, all
    // digits split) and a whole noise line for variable tracking (~25 tokens), as in RULER.
    for len in [512, 1024, 3000] {
        for (spec, unit) in [
            (format!("passkey:len={len}"), 8),
            (format!("niah-multikey:len={len},keys=4"), 8),
            (format!("kv-retrieval:len={len}"), 95),
            (format!("variable-tracking:len={len}"), 30),
            (format!("common-words:len={len}"), 8),
        ] {
            let allowed = (len * 3 / 100).max(unit);
            for index in 0..3 {
                let s = sample(&spec, 0, index);
                let tokens = prompt_tokens(&s);
                assert!(tokens <= len, "{spec}: {tokens} tokens > len");
                assert!(tokens + allowed >= len, "{spec}: only {tokens} tokens");
            }
        }
    }
}

#[test]
fn too_short_len_is_an_error_naming_it() {
    let err = task("niah-multikey:len=16,keys=4")
        .sample(0, 0, &ApproxBpe::default(), &chatml)
        .unwrap_err();
    assert!(matches!(err, TaskError::Invalid { .. }));
    assert!(err.to_string().contains("len=16"), "{err}");
}

#[test]
fn passkey_hides_the_key_at_the_requested_depth() {
    let start = sample("passkey:len=1024,depth=0", 3, 0);
    let end = sample("passkey:len=1024,depth=1", 3, 0);
    let middle = sample("passkey:len=1024,depth=0.5", 3, 0);
    // The same seed and index draw the same key whatever the depth.
    assert_eq!(start.answers, end.answers);
    let key = &start.answers[0];
    assert_eq!(key.len(), 5);
    assert!(key.chars().all(|c| c.is_ascii_digit()));
    let needle = format!("The pass key is {key}. Remember it. {key} is the pass key.");
    let position = |s: &Sample| s.user_prompt.find(&needle).expect("needle in prompt");
    let first_noise = start.user_prompt.find("The grass is green.").unwrap();
    assert!(position(&start) < first_noise);
    assert!(position(&end) > end.user_prompt.rfind("The grass is green.").unwrap());
    let relative = position(&middle) as f64 / middle.user_prompt.len() as f64;
    assert!((0.4..0.6).contains(&relative), "{relative}");

    assert!(start.user_prompt.ends_with("What is the pass key?"));
    assert_eq!(start.answer_prefix, "The pass key is");
    assert!(start.chat);
    assert_eq!(start.metric, Metric::AllFound);
    let prompt = start.prompt(&chatml);
    assert!(prompt.ends_with("<|im_start|>assistant\nThe pass key is"));
    assert_eq!(start.score(&format!(" {key}.")), 1.0);
    assert_eq!(start.score(" 00000."), 0.0);
}

#[test]
fn random_depth_varies_across_samples() {
    let positions: HashSet<usize> = (0..6)
        .map(|i| {
            let s = sample("passkey:len=1024", 0, i);
            s.user_prompt.find("The pass key is").unwrap() / 200
        })
        .collect();
    assert!(positions.len() > 2, "{positions:?}");
}

#[test]
fn niah_multikey_has_distractor_needles_and_asks_one() {
    let s = sample("niah-multikey:len=1024,keys=4", 1, 2);
    let needles: Vec<(String, String)> = s
        .user_prompt
        .match_indices("One of the special magic numbers for ")
        .map(|(at, m)| {
            let rest = &s.user_prompt[at + m.len()..];
            let (key, rest) = rest.split_once(" is: ").unwrap();
            let value: String = rest.chars().take_while(char::is_ascii_digit).collect();
            (key.to_string(), value)
        })
        .collect();
    assert_eq!(needles.len(), 4);
    let keys: HashSet<&String> = needles.iter().map(|(k, _)| k).collect();
    let values: HashSet<&String> = needles.iter().map(|(_, v)| v).collect();
    assert_eq!(keys.len(), 4);
    assert_eq!(values.len(), 4);
    let asked = needles
        .iter()
        .find(|(key, _)| {
            s.user_prompt.ends_with(&format!(
                "magic number for {key} mentioned in the provided text?"
            ))
        })
        .expect("the question names one of the keys");
    assert_eq!(s.answers, vec![asked.1.clone()]);
    assert_eq!(asked.1.len(), 7);
    assert!(s.answer_prefix.contains(&asked.0));
    assert_eq!(s.score(&format!(" {}.", asked.1)), 1.0);
    let distractor = needles.iter().find(|n| n.0 != asked.0).unwrap();
    assert_eq!(s.score(&format!(" {}.", distractor.1)), 0.0);
}

#[test]
fn kv_retrieval_object_is_json_and_the_answer_is_the_asked_value() {
    for spec in ["kv-retrieval:pairs=12,depth=0", "kv-retrieval:len=800"] {
        let s = sample(spec, 4, 1);
        let start = s.user_prompt.find("JSON data:\n").unwrap() + "JSON data:\n".len();
        let end = s.user_prompt.find("\n}").unwrap() + 2;
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&s.user_prompt[start..end]).expect("valid JSON object");
        let key_line = s
            .user_prompt
            .lines()
            .find(|l| l.starts_with("Key: "))
            .unwrap();
        let key = key_line.trim_start_matches("Key: ").trim_matches('"');
        assert_eq!(object[key].as_str().unwrap(), s.answers[0], "{spec}");
        assert_eq!(s.answers[0].len(), 36);
        assert!(s.answer_prefix.contains(key));
        if spec.contains("pairs=12") {
            assert_eq!(object.len(), 12);
            // depth=0 asks for the first pair.
            let first_key = s.user_prompt[start..].split('"').nth(1).unwrap();
            assert_eq!(first_key, key);
        }
        assert_eq!(s.score(&format!("{}\"", s.answers[0])), 1.0);
    }
}

#[test]
fn variable_tracking_answers_are_exactly_the_variables_holding_the_value() {
    let s = sample("variable-tracking:len=1024,chains=2,hops=3", 9, 0);
    // Interpret the assignments in order of appearance.
    let mut env: HashMap<String, String> = HashMap::new();
    let mut statements = 0;
    for line in s.user_prompt.lines().filter(|l| l.starts_with("VAR ")) {
        let (lhs, rhs) = line.split_once(" = ").unwrap();
        let name = lhs.trim_start_matches("VAR ").to_string();
        let value = match rhs.strip_prefix("VAR ") {
            Some(source) => env.get(source).cloned().expect("assigned before use"),
            None => rhs.to_string(),
        };
        env.insert(name, value);
        statements += 1;
    }
    assert_eq!(statements, 2 * 4);
    let asked = s
        .user_prompt
        .split("assigned the value ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    let mut expected: Vec<&String> = env
        .iter()
        .filter(|(_, v)| **v == asked)
        .map(|(k, _)| k)
        .collect();
    expected.sort();
    let mut answers: Vec<&String> = s.answers.iter().collect();
    answers.sort();
    assert_eq!(answers, expected);
    assert_eq!(answers.len(), 4);
    assert!(s
        .answer_prefix
        .contains("4 variables are assigned the value"));
    // Recall-based partial score.
    let two = format!(" {}, {}", s.answers[0], s.answers[1]);
    assert_eq!(s.score(&two), 0.5);
    assert_eq!(s.score(&s.answers.join(", ")), 1.0);
}

#[test]
fn common_words_answers_are_the_most_frequent_words() {
    let s = sample("common-words:len=1024,top=10", 2, 3);
    let list = s.user_prompt.lines().nth(1).unwrap();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    let tokens: Vec<&str> = list.split(' ').collect();
    for (i, pair) in tokens.chunks(2).enumerate() {
        assert_eq!(pair[0], format!("{}.", i + 1), "numbered list");
        *counts.entry(pair[1]).or_default() += 1;
    }
    let mut frequent: Vec<&str> = counts
        .iter()
        .filter(|(_, &c)| c == 6)
        .map(|(w, _)| *w)
        .collect();
    frequent.sort();
    let mut answers: Vec<&str> = s.answers.iter().map(String::as_str).collect();
    answers.sort();
    assert_eq!(frequent, answers);
    assert!(counts.values().all(|&c| c == 6 || c == 1));
    assert!(counts.len() > 50);
    assert!(s
        .user_prompt
        .ends_with("What are the 10 most common words in the above list?"));
}

#[test]
fn spec_display_round_trips() {
    for text in [
        "passkey:len=1024,depth=0.5",
        "passkey:len=2048,depth=random,seed=3",
        "niah-multikey:len=1536,keys=4,depth=random",
        "kv-retrieval:pairs=50,depth=0.25",
        "kv-retrieval:len=1024,depth=random",
        "variable-tracking:len=1024,chains=1,hops=4",
        "common-words:len=1024,top=10,freq=6,ufreq=1",
        "longbench:path=data/qa.jsonl,task=narrativeqa,budget=3500,chat=false",
    ] {
        let spec: TaskSpec = text.parse().unwrap();
        assert_eq!(spec.to_string(), text);
    }
}

#[test]
fn spec_defaults() {
    let spec: TaskSpec = "passkey".parse().unwrap();
    assert_eq!(spec.to_string(), "passkey:len=1024,depth=random");
    let TaskSpec::CommonWords(cw) = "common-words:len=8192".parse().unwrap() else {
        panic!("common-words")
    };
    assert_eq!((cw.top, cw.freq, cw.ufreq), (10, 30, 3));
    let TaskSpec::NiahMultikey(niah) = "niah-multikey:depth=0.1".parse().unwrap() else {
        panic!("niah")
    };
    assert_eq!((niah.len, niah.keys), (1024, 4));
    assert_eq!(niah.depth, Depth::Fixed(0.1));
}

#[test]
fn spec_errors_name_the_problem() {
    let message = |text: &str| text.parse::<TaskSpec>().unwrap_err().to_string();

    let unknown = message("passkee:len=10");
    assert!(
        unknown.contains("passkee") && unknown.contains("niah-multikey"),
        "{unknown}"
    );

    let key = message("passkey:length=1024");
    assert!(
        key.contains("`length`") && key.contains("len, depth, seed"),
        "{key}"
    );

    let value = message("passkey:len=abc");
    assert!(
        value.contains("`len`") && value.contains("`abc`"),
        "{value}"
    );

    let depth = message("passkey:depth=1.5");
    assert!(
        depth.contains("`depth`") && depth.contains("1.5"),
        "{depth}"
    );

    let keys = message("niah-multikey:keys=0");
    assert!(
        keys.contains("`keys`") && keys.contains("between 1"),
        "{keys}"
    );

    let both = message("kv-retrieval:len=1024,pairs=10");
    assert!(both.contains("not both"), "{both}");

    let twice = message("passkey:len=1,len=2");
    assert!(twice.contains("more than once"), "{twice}");

    let ufreq = message("common-words:freq=3,ufreq=3");
    assert!(ufreq.contains("`ufreq`"), "{ufreq}");

    let path = message("longbench:task=trec");
    assert!(path.contains("`path` is required"), "{path}");

    let dataset = message("longbench:path=x.jsonl,task=lsht");
    assert!(
        dataset.contains("`lsht`") && dataset.contains("passage_retrieval_en"),
        "{dataset}"
    );

    let chat = message("longbench:path=x.jsonl,chat=maybe");
    assert!(chat.contains("`chat`") && chat.contains("maybe"), "{chat}");

    let syntax = message("passkey:len");
    assert!(syntax.contains("KEY=VALUE"), "{syntax}");
}

#[test]
fn samples_round_trip_through_json() {
    let s = sample("variable-tracking:len=512", 0, 0);
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<Sample>(&json).unwrap(), s);
}
