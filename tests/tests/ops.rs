//! Operations end to end: authentication on every RPC, TLS, graceful shutdown of workers and
//! coordinator, the "database in use" guard and the metrics endpoint.

use namm_proto::run_service_client::RunServiceClient;
use namm_proto::worker_service_client::WorkerServiceClient;
use namm_proto::*;
use namm_tests::{find_run, stderr, Cluster, Proc};
use std::io::{Read, Write};
use std::time::{Duration, Instant};
use tonic::{Code, Request, Status};

const TOKEN: &str = "correct-horse-battery-staple";

const SPHERE: &str = r#"
name = "ops-sphere"
seed = 3
[objective]
kind = "sphere"
dim = 6
[strategy]
population = 6
[stop]
max_generations = 5
target_fitness = -1e-30
"#;

fn ok<T>(x: Result<T, Status>) -> Result<(), Status> {
    x.map(|_| ())
}

fn req<T>(msg: T, token: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

/// Calls every RPC of both services once with `token`; returns each one's outcome.
async fn every_rpc(url: &str, token: Option<&str>) -> Vec<(&'static str, Result<(), Status>)> {
    let mut w = WorkerServiceClient::connect(url.to_string()).await.unwrap();
    let mut r = RunServiceClient::connect(url.to_string()).await.unwrap();
    let t = token;
    vec![
        (
            "Register",
            ok(w.register(req(
                RegisterRequest {
                    name: "probe".into(),
                    ..Default::default()
                },
                t,
            ))
            .await),
        ),
        (
            "Heartbeat",
            ok(w.heartbeat(req(HeartbeatRequest::default(), t)).await),
        ),
        ("Lease", ok(w.lease(req(LeaseRequest::default(), t)).await)),
        (
            "Report",
            ok(w.report(req(ReportRequest::default(), t)).await),
        ),
        (
            "Release",
            ok(w.release(req(ReleaseRequest::default(), t)).await),
        ),
        (
            "SubmitRun",
            ok(r.submit_run(req(
                SubmitRunRequest {
                    spec_toml: "seed = [".into(),
                },
                t,
            ))
            .await),
        ),
        (
            "ListRuns",
            ok(r.list_runs(req(ListRunsRequest {}, t)).await),
        ),
        (
            "GetRun",
            ok(r.get_run(req(GetRunRequest { run_id: 999 }, t)).await),
        ),
        (
            "ListGenerations",
            ok(
                r.list_generations(req(ListGenerationsRequest { run_id: 999 }, t))
                    .await,
            ),
        ),
        (
            "GetGeneration",
            ok(r.get_generation(req(
                GetGenerationRequest {
                    run_id: 999,
                    generation: 0,
                },
                t,
            ))
            .await),
        ),
        (
            "ListWorkers",
            ok(r.list_workers(req(ListWorkersRequest {}, t)).await),
        ),
        (
            "CancelRun",
            ok(r.cancel_run(req(CancelRunRequest { run_id: 999 }, t)).await),
        ),
        (
            "WatchRun",
            ok(r.watch_run(req(
                WatchRunRequest {
                    run_id: 999,
                    from_generation: None,
                },
                t,
            ))
            .await),
        ),
    ]
}

#[test]
fn every_rpc_refuses_a_missing_or_wrong_token_and_accepts_the_right_one() {
    let c = Cluster::new();
    let token_file = c.file("token", &format!("{TOKEN}\n"));
    let coord = c.coordinator("coord", &["--token-file", token_file.to_str().unwrap()]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = format!("http://{}", c.addr());
    rt.block_on(async {
        for bad in [None, Some("wrong"), Some("correct-horse-battery-stapl")] {
            for (rpc, outcome) in every_rpc(&url, bad).await {
                let e = outcome.expect_err(&format!("{rpc} with token {bad:?} was served"));
                assert_eq!(e.code(), Code::Unauthenticated, "{rpc} with {bad:?}: {e:?}");
            }
        }
        for (rpc, outcome) in every_rpc(&url, Some(TOKEN)).await {
            if let Err(e) = outcome {
                assert_ne!(
                    e.code(),
                    Code::Unauthenticated,
                    "{rpc} refused the right token: {e:?}"
                );
            }
        }
    });
    let log = coord.log();
    assert!(
        log.contains("unauthenticated call refused") && log.contains("127.0.0.1"),
        "refusals are not logged with the peer address:\n{log}"
    );

    // The CLI and a worker: without the token refused, with it (flag or env) a run completes.
    let out = c.cli(&["runs"]);
    assert!(
        !out.status.success() && stderr(&out).contains("Unauthenticated"),
        "{}",
        stderr(&out)
    );
    let spec = c.file("run.toml", SPHERE);
    let out = c.cli(&["--token", TOKEN, "submit", spec.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let _intruder = c.worker("intruder", &["--token", "nope"]);
    let _worker = c.worker("w", &["--token-file", token_file.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = std::process::Command::new(namm_tests::bin("namm"))
            .args(["--coordinator", &c.addr(), "runs", "--json"])
            .env("NAMM_TOKEN", TOKEN)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let runs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if find_run(&runs, 1)["status"] == "finished" {
            break;
        }
        assert!(Instant::now() < deadline, "run did not finish: {runs}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let workers = c.json(&["--token", TOKEN, "workers"]);
    let names: Vec<&str> = workers
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&"intruder"),
        "a worker with a wrong token registered: {workers}"
    );
}

#[test]
fn a_non_loopback_address_needs_a_token_or_insecure() {
    let c = Cluster::new();
    let out = std::process::Command::new(namm_tests::bin("namm-coord"))
        .args(["start", "--listen", &format!("0.0.0.0:{}", c.port), "--db"])
        .arg(c.db())
        .env_remove("NAMM_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("0.0.0.0") && err.contains("--insecure"),
        "{err}"
    );
}

#[test]
fn tls_with_a_self_signed_certificate() {
    let c = Cluster::new();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_pem = c.file("cert.pem", &cert.cert.pem());
    let key_pem = c.file("key.pem", &cert.signing_key.serialize_pem());
    let _coord = c.coordinator(
        "coord",
        &[
            "--token",
            TOKEN,
            "--tls-cert",
            cert_pem.to_str().unwrap(),
            "--tls-key",
            key_pem.to_str().unwrap(),
        ],
    );
    let ca = cert_pem.to_str().unwrap();
    let spec = c.file("run.toml", SPHERE);
    let _worker = c.worker("w", &["--token", TOKEN, "--tls-ca", ca]);
    let out = c.cli(&[
        "--token",
        TOKEN,
        "--tls-ca",
        ca,
        "submit",
        spec.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let runs = c.json(&["--token", TOKEN, "--tls-ca", ca, "runs"]);
        if find_run(&runs, 1)["status"] == "finished" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "run did not finish over TLS: {runs}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Plain text against the TLS port fails.
    let out = c.cli(&["--token", TOKEN, "runs"]);
    assert!(
        !out.status.success(),
        "plain-text client was served by a TLS coordinator"
    );
}

fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    body
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("metric {name} missing:\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn sigterm_on_a_worker_hands_its_units_back_at_once() {
    let c = Cluster::new();
    let metrics = format!("127.0.0.1:{}", namm_tests::free_port());
    // Leases live ten minutes: the run can only finish in time if the units come back by
    // hand-back, not by expiry.
    let coord = c.coordinator(
        "coord",
        &["--lease-ttl-ms", "600000", "--metrics", &metrics],
    );
    let mut victim = c.worker("victim", &["--slots", "2", "--eval-delay-ms", "600000"]);
    let spec = c.file("run.toml", SPHERE);
    c.json(&["submit", spec.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&scrape(&metrics), "namm_leases_active") < 2.0 {
        assert!(
            Instant::now() < deadline,
            "the victim never leased:\n{}",
            scrape(&metrics)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    victim.terminate();
    let status = victim
        .wait_exit(Duration::from_secs(15))
        .expect("worker ignored SIGTERM");
    assert!(status.success(), "worker exit {status}:\n{}", victim.log());
    assert!(
        victim.log().contains("units handed back"),
        "{}",
        victim.log()
    );
    let text = scrape(&metrics);
    assert_eq!(metric(&text, "namm_units_released_total"), 2.0, "{text}");
    assert_eq!(metric(&text, "namm_leases_active"), 0.0, "{text}");

    let _helper = c.worker("helper", &[]);
    let run = c.wait_run_done(1, Duration::from_secs(120));
    assert_eq!(run["status"], "finished", "{run}");
    let text = scrape(&metrics);
    assert_eq!(metric(&text, "namm_units_expired_total"), 0.0, "{text}");
    assert_eq!(metric(&text, "namm_units_re_leased_total"), 2.0, "{text}");
    assert_eq!(metric(&text, "namm_units_completed_total"), 30.0, "{text}");
    assert_eq!(metric(&text, "namm_units_leased_total"), 32.0, "{text}");
    assert_eq!(
        metric(&text, "namm_evaluation_seconds_count"),
        30.0,
        "{text}"
    );
    assert!(
        text.contains("namm_run_generation") && text.contains("namm_workers_connected"),
        "{text}"
    );
    // Every evaluation of generation 0 is the helper's: the victim's two went to it.
    let gen0 = c.json(&["show", "1", "0"]);
    let evals = gen0["evaluations"]
        .as_array()
        .unwrap_or_else(|| panic!("{gen0}"));
    assert_eq!(evals.len(), 6, "{gen0}");
    assert!(evals.iter().all(|e| e["worker_name"] == "helper"), "{gen0}");
    assert!(!coord.log().contains("lease expired"), "{}", coord.log());
}

#[test]
fn sigterm_on_the_coordinator_flushes_and_exits_cleanly_and_the_db_is_locked_while_it_runs() {
    let c = Cluster::new();
    let spec = c.file(
        "run.toml",
        &SPHERE.replace("max_generations = 5", "max_generations = 40"),
    );
    let mut coord = c.coordinator("coord", &["--run", spec.to_str().unwrap()]);
    let _w = c.worker("w", &["--eval-delay-ms", "5"]);
    let watcher = std::process::Command::new(namm_tests::bin("namm"))
        .args(["--coordinator", &c.addr(), "watch", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut watcher = Proc::adopt("watcher", watcher, c.dir.path());
    c.wait_generations(1, 3, Duration::from_secs(60));

    // A second coordinator on the same database is refused while the first runs.
    let other = std::process::Command::new(namm_tests::bin("namm-coord"))
        .args([
            "start",
            "--listen",
            &format!("127.0.0.1:{}", namm_tests::free_port()),
            "--db",
        ])
        .arg(c.db())
        .output()
        .unwrap();
    assert!(!other.status.success());
    assert!(stderr(&other).contains("in use"), "{}", stderr(&other));

    coord.terminate();
    let status = coord
        .wait_exit(Duration::from_secs(20))
        .expect("coordinator ignored SIGTERM");
    assert!(
        status.success(),
        "coordinator exit {status}:\n{}",
        coord.log()
    );
    assert!(coord.log().contains("database flushed"), "{}", coord.log());
    assert!(
        watcher.wait_exit(Duration::from_secs(10)).is_some(),
        "watch stream never ended"
    );
    let done = find_run(&c.json_db(&["runs"]), 1)["generations_done"]
        .as_u64()
        .unwrap();
    assert!(done >= 3, "generations lost at shutdown: {done}");

    let mut again = c.coordinator(
        "coord-2",
        &["--run", spec.to_str().unwrap(), "--exit-when-done"],
    );
    let status = again
        .wait_exit(Duration::from_secs(120))
        .expect("restart did not finish");
    assert!(status.success(), "{}", again.log());
    let run = find_run(&c.json_db(&["runs"]), 1);
    assert_eq!(run["status"], "finished", "{run}");
    assert_eq!(run["generations_done"], 40, "{run}");
}
