//! Fault and load tests against real processes on loopback: malformed input on every RPC,
//! 64 concurrent in-process workers, and a chaos run whose history must equal an
//! uninterrupted one bit for bit.

use bytes::{Buf, BufMut, Bytes};
use namm_proto::run_service_client::RunServiceClient;
use namm_proto::worker_service_client::WorkerServiceClient;
use namm_proto::*;
use namm_tests::{find_run, without_wall_clock, Cluster, Proc};
use prost::Message;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};

/// Sends and receives raw bytes, so a test can put anything in a well-framed gRPC message.
#[derive(Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let v = src.chunk().to_vec();
        src.advance(v.len());
        Ok(Some(v))
    }
}

const WORKER_RPCS: [&str; 5] = ["Register", "Heartbeat", "Lease", "Report", "Release"];
const RUN_RPCS: [&str; 8] = [
    "SubmitRun",
    "ListRuns",
    "GetRun",
    "ListGenerations",
    "GetGeneration",
    "ListWorkers",
    "CancelRun",
    "WatchRun",
];

fn paths() -> Vec<String> {
    WORKER_RPCS
        .iter()
        .map(|m| format!("/namm.v1.WorkerService/{m}"))
        .chain(RUN_RPCS.iter().map(|m| format!("/namm.v1.RunService/{m}")))
        .collect()
}

/// A valid encoding of each RPC's request, to truncate.
fn valid_request(path: &str) -> Vec<u8> {
    let key = Some(UnitKey {
        run_id: 1,
        generation: 0,
        candidate: 1,
        shard: 0,
        kind: 0,
    });
    match path.rsplit('/').next().unwrap() {
        "Register" => RegisterRequest {
            name: "fuzz-worker".into(),
            device: "cpu".into(),
            slots: 1,
            ..Default::default()
        }
        .encode_to_vec(),
        "Heartbeat" => HeartbeatRequest {
            worker_id: "w-xyz-1".into(),
        }
        .encode_to_vec(),
        "Lease" => LeaseRequest {
            worker_id: "w-xyz-1".into(),
            slots: 3,
            wait_ms: 10,
        }
        .encode_to_vec(),
        "Report" => ReportRequest {
            worker_id: "w-xyz-1".into(),
            lease_id: "l-xyz-2".into(),
            key,
            items: vec![ItemResult {
                item_id: "sphere".into(),
                score: -1.5,
                extra: HashMap::from([("k".into(), 2.0)]),
            }],
            eval_seconds: 0.5,
            norm_stats: None,
        }
        .encode_to_vec(),
        "Release" => ReleaseRequest {
            worker_id: "w-xyz-1".into(),
            lease_ids: vec!["l-1".into(), "l-2".into()],
        }
        .encode_to_vec(),
        "SubmitRun" => SubmitRunRequest {
            spec_toml: "seed = 4\n[objective]\nkind = \"sphere\"\ndim = 3\n".into(),
        }
        .encode_to_vec(),
        "GetGeneration" => GetGenerationRequest {
            run_id: 1,
            generation: 2,
        }
        .encode_to_vec(),
        "WatchRun" => WatchRunRequest {
            run_id: 1,
            from_generation: Some(3),
        }
        .encode_to_vec(),
        _ => GetRunRequest { run_id: 123456789 }.encode_to_vec(),
    }
}

/// One call with a raw body; returns the status code (Ok for a served call). WatchRun is
/// read for its first message only.
async fn raw_call(channel: tonic::transport::Channel, path: &str, body: Vec<u8>) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel);
    if grpc.ready().await.is_err() {
        return Code::Unavailable;
    }
    let p: http::uri::PathAndQuery = path.parse().unwrap();
    let call = async {
        if path.ends_with("WatchRun") {
            match grpc
                .server_streaming(tonic::Request::new(body), p, RawCodec)
                .await
            {
                Ok(resp) => {
                    let mut s = resp.into_inner();
                    let _ = tokio::time::timeout(Duration::from_millis(200), s.message()).await;
                    Code::Ok
                }
                Err(s) => s.code(),
            }
        } else {
            match grpc.unary(tonic::Request::new(body), p, RawCodec).await {
                Ok(_) => Code::Ok,
                Err(s) => s.code(),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .unwrap_or(Code::DeadlineExceeded)
}

/// A gRPC request over bare HTTP/2 with an arbitrary body (bad frame headers included);
/// returns the grpc-status the server answers with.
async fn raw_h2(addr: &str, path: &str, body: Vec<u8>) -> Option<String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (client, conn) = h2::client::handshake(tcp).await.ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.ok()?;
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (resp, mut send) = client.send_request(req, false).ok()?;
    send.send_data(Bytes::from(body), true).ok()?;
    let resp = resp.await.ok()?;
    let (parts, mut body) = resp.into_parts();
    if let Some(s) = parts.headers.get("grpc-status") {
        return Some(s.to_str().ok()?.to_string());
    }
    while let Some(chunk) = body.data().await {
        let c = chunk.ok()?;
        let _ = body.flow_control().release_capacity(c.len());
    }
    let trailers = body.trailers().await.ok()??;
    Some(trailers.get("grpc-status")?.to_str().ok()?.to_string())
}

fn frame(compressed: u8, declared_len: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![compressed];
    f.extend_from_slice(&declared_len.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const BAD_INPUT_RUN: &str = r#"
name = "survivor"
seed = 9
[objective]
kind = "sphere"
dim = 6
[strategy]
population = 6
[stop]
max_generations = 30
target_fitness = -1e-30
"#;

const LEASE_SOURCE_RUN: &str = r#"
name = "lease source"
[objective]
kind = "sphere"
dim = 4
[strategy]
population = 4
[stop]
max_generations = 1000000
target_fitness = -1e-300
"#;

#[test]
fn malformed_frames_specs_and_foreign_reports_never_stop_a_run() {
    let c = Cluster::new();
    let mut coord = c.coordinator("coord", &["--lease-ttl-ms", "2000"]);
    let spec = c.file("run.toml", BAD_INPUT_RUN);
    c.json(&["submit", spec.to_str().unwrap()]);
    let _w = c.worker("w", &["--eval-delay-ms", "2"]);
    let url = format!("http://{}", c.addr());
    let addr = c.addr();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(url.clone()).unwrap().connect().await.unwrap();
        let mut served = 0;
        for path in paths() {
            let valid = valid_request(&path);
            let mut bodies: Vec<Vec<u8>> = (0..25)
                .map(|_| {
                    let n = rng.random_range(0..300);
                    (0..n).map(|_| rng.random::<u8>()).collect()
                })
                .collect();
            bodies.extend((0..valid.len()).map(|cut| valid[..cut].to_vec()));
            for body in bodies {
                let code = raw_call(channel.clone(), &path, body).await;
                assert!(
                    !matches!(code, Code::Unavailable | Code::Unknown | Code::DeadlineExceeded),
                    "{path}: the server broke ({code:?})"
                );
                served += 1;
            }
            // Bad framing: truncated frame, absurd length, compression flag without encoding.
            for (what, body) in [
                ("truncated frame", frame(0, 100, &valid[..valid.len().min(10)])),
                ("header only", vec![0, 0, 0]),
                ("4 GiB length", frame(0, u32::MAX, &valid)),
                ("compressed flag", frame(1, valid.len() as u32, &valid)),
                ("unknown flag", frame(7, valid.len() as u32, &valid)),
            ] {
                let status = tokio::time::timeout(Duration::from_secs(10), raw_h2(&addr, &path, body))
                    .await
                    .unwrap_or_else(|_| panic!("{path} {what}: no answer"));
                let status = status.unwrap_or_else(|| panic!("{path} {what}: no grpc-status"));
                assert_ne!(status, "0", "{path} {what}: accepted");
            }
        }
        assert!(served > 13 * 25);

        // Garbage that is not HTTP/2 at all.
        for n in [0usize, 1, 24, 4096] {
            use tokio::io::AsyncWriteExt;
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let junk: Vec<u8> = (0..n).map(|_| rng.random::<u8>()).collect();
            let _ = s.write_all(&junk).await;
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        }

        let mut runs = RunServiceClient::connect(url.clone()).await.unwrap();
        // Random, oversized and hostile TOML.
        let mut specs: Vec<String> = (0..40)
            .map(|_| {
                let n = rng.random_range(0..200);
                (0..n).map(|_| char::from(rng.random_range(9u8..127))).collect()
            })
            .collect();
        specs.push(format!("# {}\n", "x".repeat(2 << 20)));
        specs.push(format!("[strategy]\nx0 = [{}]\n", vec!["1.0"; 200_000].join(",")));
        specs.push("[objective]\ndim = 1000000000\n".into());
        specs.push("[objective]\ndim = 10000\n[strategy]\npopulation = 100000\n".into());
        specs.push(format!("name = \"{}\"\n", "n".repeat(10_000)));
        specs.push("a = [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[".into());
        for s in specs {
            let len = s.len();
            let e = runs.submit_run(SubmitRunRequest { spec_toml: s }).await.expect_err("a bad spec was accepted");
            assert_eq!(e.code(), Code::InvalidArgument, "spec of {len} bytes: {e:?}");
            assert!(!e.message().is_empty());
        }
        let e = runs
            .submit_run(SubmitRunRequest { spec_toml: "x".repeat(20 << 20) })
            .await
            .expect_err("a 20 MiB request was accepted");
        assert!(matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted), "{e:?}");

        // Reports for another worker's lease, and hand-backs of it, are refused. The survivor
        // and the runs the fuzzing submitted may all be finished (or need a model) by now, so
        // the lease comes from a run of its own that outlives this check.
        let target = runs
            .submit_run(SubmitRunRequest { spec_toml: LEASE_SOURCE_RUN.into() })
            .await
            .unwrap()
            .into_inner()
            .run
            .expect("the submitted run")
            .run_id;
        let mut w = WorkerServiceClient::connect(url.clone()).await.unwrap();
        let register = |name: &str| RegisterRequest { name: name.into(), slots: 1, ..Default::default() };
        let a = w.register(register("a")).await.unwrap().into_inner().worker_id;
        let b = w.register(register("b")).await.unwrap().into_inner().worker_id;
        let deadline = Instant::now() + Duration::from_secs(60);
        let unit = loop {
            assert!(Instant::now() < deadline, "worker a got no unit of run {target} in 60 s");
            let mut units = w
                .lease(LeaseRequest { worker_id: a.clone(), slots: 1, wait_ms: 1000 })
                .await
                .unwrap()
                .into_inner()
                .units;
            if let Some(u) = units.pop() {
                break u;
            }
        };
        let foreign = ReportRequest {
            worker_id: b.clone(),
            lease_id: unit.lease_id.clone(),
            key: unit.key,
            items: vec![ItemResult { item_id: unit.item_ids[0].clone(), score: 0.0, extra: Default::default() }],
            eval_seconds: 0.1,
            norm_stats: None,
        };
        let e = w.report(foreign).await.expect_err("a foreign report was accepted");
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("belongs to"), "{}", e.message());
        let r = w
            .release(ReleaseRequest { worker_id: b.clone(), lease_ids: vec![unit.lease_id.clone()] })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.released, 0, "worker b released a's lease");
        let r = w
            .release(ReleaseRequest { worker_id: a.clone(), lease_ids: vec![unit.lease_id.clone()] })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.released, 1);

        // Whatever the random bodies submitted besides the survivor is cancelled, so the
        // worker finishes the survivor.
        for r in runs.list_runs(ListRunsRequest {}).await.unwrap().into_inner().runs {
            if r.run_id != 1 && r.status == RunStatus::Running as i32 {
                runs.cancel_run(CancelRunRequest { run_id: r.run_id }).await.unwrap();
            }
        }
    });
    let run = c.wait_run_done(1, Duration::from_secs(120));
    assert_eq!(run["status"], "finished", "{run}");
    assert_eq!(run["generations_done"], 30, "{run}");
    assert_eq!(run["evaluations_total"], 180, "{run}");
    assert!(coord.is_running(), "coordinator died:\n{}", coord.log());
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn load_64_concurrent_workers_complete_every_unit_exactly_once() {
    const WORKERS: usize = 64;
    const POPULATION: u32 = 64;
    const GENERATIONS: u32 = 25;
    let c = Cluster::new();
    let _coord = c.coordinator("coord", &[]);
    let spec = c.file(
        "run.toml",
        &format!(
            "name = \"load\"\nseed = 2\n[objective]\nkind = \"sphere\"\ndim = 8\n[strategy]\npopulation = {POPULATION}\n[stop]\nmax_generations = {GENERATIONS}\ntarget_fitness = -1e-300\n"
        ),
    );
    c.json(&["submit", spec.to_str().unwrap()]);
    let url = format!("http://{}", c.addr());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let total = (POPULATION * GENERATIONS) as usize;
    let accepted: Arc<Mutex<HashMap<(u32, u32), u32>>> = Arc::default();
    let lease_ms: Arc<Mutex<Vec<f64>>> = Arc::default();
    let report_ms: Arc<Mutex<Vec<f64>>> = Arc::default();
    let started = Instant::now();
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .unwrap()
            .tcp_nodelay(true)
            .connect()
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..WORKERS {
            let mut w = WorkerServiceClient::new(channel.clone());
            let (accepted, lease_ms, report_ms) =
                (accepted.clone(), lease_ms.clone(), report_ms.clone());
            tasks.push(tokio::spawn(async move {
                let id = w
                    .register(RegisterRequest {
                        name: format!("sim-{i}"),
                        slots: 1,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .worker_id;
                let deadline = Instant::now() + Duration::from_secs(240);
                while accepted.lock().unwrap().len() < total {
                    assert!(Instant::now() < deadline, "load test did not finish");
                    let t = Instant::now();
                    let units = w
                        .lease(LeaseRequest {
                            worker_id: id.clone(),
                            slots: 1,
                            wait_ms: 200,
                        })
                        .await
                        .unwrap()
                        .into_inner()
                        .units;
                    if units.is_empty() {
                        continue;
                    }
                    lease_ms
                        .lock()
                        .unwrap()
                        .push(t.elapsed().as_secs_f64() * 1e3);
                    for unit in units {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        let f = -unit.params.iter().map(|x| x * x).sum::<f64>();
                        let key = unit.key.unwrap();
                        let t = Instant::now();
                        let resp = w
                            .report(ReportRequest {
                                worker_id: id.clone(),
                                lease_id: unit.lease_id,
                                key: Some(key),
                                items: vec![ItemResult {
                                    item_id: unit.item_ids[0].clone(),
                                    score: f,
                                    extra: Default::default(),
                                }],
                                eval_seconds: 0.001,
                                norm_stats: None,
                            })
                            .await
                            .unwrap()
                            .into_inner();
                        report_ms
                            .lock()
                            .unwrap()
                            .push(t.elapsed().as_secs_f64() * 1e3);
                        if resp.accepted {
                            *accepted
                                .lock()
                                .unwrap()
                                .entry((key.generation, key.candidate))
                                .or_default() += 1;
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let accepted = accepted.lock().unwrap();
    assert_eq!(accepted.len(), total);
    for g in 0..GENERATIONS {
        for cand in 0..POPULATION {
            assert_eq!(accepted.get(&(g, cand)), Some(&1), "unit g{g} c{cand}");
        }
    }
    let run = c.wait_run_done(1, Duration::from_secs(30));
    assert_eq!(run["evaluations_total"], total as u64, "{run}");
    let history = c.json(&["history", "1"]);
    assert_eq!(history.as_array().unwrap().len(), GENERATIONS as usize);
    let mut lease = lease_ms.lock().unwrap().clone();
    let mut report = report_ms.lock().unwrap().clone();
    lease.sort_by(f64::total_cmp);
    report.sort_by(f64::total_cmp);
    println!(
        "load: {WORKERS} workers, {total} units in {elapsed:.2} s = {:.0} units/s; \
         Lease (with units) p50 {:.2} ms p99 {:.2} ms; Report p50 {:.2} ms p99 {:.2} ms",
        total as f64 / elapsed,
        percentile(&lease, 0.5),
        percentile(&lease, 0.99),
        percentile(&report, 0.5),
        percentile(&report, 0.99),
    );
}

const CHAOS_RUN: &str = r#"
name = "chaos"
seed = 23
[objective]
kind = "rosenbrock"
dim = 8
[stop]
max_generations = 100
target_fitness = -1e-12
"#;

#[test]
fn chaos_killed_workers_and_coordinator_reproduce_the_uninterrupted_history() {
    let reference = Cluster::uninterrupted(CHAOS_RUN, 3);
    let expected = reference.json_db(&["history", "1"]);
    let generations = expected.as_array().unwrap().len() as u64;
    assert!(generations > 40, "reference too short: {generations}");

    let c = Cluster::new();
    let spec = c.file("run.toml", CHAOS_RUN);
    let spec = spec.to_str().unwrap().to_string();
    let coord_args = ["--run", spec.as_str(), "--lease-ttl-ms", "800"];
    let mut coord = c.coordinator("coord-0", &coord_args);
    let mut restarts = 0;
    let mut worker_starts = 3;
    let mut workers: Vec<Proc> = (0..3)
        .map(|i| c.worker(&format!("w{i}-0"), &["--eval-delay-ms", "25"]))
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(99);
    let (mut worker_kills, mut worker_terms) = (0, 0);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(300);
    loop {
        assert!(Instant::now() < deadline, "chaos run did not finish");
        std::thread::sleep(Duration::from_millis(rng.random_range(100..400)));
        let runs = c.json(&["runs"]);
        let run = find_run(&runs, 1);
        if run["status"] != "running" {
            break;
        }
        let done = run["generations_done"].as_u64().unwrap();
        // The coordinator dies twice: SIGKILL a quarter in, SIGTERM at the half.
        if (restarts == 0 && done >= generations / 4) || (restarts == 1 && done >= generations / 2)
        {
            if restarts == 0 {
                coord.kill();
            } else {
                coord.terminate();
                let s = coord
                    .wait_exit(Duration::from_secs(20))
                    .expect("coordinator ignored SIGTERM");
                assert!(s.success(), "{}", coord.log());
            }
            restarts += 1;
            std::thread::sleep(Duration::from_millis(rng.random_range(0..400)));
            coord = c.coordinator(&format!("coord-{restarts}"), &coord_args);
            continue;
        }
        let i = rng.random_range(0..workers.len());
        if rng.random_bool(0.5) {
            workers[i].kill();
            worker_kills += 1;
        } else {
            workers[i].terminate();
            let _ = workers[i].wait_exit(Duration::from_secs(10));
            worker_terms += 1;
        }
        worker_starts += 1;
        workers[i] = c.worker(&format!("w{i}-{worker_starts}"), &["--eval-delay-ms", "25"]);
    }
    let duration = started.elapsed().as_secs_f64();
    assert_eq!(restarts, 2, "the coordinator was not restarted twice");
    let got = c.json(&["history", "1"]);
    assert_eq!(
        without_wall_clock(&got),
        without_wall_clock(&expected),
        "history under chaos differs from the uninterrupted run"
    );
    // Every generation holds exactly one evaluation per candidate, and the stored
    // evaluations are the fitness the strategy was told.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut runs = RunServiceClient::connect(format!("http://{}", c.addr()))
            .await
            .unwrap();
        for g in 0..generations as u32 {
            let r = runs
                .get_generation(GetGenerationRequest {
                    run_id: 1,
                    generation: g,
                })
                .await
                .unwrap()
                .into_inner();
            let gen = r.generation.unwrap();
            assert_eq!(r.evals.len(), gen.fitness.len(), "generation {g}");
            for (i, e) in r.evals.iter().enumerate() {
                assert_eq!(e.key.unwrap().candidate, i as u32, "generation {g}");
                assert_eq!(
                    e.fitness.to_bits(),
                    gen.fitness[i].to_bits(),
                    "generation {g} candidate {i}"
                );
            }
        }
    });
    println!(
        "chaos: {generations} generations in {duration:.1} s; coordinator SIGKILLed once and \
         SIGTERMed once; {worker_kills} worker SIGKILLs, {worker_terms} worker SIGTERMs"
    );
}
