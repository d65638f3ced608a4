//! `history`, `show`, `best`.

use crate::output::{
    generation_header, generation_json, generation_row, num, print_json, short, Format, Table,
};
use crate::source::Source;
use anyhow::Context;
use namm::policy::{NammParams, BUDGET_KEY, FEATURES_KEY};
use namm::spec::RunSpec;
use namm::stats::NormStats;
use namm_proto::{GenerationRecord, RunRecord, UnitKind};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

pub async fn history(source: &mut Source, run_id: u64, format: Format) -> anyhow::Result<()> {
    let gens = source.history(run_id).await?;
    match format {
        Format::Json => print_json(&serde_json::Value::Array(
            gens.iter().map(generation_json).collect(),
        )),
        _ => {
            let mut t = Table::new(generation_header());
            for g in &gens {
                t.row(generation_row(g, format));
            }
            out!("{}", t.render(format));
        }
    }
    Ok(())
}

pub async fn show(
    source: &mut Source,
    run_id: u64,
    generation: u32,
    format: Format,
) -> anyhow::Result<()> {
    let resp = source.generation(run_id, generation).await?;
    let g = resp
        .generation
        .context("coordinator answered without a generation")?;
    let v = if format == Format::Csv { num } else { short };
    let mut t = Table::new(vec![
        "CAND", "SHARD", "FITNESS", "SCORES", "WORKER", "EVAL_S",
    ]);
    let mut candidates = Vec::new();
    for e in &resp.evals {
        let key = e.key.unwrap_or_default();
        let fitness = Some(e.fitness);
        let scores: Vec<String> = e.items.iter().map(|i| v(i.score)).collect();
        let cand = match key.kind() {
            UnitKind::Candidate => key.candidate.to_string(),
            UnitKind::Reference => "ref".into(),
            UnitKind::Heldout => "heldout".into(),
        };
        t.row(vec![
            cand,
            key.shard.to_string(),
            fitness.map_or_else(|| "-".into(), v),
            scores.join(" "),
            e.worker_name.clone(),
            format!("{:.4}", e.eval_seconds),
        ]);
        candidates.push(json!({
            "kind": match key.kind() {
                UnitKind::Candidate => "candidate",
                UnitKind::Reference => "reference",
                UnitKind::Heldout => "heldout",
            },
            "candidate": key.candidate,
            "shard": key.shard,
            "fitness": fitness.and_then(serde_json::Number::from_f64),
            "items": e.items.iter().map(|i| json!({
                "item_id": i.item_id,
                "score": serde_json::Number::from_f64(i.score),
                "extra": i.extra,
            })).collect::<Vec<_>>(),
            "worker_id": e.worker_id,
            "worker_name": e.worker_name,
            "eval_seconds": e.eval_seconds,
        }));
    }
    match format {
        Format::Json => {
            let mut obj = generation_json(&g);
            obj["complete"] = json!(g.complete);
            obj["evaluations"] = json!(candidates);
            print_json(&obj);
        }
        Format::Csv => out!("{}", t.render(format)),
        Format::Table => {
            outln!(
                "run {run_id} generation {generation}: {}, {} unit report(s) in ({} candidates)",
                if g.complete { "complete" } else { "in flight" },
                resp.evals.len(),
                if g.complete {
                    g.fitness.len()
                } else {
                    g.population.len()
                },
            );
            if g.complete {
                outln!(
                    "best so far {}  generation best {}  mean {}  sigma {} -> {}",
                    short(g.best_fitness),
                    short(g.generation_best_fitness),
                    short(g.mean_fitness),
                    short(g.sigma_before),
                    short(g.sigma_after)
                );
            }
            out!("{}", t.render(format));
        }
    }
    Ok(())
}

/// Which vector `namm best --export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    /// The CMA-ES mean after the latest generation (what the paper evaluates).
    Mean,
    /// The best candidate seen, on the prompts of its own generation.
    Best,
    /// The mean with the best held-out fitness (the paper's `ckpt.pt`: the best validation
    /// score); needs a run with held-out evaluations.
    Heldout,
}

pub async fn best(
    source: &mut Source,
    run_id: u64,
    export: Option<&Path>,
    which: Which,
    format: Format,
) -> anyhow::Result<()> {
    let run = source.get_run(run_id).await?;
    if run.best_params.is_empty() {
        anyhow::bail!("run {run_id} has no finished generation yet");
    }
    if let Some(path) = export {
        let heldout = match which {
            Which::Heldout => Some(best_heldout(source, &run).await?),
            _ => None,
        };
        let file = export_params(&run, which, heldout.as_ref())?;
        file.save(path)
            .with_context(|| format!("--export {}", path.display()))?;
        outln!(
            "wrote the {} {} of run {run_id} to {} (evaluate it with `namm eval --policy namm:{}`)",
            match which {
                Which::Mean => "mean after generation",
                Which::Best => "best candidate, of generation",
                Which::Heldout => "mean with the best held-out fitness, evaluated at generation",
            },
            exported_generation(&run, which, heldout.as_ref()),
            path.display(),
            path.display()
        );
        return Ok(());
    }
    match format {
        Format::Json => print_json(&json!({
            "run_id": run.run_id,
            "best_fitness": run.best_fitness,
            "generation": run.best_generation,
            "candidate": run.best_candidate,
            "params": run.best_params,
            "mean": run.mean,
            "sigma": run.sigma,
        })),
        Format::Csv => {
            out!("index,best,mean\n");
            for (i, b) in run.best_params.iter().enumerate() {
                let m = run.mean.get(i).map_or(String::new(), |m| num(*m));
                outln!("{i},{},{m}", num(*b));
            }
        }
        Format::Table => {
            outln!(
                "run {run_id}: best fitness {} (generation {}, candidate {}); sigma {}",
                num(run.best_fitness),
                run.best_generation,
                run.best_candidate,
                short(run.sigma)
            );
            let mut t = Table::new(vec!["INDEX", "BEST", "MEAN"]);
            for (i, b) in run.best_params.iter().enumerate() {
                t.row(vec![
                    i.to_string(),
                    num(*b),
                    run.mean.get(i).map_or(String::new(), |m| num(*m)),
                ]);
            }
            out!("{}", t.render(format));
        }
    }
    Ok(())
}

/// The finished generation whose held-out fitness is highest (the earliest of equals).
async fn best_heldout(source: &mut Source, run: &RunRecord) -> anyhow::Result<GenerationRecord> {
    let gens = source.history(run.run_id).await?;
    gens.into_iter()
        .filter(|g| g.heldout.as_ref().is_some_and(|h| h.fitness.is_finite()))
        .fold(None, |best: Option<GenerationRecord>, g| match &best {
            Some(b)
                if b.heldout.as_ref().map(|h| h.fitness)
                    >= g.heldout.as_ref().map(|h| h.fitness) =>
            {
                best
            }
            _ => Some(g),
        })
        .with_context(|| {
            format!(
                "run {} has no held-out evaluation yet (namm.heldout_every); use --which mean",
                run.run_id
            )
        })
}

/// The generation the exported vector belongs to: the last finished one for the mean (its
/// mean after the tell), the best candidate's, or the held-out winner's (its mean_before).
fn exported_generation(run: &RunRecord, which: Which, heldout: Option<&GenerationRecord>) -> u32 {
    match (which, heldout) {
        (Which::Best, _) => run.best_generation,
        (Which::Heldout, Some(g)) => g.generation,
        _ => run.generations_done.saturating_sub(1),
    }
}

/// A NAMM parameter file from a run: θ, the run's frozen statistics and where they came from.
fn export_params(
    run: &RunRecord,
    which: Which,
    heldout: Option<&GenerationRecord>,
) -> anyhow::Result<NammParams> {
    let spec = RunSpec::from_toml(&run.spec_toml)
        .with_context(|| format!("run {}: stored spec", run.run_id))?;
    let namm = spec.namm.as_ref().with_context(|| {
        format!(
            "run {} is a {} run, not a NAMM run: there is no memory policy to export",
            run.run_id, run.objective
        )
    })?;
    let stats = run.frozen_stats.as_ref().with_context(|| {
        format!(
            "run {} has no frozen statistics yet (its reference pass has not finished)",
            run.run_id
        )
    })?;
    let stats = NormStats::new(stats.mean.clone(), stats.var.clone(), stats.count)
        .with_context(|| format!("run {}: stored statistics", run.run_id))?;
    let values = match (which, heldout) {
        (Which::Best, _) => &run.best_params,
        (Which::Heldout, Some(g)) => &g.mean_before,
        _ => &run.mean,
    };
    let generation = exported_generation(run, which, heldout);
    let stage = namm.stage_of(generation);
    let mut metadata = BTreeMap::from([
        ("run_id".to_string(), run.run_id.to_string()),
        ("run_name".to_string(), run.name.clone()),
        (
            "vector".to_string(),
            match which {
                Which::Mean => "mean".to_string(),
                Which::Best => "best".to_string(),
                Which::Heldout => "mean (best held-out)".to_string(),
            },
        ),
        (
            "heldout_fitness".to_string(),
            heldout
                .and_then(|g| g.heldout.as_ref())
                .map_or("-".to_string(), |h| h.fitness.to_string()),
        ),
        ("generation".to_string(), generation.to_string()),
        (
            "generations_done".to_string(),
            run.generations_done.to_string(),
        ),
        ("model".to_string(), namm.model.clone()),
        ("model_sha256".to_string(), namm.model_sha256.clone()),
        ("tasks".to_string(), namm.stage_tasks(stage).join(";")),
        ("best_fitness".to_string(), run.best_fitness.to_string()),
        ("sigma".to_string(), run.sigma.to_string()),
        (
            "fitness".to_string(),
            format!("{:?}", namm.fitness).to_lowercase(),
        ),
    ]);
    // `namm:FILE` applies the budget the NAMM was trained at.
    if let Some(b) = namm.budget() {
        metadata.insert(BUDGET_KEY.to_string(), b.to_string());
    }
    if !namm.features.is_spectral() {
        metadata.insert(FEATURES_KEY.to_string(), namm.features.name().into());
    }
    Ok(NammParams {
        params: values.iter().map(|&v| v as f32).collect(),
        stats,
        metadata,
    })
}
