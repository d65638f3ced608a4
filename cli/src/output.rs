//! Output for people (aligned tables) and for scripts (`--json`, `--csv`).

use namm_proto::{GenerationRecord, RunRecord, RunStatus, WorkerInfo};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
}

impl Format {
    pub fn from_flags(json: bool, csv: bool) -> Format {
        match (json, csv) {
            (true, _) => Format::Json,
            (_, true) => Format::Csv,
            _ => Format::Table,
        }
    }
}

/// Rows of cells under a header, rendered as an aligned table or as CSV.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: Vec<&'static str>) -> Table {
        Table {
            header,
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Csv => {
                let mut out = csv_line(self.header.iter().map(|h| h.to_string()));
                for r in &self.rows {
                    out.push_str(&csv_line(r.iter().cloned()));
                }
                out
            }
            _ => {
                let mut widths: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
                for r in &self.rows {
                    for (w, c) in widths.iter_mut().zip(r) {
                        *w = (*w).max(c.chars().count());
                    }
                }
                let line = |cells: Vec<String>| {
                    let mut s = cells
                        .iter()
                        .zip(&widths)
                        .map(|(c, w)| format!("{c:<w$}"))
                        .collect::<Vec<_>>()
                        .join("  ");
                    s.truncate(s.trim_end().len());
                    s.push('\n');
                    s
                };
                let mut out = line(self.header.iter().map(|h| h.to_string()).collect());
                for r in &self.rows {
                    out.push_str(&line(r.clone()));
                }
                out
            }
        }
    }
}

pub fn csv_line(cells: impl Iterator<Item = String>) -> String {
    let mut s = cells
        .map(|c| {
            if c.contains([',', '"', '\n']) {
                format!("\"{}\"", c.replace('"', "\"\""))
            } else {
                c
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    s.push('\n');
    s
}

/// Full precision: the shortest text that reads back as the same f64.
pub fn num(x: f64) -> String {
    format!("{x:?}")
}

pub fn emit(s: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_all(s.as_bytes())
        .and_then(|_| stdout.flush())
        .is_err()
    {
        std::process::exit(0);
    }
}

pub fn short(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        format!("{x}")
    } else if x.abs() >= 1e-3 && x.abs() < 1e5 {
        format!("{x:.6}")
    } else {
        format!("{x:.4e}")
    }
}

pub fn status_name(status: i32) -> &'static str {
    namm_coord::coordinator::status_name(status)
}

pub fn is_running(run: &RunRecord) -> bool {
    run.status == RunStatus::Running as i32
}

/// A float for JSON: NaN and infinities (not JSON numbers) become null.
fn f(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

fn fs(xs: &[f64]) -> Value {
    Value::Array(xs.iter().map(|x| f(*x)).collect())
}

pub fn run_json(r: &RunRecord) -> Value {
    json!({
        "run_id": r.run_id,
        "name": r.name,
        "status": status_name(r.status),
        "stop_reason": r.stop_reason,
        "waiting": r.waiting,
        "objective": r.objective,
        "dim": r.dim,
        "population": r.population,
        "generations_done": r.generations_done,
        "evaluations_total": r.evaluations_total,
        "best_fitness": f(r.best_fitness),
        "best_generation": r.best_generation,
        "best_candidate": r.best_candidate,
        "sigma": f(r.sigma),
        "wall_seconds": f(r.wall_seconds),
        "created_unix_ms": r.created_unix_ms,
        "finished_unix_ms": r.finished_unix_ms,
        "spec_toml": r.spec_toml,
    })
}

pub fn generation_json(g: &GenerationRecord) -> Value {
    json!({
        "generation": g.generation,
        "evaluations_total": g.evaluations_total,
        "best_fitness": f(g.best_fitness),
        "mean_fitness": f(g.mean_fitness),
        "generation_best_fitness": f(g.generation_best_fitness),
        "sigma": f(g.sigma_after),
        "sigma_before": f(g.sigma_before),
        "fitness": fs(&g.fitness),
        "wall_seconds": f(g.wall_seconds),
        "generation_seconds": f(g.generation_seconds),
        "started_unix_ms": g.started_unix_ms,
        "finished_unix_ms": g.finished_unix_ms,
        "stage": g.stage,
        "mean_kept_fraction": f(g.mean_kept_fraction),
        "candidate_tasks": g.candidate_tasks.iter().map(|c| json!({
            "kept_fraction": f(c.kept_fraction),
            "tasks": c.tasks.iter().map(task_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "heldout": g.heldout.as_ref().map(|h| json!({
            "fitness": f(h.fitness),
            "kept_fraction": f(h.kept_fraction),
            "tasks": h.tasks.iter().map(task_json).collect::<Vec<_>>(),
        })),
    })
}

fn task_json(t: &namm_proto::TaskScore) -> Value {
    json!({
        "task": t.task,
        "score": f(t.score),
        "reference": f(t.reference),
        "normalised": f(t.normalised),
        "kept_fraction": f(t.kept_fraction),
        "prompts": t.prompts,
    })
}

pub fn generation_header() -> Vec<&'static str> {
    vec![
        "GEN", "EVALS", "BEST", "MEAN", "GEN_BEST", "SIGMA", "WALL_S", "KEPT", "HELDOUT",
    ]
}

pub fn generation_row(g: &GenerationRecord, format: Format) -> Vec<String> {
    let v = if format == Format::Csv { num } else { short };
    vec![
        g.generation.to_string(),
        g.evaluations_total.to_string(),
        v(g.best_fitness),
        v(g.mean_fitness),
        v(g.generation_best_fitness),
        v(g.sigma_after),
        format!("{:.3}", g.wall_seconds),
        if g.candidate_tasks.is_empty() {
            "-".into()
        } else {
            format!("{:.3}", g.mean_kept_fraction)
        },
        g.heldout.as_ref().map_or("-".into(), |h| v(h.fitness)),
    ]
}

pub fn runs_table(runs: &[RunRecord], format: Format) -> Table {
    let v = if format == Format::Csv { num } else { short };
    let mut t = Table::new(vec![
        "RUN",
        "NAME",
        "STATUS",
        "OBJECTIVE",
        "POP",
        "GENS",
        "EVALS",
        "BEST",
        "SIGMA",
        "WALL_S",
        "REASON",
    ]);
    for r in runs {
        t.row(vec![
            r.run_id.to_string(),
            r.name.clone(),
            match r.waiting.as_str() {
                "" => status_name(r.status).to_string(),
                w => format!("{} (waiting: {w})", status_name(r.status)),
            },
            r.objective.clone(),
            r.population.to_string(),
            r.generations_done.to_string(),
            r.evaluations_total.to_string(),
            v(r.best_fitness),
            v(r.sigma),
            format!("{:.1}", r.wall_seconds),
            r.stop_reason.clone(),
        ]);
    }
    t
}

pub fn worker_json(w: &WorkerInfo) -> Value {
    json!({
        "worker_id": w.worker_id,
        "name": w.name,
        "device": w.device,
        "threads": w.threads,
        "slots": w.slots,
        "max_batch": w.max_batch,
        "model_sha256": w.model_sha256,
        "version": w.version,
        "peer": w.peer,
        "alive": w.alive,
        "active_leases": w.active_leases,
        "units_completed": w.units_completed,
        "registered_unix_ms": w.registered_unix_ms,
        "last_seen_unix_ms": w.last_seen_unix_ms,
    })
}

pub fn print_json(v: &Value) {
    outln!(
        "{}",
        serde_json::to_string_pretty(v).expect("JSON values always serialise")
    );
}
