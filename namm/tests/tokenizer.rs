//! The GGUF tokenizer against llama.cpp's ids for the default model, its chat format, streaming
//! decode, and its handling of damaged files.

mod common;
use common::model_path;

use candle_core::quantized::gguf_file::{self, Content, Value};
use namm::tokenizer::{read_gguf_content, ChatTemplate, Tokenizer, TokenizerError};
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../spec/tokenizer/smollm2_llamacpp_ids.json"
);
const SMOLLM2_SYSTEM_TURN: &str =
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";

fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        Tokenizer::from_gguf_file(model_path()).unwrap_or_else(|e| panic!("loading: {e}"))
    })
}

struct Case {
    text: String,
    ids: Vec<u32>,
}

fn fixture() -> Vec<Case> {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(FIXTURE).expect("reading the fixture"))
            .expect("parsing the fixture");
    json["cases"]
        .as_array()
        .expect("fixture has `cases`")
        .iter()
        .map(|case| Case {
            text: case["text"].as_str().expect("case has `text`").to_string(),
            ids: case["ids"]
                .as_array()
                .expect("case has `ids`")
                .iter()
                .map(|id| id.as_u64().expect("id is an integer") as u32)
                .collect(),
        })
        .collect()
}

#[test]
fn fixture_ids_match_llama_cpp() {
    let tok = tokenizer();
    let cases = fixture();
    assert_eq!(cases.len(), 14);
    let mismatches: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            let ids = tok.encode(&case.text, true).expect("encoding");
            (ids != case.ids).then(|| {
                format!(
                    "{:?}\n  llama.cpp: {:?}\n  namm:      {:?}",
                    case.text, case.ids, ids
                )
            })
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "{} of {} cases differ:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
}

#[test]
fn fixture_texts_round_trip() {
    let tok = tokenizer();
    for case in fixture() {
        let decoded = tok.decode(&case.ids, false).expect("decoding");
        assert_eq!(decoded, case.text);
        let literal = tok.encode(&case.text, false).expect("encoding");
        assert_eq!(tok.decode(&literal, false).expect("decoding"), case.text);
    }
}

#[test]
fn metadata_ids() {
    let tok = tokenizer();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), 2);
    assert_eq!(tok.pad_id(), Some(2));
    assert_eq!(tok.token_id("<|endoftext|>"), Some(0));
    assert_eq!(tok.token_id("<|im_start|>"), Some(1));
    assert_eq!(tok.token_id("<|im_end|>"), Some(2));
    assert_eq!(tok.token_id("no such token"), None);
    assert_eq!(tok.stop_ids(), &[2]);
    assert!((0..=16).all(|id| tok.is_special(id)));
    assert!((17..tok.vocab_size() as u32).all(|id| !tok.is_special(id)));
}

#[test]
fn control_tokens_parse_only_when_asked() {
    let tok = tokenizer();
    let text = "<|im_start|>user\nhi<|im_end|>";
    let parsed = tok.encode(text, true).unwrap();
    assert_eq!(parsed.first(), Some(&1));
    assert_eq!(parsed.last(), Some(&2));
    let literal = tok.encode(text, false).unwrap();
    assert!(
        literal.iter().all(|id| !tok.is_special(*id)),
        "control tokens parsed from text although parse_special is false: {literal:?}"
    );
    assert_eq!(tok.decode(&literal, false).unwrap(), text);
    assert_eq!(tok.decode(&parsed, true).unwrap(), "user\nhi");
    assert_eq!(tok.decode(&literal, true).unwrap(), text);
}

#[test]
fn chat_prompt_follows_the_gguf_template() {
    let tok = tokenizer();
    let user = "What is 12345 + 678?";
    let prompt = tok.chat_prompt(user);
    assert_eq!(
        prompt,
        format!("{SMOLLM2_SYSTEM_TURN}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
    );
    assert_eq!(
        tok.chat_template().default_system_turn.as_deref(),
        Some(SMOLLM2_SYSTEM_TURN)
    );

    // The user turn tokenizes as llama.cpp's fixture case for it, after the system turn.
    let user_turn = &fixture()[1];
    assert!(user_turn
        .text
        .starts_with("<|im_start|>user\nWhat is 12345 + 678?"));
    let ids = tok.encode(&prompt, true).unwrap();
    let system_ids = tok.encode(SMOLLM2_SYSTEM_TURN, true).unwrap();
    assert_eq!(ids, [system_ids.clone(), user_turn.ids.clone()].concat());
    assert_eq!(system_ids.first(), Some(&1));
    assert_eq!(&system_ids[system_ids.len() - 2..], &[2, 198]);

    let custom = tok.chat_prompt_with_system("Answer briefly.", "Hi");
    assert_eq!(
        custom,
        "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn default_system_turn_only_from_a_plain_literal() {
    let guarded = |output: &str| {
        format!(
            "{{% for message in messages %}}{{% if loop.first and messages[0]['role'] != 'system' %}}{output}{{% endif %}}{{% endfor %}}"
        )
    };
    let escaped = ChatTemplate::from_jinja(&guarded(
        r#"{{ "<|im_start|>system\nBe kind.<|im_end|>\n" }}"#,
    ));
    assert_eq!(
        escaped.default_system_turn.as_deref(),
        Some("<|im_start|>system\nBe kind.<|im_end|>\n")
    );
    let concatenated = ChatTemplate::from_jinja(&guarded(
        "{{ '<|im_start|>system\n' + system + '<|im_end|>\n' }}",
    ));
    assert_eq!(concatenated.default_system_turn, None);
    let unguarded = ChatTemplate::from_jinja("{{ '<|im_start|>system\nHi<|im_end|>\n' }}");
    assert_eq!(unguarded.default_system_turn, None);
    assert_eq!(
        unguarded.render(None, "q"),
        "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn stream_pieces_concatenate_to_decode() {
    let tok = tokenizer();
    let mut held_back = 0;
    for case in fixture() {
        for skip_special in [false, true] {
            let mut stream = tok.stream(skip_special);
            let mut text = String::new();
            for &id in &case.ids {
                let piece = stream.push(tok, id).unwrap();
                assert!(!piece.contains('\u{FFFD}'), "partial character emitted");
                held_back += usize::from(piece.is_empty());
                text.push_str(&piece);
            }
            text.push_str(&stream.finish());
            assert_eq!(text, tok.decode(&case.ids, skip_special).unwrap());
        }
    }
    assert!(held_back > 0, "no multi-token character was ever held back");

    // A character cut off at the end comes out as U+FFFD, as in `decode`.
    let crab = tok.encode("🦀", true).unwrap();
    assert!(crab.len() > 1, "🦀 is one token: {crab:?}");
    let mut stream = tok.stream(false);
    assert_eq!(stream.push(tok, crab[0]).unwrap(), "");
    assert_eq!(stream.finish(), tok.decode(&crab[..1], false).unwrap());
    assert_eq!(tok.decode(&crab[..1], false).unwrap(), "\u{FFFD}");
}

#[test]
fn bytes_without_a_token_are_dropped() {
    let tok = tokenizer();
    let ids = tok.encode("a\u{4}b", true).unwrap();
    assert_eq!(tok.decode(&ids, false).unwrap(), "ab");
}

#[test]
fn count_tokens_counts_encoded_ids() {
    let tok = tokenizer();
    for case in fixture() {
        assert_eq!(tok.count_tokens(&case.text), case.ids.len());
    }
}

#[test]
fn unknown_ids_are_errors() {
    let tok = tokenizer();
    let id = tok.vocab_size() as u32;
    assert!(matches!(
        tok.decode(&[17, id], false),
        Err(TokenizerError::UnknownId { id: bad, .. }) if bad == id
    ));
    assert!(tok.stream(false).push(tok, id).is_err());
}

/// ~10k tokens of text; prints encode throughput (a measurement, not a check).
#[test]
fn encode_throughput() {
    let tok = tokenizer();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);

    let prose: String = fixture()
        .iter()
        .map(|case| case.text.as_str())
        .chain([include_str!("../../spec/golden/README.md")])
        .collect::<Vec<_>>()
        .join("\n")
        .repeat(4);
    let random_ids: Vec<u32> = (0..10_000)
        .map(|_| rng.random_range(17..tok.vocab_size() as u32))
        .collect();
    let random = tok.decode(&random_ids, false).unwrap();

    for (name, text) in [
        ("fixture+README text", prose),
        ("random-token text", random),
    ] {
        let started = Instant::now();
        let ids = tok.encode(&text, true).unwrap();
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
        eprintln!(
            "encode {name}: {} tokens, {} bytes in {:.2} ms = {:.0} tokens/s",
            ids.len(),
            text.len(),
            seconds * 1e3,
            ids.len() as f64 / seconds
        );
    }
}

fn expect_error(path: &Path) -> TokenizerError {
    match Tokenizer::from_gguf_file(path) {
        Ok(_) => panic!("{} loaded although it is damaged", path.display()),
        Err(e) => e,
    }
}

#[test]
fn damaged_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read(model_path()).unwrap();

    let missing = dir.path().join("missing.gguf");
    assert!(matches!(expect_error(&missing), TokenizerError::Io { .. }));

    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        expect_error(&empty),
        TokenizerError::BadGguf { .. }
    ));

    let garbage = dir.path().join("garbage.gguf");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let noise: Vec<u8> = (0..1 << 16).map(|_| rng.random()).collect();
    std::fs::write(&garbage, &noise).unwrap();
    assert!(matches!(
        expect_error(&garbage),
        TokenizerError::BadGguf { .. }
    ));

    // A valid magic and version followed by noise.
    let noisy_header = dir.path().join("noisy_header.gguf");
    std::fs::write(&noisy_header, [&original[..8], &noise[..]].concat()).unwrap();
    assert!(matches!(
        expect_error(&noisy_header),
        TokenizerError::BadGguf { .. }
    ));

    // Cut inside the header, the token list, the merges, the tensor table and the tensor data.
    for len in [
        6,
        24,
        1000,
        400_000,
        1_500_000,
        original.len() / 2,
        original.len() - 1,
    ] {
        let cut = dir.path().join(format!("cut_{len}.gguf"));
        std::fs::write(&cut, &original[..len]).unwrap();
        let err = expect_error(&cut);
        let message = err.to_string();
        assert!(
            message.contains(&cut.display().to_string()),
            "error for a file cut at {len} bytes does not name it: {message}"
        );
        if len > 1_500_000 {
            assert!(
                matches!(err, TokenizerError::Truncated { .. }),
                "cut at {len}: {message}"
            );
        }
    }
}

/// Writes the default model's metadata, changed by `edit`, as a tensor-less GGUF.
fn write_edited(dir: &Path, name: &str, edit: impl FnOnce(&mut Content)) -> PathBuf {
    let mut content = read_gguf_content(&model_path()).unwrap();
    edit(&mut content);
    let metadata: Vec<(&str, &Value)> = content
        .metadata
        .iter()
        .map(|(key, value)| (key.as_str(), value))
        .collect();
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path).unwrap();
    gguf_file::write(&mut file, &metadata, &[]).unwrap();
    path
}

#[test]
fn bad_metadata_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let set = |key: &str, value: Value| {
        let key = key.to_string();
        move |c: &mut Content| {
            c.metadata.insert(key, value);
        }
    };

    let unchanged = write_edited(dir, "unchanged.gguf", |_| {});
    let rewritten = Tokenizer::from_gguf_file(&unchanged).expect("loading rewritten metadata");
    let case = &fixture()[1];
    assert_eq!(rewritten.encode(&case.text, true).unwrap(), case.ids);

    let no_tokens = write_edited(dir, "no_tokens.gguf", |c| {
        c.metadata.remove("tokenizer.ggml.tokens");
    });
    assert!(matches!(
        expect_error(&no_tokens),
        TokenizerError::MissingKey {
            key: "tokenizer.ggml.tokens"
        }
    ));

    let llama = write_edited(
        dir,
        "spm.gguf",
        set("tokenizer.ggml.model", Value::String("llama".into())),
    );
    assert!(matches!(expect_error(&llama), TokenizerError::UnknownModel(m) if m == "llama"));

    let qwen = write_edited(
        dir,
        "qwen.gguf",
        set("tokenizer.ggml.pre", Value::String("qwen2".into())),
    );
    assert!(
        matches!(expect_error(&qwen), TokenizerError::UnknownPreTokenizer(p, _) if p == "qwen2")
    );

    let numeric = write_edited(
        dir,
        "numeric_tokens.gguf",
        set("tokenizer.ggml.tokens", Value::U32(5)),
    );
    let err = expect_error(&numeric);
    assert!(
        matches!(
            err,
            TokenizerError::WrongType {
                key: "tokenizer.ggml.tokens",
                ..
            }
        ),
        "{err}"
    );

    let eos = write_edited(
        dir,
        "eos.gguf",
        set("tokenizer.ggml.eos_token_id", Value::U32(1 << 20)),
    );
    assert!(matches!(
        expect_error(&eos),
        TokenizerError::IdOutOfVocab { key: "tokenizer.ggml.eos_token_id", id, .. } if id == 1 << 20
    ));

    let types = write_edited(dir, "types.gguf", |c| {
        if let Some(Value::Array(types)) = c.metadata.get_mut("tokenizer.ggml.token_type") {
            types.truncate(100);
        }
    });
    assert!(matches!(
        expect_error(&types),
        TokenizerError::TokenTypeCount {
            types: 100,
            tokens: 49152
        }
    ));

    let merges = write_edited(dir, "merges.gguf", |c| {
        if let Some(Value::Array(merges)) = c.metadata.get_mut("tokenizer.ggml.merges") {
            merges[3] = Value::String("nospace".into());
        }
    });
    assert!(matches!(
        expect_error(&merges),
        TokenizerError::BadMerge { index: 3, value } if value == "nospace"
    ));

    let alignment = write_edited(
        dir,
        "alignment.gguf",
        set("general.alignment", Value::U32(0)),
    );
    assert!(matches!(
        expect_error(&alignment),
        TokenizerError::BadGguf { .. }
    ));
}
