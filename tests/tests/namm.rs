//! End-to-end NAMM evolution on the real model: a coordinator, a worker process that holds
//! the GGUF and one that does not, a few small generations, then the export evaluated by
//! `namm eval`.

use namm_tests::{model_path, stderr, Cluster};
use serde_json::Value;
use std::time::Duration;

const SPEC: &str = r#"
name = "namm-e2e"
seed = 2
[strategy]
population = 4
[stop]
max_generations = 2
target_fitness = inf
[namm]
tasks = ["passkey:len=600"]
pool_size = 4
heldout_size = 2
prompts_per_task = 2
shard_size = 2
heldout_every = 1
"#;

fn finite(v: &Value) -> f64 {
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("{v} is not a finite number"));
    assert!(x.is_finite());
    x
}

#[test]
fn a_namm_run_evolves_exports_and_the_export_evaluates() {
    let model = model_path();
    let model = model.to_str().unwrap();
    let c = Cluster::new();
    let spec = c.file("namm.toml", SPEC);
    let mut coord = c.coordinator(
        "coord",
        &[
            "--run",
            spec.to_str().unwrap(),
            "--local-workers",
            "0",
            "--exit-when-done",
        ],
    );
    // A worker without the model registers too, but must never be handed a NAMM unit.
    let _bare = c.worker("bare", &[]);
    let _llm = c.worker("llm", &["--model", model]);
    let status = coord
        .wait_exit(Duration::from_secs(900))
        .expect("the NAMM run did not finish");
    assert!(status.success(), "{}", coord.log());

    let runs = c.json_db(&["runs"]);
    let run = &runs[0];
    assert_eq!(run["status"], "finished", "{run}");
    assert_eq!(run["objective"], "namm:SmolLM2-135M-Instruct.Q4_1.gguf");

    let history = c.json_db(&["history", "1"]);
    let gens = history.as_array().unwrap();
    assert_eq!(gens.len(), 2);
    for g in gens {
        assert_eq!(g["candidate_tasks"].as_array().unwrap().len(), 4, "{g}");
        let kept = finite(&g["mean_kept_fraction"]);
        assert!(kept > 0.0 && kept <= 1.0, "{g}");
        for f in g["fitness"].as_array().unwrap() {
            assert!(finite(f) >= 0.0, "{g}");
        }
        let task = &g["candidate_tasks"][0]["tasks"][0];
        assert_eq!(task["task"], "passkey:len=600,depth=random");
        assert_eq!(task["prompts"], 2);
    }
    assert!(
        gens[0]["heldout"].is_null(),
        "no held-out pass at generation 0"
    );
    let heldout = &gens[1]["heldout"];
    assert!(finite(&heldout["fitness"]) >= 0.0, "{heldout}");
    assert_eq!(heldout["tasks"][0]["prompts"], 2);

    // Every unit, the reference pass included, ran on the worker that holds the model.
    for g in 0..2 {
        let shown = c.json_db(&["show", "1", &g.to_string()]);
        let evals = shown["evaluations"].as_array().unwrap();
        assert!(!evals.is_empty());
        for e in evals {
            assert_eq!(e["worker_name"], "llm", "{e}");
        }
        if g == 0 {
            assert!(evals.iter().any(|e| e["kind"] == "reference"));
        }
    }

    let exported = c.dir.path().join("namm.safetensors");
    let out = c.cli_db(&["best", "1", "--export", exported.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let policy = format!("namm:{}", exported.display());
    let out = namm_tests::run_cli(
        &[
            "eval",
            "--model",
            model,
            "--task",
            "passkey:len=600",
            "--seed",
            "7",
            "--samples",
            "1",
            "--policy",
            "full",
            "--policy",
            &policy,
            "--json",
        ]
        .map(String::from),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[1]["policy"], policy);
    let kept = finite(&results[1]["mean_kept_fraction"]);
    assert!(kept > 0.0 && kept <= 1.0, "{}", results[1]);
    assert_eq!(finite(&results[0]["mean_kept_fraction"]), 1.0);

    // A benchmark run has nothing to export.
    let other = Cluster::uninterrupted(
        "[objective]\nkind = \"sphere\"\ndim = 2\n[stop]\nmax_generations = 2\n",
        1,
    );
    let out = other.cli_db(&["best", "1", "--export", exported.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not a NAMM run"), "{}", stderr(&out));
}

/// `namm-coord start` without `--run` submits the default NAMM run once; a restart resumes it
/// instead of submitting another, and `--no-default-run` serves without one.
#[test]
fn a_bare_start_submits_the_default_run_once() {
    let c = Cluster::new();
    let mut coord = c.coordinator_args("coord", &["--local-workers", "0"]);
    let runs = c.json(&["runs"]);
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["name"], "namm-surprisal-0.25");
    assert_eq!(runs[0]["status"], "running");
    assert_eq!(runs[0]["population"], 8);
    assert_eq!(runs[0]["dim"], 4172);
    coord.terminate();
    assert!(coord
        .wait_exit(Duration::from_secs(30))
        .expect("coordinator did not stop")
        .success());

    let mut coord = c.coordinator_args("coord", &["--local-workers", "0"]);
    let runs = c.json(&["runs"]);
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs}");
    coord.terminate();
    coord.wait_exit(Duration::from_secs(30));

    let other = Cluster::new();
    let _coord = other.coordinator("coord", &[]);
    assert!(other.json(&["runs"]).as_array().unwrap().is_empty());
}

/// A local worker of an LLM run needs the model the run names: a wrong file is refused
/// before anything is served, with both digests in the message.
#[test]
fn local_workers_of_an_llm_run_need_its_model() {
    let c = Cluster::new();
    let wrong = c.file("not-a-model.gguf", "not a model");
    let out = std::process::Command::new(namm_tests::bin("namm-coord"))
        .args(["start", "--listen", &c.addr(), "--db"])
        .arg(c.db())
        .args(["--local-workers", "1", "--model"])
        .arg(&wrong)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("not-a-model.gguf") && err.contains("sha256") && err.contains("b179c95"),
        "{err}"
    );
    // The refused start wrote no run: the corrected one submits the default run as run 1.
    let runs = c.json_db(&["runs"]);
    assert_eq!(runs.as_array().map(Vec::len), Some(0), "{runs}");
}

/// The same run on a synthesised model (no download) with an unbatched worker and with one
/// that runs 4 candidates per batch: identical histories, fitness and kept fractions alike.
#[test]
fn batched_workers_reproduce_the_unbatched_history() {
    let model = "random:tiny:seed=3";
    let sha = model
        .parse::<namm::model::ModelSource>()
        .unwrap()
        .sha256()
        .unwrap();
    let spec = format!(
        r#"
name = "batched"
seed = 4
[strategy]
population = 4
[stop]
max_generations = 2
target_fitness = inf
[namm]
model = "{model}"
model_sha256 = "{sha}"
tasks = ["passkey:len=1100"]
pool_size = 4
heldout_size = 2
prompts_per_task = 2
shard_size = 2
heldout_every = 1
"#
    );
    let history = |batch: &str| -> Vec<Value> {
        let c = Cluster::new();
        let path = c.file("run.toml", &spec);
        let mut coord = c.coordinator(
            "coord",
            &[
                "--run",
                path.to_str().unwrap(),
                "--local-workers",
                "0",
                "--exit-when-done",
            ],
        );
        let _w = c.worker("w", &["--model", model, "--batch", batch]);
        let status = coord
            .wait_exit(Duration::from_secs(600))
            .expect("the run did not finish");
        assert!(status.success(), "{}", coord.log());
        // How many rows the prompts of generation 1's candidate units ran in.
        let shown = c.json_db(&["show", "1", "1"]);
        let rows: Vec<f64> = shown["evaluations"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "candidate")
            .flat_map(|e| e["items"].as_array().unwrap().clone())
            .map(|i| finite(&i["extra"]["batch_rows"]))
            .collect();
        assert!(!rows.is_empty());
        assert!(
            rows.iter().all(|&r| r == batch.parse::<f64>().unwrap()),
            "{rows:?}"
        );
        let h = c.json_db(&["history", "1"]);
        h.as_array().unwrap().clone()
    };
    let one = history("1");
    let four = history("4");
    assert_eq!(one.len(), 2);
    for (a, b) in one.iter().zip(&four) {
        assert_eq!(a["fitness"], b["fitness"], "fitness differs:\n{a}\n{b}");
        assert_eq!(a["mean_kept_fraction"], b["mean_kept_fraction"]);
        assert_eq!(a["heldout"], b["heldout"]);
        let kept = finite(&a["mean_kept_fraction"]);
        assert!(kept < 1.0, "the candidates evicted nothing: {a}");
    }
}

/// A run under a budget with the likelihood fitness: no candidate or held-out prompt keeps
/// more than the budget after any invocation, candidates score the gold answer instead of
/// decoding, and the export carries the budget into `namm eval`.
#[test]
fn a_budgeted_run_never_keeps_more_than_its_budget() {
    let model = model_path();
    let model = model.to_str().unwrap();
    let c = Cluster::new();
    let spec = c.file(
        "budget.toml",
        r#"
name = "budget-e2e"
seed = 5
[strategy]
population = 3
[stop]
max_generations = 2
target_fitness = inf
[namm]
tasks = ["passkey:len=700"]
pool_size = 2
heldout_size = 1
prompts_per_task = 2
shard_size = 2
heldout_every = 1
budget = 0.25
fitness = "likelihood"
"#,
    );
    let mut coord = c.coordinator(
        "coord",
        &[
            "--run",
            spec.to_str().unwrap(),
            "--local-workers",
            "0",
            "--exit-when-done",
        ],
    );
    let _llm = c.worker("llm", &["--model", model]);
    let status = coord
        .wait_exit(Duration::from_secs(900))
        .expect("the budgeted run did not finish");
    assert!(status.success(), "{}", coord.log());

    let mut checked = 0;
    for g in 0..2 {
        let shown = c.json_db(&["show", "1", &g.to_string()]);
        for e in shown["evaluations"].as_array().unwrap() {
            for item in e["items"].as_array().unwrap() {
                let extra = &item["extra"];
                match e["kind"].as_str().unwrap() {
                    "reference" => continue,
                    "candidate" => {
                        let logprob = finite(&extra["answer_logprob"]);
                        assert!(logprob <= 0.0, "{item}");
                        assert!(
                            extra["generated_tokens"].is_null(),
                            "candidates decode nothing: {item}"
                        );
                    }
                    _ => assert!(
                        extra["answer_logprob"].is_null(),
                        "the held-out mean decodes: {item}"
                    ),
                }
                let kept = finite(&extra["kept_at_invocations"]);
                assert!(kept > 0.0 && kept <= 0.25, "kept {kept} > budget: {item}");
                checked += 1;
            }
        }
    }
    assert_eq!(
        checked,
        2 * 3 * 2 + 1,
        "every candidate prompt and the held-out prompt"
    );

    let exported = c.dir.path().join("budget.safetensors");
    let out = c.cli_db(&["best", "1", "--export", exported.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let policy = format!("namm:{}", exported.display());
    let out = namm_tests::run_cli(
        &[
            "eval",
            "--model",
            model,
            "--task",
            "passkey:len=1100",
            "--seed",
            "9",
            "--samples",
            "1",
            "--policy",
            &policy,
            "--json",
        ]
        .map(String::from),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let result = &report["results"][0];
    assert_eq!(result["policy"], format!("{policy},budget=0.25"));
    let sample = &result["results"][0];
    let after = sample["kept_after_invocations"].as_array().unwrap();
    assert_eq!(after.len(), 2, "invocations at 512 and 1024: {sample}");
    assert!(after.iter().all(|k| finite(k) <= 0.25), "{sample}");
}
