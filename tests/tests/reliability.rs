//! Faults a user meets, each reproduced with real processes: a peer that accepts connections
//! and never answers, a bad coordinator address, a run no connected worker can take, a
//! coordinator killed under its local workers, Ctrl-C while local workers hold units, and a
//! database that cannot be written (a full disk) until space comes back.

use namm_tests::{find_run, model_path, stderr, Cluster, Proc};
use serde_json::Value;
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

/// Polls `cond` every 100 ms until it holds; panics with `what` after `timeout`.
fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// The pid the coordinator logged for its local worker process.
fn local_worker_pid(log: &str) -> Option<u32> {
    let line = log
        .lines()
        .find(|l| l.contains("local worker process started"))?;
    // Without the colour codes around field names.
    let line: String = line
        .split('\x1b')
        .map(|part| {
            part.find('m')
                .filter(|_| part.starts_with('['))
                .map_or(part, |i| &part[i + 1..])
        })
        .collect();
    let rest = &line[line.find("pid=")? + 4..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// A NAMM run on the default model: its units go only to workers that hold that model.
fn namm_spec(sha: &str, model: &str) -> String {
    format!(
        r#"
name = "needs-a-model"
seed = 1
[strategy]
population = 4
[stop]
max_generations = 1
[namm]
model = "{model}"
model_sha256 = "{sha}"
tasks = ["passkey:len=1100"]
pool_size = 4
heldout_size = 0
heldout_every = 0
prompts_per_task = 2
shard_size = 2
"#
    )
}

#[test]
fn a_peer_that_never_answers_times_the_cli_out_and_a_missing_one_gets_a_hint() {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    // Accept and hold every connection, answering nothing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming().flatten() {
            held.push(c);
        }
    });
    let started = Instant::now();
    let out = Command::new(namm_tests::bin("namm"))
        .args(["--coordinator", &addr, "--request-timeout", "1", "runs"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert!(!out.status.success());
    assert!(secs < 15.0, "took {secs:.1} s");
    assert!(
        stderr(&out).contains("--request-timeout"),
        "{}",
        stderr(&out)
    );

    let closed = namm_tests::free_port();
    let out = namm_tests::run_cli(&[
        "--coordinator".into(),
        format!("127.0.0.1:{closed}"),
        "runs".into(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("namm-coord start") && err.contains("--db"),
        "{err}"
    );

    let out = namm_tests::run_cli(&["--request-timeout".into(), "0".into(), "runs".into()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--request-timeout"));
}

#[test]
fn a_worker_given_a_bad_address_fails_at_once() {
    let out = Command::new(namm_tests::bin("namm-worker"))
        .args(["--coordinator", "bad addr"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("bad addr"), "{}", stderr(&out));
}

#[test]
fn a_run_no_worker_can_take_says_so_until_one_comes() {
    let model = "random:tiny:seed=5";
    let sha = model
        .parse::<namm::model::ModelSource>()
        .unwrap()
        .sha256()
        .unwrap();
    let c = Cluster::new();
    let spec = c.file("run.toml", &namm_spec(&sha, model));
    let coord = c.coordinator(
        "coord",
        &["--run", spec.to_str().unwrap(), "--local-workers", "0"],
    );
    let waiting = format!("no worker has model {sha}");
    let run = find_run(&c.json(&["runs"]), 1);
    assert_eq!(run["status"], "running");
    assert_eq!(run["waiting"], waiting.as_str(), "{run}");
    let table = String::from_utf8_lossy(&c.cli(&["runs"]).stdout).to_string();
    assert!(table.contains(&format!("(waiting: {waiting})")), "{table}");
    let watch = Proc::spawn(
        "watch",
        &namm_tests::bin("namm"),
        &["--coordinator".into(), c.addr(), "watch".into(), "1".into()],
        c.dir.path(),
    );
    wait_for(
        "watch to say the run waits",
        Duration::from_secs(20),
        || watch.log().contains(&format!("waiting: {waiting}")),
    );
    wait_for(
        "the log to say the run waits",
        Duration::from_secs(30),
        || coord.log().contains(&format!("waiting: {waiting}")),
    );
    // A worker without the model changes nothing.
    let _bench = c.worker("no-model", &[]);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(find_run(&c.json(&["runs"]), 1)["waiting"], waiting.as_str());

    let _w = c.worker("w", &["--model", model]);
    wait_for("the reason to clear", Duration::from_secs(60), || {
        find_run(&c.json(&["runs"]), 1)["waiting"] == ""
    });
    wait_for(
        "watch to say a worker came",
        Duration::from_secs(20),
        || {
            watch
                .log()
                .contains("a worker that can take it is connected")
        },
    );
}

#[test]
fn local_workers_die_with_a_killed_coordinator_and_hand_back_on_ctrl_c() {
    let model = model_path();
    let sha = namm::digest::file_sha256(&model).unwrap();
    let model = model.to_str().unwrap();
    let c = Cluster::new();
    let spec = c.file("run.toml", &namm_spec(&sha, model));
    let args = [
        "--run",
        spec.to_str().unwrap(),
        "--local-workers",
        "1",
        "--model",
        model,
    ];

    let mut coord = c.coordinator("killed", &args);
    let mut pid = None;
    wait_for("the local worker to start", Duration::from_secs(30), || {
        pid = local_worker_pid(&coord.log());
        pid.is_some()
    });
    let pid = pid.unwrap();
    assert!(pid_alive(pid));
    coord.kill();
    wait_for(
        "the orphaned worker to exit",
        Duration::from_secs(10),
        || !pid_alive(pid),
    );

    // The run resumes; SIGTERM once the local worker holds units.
    let mut coord = c.coordinator("stopped", &args);
    wait_for(
        "the local worker to hold units",
        Duration::from_secs(60),
        || {
            let workers = c.json(&["workers"]);
            workers
                .as_array()
                .is_some_and(|w| w.iter().any(|w| w["active_leases"].as_u64() > Some(0)))
        },
    );
    coord.terminate();
    let status = coord
        .wait_exit(Duration::from_secs(30))
        .expect("still running");
    assert!(status.success(), "{}", coord.log());
    let log = coord.log();
    assert!(
        log.contains("units handed back to the coordinator") && !log.contains("hand-back refused"),
        "{log}"
    );
}

/// `namm eval ARGS` (on the default model unless ARGS name one), with the time it took.
fn eval(args: &[&str]) -> (std::process::Output, f64) {
    let mut all: Vec<String> = vec!["eval".into()];
    if !args.contains(&"--model") {
        all.extend(["--model".into(), model_path().display().to_string()]);
    }
    all.extend(args.iter().map(|s| s.to_string()));
    let started = Instant::now();
    let out = namm_tests::run_cli(&all);
    (out, started.elapsed().as_secs_f64())
}

#[test]
fn eval_refuses_bad_input_before_the_expensive_work() {
    let dir = tempfile::tempdir().unwrap();
    let (out, secs) = eval(&["--task", "passkey:len=1000000", "--samples", "1"]);
    assert!(!out.status.success());
    assert!(secs < 30.0, "took {secs:.1} s");
    assert!(stderr(&out).contains("context of 8192"), "{}", stderr(&out));

    for (args, field) in [
        (&["--samples", "0"][..], "--samples"),
        (&["--policy", "streaming:sinks=100000"][..], "sinks"),
        (&["--policy", "nonsense"][..], "--policy"),
    ] {
        let (out, _) = eval(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(field), "{args:?}: {}", stderr(&out));
    }

    let (out, _) = eval(&["--model", dir.path().to_str().unwrap()]);
    assert!(stderr(&out).contains("is a directory"), "{}", stderr(&out));

    let record =
        r#"{"input": "Who?", "context": "Nobody.", "answers": ["Nobody"], "dataset": "qasper"}"#;
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        format!("longbench:path={}", p.display())
    };
    for (task, samples, expected) in [
        (file("empty.jsonl", ""), "1", "holds 0 samples"),
        (file("one.jsonl", record), "3", "fewer than --samples 3"),
        (
            file(
                "huge.jsonl",
                &format!(r#"{{"input": "{}"}}"#, "x".repeat(9 << 20)),
            ),
            "1",
            "a record holds at most",
        ),
    ] {
        let (out, secs) = eval(&["--task", &task, "--samples", samples]);
        assert!(!out.status.success(), "{task}");
        assert!(secs < 30.0, "{task}: took {secs:.1} s");
        assert!(stderr(&out).contains(expected), "{task}: {}", stderr(&out));
    }
    let wrong_type = format!(
        r#"{{"input": "Who?", "context": "c", "answers": "{}", "dataset": "qasper"}}"#,
        "y".repeat(1 << 20)
    );
    let (out, _) = eval(&["--task", &file("typo.jsonl", &wrong_type)]);
    let err = stderr(&out);
    assert!(
        err.contains("must be a list") && err.len() < 4000,
        "{} bytes",
        err.len()
    );
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Overwrites 4 KB of the `db` file at `at` (a fraction of its length) with seeded noise.
fn scribble(db: &std::path::Path, at: f64, seed: u64) {
    use rand::{RngCore, SeedableRng};
    use std::io::{Seek, SeekFrom, Write};
    let path = db.join("db");
    let len = std::fs::metadata(&path).unwrap().len();
    let mut noise = vec![0u8; 4096];
    rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut noise);
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.seek(SeekFrom::Start(
        ((len as f64 * at) as u64).min(len.saturating_sub(4096)),
    ))
    .unwrap();
    f.write_all(&noise).unwrap();
}

#[test]
fn a_damaged_database_is_refused_by_name_never_a_panic_or_a_shorter_history() {
    let spec = r#"
name = "long-sphere"
seed = 5
[objective]
kind = "sphere"
dim = 8
[strategy]
population = 8
[stop]
max_generations = 150
target_fitness = -1e-30
"#;
    let reference = Cluster::uninterrupted(spec, 1);
    let history = reference.cli_db(&["history", "1", "--json"]);
    assert!(history.status.success(), "{}", stderr(&history));
    let damages: Vec<(&str, Box<dyn Fn(&std::path::Path)>)> = vec![
        (
            "cut to half",
            Box::new(|d| {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(d.join("db"))
                    .unwrap();
                let len = f.metadata().unwrap().len();
                f.set_len(len / 2).unwrap();
            }),
        ),
        (
            "emptied",
            Box::new(|d| std::fs::write(d.join("db"), b"").unwrap()),
        ),
        ("noise at 25 %", Box::new(|d| scribble(d, 0.25, 1))),
        ("noise at 50 %", Box::new(|d| scribble(d, 0.5, 2))),
        ("noise at 80 %", Box::new(|d| scribble(d, 0.8, 3))),
        ("noise at 95 %", Box::new(|d| scribble(d, 0.95, 4))),
    ];
    let mut refused = 0;
    for (what, damage) in &damages {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("db");
        copy_dir(&reference.db(), &copy);
        damage(&copy);
        let out = namm_tests::run_cli(&[
            "--db".into(),
            copy.display().to_string(),
            "history".into(),
            "1".into(),
            "--json".into(),
        ]);
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{what}: {err}");
        if out.status.success() {
            assert_eq!(
                out.stdout, history.stdout,
                "{what}: a different history, exit 0"
            );
        } else {
            assert_eq!(out.status.code(), Some(1), "{what}: {err}");
            assert!(err.contains("is damaged"), "{what}: {err}");
            refused += 1;
        }
        // The coordinator refuses it too, and writes nothing: no new run 1 on an emptied file.
        let c = Cluster::new();
        copy_dir(&copy, &c.db());
        let mut args = vec!["start".to_string(), "--listen".into(), c.addr()];
        args.extend([
            "--db".into(),
            c.db().display().to_string(),
            "--no-default-run".into(),
        ]);
        let mut coord = Proc::spawn("coord", &namm_tests::bin("namm-coord"), &args, c.dir.path());
        if !out.status.success() {
            let status = coord
                .wait_exit(Duration::from_secs(30))
                .expect("it started");
            assert_eq!(status.code(), Some(1), "{what}: {}", coord.log());
            assert!(
                coord.log().contains("is damaged"),
                "{what}: {}",
                coord.log()
            );
        }
    }
    assert!(refused >= 2, "only {refused} damages were detected");
}

#[test]
fn submitting_a_spec_twice_says_so() {
    let c = Cluster::new();
    let _coord = c.coordinator("coord", &[]);
    let spec = c.file(
        "sphere.toml",
        "name = \"twice\"\n[objective]\nkind = \"sphere\"\ndim = 4\n[stop]\nmax_generations = 3\n",
    );
    let spec = spec.to_str().unwrap();
    let first = c.cli(&["submit", spec]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(!stderr(&first).contains("same spec"), "{}", stderr(&first));
    let second = c.cli(&["submit", spec]);
    assert!(second.status.success(), "{}", stderr(&second));
    let note = stderr(&second);
    assert!(
        note.contains("run 1") && note.contains("same spec") && note.contains("run 2"),
        "{note}"
    );
}

fn backup(db: &std::path::Path, to: &std::path::Path, coordinator: &str) -> std::process::Output {
    Command::new(namm_tests::bin("namm-coord"))
        .args(["backup", "--db"])
        .arg(db)
        .arg("--to")
        .arg(to)
        .args(["--coordinator", coordinator])
        .output()
        .unwrap()
}

/// A 400-generation sphere run served with one local worker, once it has 5 generations, and
/// the history the same spec gives when nothing disturbs it.
fn sphere_run_past_generation_5(name: &str, seed: u64) -> (Value, Cluster, Proc) {
    let spec = format!(
        "name = {name:?}\nseed = {seed}\n[objective]\nkind = \"sphere\"\ndim = 8\n\
         [strategy]\npopulation = 8\n[stop]\nmax_generations = 400\ntarget_fitness = -1e-30\n"
    );
    let reference = Cluster::uninterrupted(&spec, 1);
    let full = namm_tests::without_wall_clock(&reference.json_db(&["history", "1"]));
    let c = Cluster::new();
    let file = c.file("run.toml", &spec);
    let coord = c.coordinator(
        "coord",
        &["--run", file.to_str().unwrap(), "--local-workers", "1"],
    );
    c.wait_generations(1, 5, Duration::from_secs(60));
    (full, c, coord)
}

#[test]
fn a_backup_taken_while_serving_restores_and_resumes_the_run() {
    let (full, c, mut coord) = sphere_run_past_generation_5("backed-up", 9);
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy");
    let out = backup(&c.db(), &copy, &c.addr());
    assert!(out.status.success(), "{}\n{}", stderr(&out), coord.log());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("copied 1 runs"),
        "{out:?}"
    );
    let again = backup(&c.db(), &copy, &c.addr());
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("not empty"), "{}", stderr(&again));
    coord.terminate();
    coord
        .wait_exit(Duration::from_secs(30))
        .expect("the coordinator did not stop");

    // The copy opens as a database of its own, its history a prefix of the run's...
    let restored = Cluster::new();
    copy_dir(&copy, &restored.db());
    let partial = namm_tests::without_wall_clock(&restored.json_db(&["history", "1"]));
    let n = partial.as_array().unwrap().len();
    assert!(n >= 5, "{n} generations in the copy");
    assert_eq!(
        partial.as_array().unwrap()[..],
        full.as_array().unwrap()[..n]
    );
    // ...and a coordinator on it carries the run on to the same end.
    let mut resumed =
        restored.coordinator("resumed", &["--local-workers", "1", "--exit-when-done"]);
    let status = resumed
        .wait_exit(Duration::from_secs(120))
        .expect("the resumed run did not finish");
    assert!(status.success(), "{}", resumed.log());
    assert_eq!(
        namm_tests::without_wall_clock(&restored.json_db(&["history", "1"])),
        full
    );

    // A stopped database is copied directly; a coordinator serving another one refuses.
    let offline = dir.path().join("offline");
    let out = backup(&restored.db(), &offline, "127.0.0.1:1");
    assert!(out.status.success(), "{}", stderr(&out));
    let other = Cluster::new();
    let _serving = other.coordinator("other", &[]);
    let _holding = restored.coordinator("holding", &[]);
    let out = backup(&restored.db(), &dir.path().join("wrong"), &other.addr());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("serves the database"),
        "{}",
        stderr(&out)
    );
}

/// Sets the soft file-size limit (`RLIMIT_FSIZE`) of a running process: past it a write
/// fails as on a full disk. Unprivileged, unlike mounting a small filesystem.
fn limit_file_size(pid: u32, limit: &str) {
    let status = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--fsize={limit}:")])
        .status()
        .expect("cannot run prlimit (util-linux)");
    assert!(
        status.success(),
        "prlimit --pid {pid} --fsize={limit}: failed"
    );
}

#[test]
fn a_full_disk_is_named_and_the_run_carries_on_once_space_is_back() {
    let (full, c, coord) = sphere_run_past_generation_5("disk-full", 13);
    let pid = coord.pid().unwrap();
    // No file of the database may grow any more: the next write past its end fails.
    let size = std::fs::metadata(c.db().join("db")).unwrap().len();
    limit_file_size(pid, &size.to_string());
    // A read that sled must write for (it compacts pages as it reads them) fails like the
    // writes, naming the same error, until space is back; the others are served.
    let read = |args: &[&str]| -> Result<Value, String> {
        let mut all = args.to_vec();
        all.push("--json");
        let out = c.cli(&all);
        if !out.status.success() {
            let err = stderr(&out);
            assert!(err.contains("File too large"), "namm {args:?}: {err}");
            return Err(err);
        }
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    };
    let mut stalled = Value::Null;
    wait_for(
        "the run to say it cannot write",
        Duration::from_secs(60),
        || {
            let Ok(runs) = read(&["runs"]) else {
                return false;
            };
            stalled = find_run(&runs, 1);
            stalled["waiting"]
                .as_str()
                .is_some_and(|w| w.contains("cannot be written"))
        },
    );
    assert_eq!(stalled["status"], "running", "{stalled}");
    // No generation moves meanwhile.
    let done = stalled["generations_done"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    if let Ok(history) = read(&["history", "1"]) {
        assert_eq!(
            history.as_array().unwrap().len() as u64,
            done,
            "{}",
            coord.log()
        );
    }
    assert!(done < 400, "the run ended before the disk filled");

    limit_file_size(pid, "unlimited");
    let mut end = Value::Null;
    wait_for(
        "the run to finish by itself",
        Duration::from_secs(120),
        || {
            let Ok(runs) = read(&["runs"]) else {
                return false;
            };
            end = find_run(&runs, 1);
            end["status"] != "running"
        },
    );
    assert_eq!(end["status"], "finished", "{end}\n{}", coord.log());
    assert_eq!(end["waiting"].as_str().unwrap_or(""), "", "{end}");
    assert_eq!(
        namm_tests::without_wall_clock(&c.json(&["history", "1"])),
        full,
        "the recovered run differs from an undisturbed one:\n{}",
        coord.log()
    );
    let log = coord.log();
    assert!(log.contains("a database write failed"), "{log}");
    assert!(log.contains("the database takes writes again"), "{log}");
}

#[test]
fn a_namm_file_without_statistics_is_named_once() {
    let start = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../assets/namm-start.safetensors"
    );
    let policy = format!("namm:{start}");
    let (out, _) = eval(&[
        "--task",
        "passkey:len=300",
        "--samples",
        "2",
        "--policy",
        &policy,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).matches("norm_count is 0").count(),
        1,
        "{}",
        stderr(&out)
    );
    let shipped = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../assets/namm-smollm2-135m.safetensors"
    );
    let (out, _) = eval(&[
        "--task",
        "passkey:len=300",
        "--samples",
        "1",
        "--policy",
        &format!("namm:{shipped}"),
    ]);
    assert!(!stderr(&out).contains("norm_count"), "{}", stderr(&out));
}
