//! The evaluation harness on the real default GGUF: short passkey prompts (600 and 1100
//! tokens, two samples each) under the full cache and two budget baselines.

mod common;
use common::model_path;

use std::path::Path;
use std::sync::OnceLock;

use candle_core::Device;
use namm::evaluate::{
    parse_device, shared_prefix_len, EvalError, EvalOptions, Evaluator, SampleResult,
    TaskEvaluation,
};
use namm::model::WeightFormat;
use namm::policy::{parse_policy, MemoryPolicy};
use namm::tasks::{Sample, TaskSpec};

const TASKS: [&str; 2] = ["passkey:len=600", "passkey:len=1100"];
const POLICIES: [&str; 3] = ["full", "h2o:budget=0.25", "snapkv:budget=0.25"];
const SAMPLES: usize = 2;
const SEED: u64 = 0;

fn evaluator() -> &'static Evaluator {
    static EVALUATOR: OnceLock<Evaluator> = OnceLock::new();
    EVALUATOR.get_or_init(|| {
        Evaluator::load(&model_path(), &Device::Cpu, WeightFormat::F32Q8_0)
            .expect("loading the default model")
    })
}

fn policies() -> Vec<Box<dyn MemoryPolicy>> {
    POLICIES.iter().map(|p| parse_policy(p).unwrap()).collect()
}

fn samples() -> &'static Vec<(String, Vec<Sample>)> {
    static SAMPLES_: OnceLock<Vec<(String, Vec<Sample>)>> = OnceLock::new();
    SAMPLES_.get_or_init(|| {
        TASKS
            .iter()
            .map(|spec| {
                let task = spec.parse::<TaskSpec>().unwrap().load().unwrap();
                let samples = evaluator().samples(&task, SEED, SAMPLES).unwrap();
                (task.spec().to_string(), samples)
            })
            .collect()
    })
}

fn run(prefix_reuse: bool) -> Vec<TaskEvaluation> {
    run_with(EvalOptions {
        prefix_reuse,
        ..EvalOptions::default()
    })
}

fn run_with(opts: EvalOptions) -> Vec<TaskEvaluation> {
    let mut policies = policies();
    samples()
        .iter()
        .map(|(task, samples)| {
            evaluator()
                .evaluate(task, samples, &mut policies, &opts, &mut |_| {})
                .unwrap()
        })
        .collect()
}

/// The reference run, with prefix reuse, shared by the tests that only read it.
fn reference() -> &'static Vec<TaskEvaluation> {
    static RUN: OnceLock<Vec<TaskEvaluation>> = OnceLock::new();
    RUN.get_or_init(|| run(true))
}

fn results_of<'a>(
    run: &'a [TaskEvaluation],
    policy: &str,
) -> impl Iterator<Item = &'a SampleResult> + 'a {
    let policy = policy.to_string();
    run.iter()
        .flat_map(|t| &t.policies)
        .filter(move |p| p.policy == policy)
        .flat_map(|p| &p.results)
}

/// Everything but the timings, which legitimately differ between runs.
fn outcome(r: &SampleResult) -> impl PartialEq + std::fmt::Debug + '_ {
    (
        (&r.policy, r.index, &r.id, &r.prompt, &r.answers),
        (
            &r.prediction,
            r.score,
            r.kept_fraction,
            &r.kept_after_invocations,
        ),
        (
            r.prompt_tokens,
            r.generated_tokens,
            r.tokens_seen,
            r.peak_kv_bytes,
        ),
        (&r.stop_reason, r.decode_steps),
    )
}

#[test]
fn every_policy_answers_every_sample_and_the_aggregate_matches() {
    let run = reference();
    assert_eq!(run.len(), TASKS.len());
    for task in run {
        assert_eq!(task.policies.len(), POLICIES.len());
        for (p, spec) in task.policies.iter().zip(POLICIES) {
            assert_eq!(p.policy, parse_policy(spec).unwrap().name());
            assert_eq!(p.samples, SAMPLES);
            assert_eq!(p.results.len(), SAMPLES);
            let mean = p.results.iter().map(|r| r.score).sum::<f64>() / SAMPLES as f64;
            assert!((p.score - 100.0 * mean).abs() < 1e-9);
            let peak = p.results.iter().map(|r| r.peak_kv_bytes).max().unwrap();
            assert!((p.peak_kv_mib - peak as f64 / (1024.0 * 1024.0)).abs() < 1e-12);
            for r in &p.results {
                assert!(r.generated_tokens >= 1);
                assert!(r.prefill_tokens_per_sec > 0.0);
                assert_eq!(r.tokens_seen, r.prompt_tokens + r.generated_tokens - 1);
            }
        }
    }
}

#[test]
fn full_cache_keeps_every_token() {
    let mut count = 0;
    for r in results_of(reference(), "full") {
        assert_eq!(r.kept_fraction, 1.0, "{}", r.id);
        assert!(r.kept_after_invocations.iter().all(|&k| k == 1.0));
        assert_eq!(r.kept_after_invocations.len(), r.tokens_seen / 512);
        count += 1;
    }
    assert_eq!(count, TASKS.len() * SAMPLES);
}

#[test]
fn budget_baselines_keep_about_their_budget_after_the_first_invocation() {
    let full_peak = results_of(reference(), "full")
        .map(|r| r.peak_kv_bytes)
        .max()
        .unwrap();
    for policy in ["h2o:budget=0.25", "snapkv:budget=0.25"] {
        for r in results_of(reference(), policy) {
            let first = r.kept_after_invocations[0];
            assert!(
                (first - 0.25).abs() <= 2.0 / 512.0,
                "{policy} on {} kept {first} of the cache at T = 512",
                r.id
            );
            for &k in &r.kept_after_invocations {
                assert!((k - 0.25).abs() <= 0.01, "{policy} on {}: {k}", r.id);
            }
            // Tokens after the last invocation are all kept, so the final fraction sits above
            // the budget, and far below the full cache.
            assert!(
                r.kept_fraction > 0.25 && r.kept_fraction < 0.6,
                "{}",
                r.kept_fraction
            );
            if r.prompt_tokens > 1024 {
                assert!(r.peak_kv_bytes < full_peak, "{policy} on {}", r.id);
            }
        }
    }
}

#[test]
fn per_sample_score_is_the_samples_score_of_the_prediction() {
    let ev = evaluator();
    for (task, (_, samples)) in reference().iter().zip(samples()) {
        for p in &task.policies {
            for (r, sample) in p.results.iter().zip(samples) {
                assert_eq!(r.index, sample.index);
                assert_eq!(r.id, sample.id);
                assert_eq!(r.answers, sample.answers);
                assert_eq!(r.prompt, ev.prompt_text(sample));
                assert_eq!(r.score, sample.score(&r.prediction));
                assert!(!r.prediction.contains("<|im_end|>"));
                let ids = ev.prompt_ids(&sample.id, &r.prompt).unwrap();
                assert_eq!(ids.len(), r.prompt_tokens);
            }
        }
    }
    // The small model does find some pass keys with a full cache at 600 tokens.
    let full_600 = &reference()[0].policies[0];
    assert!(full_600.score > 0.0, "{full_600:?}");
}

#[test]
fn results_are_deterministic() {
    let again = run(true);
    for (a, b) in reference().iter().zip(&again) {
        for (pa, pb) in a.policies.iter().zip(&b.policies) {
            for (ra, rb) in pa.results.iter().zip(&pb.results) {
                assert_eq!(outcome(ra), outcome(rb));
            }
        }
    }
}

#[test]
fn prefix_reuse_gives_the_same_results_as_separate_prefills() {
    let separate = run(false);
    for (shared, alone) in reference().iter().zip(&separate) {
        // Both prompt lengths exceed 384 tokens: three whole chunks are shared per sample.
        assert_eq!(shared.prefix_reuse.samples, SAMPLES);
        assert_eq!(shared.prefix_reuse.prefix_tokens, 384 * SAMPLES);
        assert!(shared.prefix_reuse.prefix_secs > 0.0);
        assert_eq!(alone.prefix_reuse.samples, 0);
        assert_eq!(alone.prefix_reuse.prefix_tokens, 0);
        for (ps, pa) in shared.policies.iter().zip(&alone.policies) {
            for (rs, ra) in ps.results.iter().zip(&pa.results) {
                assert_eq!(outcome(rs), outcome(ra));
            }
        }
    }
}

#[test]
fn prompts_follow_the_gguf_bos_setting() {
    let ev = evaluator();
    // SmolLM2's GGUF sets tokenizer.ggml.add_bos_token = false; the ChatML prompt opens with
    // <|im_start|> itself.
    assert!(!ev.add_bos());
    let sample = &samples()[0].1[0];
    let ids = ev.prompt_ids(&sample.id, &ev.prompt_text(sample)).unwrap();
    assert_eq!(Some(ids[0]), ev.tokenizer().token_id("<|im_start|>"));
    assert_eq!(ids.iter().filter(|&&id| id == ids[0]).count(), 3);
}

#[test]
fn shared_prefix_is_whole_chunks_before_the_first_invocation() {
    assert_eq!(shared_prefix_len(0), 0);
    assert_eq!(shared_prefix_len(1), 0);
    assert_eq!(shared_prefix_len(128), 0);
    assert_eq!(shared_prefix_len(129), 128);
    assert_eq!(shared_prefix_len(385), 384);
    assert_eq!(shared_prefix_len(600), 384);
    assert_eq!(shared_prefix_len(5000), 384);
}

#[test]
fn bad_inputs_are_named_errors() {
    let missing = Path::new("/nonexistent/model.gguf");
    let err = Evaluator::load(missing, &Device::Cpu, WeightFormat::Gguf).unwrap_err();
    assert!(matches!(err, EvalError::ModelMissing { .. }));
    assert!(err.to_string().contains("/nonexistent/model.gguf"));
    assert!(err.to_string().contains("scripts/fetch-model.sh"));

    let err = evaluator()
        .evaluate(
            "passkey",
            &samples()[0].1,
            &mut [],
            &EvalOptions::default(),
            &mut |_| {},
        )
        .unwrap_err();
    assert!(matches!(err, EvalError::NoPolicies));

    for spec in ["gpu", "cuda:x"] {
        let err = parse_device(spec).unwrap_err();
        assert!(err.to_string().contains(spec), "{err}");
    }
    assert!(matches!(parse_device("cpu"), Ok(Device::Cpu)));
}

/// `answer_likelihood` adds the gold answer's teacher-forced log-probability to every result
/// and leaves the generations as they were; a passkey the model copies correctly with the full
/// cache is a likely continuation (above e^-1 per token on average).
#[test]
fn answer_likelihood_scores_the_gold_answer_beside_each_generation() {
    let scored = run_with(EvalOptions {
        answer_likelihood: true,
        ..EvalOptions::default()
    });
    for (with, without) in scored.iter().zip(reference()) {
        for (p, q) in with.policies.iter().zip(&without.policies) {
            let logps: Vec<f64> = p
                .results
                .iter()
                .map(|r| r.answer_logprob.unwrap())
                .collect();
            assert!(
                logps.iter().all(|l| l.is_finite() && *l <= 0.0),
                "{logps:?}"
            );
            let mean = logps.iter().sum::<f64>() / logps.len() as f64;
            assert!((p.mean_answer_logprob.unwrap() - mean).abs() < 1e-12);
            assert!(q.mean_answer_logprob.is_none());
            for (r, s) in p.results.iter().zip(&q.results) {
                assert_eq!(outcome(r), outcome(s));
            }
        }
    }
    let mut answered = 0;
    for r in results_of(&scored, "full").filter(|r| r.score == 1.0) {
        assert!(
            r.answer_logprob.unwrap() > -1.0,
            "{}: {:?}",
            r.id,
            r.answer_logprob
        );
        answered += 1;
    }
    assert!(answered > 0, "the full cache answers some passkey prompt");
}
