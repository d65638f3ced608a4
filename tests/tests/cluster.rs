//! End-to-end: real namm-coord / namm-worker / namm processes on loopback, temporary sled db.

use namm_tests::{find_run, stderr, without_wall_clock, Cluster};
use serde_json::Value;
use std::time::Duration;

const SPHERE_10: &str = r#"
name = "sphere-10"
seed = 7
[objective]
kind = "sphere"
dim = 10
[strategy]
sigma0 = 0.5
x0 = 1.0
[stop]
max_generations = 2000
target_fitness = -1e-8
"#;

/// Every finished generation is present, in order, each with a full fitness table.
fn assert_history_complete(history: &Value, population: u64) {
    let gens = history.as_array().expect("history is an array");
    assert!(!gens.is_empty(), "empty history");
    for (i, g) in gens.iter().enumerate() {
        assert_eq!(
            g["generation"], i as u64,
            "generation {i} out of order: {g}"
        );
        assert_eq!(
            g["evaluations_total"],
            population * (i as u64 + 1),
            "generation {i}: evaluations_total"
        );
        let fitness = g["fitness"].as_array().expect("fitness table");
        assert_eq!(
            fitness.len() as u64,
            population,
            "generation {i}: fitness table"
        );
        assert!(
            fitness.iter().all(Value::is_f64),
            "generation {i}: a candidate has no finite fitness: {g}"
        );
        for key in ["best_fitness", "mean_fitness", "sigma", "wall_seconds"] {
            assert!(g[key].is_f64(), "generation {i}: {key} missing in {g}");
        }
    }
}

#[test]
fn two_workers_drive_sphere_10_to_target() {
    let c = Cluster::new();
    let _coord = c.coordinator("coord", &[]);
    let _w1 = c.worker("w1", &[]);
    let _w2 = c.worker("w2", &[]);
    let spec = c.file("sphere.toml", SPHERE_10);
    let submitted = c.json(&["submit", spec.to_str().unwrap()]);
    let run_id = submitted["run_id"].as_u64().expect("run id");

    let run = c.wait_run_done(run_id, Duration::from_secs(120));
    assert_eq!(run["status"], "finished", "{run}");
    assert!(
        run["stop_reason"]
            .as_str()
            .unwrap()
            .contains("target_fitness"),
        "{run}"
    );
    assert!(run["best_fitness"].as_f64().unwrap() >= -1e-8, "{run}");

    let history = c.json(&["history", &run_id.to_string()]);
    assert_history_complete(&history, 10);
    let last = history.as_array().unwrap().last().unwrap();
    assert_eq!(last["best_fitness"], run["best_fitness"]);
    assert_eq!(
        last["generation"].as_u64().unwrap() + 1,
        run["generations_done"].as_u64().unwrap()
    );

    // Both workers took part.
    let workers = c.json(&["workers"]);
    let done: Vec<u64> = workers
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["units_completed"].as_u64().unwrap())
        .collect();
    assert_eq!(done.len(), 2, "{workers}");
    assert!(
        done.iter().all(|&d| d > 0),
        "a worker did nothing: {workers}"
    );
    assert_eq!(
        done.iter().sum::<u64>(),
        run["evaluations_total"].as_u64().unwrap()
    );

    // The best parameters are those of a sphere point at the target.
    let best = c.json(&["best", &run_id.to_string()]);
    let params: Vec<f64> = best["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(params.len(), 10);
    let f: f64 = params.iter().map(|x| x * x).sum();
    assert_eq!(-f, best["best_fitness"].as_f64().unwrap());
}

#[test]
fn worker_killed_mid_generation_run_still_completes() {
    let c = Cluster::new();
    let coord = c.coordinator("coord", &["--lease-ttl-ms", "1000"]);
    // The victim leases four units at a time and takes a while on each, so it always holds
    // leases when it dies.
    let mut victim = c.worker("victim", &["--slots", "4", "--eval-delay-ms", "150"]);
    let _survivor = c.worker("survivor", &["--eval-delay-ms", "5"]);
    let spec = c.file(
        "sphere.toml",
        &SPHERE_10.replace("max_generations = 2000", "max_generations = 12"),
    );
    let run_id = c.json(&["submit", spec.to_str().unwrap()])["run_id"]
        .as_u64()
        .unwrap();
    c.wait_generations(run_id, 3, Duration::from_secs(60));
    // Kill it while it holds leases, i.e. in the middle of a generation.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let workers = c.json(&["workers"]);
        let held = workers
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == "victim")
            .map_or(0, |w| w["active_leases"].as_u64().unwrap());
        if held > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the victim never held a lease: {workers}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    victim.kill();

    let run = c.wait_run_done(run_id, Duration::from_secs(120));
    assert_eq!(run["status"], "finished", "{run}");
    assert_eq!(run["generations_done"], 12, "{run}");
    assert_history_complete(&c.json(&["history", &run_id.to_string()]), 10);
    assert!(
        coord.log().contains("lease expired"),
        "the victim's leases never expired:\n{}",
        coord.log()
    );
    let workers = c.json(&["workers"]);
    let victim_info = workers
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "victim")
        .unwrap();
    assert_eq!(victim_info["alive"], false, "{workers}");
    assert_eq!(victim_info["active_leases"], 0, "{workers}");
}

const ROSENBROCK_10: &str = r#"
name = "rosenbrock-restart"
seed = 11
[objective]
kind = "rosenbrock"
dim = 10
[strategy]
sigma0 = 0.5
[stop]
max_generations = 60
target_fitness = -1e-8
"#;

#[test]
fn coordinator_killed_and_restarted_reproduces_uninterrupted_history() {
    // Reference: one uninterrupted run.
    let reference = Cluster::uninterrupted(ROSENBROCK_10, 2);
    let expected = reference.json_db(&["history", "1"]);
    assert_eq!(expected.as_array().unwrap().len(), 60);

    // The same spec, with the coordinator SIGKILLed mid-run and restarted on its database.
    let c = Cluster::new();
    let spec = c.file("run.toml", ROSENBROCK_10);
    let spec_arg = spec.to_str().unwrap();
    let mut first = c.coordinator("coord-1", &["--run", spec_arg]);
    let _worker = c.worker("w", &["--eval-delay-ms", "3"]);
    c.wait_generations(1, 15, Duration::from_secs(120));
    first.kill();
    let at_kill = c.json_db(&["runs"]);
    let done_at_kill = find_run(&at_kill, 1)["generations_done"].as_u64().unwrap();
    assert!(done_at_kill < 60, "the run ended before the kill");
    // Restarting with the same --run must resume the run, not submit a second one.
    let mut second = c.coordinator("coord-2", &["--run", spec_arg, "--exit-when-done"]);
    let status = second
        .wait_exit(Duration::from_secs(120))
        .expect("restarted coordinator did not finish the run");
    assert!(
        status.success(),
        "restarted coordinator failed:\n{}",
        second.log()
    );
    assert!(second.log().contains("resumed run"), "{}", second.log());

    let runs = c.json_db(&["runs"]);
    assert_eq!(
        runs.as_array().unwrap().len(),
        1,
        "the run was submitted twice: {runs}"
    );
    let got = c.json_db(&["history", "1"]);
    assert_eq!(
        without_wall_clock(&got),
        without_wall_clock(&expected),
        "history after a coordinator crash differs from the uninterrupted run"
    );
    let best_ref = reference.json_db(&["best", "1"]);
    let best_got = c.json_db(&["best", "1"]);
    for key in [
        "best_fitness",
        "params",
        "mean",
        "sigma",
        "generation",
        "candidate",
    ] {
        assert_eq!(best_got[key], best_ref[key], "best.{key}");
    }
}

#[test]
fn malformed_input_gets_clear_errors_and_coordinator_keeps_serving() {
    use namm_proto::run_service_client::RunServiceClient;
    use namm_proto::worker_service_client::WorkerServiceClient;
    use namm_proto::*;

    let c = Cluster::new();
    let _coord = c.coordinator("coord", &[]);

    // Bad run specs: the error names the field.
    let bad = c.file("bad.toml", "[strategy]\nsigma = 0.3\n");
    let out = c.cli(&["submit", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("InvalidArgument") && err.contains("sigma"),
        "{err}"
    );
    let bad = c.file("bad2.toml", "[objective]\ndim = 0\n");
    let err = stderr(&c.cli(&["submit", bad.to_str().unwrap()]));
    assert!(err.contains("objective.dim") && err.contains('0'), "{err}");
    let bad = c.file("bad3.toml", "seed = [[[\n");
    let out = c.cli(&["submit", bad.to_str().unwrap()]);
    assert!(
        !out.status.success() && stderr(&out).contains("TOML"),
        "{}",
        stderr(&out)
    );

    // Unknown run id.
    let out = c.cli(&["history", "999"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("NotFound") && err.contains("999"), "{err}");
    let err = stderr(&c.cli(&["show", "999", "0"]));
    assert!(err.contains("NotFound") && err.contains("999"), "{err}");
    let err = stderr(&c.cli(&["cancel", "999"]));
    assert!(err.contains("NotFound") && err.contains("999"), "{err}");

    // Reports that do not match their lease, over raw gRPC.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let url = format!("http://{}", c.addr());
        let mut runs = RunServiceClient::connect(url.clone()).await.unwrap();
        let mut w = WorkerServiceClient::connect(url).await.unwrap();
        let run = runs
            .submit_run(SubmitRunRequest {
                spec_toml: SPHERE_10.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .run
            .unwrap();
        let worker_id = w
            .register(RegisterRequest {
                name: "raw".into(),
                slots: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .worker_id;
        let unit = w
            .lease(LeaseRequest {
                worker_id: worker_id.clone(),
                slots: 1,
                wait_ms: 1000,
            })
            .await
            .unwrap()
            .into_inner()
            .units
            .remove(0);
        assert_eq!(unit.key.unwrap().run_id, run.run_id);
        assert_eq!(unit.params.len(), 10);
        let item = |score: f64| ItemResult {
            item_id: unit.item_ids[0].clone(),
            score,
            extra: Default::default(),
        };
        let report = |items: Vec<ItemResult>, lease_id: &str, key: UnitKey| ReportRequest {
            worker_id: worker_id.clone(),
            lease_id: lease_id.into(),
            key: Some(key),
            norm_stats: None,
            items,
            eval_seconds: 0.0,
        };
        let key = unit.key.unwrap();

        let e = w
            .report(report(vec![item(-1.0), item(-2.0)], &unit.lease_id, key))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(
            e.message().contains("items has 2 entries"),
            "{}",
            e.message()
        );

        let e = w
            .report(report(vec![item(-1.0)], "no-such-lease", key))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("no-such-lease"), "{}", e.message());

        let e = w
            .report(report(
                vec![item(-1.0)],
                &unit.lease_id,
                UnitKey { run_id: 999, ..key },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
        assert!(e.message().contains("999"), "{}", e.message());

        let e = w
            .report(report(
                vec![item(-1.0)],
                &unit.lease_id,
                UnitKey {
                    candidate: 1000,
                    ..key
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(
            e.message().contains("key.candidate = 1000"),
            "{}",
            e.message()
        );

        // The well-formed report is accepted once; its duplicate is ignored, not an error.
        let ok = w
            .report(report(vec![item(-1.0)], &unit.lease_id, key))
            .await
            .unwrap()
            .into_inner();
        assert!(ok.accepted, "{ok:?}");
        let dup = w
            .report(report(vec![item(-5.0)], &unit.lease_id, key))
            .await
            .unwrap()
            .into_inner();
        assert!(!dup.accepted, "{dup:?}");

        let gen = runs
            .get_generation(GetGenerationRequest {
                run_id: run.run_id,
                generation: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(gen.evals.len(), 1);
        assert_eq!(
            gen.evals[0].items[0].score, -1.0,
            "the duplicate overwrote the report"
        );
    });

    // Still serving.
    let runs = c.json(&["runs"]);
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs}");

    // A bad --run file stops the coordinator at start with the field named.
    let other = Cluster::new();
    let bad = other.file("bad.toml", "[stop]\nmax_generations = 0\n");
    let out = std::process::Command::new(namm_tests::bin("namm-coord"))
        .args(["start", "--listen", &other.addr(), "--db"])
        .arg(other.db())
        .arg("--run")
        .arg(&bad)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("stop.max_generations"),
        "{}",
        stderr(&out)
    );
}
