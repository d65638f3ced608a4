//! Batched evaluation: rows of one batch (other prompts, other policies, other lengths) get
//! exactly what each gets alone — logits, kept token sets, invocations, generations — on the
//! real model and on a synthesised `random:tiny` one.

mod common;
use common::model_path;

use candle_core::Device;
use namm::engine::{BatchRow, Engine, Session};
use namm::evaluate::Evaluator;
use namm::model::{Model, ModelSource, WeightFormat};
use namm::policy::{parse_policy, MemoryPolicy, NammPolicy, NormMode, PARAM_COUNT};
use namm::tasks::TaskSpec;
use rand::{Rng, SeedableRng};

/// A NAMM with seeded random parameters (spread wide enough that it evicts).
fn random_namm(seed: u64) -> Box<dyn MemoryPolicy> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let params = (0..PARAM_COUNT)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    Box::new(NammPolicy::new(params, NormMode::accumulate()).unwrap())
}

fn policies() -> Vec<Box<dyn MemoryPolicy>> {
    vec![
        random_namm(1),
        parse_policy("h2o:budget=0.5").unwrap(),
        random_namm(2),
        parse_policy("streaming:budget=300").unwrap(),
    ]
}

/// Token ids 0.. of the vocabulary in a fixed scramble: no tokenizer needed.
fn tokens(len: usize, offset: usize, vocab: usize) -> Vec<u32> {
    (0..len)
        .map(|i| ((i + offset) * 7919 % (vocab - 3) + 3) as u32)
        .collect()
}

/// Feeds each prompt to its own session, all rows as one batch, then `steps` greedy decode
/// steps as batches, and checks every row against the same done alone.
fn rows_equal_alone(model: &Model, lens: &[usize], steps: usize) {
    let vocab = model.config().vocab;
    let prompts: Vec<Vec<u32>> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| tokens(n, 1000 * i, vocab))
        .collect();
    let mut alone_policies = policies();
    let mut batch_policies = policies();
    let new_session = |p: &dyn MemoryPolicy| Session::new(model, p.inputs()).unwrap();

    let mut alone: Vec<(Session, Vec<Vec<f32>>)> = Vec::new();
    for (prompt, policy) in prompts.iter().zip(&mut alone_policies) {
        let mut s = new_session(policy.as_ref());
        let mut logits = vec![s.feed(prompt, policy.as_mut()).unwrap()];
        for _ in 0..steps {
            let next = namm::engine::argmax(logits.last().unwrap());
            logits.push(s.feed(&[next], policy.as_mut()).unwrap());
        }
        alone.push((s, logits));
    }

    let mut sessions: Vec<Session> = batch_policies
        .iter()
        .map(|p| new_session(p.as_ref()))
        .collect();
    let mut rows: Vec<&mut Session> = sessions.iter_mut().collect();
    let mut pols: Vec<&mut dyn MemoryPolicy> = batch_policies
        .iter_mut()
        .map(|p| p.as_mut() as &mut dyn MemoryPolicy)
        .collect();
    let ids: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let mut logits = vec![Session::feed_batch(&mut rows, &ids, &mut pols).unwrap()];
    for _ in 0..steps {
        let next: Vec<[u32; 1]> = logits
            .last()
            .unwrap()
            .iter()
            .map(|l| [namm::engine::argmax(l)])
            .collect();
        let next: Vec<&[u32]> = next.iter().map(|t| t.as_slice()).collect();
        logits.push(Session::feed_batch(&mut rows, &next, &mut pols).unwrap());
    }

    for (i, (s, want)) in alone.iter().enumerate() {
        for (step, want) in want.iter().enumerate() {
            assert_eq!(
                &logits[step][i], want,
                "row {i}, step {step}: logits differ"
            );
        }
        assert_eq!(
            rows[i].positions(),
            s.positions(),
            "row {i}: kept token sets differ"
        );
        assert_eq!(
            rows[i].invocations(),
            s.invocations(),
            "row {i}: invocations differ"
        );
        if i % 2 == 1 {
            assert!(
                s.kept_per_layer().iter().any(|&k| k < s.tokens_seen()),
                "row {i}: its baseline evicted nothing, so the check proves little"
            );
        }
    }
}

#[test]
fn batch_rows_on_the_real_model_equal_each_row_alone() {
    let model = Model::load(model_path(), &Device::Cpu, WeightFormat::Int8Gguf).unwrap();
    // Different lengths: rows reach their invocations (T = 512) and chunk ends at different
    // steps, so batches mix rows at different positions.
    rows_equal_alone(&model, &[700, 560, 630, 530], 4);
}

#[test]
fn batch_rows_on_a_random_tiny_model_equal_each_row_alone() {
    let source: ModelSource = "random:tiny:seed=5".parse().unwrap();
    for format in [
        WeightFormat::Int8Gguf,
        WeightFormat::F32Gguf,
        WeightFormat::Gguf,
    ] {
        let model = Model::load_source(&source, &Device::Cpu, format).unwrap();
        rows_equal_alone(&model, &[1100, 1030, 1500, 900], 6);
    }
}

#[test]
fn random_models_are_seeded_and_named_by_their_bytes() {
    let a: ModelSource = "random:tiny".parse().unwrap();
    let b: ModelSource = "random:tiny:seed=1".parse().unwrap();
    assert_eq!(a.sha256().unwrap(), a.sha256().unwrap());
    assert_ne!(a.sha256().unwrap(), b.sha256().unwrap());
    let bad = "random:giant"
        .parse::<ModelSource>()
        .unwrap_err()
        .to_string();
    assert!(
        bad.contains("random:giant") && bad.contains("tiny"),
        "{bad}"
    );

    let big: ModelSource = "random:smollm2-135m".parse().unwrap();
    let model = Model::load_source(&big, &Device::Cpu, WeightFormat::Gguf).unwrap();
    let real = Model::load(model_path(), &Device::Cpu, WeightFormat::Gguf).unwrap();
    let (c, r) = (model.config(), real.config());
    assert_eq!(
        (
            c.n_layers,
            c.n_heads,
            c.n_kv_heads,
            c.hidden,
            c.intermediate,
            c.vocab
        ),
        (
            r.n_layers,
            r.n_heads,
            r.n_kv_heads,
            r.hidden,
            r.intermediate,
            r.vocab
        ),
        "random:smollm2-135m has the default model's shape"
    );
}

#[test]
fn a_batch_of_policies_scores_like_one_policy_at_a_time() {
    let source: ModelSource = "random:tiny:seed=2".parse().unwrap();
    let evaluator = Evaluator::load_source(&source, &Device::Cpu, WeightFormat::F32Gguf).unwrap();
    let task = "passkey:len=1100"
        .parse::<TaskSpec>()
        .unwrap()
        .load()
        .unwrap();
    let samples = evaluator.samples(&task, 0, 2).unwrap();
    for sample in samples {
        let prepared = evaluator.prepare(sample, None).unwrap();
        let mut one = policies();
        let alone: Vec<_> = one
            .iter_mut()
            .map(|p| evaluator.run_prepared(&prepared, p.as_mut()).unwrap().0)
            .collect();
        let mut many = policies();
        let rows = many
            .iter_mut()
            .map(|p| (&prepared, p.as_mut() as &mut dyn MemoryPolicy))
            .collect();
        let (batched, _) = evaluator.run_batch(rows).unwrap();
        assert_eq!(batched.len(), alone.len());
        for (b, a) in batched.iter().zip(&alone) {
            assert_eq!(b.policy, a.policy);
            assert_eq!(b.prediction, a.prediction);
            assert_eq!(b.generated_tokens, a.generated_tokens);
            assert_eq!(b.kept_after_invocations, a.kept_after_invocations);
            assert_eq!(b.kept_fraction, a.kept_fraction);
        }
    }
    // The engine's own entry point, rows of different prompts continuing no prefix.
    let engine = Engine::new(evaluator.model());
    let prompts = [tokens(600, 0, 512), tokens(520, 9, 512)];
    let mut pols = policies();
    let (first, second) = pols.split_at_mut(1);
    let gens = engine
        .generate_batch(
            vec![
                BatchRow {
                    prefix: None,
                    rest: &prompts[0],
                    policy: first[0].as_mut(),
                    max_new_tokens: 5,
                },
                BatchRow {
                    prefix: None,
                    rest: &prompts[1],
                    policy: second[0].as_mut(),
                    max_new_tokens: 3,
                },
            ],
            &[],
        )
        .unwrap();
    assert_eq!(gens[0].tokens.len(), 5);
    assert_eq!(gens[1].tokens.len(), 3);
}
