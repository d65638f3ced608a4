//! `history`, `show`, `best`.

use crate::output::{
    generation_header, generation_json, generation_row, num, print_json, short, Format, Table,
};
use crate::source::Source;
use anyhow::Context;
use serde_json::json;

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
        t.row(vec![
            key.candidate.to_string(),
            key.shard.to_string(),
            fitness.map_or_else(|| "-".into(), v),
            scores.join(" "),
            e.worker_name.clone(),
            format!("{:.4}", e.eval_seconds),
        ]);
        candidates.push(json!({
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
                "run {run_id} generation {generation}: {}, {} of {} evaluation(s) in",
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

pub async fn best(source: &mut Source, run_id: u64, format: Format) -> anyhow::Result<()> {
    let run = source.get_run(run_id).await?;
    if run.best_params.is_empty() {
        anyhow::bail!("run {run_id} has no finished generation yet");
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
