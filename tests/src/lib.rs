//! Helpers shared by the end-to-end tests: locating the built binaries, free ports, process
//! guards that kill their child on drop, and the `namm` CLI as a function.
//!
//! The binaries must be built first:
//! `cargo build --release -p namm-coord -p namm-worker -p namm-cli`.

use serde_json::Value;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where namm-coord, namm-worker and namm are: `$NAMM_BIN_DIR`, else
/// `$CARGO_TARGET_DIR/release`, else the directory above this test executable (which cargo
/// puts in `<target>/release/deps`), else `<repo>/target/release`.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("NAMM_BIN_DIR") {
        return PathBuf::from(d);
    }
    let mut candidates = Vec::new();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(t).join("release"));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().and_then(Path::parent).map(Path::to_path_buf))
    {
        candidates.push(dir);
    }
    candidates.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release"));
    candidates
        .iter()
        .find(|d| d.join("namm-coord").exists())
        .cloned()
        .unwrap_or_else(|| candidates[0].clone())
}

pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first with \
         `cargo build --release -p namm-coord -p namm-worker -p namm-cli` \
         (or point NAMM_BIN_DIR at them)",
        path.display()
    );
    path
}

/// The GGUF model of the LLM tests: `NAMM_MODEL`, or the one scripts/fetch-model.sh puts in
/// `models/`.
pub fn model_path() -> PathBuf {
    let path = std::env::var_os("NAMM_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../models/SmolLM2-135M-Instruct.Q4_1.gguf"
            ))
        });
    assert!(
        path.is_file(),
        "model file {} not found: run scripts/fetch-model.sh (or set NAMM_MODEL)",
        path.display()
    );
    path
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// A child process that is killed (SIGKILL) when dropped, so a failing test leaves nothing
/// running. Its stderr goes to a log file, printed if the test panics.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, program: &Path, args: &[String], log_dir: &Path) -> Proc {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("cannot create a log file");
        let child = Command::new(program)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        Proc {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }

    /// Guards a child started elsewhere (its output is not captured).
    pub fn adopt(name: &str, child: Child, log_dir: &Path) -> Proc {
        Proc {
            name: name.to_string(),
            child: Some(child),
            log: log_dir.join(format!("{name}.log")),
        }
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM: asks the process to stop gracefully (it keeps running until it exits).
    pub fn terminate(&self) {
        if let Some(c) = self.child.as_ref() {
            let status = Command::new("kill")
                .args(["-s", "TERM", &c.id().to_string()])
                .status()
                .expect("cannot run kill");
            assert!(status.success(), "kill -s TERM {} failed", c.id());
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits for the process to exit on its own; None on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    return Some(status);
                }
            } else {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- log of {} ----\n{}", self.name, self.log());
        }
    }
}

/// A coordinator on a loopback port with its own database directory.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Cluster {
    pub fn new() -> Cluster {
        Cluster {
            dir: tempfile::tempdir().expect("no temporary directory"),
            port: free_port(),
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("db")
    }

    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("cannot write a test file");
        p
    }

    /// Starts `namm-coord start` on this cluster's port and database and waits until it
    /// accepts connections: until its log says it is serving. A TCP probe is not enough: on
    /// loopback a connect to a port in the ephemeral range can pick that same port as its
    /// source and connect to itself, "succeeding" before the coordinator has bound.
    /// Without `--run`, the coordinator is told not to submit the default NAMM run
    /// (`--no-default-run`); [`Cluster::coordinator_args`] starts it with exactly the given
    /// arguments.
    pub fn coordinator(&self, name: &str, extra: &[&str]) -> Proc {
        let mut args = vec!["--no-default-run"];
        args.extend(extra);
        self.coordinator_args(name, &args)
    }

    /// `namm-coord start --listen <this> --db <this> ARGS`, waiting until it serves.
    pub fn coordinator_args(&self, name: &str, extra: &[&str]) -> Proc {
        let mut args: Vec<String> = vec![
            "start".into(),
            "--listen".into(),
            self.addr(),
            "--db".into(),
            self.db().display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        const SERVING: &str = "coordinator serving";
        let log = self.dir.path().join(format!("{name}.log"));
        let served_before = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches(SERVING)
            .count();
        let mut p = Proc::spawn(name, &bin("namm-coord"), &args, self.dir.path());
        // Submitting a NAMM run draws generation 0 first: one eigendecomposition of a
        // 4172 × 4172 covariance, ~20 s on a loaded 2-core machine.
        let deadline = Instant::now() + Duration::from_secs(120);
        while p.log().matches(SERVING).count() <= served_before {
            if let Some(status) = p.wait_exit(Duration::from_millis(1)) {
                panic!("{name} exited early ({status}):\n{}", p.log());
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not start listening:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    /// Runs `spec` once, uninterrupted, in standalone mode (`--local-workers N
    /// --exit-when-done`) on a fresh cluster: the reference a disturbed run must reproduce.
    /// The cluster is returned so its database can be queried further.
    pub fn uninterrupted(spec: &str, local_workers: u32) -> Cluster {
        let reference = Cluster::new();
        let file = reference.file("run.toml", spec);
        let workers = local_workers.to_string();
        let mut coord = reference.coordinator(
            "reference",
            &[
                "--run",
                file.to_str().unwrap(),
                "--local-workers",
                &workers,
                "--exit-when-done",
            ],
        );
        let status = coord
            .wait_exit(Duration::from_secs(120))
            .expect("reference coordinator did not finish");
        assert!(
            status.success(),
            "reference coordinator failed:\n{}",
            coord.log()
        );
        reference
    }

    pub fn worker(&self, name: &str, extra: &[&str]) -> Proc {
        let mut args: Vec<String> = vec![
            "--coordinator".into(),
            self.addr(),
            "--name".into(),
            name.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Proc::spawn(name, &bin("namm-worker"), &args, self.dir.path())
    }

    /// `namm --coordinator <this> ARGS`.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut all = vec!["--coordinator".to_string(), self.addr()];
        all.extend(args.iter().map(|s| s.to_string()));
        run_cli(&all)
    }

    /// `namm --db <this db> ARGS` (the coordinator must be stopped).
    pub fn cli_db(&self, args: &[&str]) -> Output {
        let mut all = vec!["--db".to_string(), self.db().display().to_string()];
        all.extend(args.iter().map(|s| s.to_string()));
        run_cli(&all)
    }

    /// The `--json` output of a CLI command that must succeed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        parse_json(&self.cli(&all), args)
    }

    pub fn json_db(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        parse_json(&self.cli_db(&all), args)
    }

    /// Polls `namm runs --json` until run `run_id` has left the running state.
    pub fn wait_run_done(&self, run_id: u64, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let runs = self.json(&["runs"]);
            let run = find_run(&runs, run_id);
            if run["status"] != "running" {
                return run;
            }
            assert!(
                Instant::now() < deadline,
                "run {run_id} still running after {timeout:?}: {run}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls until run `run_id` has at least `n` finished generations.
    pub fn wait_generations(&self, run_id: u64, n: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let runs = self.json(&["runs"]);
            let done = find_run(&runs, run_id)["generations_done"]
                .as_u64()
                .unwrap_or(0);
            if done >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "run {run_id} has only {done} of {n} generations after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster::new()
    }
}

pub fn run_cli(args: &[String]) -> Output {
    Command::new(bin("namm"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("cannot run namm")
}

fn parse_json(out: &Output, args: &[&str]) -> Value {
    assert!(
        out.status.success(),
        "namm {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "namm {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

pub fn find_run(runs: &Value, run_id: u64) -> Value {
    runs.as_array()
        .and_then(|a| a.iter().find(|r| r["run_id"] == run_id))
        .cloned()
        .unwrap_or_else(|| panic!("run {run_id} not in {runs}"))
}

/// A history without its wall-clock fields, for reproducibility comparisons.
pub fn without_wall_clock(history: &Value) -> Value {
    let mut h = history.clone();
    for g in h.as_array_mut().into_iter().flatten() {
        if let Some(o) = g.as_object_mut() {
            for k in [
                "wall_seconds",
                "generation_seconds",
                "started_unix_ms",
                "finished_unix_ms",
            ] {
                o.remove(k);
            }
        }
    }
    h
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
