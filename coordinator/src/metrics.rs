//! Prometheus metrics: counters kept under the coordinator's lock, rendered as the text
//! exposition format, served over plain HTTP by a minimal handler (one GET per connection).

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Upper bounds (seconds) of the evaluation latency histogram: from benchmark functions
/// (microseconds) to LLM evaluations (minutes).
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];

#[derive(Default, Clone)]
pub struct Counters {
    pub units_leased: u64,
    pub units_completed: u64,
    pub units_expired: u64,
    /// Handed back by a stopping worker.
    pub units_released: u64,
    /// Leased again after an expiry or a hand-back.
    pub units_re_leased: u64,
    /// Reports with NaN or infinite fitness: recorded and ranked last.
    pub evaluations_failed: u64,
    pub reports_rejected: u64,
    pub latency: Histogram,
}

#[derive(Clone)]
pub struct Histogram {
    counts: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: [0; LATENCY_BUCKETS.len()],
            count: 0,
            sum: 0.0,
        }
    }
}

impl Histogram {
    pub fn observe(&mut self, seconds: f64) {
        for (bound, n) in LATENCY_BUCKETS.iter().zip(self.counts.iter_mut()) {
            if seconds <= *bound {
                *n += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// What one scrape shows, taken under the coordinator's lock.
pub struct Snapshot {
    pub counters: Counters,
    pub workers_connected: usize,
    pub workers_known: usize,
    pub leases_active: usize,
    pub queue_length: usize,
    /// (run id, name, generation in flight, best fitness so far).
    pub runs: Vec<(u64, String, u32, f64)>,
}

pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
            number(value)
        );
    };
    let c = &s.counters;
    metric(
        "namm_workers_connected",
        "gauge",
        "Workers heard from within one lease TTL.",
        s.workers_connected as f64,
    );
    metric(
        "namm_workers_known",
        "gauge",
        "Workers registered and not yet forgotten.",
        s.workers_known as f64,
    );
    metric(
        "namm_leases_active",
        "gauge",
        "Units out on lease now.",
        s.leases_active as f64,
    );
    metric(
        "namm_queue_length",
        "gauge",
        "Units waiting for a worker.",
        s.queue_length as f64,
    );
    metric(
        "namm_units_leased_total",
        "counter",
        "Units handed to workers.",
        c.units_leased as f64,
    );
    metric(
        "namm_units_completed_total",
        "counter",
        "Units whose report was accepted.",
        c.units_completed as f64,
    );
    metric(
        "namm_units_expired_total",
        "counter",
        "Leases that expired; their units went back to the queue.",
        c.units_expired as f64,
    );
    metric(
        "namm_units_released_total",
        "counter",
        "Units handed back by stopping workers.",
        c.units_released as f64,
    );
    metric(
        "namm_units_re_leased_total",
        "counter",
        "Units leased again after an expiry or a hand-back.",
        c.units_re_leased as f64,
    );
    metric(
        "namm_evaluations_failed_total",
        "counter",
        "Accepted reports with NaN or infinite fitness (ranked last).",
        c.evaluations_failed as f64,
    );
    metric(
        "namm_reports_rejected_total",
        "counter",
        "Reports refused (bad lease, bad shape).",
        c.reports_rejected as f64,
    );
    let _ = writeln!(out, "# HELP namm_run_generation Generation in flight per running run.\n# TYPE namm_run_generation gauge");
    for (id, name, generation, _) in &s.runs {
        let _ = writeln!(
            out,
            "namm_run_generation{{run=\"{id}\",name=\"{}\"}} {generation}",
            label(name)
        );
    }
    let _ = writeln!(out, "# HELP namm_run_best_fitness Best fitness so far per running run.\n# TYPE namm_run_best_fitness gauge");
    for (id, name, _, best) in &s.runs {
        let _ = writeln!(
            out,
            "namm_run_best_fitness{{run=\"{id}\",name=\"{}\"}} {}",
            label(name),
            number(*best)
        );
    }
    let h = &c.latency;
    let _ = writeln!(out, "# HELP namm_evaluation_seconds Evaluation time reported by workers.\n# TYPE namm_evaluation_seconds histogram");
    for (bound, n) in LATENCY_BUCKETS.iter().zip(h.counts) {
        let _ = writeln!(out, "namm_evaluation_seconds_bucket{{le=\"{bound}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "namm_evaluation_seconds_bucket{{le=\"+Inf\"}} {}",
        h.count
    );
    let _ = writeln!(out, "namm_evaluation_seconds_sum {}", number(h.sum));
    let _ = writeln!(out, "namm_evaluation_seconds_count {}", h.count);
    out
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `GET /metrics` (and `/`) until the task is aborted.
pub async fn serve(listener: TcpListener, scrape: Arc<dyn Fn() -> String + Send + Sync>) {
    loop {
        let Ok((mut conn, peer)) = listener.accept().await else {
            continue;
        };
        let scrape = scrape.clone();
        tokio::spawn(async move {
            if let Err(e) =
                tokio::time::timeout(Duration::from_secs(5), answer(&mut conn, &*scrape)).await
            {
                tracing::debug!(%peer, error = %e, "metrics request timed out");
            }
        });
    }
}

async fn answer(conn: &mut tokio::net::TcpStream, scrape: &(dyn Fn() -> String + Send + Sync)) {
    // Only the request line matters; read until the end of the headers, at most 8 KiB.
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let line = buf
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let (status, body) = match (method, path) {
        (b"GET", b"/metrics" | b"/") => ("200 OK", scrape()),
        (b"GET", _) => (
            "404 Not Found",
            "not found; metrics are at /metrics\n".to_string(),
        ),
        _ => ("405 Method Not Allowed", "only GET\n".to_string()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes()).await;
    let _ = conn.write_all(body.as_bytes()).await;
    let _ = conn.shutdown().await;
}

/// Binds the metrics address (so a bad one fails at start) and returns it with its server.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(SocketAddr, TcpListener)> {
    let l = TcpListener::bind(addr).await?;
    Ok((l.local_addr()?, l))
}
