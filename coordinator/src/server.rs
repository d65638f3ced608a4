//! Serving: binds the gRPC services (token-checked, optionally over TLS), expires leases,
//! serves metrics, runs local workers, stops on a signal (or, with `exit_when_done`, once no
//! run is left in flight): leases stop, in-flight calls drain, sled is flushed.

use crate::auth::TokenCheck;
use crate::coordinator::Coordinator;
use crate::service::Services;
use crate::store::Store;
use anyhow::Context;
use namm_proto::run_service_server::RunServiceServer;
use namm_proto::worker_service_server::WorkerServiceServer;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Identity, ServerTlsConfig};

/// Largest gRPC message sent: a generation with its evaluations, a NAMM-sized population.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;
/// Largest gRPC message accepted: requests are small (a report, a run spec of at most
/// `namm::spec::MAX_SPEC_BYTES`), so anything bigger is refused before it is buffered.
pub const MAX_REQUEST_BYTES: usize = 16 << 20;
/// How often the log says which runs wait for a worker that can take them (on change only).
const WAITING_LOG_PERIOD: Duration = Duration::from_secs(10);

/// PEM files of the coordinator's TLS certificate (chain) and private key.
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub struct ServeOptions {
    pub listen: SocketAddr,
    pub db: PathBuf,
    pub runs: Vec<PathBuf>,
    /// Workers to start with the coordinator; None: one when an LLM run is in flight.
    pub local_workers: Option<u32>,
    /// Submit the default NAMM run when no `runs` are given and the database holds no run.
    pub default_run: bool,
    /// The model local workers of LLM runs load.
    pub model: PathBuf,
    pub lease_ttl: Duration,
    pub max_lease: Duration,
    pub exit_when_done: bool,
    /// Shared secret every call must carry; None accepts every call.
    pub token: Option<String>,
    /// Allow listening on a non-loopback address without a token.
    pub insecure: bool,
    pub tls: Option<TlsFiles>,
    /// Where to serve Prometheus metrics over plain HTTP.
    pub metrics: Option<SocketAddr>,
    /// Progress bars to draw the running runs on (a terminal), if any.
    pub progress: Option<indicatif::MultiProgress>,
}

pub async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    if opts.token.is_none() && !opts.listen.ip().is_loopback() && !opts.insecure {
        anyhow::bail!(
            "--listen {}: refusing to serve a non-loopback address without a token \
             (give --token, NAMM_TOKEN or --token-file; or --insecure on a trusted network)",
            opts.listen
        );
    }
    let tls = match &opts.tls {
        Some(files) => Some(tls_config(files)?),
        None => None,
    };
    // Past a file-size limit (`ulimit -f`) a write fails with EFBIG like any full disk
    // instead of the signal killing the process; tokio's handler stays installed for good.
    let _file_too_large =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(libc::SIGXFSZ))
            .context("cannot handle SIGXFSZ")?;
    let store = Store::open(&opts.db)?;
    let coord = Coordinator::open(store, opts.lease_ttl, opts.max_lease)
        .with_context(|| format!("resuming the runs in {}", opts.db.display()))?;
    // Whatever can refuse the start is checked before a run is written.
    let mut pending = Vec::new();
    for path in &opts.runs {
        let spec = new_spec(&coord, path)?;
        if let Some(spec) = spec.filter(|s| !pending.iter().any(|(p, _)| p == s)) {
            pending.push((spec, Some(path)));
        }
    }
    if opts.runs.is_empty() && opts.default_run && coord.store()?.list_runs()?.is_empty() {
        pending.push((namm::spec::RunSpec::default_namm(), None));
    }
    let mut llm_models = coord.running_models();
    llm_models.extend(
        pending
            .iter()
            .filter_map(|(spec, _)| spec.namm.as_ref().map(|n| n.model_sha256.clone())),
    );
    llm_models.sort();
    llm_models.dedup();
    let local_workers = opts
        .local_workers
        .unwrap_or(if llm_models.is_empty() { 0 } else { 1 });
    if local_workers > 0 && !llm_models.is_empty() {
        check_model(&opts.model, &llm_models)?;
    }
    let listener = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("cannot listen on {}", opts.listen))?;
    for (spec, path) in pending {
        let run = coord.submit(&spec.to_toml())?;
        match path {
            Some(path) => println!(
                "submitted run {} ({}) from {}",
                run.run_id,
                run.name,
                path.display()
            ),
            None => println!(
                "submitted the default NAMM run {} ({}); query it with `namm history {}`",
                run.run_id, run.name, run.run_id
            ),
        }
    }
    let addr = listener.local_addr()?;
    println!("namm-coord listening on {addr}");
    tracing::info!(%addr, db = %opts.db.display(), "coordinator serving");

    if opts.token.is_none() {
        tracing::warn!("no token: every client that reaches this address is trusted");
    }

    let metrics = match opts.metrics {
        Some(a) => {
            let (bound, listener) = crate::metrics::bind(a)
                .await
                .with_context(|| format!("--metrics {a}: cannot listen there"))?;
            println!("namm-coord metrics on http://{bound}/metrics");
            let coord = coord.clone();
            Some(tokio::spawn(crate::metrics::serve(
                listener,
                Arc::new(move || crate::metrics::render(&coord.metrics())),
            )))
        }
        None => None,
    };

    let progress = opts
        .progress
        .clone()
        .map(|bars| tokio::spawn(crate::progress::show(coord.clone(), bars)));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let reaper = {
        let coord = coord.clone();
        let period = (opts.lease_ttl / 10).max(Duration::from_millis(20));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            let mut waiting = std::collections::HashMap::new();
            let mut last_check = std::time::Instant::now();
            loop {
                tick.tick().await;
                coord.expire_leases();
                let recovering = coord.clone();
                let _ = tokio::task::spawn_blocking(move || recovering.recover()).await;
                // Local workers take a few seconds to load the model: not worth a warning.
                if last_check.elapsed() >= WAITING_LOG_PERIOD {
                    coord.log_waiting(&mut waiting);
                    last_check = std::time::Instant::now();
                }
            }
        })
    };

    let mut locals = Vec::new();
    let connect_to = if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    let mut children = Vec::new();
    for i in 0..local_workers {
        if !llm_models.is_empty() {
            children.push(spawn_worker_process(i, &connect_to, &opts)?);
            continue;
        }
        let cfg = namm_worker::WorkerConfig {
            coordinator: connect_to.to_string(),
            name: format!("local-{i}"),
            auth: namm_worker::auth::ClientAuth {
                token: opts.token.clone(),
                // A self-signed certificate is its own CA; with a CA-issued one, local workers
                // need that CA in the system's trust store's place, which they do not read.
                tls_ca: opts.tls.as_ref().map(|t| t.cert.clone()),
                timeouts: Default::default(),
            },
            ..namm_worker::WorkerConfig::default()
        };
        let mut stop = stop_rx.clone();
        locals.push(tokio::spawn(namm_worker::run(cfg, async move {
            let _ = stop.wait_for(|s| *s).await;
        })));
    }

    let services = Services(coord.clone());
    let shutdown = {
        let coord = coord.clone();
        let mut active = coord.active_runs();
        let exit_when_done = opts.exit_when_done;
        async move {
            tokio::select! {
                _ = shutdown_signal() => tracing::info!("signal received; shutting down"),
                _ = async {
                    if exit_when_done {
                        let _ = active.wait_for(|n| *n == 0).await;
                    } else {
                        std::future::pending::<()>().await;
                    }
                } => tracing::info!("no run left in flight; exiting (--exit-when-done)"),
            }
            // Local workers hand their units back while the server still answers.
            stop_local_workers(stop_tx, locals, children).await;
            coord.close();
        }
    };
    let check = TokenCheck::new(opts.token.as_deref());
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .context("TLS configuration refused")?;
    }
    builder
        .add_service(InterceptedService::new(
            WorkerServiceServer::new(services.clone())
                .max_decoding_message_size(MAX_REQUEST_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            check.clone(),
        ))
        .add_service(InterceptedService::new(
            RunServiceServer::new(services)
                .max_decoding_message_size(MAX_REQUEST_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            check,
        ))
        .serve_with_incoming_shutdown(
            // Without TCP_NODELAY small replies wait for delayed ACKs: ~40 ms per round trip.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
        .context("gRPC server failed")?;

    reaper.abort();
    for task in [metrics, progress].into_iter().flatten() {
        task.abort();
    }
    if let Some(bars) = &opts.progress {
        let _ = bars.clear();
    }
    coord.store()?.flush()?;
    tracing::info!("database flushed; coordinator stopped");
    Ok(())
}

fn tls_config(files: &TlsFiles) -> anyhow::Result<ServerTlsConfig> {
    let cert = std::fs::read(&files.cert)
        .with_context(|| format!("--tls-cert {}: cannot read it", files.cert.display()))?;
    let key = std::fs::read(&files.key)
        .with_context(|| format!("--tls-key {}: cannot read it", files.key.display()))?;
    Ok(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
}

/// The run spec in a file, unless the database already holds a run with the same spec, so
/// restarting with the same `--run` resumes the run instead of starting a second one.
fn new_spec(
    coord: &Arc<Coordinator>,
    path: &PathBuf,
) -> anyhow::Result<Option<namm::spec::RunSpec>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read run spec {}", path.display()))?;
    let spec = namm::spec::RunSpec::from_toml(&text)
        .with_context(|| format!("run spec {}", path.display()))?;
    let canonical = spec.to_toml();
    if let Some(existing) = coord
        .store()?
        .list_runs()?
        .into_iter()
        .find(|r| r.spec_toml == canonical || r.submitted_spec_toml == canonical)
    {
        tracing::info!(run = existing.run_id, file = %path.display(), "run already in the database; not submitting it again");
        return Ok(None);
    }
    Ok(Some(spec))
}

/// Local workers of LLM runs are `namm-worker` processes next to this binary, each holding the
/// model: the coordinator itself never links the LLM engine.
fn spawn_worker_process(
    i: u32,
    coordinator: &SocketAddr,
    opts: &ServeOptions,
) -> anyhow::Result<tokio::process::Child> {
    let exe = std::env::current_exe()
        .context("cannot locate this executable")?
        .with_file_name(format!("namm-worker{}", std::env::consts::EXE_SUFFIX));
    if !exe.is_file() {
        anyhow::bail!(
            "--local-workers: {} not found next to namm-coord; build it with \
             `cargo build --release --bins`",
            exe.display()
        );
    }
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.arg("--coordinator")
        .arg(coordinator.to_string())
        .arg("--name")
        .arg(format!("local-{i}"))
        .arg("--model")
        .arg(&opts.model)
        .arg("--exit-with-parent")
        .arg(std::process::id().to_string())
        .kill_on_drop(true);
    match &opts.token {
        Some(t) => cmd.env("NAMM_TOKEN", t),
        None => cmd.env_remove("NAMM_TOKEN"),
    };
    if let Some(tls) = &opts.tls {
        cmd.arg("--tls-ca").arg(&tls.cert);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    tracing::info!(worker = %format!("local-{i}"), pid = child.id(), model = %opts.model.display(), "local worker process started");
    Ok(child)
}

/// Stops the in-process local workers and the local worker processes, each handing back the
/// units it holds.
async fn stop_local_workers(
    stop: tokio::sync::watch::Sender<bool>,
    locals: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    children: Vec<tokio::process::Child>,
) {
    let _ = stop.send(true);
    for l in locals {
        if let Ok(Err(e)) = l.await {
            tracing::warn!(error = %format!("{e:#}"), "local worker failed");
        }
    }
    for mut c in children {
        stop_child(&mut c).await;
    }
}

/// Asks a local worker process to stop (it hands its units back) and waits briefly for it.
async fn stop_child(child: &mut tokio::process::Child) {
    #[cfg(unix)]
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}

/// Fails early, with the fix, when local workers could not serve the LLM runs in flight.
fn check_model(model: &std::path::Path, wanted: &[String]) -> anyhow::Result<()> {
    if !model.is_file() {
        anyhow::bail!(
            "--model {}: no such file; the local worker of an LLM run needs the model \
             (fetch the default one with scripts/fetch-model.sh, or give --model PATH, or \
             --local-workers 0 and start workers elsewhere)",
            model.display()
        );
    }
    let sha =
        namm::digest::file_sha256(model).with_context(|| format!("--model {}", model.display()))?;
    if !wanted.contains(&sha) {
        anyhow::bail!(
            "--model {} has sha256 {sha}, but the runs in flight want {}; local workers would \
             get no work",
            model.display(),
            wanted.join(", ")
        );
    }
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
