//! The LongBench-format loader, end to end on `tests/fixtures/longbench_sample.jsonl` (six
//! hand-written records in LongBench's format, one per kind of metric).

mod tasks_common;

use std::collections::HashMap;
use std::io::Write;

use namm::metrics::Metric;
use namm::tasks::{
    dataset_max_new_tokens, dataset_prompt, truncate_middle, Task, TaskError, TaskSpec, TokenCodec,
    TokenCounter, LONGBENCH_DATASETS,
};
use tasks_common::{chatml, ApproxBpe};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/longbench_sample.jsonl"
);

fn load(spec: &str) -> Result<Task, TaskError> {
    spec.parse::<TaskSpec>()?.load()
}

fn fixture_task() -> Task {
    load(&format!("longbench:path={FIXTURE}")).unwrap()
}

#[test]
fn templates_are_longbench_dataset2prompt() {
    // LongBench config/dataset2prompt.json, English datasets, copied verbatim.
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/longbench_dataset2prompt.json"
    ))
    .unwrap();
    let reference: HashMap<String, String> = serde_json::from_str(&text).unwrap();
    assert_eq!(reference.len(), LONGBENCH_DATASETS.len());
    for dataset in LONGBENCH_DATASETS {
        assert_eq!(
            dataset_prompt(dataset),
            Some(reference[dataset].as_str()),
            "{dataset}"
        );
    }
    assert_eq!(dataset_prompt("lsht"), None);
}

#[test]
fn generation_lengths_are_longbench_dataset2maxlen() {
    let expected = [
        ("narrativeqa", 128),
        ("qasper", 128),
        ("multifieldqa_en", 64),
        ("hotpotqa", 32),
        ("2wikimqa", 32),
        ("musique", 32),
        ("gov_report", 512),
        ("qmsum", 512),
        ("multi_news", 512),
        ("trec", 64),
        ("triviaqa", 32),
        ("samsum", 128),
        ("passage_count", 32),
        ("passage_retrieval_en", 32),
        ("lcc", 64),
        ("repobench-p", 64),
    ];
    for (dataset, tokens) in expected {
        assert_eq!(dataset_max_new_tokens(dataset), Some(tokens), "{dataset}");
    }
}

#[test]
fn fixture_loads_with_prompts_metrics_and_lengths() {
    let task = fixture_task();
    assert_eq!(task.len(), Some(6));
    let tok = ApproxBpe::default();
    let samples: Vec<_> = (0..6)
        .map(|i| task.sample(0, i, &tok, &chatml).unwrap())
        .collect();

    let retrieval = &samples[0];
    assert_eq!(retrieval.id, "fixture-pr-0");
    assert_eq!(retrieval.metric, Metric::Retrieval);
    assert_eq!(retrieval.max_new_tokens, 32);
    assert!(retrieval.chat);
    assert!(retrieval.answer_prefix.is_empty());
    assert!(retrieval.user_prompt.starts_with(
        "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which \
         paragraph the abstract is from.\n\nParagraph 1: The river"
    ));
    assert!(retrieval.user_prompt.ends_with(
        "in 1850.\n\nPlease enter the number of the paragraph that the abstract is from. The \
         answer format must be like \"Paragraph 1\", \"Paragraph 2\", etc.\n\nThe answer is: "
    ));
    assert_eq!(
        retrieval.prompt(&chatml),
        chatml(&retrieval.user_prompt),
        "LongBench prompts have no answer prefix"
    );

    assert_eq!(samples[1].metric, Metric::QaF1);
    assert_eq!(samples[1].max_new_tokens, 128);
    assert_eq!(
        samples[1].answers,
        vec!["a red fox".to_string(), "the fox".to_string()]
    );

    // trec, samsum and lcc are prompted without the chat template, as LongBench's pred.py does.
    let trec = &samples[2];
    assert!(!trec.chat);
    assert_eq!(trec.prompt(&chatml), trec.user_prompt);
    assert_eq!(
        trec.metric,
        Metric::Classification {
            all_classes: vec![
                "Country".into(),
                "City".into(),
                "Manner of an action".into(),
                "Other location".into(),
                "Definition of something".into(),
            ]
        }
    );
    assert!(!samples[3].chat);
    assert_eq!(samples[3].metric, Metric::RougeL);

    // Braces in the context stay literal: the template is filled in one pass.
    let lcc = &samples[4];
    assert!(!lcc.chat);
    assert_eq!(
        lcc.user_prompt,
        "Please complete the code given below. \ndef template():\n    return \"{input} stays \
         literal\"\n\ndef add(a, b):\nNext line of code:\n"
    );

    // A numeric answer is read as Python's str() of it.
    assert_eq!(samples[5].answers, vec!["2".to_string()]);
    assert_eq!(samples[5].metric, Metric::Count);
}

#[test]
fn fixture_predictions_score_as_longbench() {
    let task = fixture_task();
    let tok = ApproxBpe::default();
    let score = |index: u64, prediction: &str| {
        task.sample(0, index, &tok, &chatml)
            .unwrap()
            .score(prediction)
    };
    // retrieval_score: digit runs ["2"] vs gold id 2; ["2", "3"]: 1/2.
    assert_eq!(score(0, "Paragraph 2"), 1.0);
    assert_eq!(score(0, "Paragraph 2 or Paragraph 3"), 0.5);
    // qa_f1 max over answers: "fox ran" vs "red fox": P = R = 1/2, F1 = 1/2;
    // vs "fox": P = 1/2, R = 1, F1 = 2/3. The max is 2/3.
    assert!((score(1, "The fox ran") - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(score(1, "A red fox."), 1.0);
    // trec: only the first line counts (eval.py), so the second-line class is ignored.
    assert_eq!(score(2, "City\nType: Country"), 1.0);
    assert_eq!(score(2, "\nCountry\nCity"), 0.0);
    // samsum: first line only; python rouge 1.0.1:
    // Rouge().get_scores(["Tom and Ann will have lunch at the cafe."],
    //   ["Tom and Ann will have lunch at the cafe at noon."], avg=True)["rouge-l"]["f"]
    //   = 0.9473684160664821
    let samsum = score(
        3,
        "Tom and Ann will have lunch at the cafe.\nDialogue: something else",
    );
    assert!((samsum - 0.9473684160664821).abs() < 1e-12, "{samsum}");
    // code_sim: the comment line is skipped; fuzz.ratio("return a+b", "    return a + b") = 77.
    assert_eq!(score(4, "# add them\nreturn a+b\n"), 0.77);
    assert_eq!(score(4, "    return a + b\n"), 1.0);
    // count: ["2"] vs "2".
    assert_eq!(score(5, "2"), 1.0);
    assert_eq!(score(5, "3 paragraphs, 2 unique"), 0.5);
}

#[test]
fn task_filter_selects_one_dataset_and_sets_its_template() {
    let task = load(&format!("longbench:path={FIXTURE},task=trec")).unwrap();
    assert_eq!(task.len(), Some(1));
    let s = task.sample(0, 0, &ApproxBpe::default(), &chatml).unwrap();
    assert_eq!(s.id, "fixture-trec-0");
    // chat=true overrides LongBench's no-template choice for trec.
    let chat = load(&format!("longbench:path={FIXTURE},task=trec,chat=true"))
        .unwrap()
        .sample(0, 0, &ApproxBpe::default(), &chatml)
        .unwrap();
    assert!(chat.chat);
}

#[test]
fn middle_truncation_keeps_both_ends_in_tokens() {
    let tok = ApproxBpe::default();
    // Ten tokens with the test tokenizer: "one", " two", …, " ten".
    let text = "one two three four five six seven eight nine ten";
    let ids = tok.encode(text).unwrap();
    assert_eq!(ids.len(), 10);
    // Fits: unchanged.
    assert_eq!(truncate_middle(text, 10, &tok).unwrap(), text);
    // Budget 5: keep ⌊5/2⌋ = 2 tokens from each end, decode each half, concatenate.
    let cut = truncate_middle(text, 5, &tok).unwrap();
    assert_eq!(
        cut,
        format!(
            "{}{}",
            tok.decode(&ids[..2]).unwrap(),
            tok.decode(&ids[8..]).unwrap()
        )
    );
    assert_eq!(cut, "one two nine ten");
}

#[test]
fn budget_truncates_long_prompts_before_the_template() {
    let tok = ApproxBpe::default();
    let full = fixture_task().sample(0, 1, &tok, &chatml).unwrap();
    let budget = 40;
    assert!(tok.count_tokens(&full.user_prompt) > budget);
    let cut = load(&format!("longbench:path={FIXTURE},budget={budget}"))
        .unwrap()
        .sample(0, 1, &tok, &chatml)
        .unwrap();
    assert!(tok.count_tokens(&cut.user_prompt) <= budget + 1);
    assert!(cut.user_prompt.starts_with("You are given a story"));
    assert!(cut.user_prompt.ends_with("\n\nAnswer:"));
    assert!(!cut.user_prompt.contains("farmer left his hat"));
}

#[test]
fn bad_files_give_errors_with_path_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, lines: &[&str]| {
        let path = dir.path().join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        for line in lines {
            writeln!(f, "{line}").unwrap();
        }
        path
    };
    let good = r#"{"input":"q","context":"c","answers":["a"],"dataset":"narrativeqa"}"#;

    let path = write("broken.jsonl", &[good, "{not json"]);
    let err = load(&format!("longbench:path={}", path.display())).unwrap_err();
    assert!(matches!(err, TaskError::Record { line: 2, .. }), "{err}");
    assert!(err.to_string().contains("broken.jsonl"), "{err}");

    let path = write(
        "missing.jsonl",
        &[r#"{"input":"q","context":"c","dataset":"narrativeqa"}"#],
    );
    let err = load(&format!("longbench:path={}", path.display())).unwrap_err();
    assert!(err.to_string().contains("missing field `answers`"), "{err}");

    let path = write(
        "types.jsonl",
        &[r#"{"input":"q","context":"c","answers":"a","dataset":"narrativeqa"}"#],
    );
    let err = load(&format!("longbench:path={}", path.display())).unwrap_err();
    assert!(
        err.to_string().contains("`answers` must be a list"),
        "{err}"
    );

    let path = write(
        "unknown.jsonl",
        &[r#"{"input":"q","context":"c","answers":["a"],"dataset":"lsht"}"#],
    );
    let err = load(&format!("longbench:path={}", path.display())).unwrap_err();
    assert!(err.to_string().contains("unknown dataset `lsht`"), "{err}");

    let path = write(
        "nodataset.jsonl",
        &[r#"{"input":"q","context":"c","answers":["a"]}"#],
    );
    let err = load(&format!("longbench:path={}", path.display())).unwrap_err();
    assert!(err.to_string().contains("task="), "{err}");
    // With task= the dataset field is not needed.
    let task = load(&format!("longbench:path={},task=qasper", path.display())).unwrap();
    assert_eq!(task.len(), Some(1));

    let err = load("longbench:path=/nonexistent/file.jsonl").unwrap_err();
    assert!(matches!(err, TaskError::Io { .. }));
    assert!(err.to_string().contains("/nonexistent/file.jsonl"), "{err}");

    let path = write("one.jsonl", &[good]);
    let task = load(&format!("longbench:path={}", path.display())).unwrap();
    let err = task
        .sample(0, 5, &ApproxBpe::default(), &chatml)
        .unwrap_err();
    assert!(
        matches!(
            err,
            TaskError::IndexOutOfRange {
                index: 5,
                len: 1,
                ..
            }
        ),
        "{err}"
    );
}

struct FailingCodec;

impl TokenCounter for FailingCodec {
    fn count_tokens(&self, text: &str) -> usize {
        text.len()
    }
}

impl TokenCodec for FailingCodec {
    fn encode(&self, _: &str) -> Result<Vec<u32>, namm::tasks::TokenizerError> {
        Err("no vocabulary".into())
    }
    fn decode(&self, _: &[u32]) -> Result<String, namm::tasks::TokenizerError> {
        Err("no vocabulary".into())
    }
}

#[test]
fn tokenizer_failures_surface_as_errors() {
    let task = load(&format!("longbench:path={FIXTURE},budget=100")).unwrap();
    let err = task.sample(0, 0, &FailingCodec, &chatml).unwrap_err();
    assert!(matches!(err, TaskError::Tokenizer(_)));
    assert!(err.to_string().contains("no vocabulary"), "{err}");
}
