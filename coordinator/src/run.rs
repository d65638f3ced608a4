//! One run in flight: its CMA-ES, the generation being evaluated, the work units of its
//! current phase and the results so far.
//!
//! A NAMM run's generation may first need a reference phase: the full-cache pass (θ = 0) over
//! the prompt pools of tasks that have no reference scores yet (the run's first generation, and
//! the first generation of a stage that adds tasks). The first such pass also yields the
//! feature-normalisation statistics, merged and frozen into the run record. Then the candidate
//! units (every candidate × every shard of the generation's drawn prompts) and, every
//! `heldout_every` generations, the held-out units of the CMA-ES mean go out.

use crate::cmaes::{Cmaes, CmaesConfig};
use crate::error::CoordError;
use crate::seed::{rng_for, Purpose};
use crate::store::{GenerationCommit, Store};
use crate::strategy;
use namm::policy::{FeatureSet, NammParams};
use namm::spec::{FitnessKind, NammSpec, ObjectiveKind, RunSpec, X0};
use namm::stats::NormStats;
use namm::training::{self, ItemScore, ANSWER_LOGPROB, KEPT_FRACTION};
use namm_proto::{
    objective, BenchmarkObjective, CandidateTasks, EvalRecord, GenerationRecord, HeldOut,
    ItemResult, NammObjective, Objective, RunRecord, RunStatus, TaskScore, UnitKey, UnitKind,
    Vector,
};
use std::collections::HashMap;
use std::time::Instant;

pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The full-cache pass over the pools of tasks without reference scores.
    Reference,
    /// The candidates (and the held-out evaluation of the mean, when due).
    Generation,
}

/// What a unit measures on each of its prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Measure {
    /// Decode an answer and score it with the task metric.
    Decode,
    /// Score the gold answer teacher-forced (likelihood fitness).
    AnswerLikelihood,
}

/// A unit of the current phase and its report, once stored.
struct Planned {
    key: UnitKey,
    items: Vec<String>,
    measure: Measure,
    done: Option<EvalRecord>,
}

pub struct ActiveRun {
    pub record: RunRecord,
    pub spec: RunSpec,
    cfg: CmaesConfig,
    cmaes: Cmaes,
    /// The generation in flight.
    pub gen: GenerationRecord,
    phase: Phase,
    units: Vec<Planned>,
    index: HashMap<UnitKey, usize>,
    /// Candidate shards of the generation (item ids), the same for every candidate.
    shards: Vec<Vec<String>>,
    gen_started: Instant,
    /// `record.wall_seconds` when this coordinator took the run over, and when.
    wall_base: f64,
    lifetime_start: Instant,
}

/// What finishing a phase produced, for the watchers: the finished generation (none when a
/// reference pass ended the run) and the run.
pub struct Told {
    pub finished: Option<GenerationRecord>,
    pub run: RunRecord,
}

impl ActiveRun {
    /// Starts a new run from a validated spec: draws generation 0 and stores everything.
    pub fn create(store: &Store, mut spec: RunSpec) -> Result<ActiveRun, CoordError> {
        let submitted = spec.to_toml();
        let start = warm_start(&mut spec)?;
        let cfg = strategy::config_for(&spec);
        let mut cmaes = Cmaes::new(&cfg).map_err(|e| CoordError::InvalidArgument(e.to_string()))?;
        let gen = draw_generation(&mut cmaes, &spec, 0, 0);
        let record = RunRecord {
            run_id: 0,
            name: spec.name.clone(),
            spec_toml: spec.to_toml(),
            status: RunStatus::Running as i32,
            created_unix_ms: now_unix_ms(),
            best_fitness: f64::NEG_INFINITY,
            mean: cmaes.mean().to_vec(),
            sigma: cmaes.sigma(),
            objective: objective_label(&spec),
            dim: spec.dim() as u32,
            population: cfg.population as u32,
            submitted_spec_toml: if spec.strategy.init_from.is_some() {
                submitted
            } else {
                String::new()
            },
            frozen_stats: start,
            ..Default::default()
        };
        let record = store.create_run(record, gen.clone())?;
        let mut gen = gen;
        gen.run_id = record.run_id;
        Ok(Self::assemble(record, spec, cfg, cmaes, gen))
    }

    /// Takes over an unfinished run from the database: rebuilds the strategy from its latest
    /// state, redraws the generation in flight (which must equal the stored population bit for
    /// bit) and reloads the reports that already arrived.
    pub fn resume(store: &Store, record: RunRecord) -> Result<ActiveRun, CoordError> {
        let id = record.run_id;
        let corrupt = |what: String| CoordError::Internal(format!("run {id}: {what}"));
        let spec = RunSpec::from_toml(&record.spec_toml)
            .map_err(|e| corrupt(format!("stored spec: {e}")))?;
        let cfg = strategy::config_for(&spec);
        let mut cmaes = match store.get_state(id, record.generations_done)? {
            Some(state) => Cmaes::from_state(&cfg, strategy::from_proto(state))
                .map_err(|e| corrupt(format!("stored strategy state: {e}")))?,
            None if record.generations_done == 0 => Cmaes::new(&cfg)
                .map_err(|e| corrupt(format!("strategy of the stored spec: {e}")))?,
            None => {
                return Err(corrupt(format!(
                    "no strategy state stored after generation {}",
                    record.generations_done
                )))
            }
        };
        let g = u32::try_from(cmaes.generation())
            .map_err(|_| corrupt(format!("generation {} out of range", cmaes.generation())))?;
        if g != record.generations_done {
            return Err(corrupt(format!(
                "strategy state is at generation {g} but the run record has {} generations done",
                record.generations_done
            )));
        }
        let stored = store
            .get_generation(id, g)?
            .ok_or_else(|| corrupt(format!("generation {g} in flight has no stored record")))?;
        let mut gen = draw_generation(&mut cmaes, &spec, id, g);
        gen.started_unix_ms = stored.started_unix_ms;
        if gen.population != stored.population {
            return Err(corrupt(format!(
                "redrawn population of generation {g} differs from the stored one: the strategy \
                 or its seeding changed since the run started, so it cannot be resumed exactly"
            )));
        }
        let mut run = Self::assemble(record, spec, cfg, cmaes, gen);
        for eval in store.evals(id, g)? {
            run.record_result(eval);
        }
        Ok(run)
    }

    fn assemble(
        record: RunRecord,
        spec: RunSpec,
        cfg: CmaesConfig,
        cmaes: Cmaes,
        gen: GenerationRecord,
    ) -> ActiveRun {
        let mut run = ActiveRun {
            wall_base: record.wall_seconds,
            record,
            spec,
            cfg,
            cmaes,
            gen,
            phase: Phase::Generation,
            units: Vec::new(),
            index: HashMap::new(),
            shards: Vec::new(),
            gen_started: Instant::now(),
            lifetime_start: Instant::now(),
        };
        run.plan();
        run
    }

    fn namm(&self) -> Option<&NammSpec> {
        self.spec.namm.as_ref()
    }

    /// Lays out the units of the generation in flight: the reference pass if its stage's
    /// tasks lack reference scores, its candidates (and held-out units) otherwise.
    fn plan(&mut self) {
        let (run_id, g) = (self.id(), self.generation());
        let key = |kind: UnitKind, candidate: u32, shard: u32| UnitKey {
            run_id,
            generation: g,
            candidate,
            shard,
            kind: kind as i32,
        };
        let mut units = Vec::new();
        self.shards.clear();
        match self.spec.namm.clone() {
            None => {
                self.phase = Phase::Generation;
                let item = self.spec.objective.kind.to_string();
                for c in 0..self.population_size() {
                    units.push((
                        key(UnitKind::Candidate, c, 0),
                        vec![item.clone()],
                        Measure::Decode,
                    ));
                }
            }
            Some(namm) => {
                let stage = namm.stage_of(g);
                let tasks = namm.stage_tasks(stage).to_vec();
                self.gen.stage = stage;
                let pool = training::pool_indices(&namm);
                let unreferenced: Vec<String> = tasks
                    .iter()
                    .filter(|t| {
                        pool.iter().any(|&i| {
                            !self
                                .record
                                .reference_scores
                                .contains_key(&training::item_id(t, i))
                        })
                    })
                    .cloned()
                    .collect();
                if !unreferenced.is_empty() {
                    self.phase = Phase::Reference;
                    for (s, (items, measure)) in reference_shards(&namm, &unreferenced)
                        .into_iter()
                        .enumerate()
                    {
                        units.push((key(UnitKind::Reference, 0, s as u32), items, measure));
                    }
                } else {
                    self.phase = Phase::Generation;
                    let mut rng = rng_for(self.spec.seed, u64::from(g), Purpose::Prompts);
                    let drawn = training::draw_prompts(&namm, &tasks, &mut rng);
                    self.shards = training::shards(&tasks, &drawn, namm.shard_size);
                    let measure = if namm.fitness.uses_likelihood() {
                        Measure::AnswerLikelihood
                    } else {
                        Measure::Decode
                    };
                    for c in 0..self.population_size() {
                        for (s, items) in self.shards.iter().enumerate() {
                            units.push((
                                key(UnitKind::Candidate, c, s as u32),
                                items.clone(),
                                measure,
                            ));
                        }
                    }
                    if heldout_due(&namm, g) {
                        let heldout = vec![training::heldout_indices(&namm); tasks.len()];
                        for (s, items) in training::shards(&tasks, &heldout, namm.shard_size)
                            .into_iter()
                            .enumerate()
                        {
                            units.push((
                                key(UnitKind::Heldout, 0, s as u32),
                                items,
                                Measure::Decode,
                            ));
                        }
                    }
                }
            }
        }
        self.index = units
            .iter()
            .enumerate()
            .map(|(i, (k, _, _))| (*k, i))
            .collect();
        self.units = units
            .into_iter()
            .map(|(key, items, measure)| Planned {
                key,
                items,
                measure,
                done: None,
            })
            .collect();
    }

    pub fn id(&self) -> u64 {
        self.record.run_id
    }

    pub fn generation(&self) -> u32 {
        self.gen.generation
    }

    pub fn population_size(&self) -> u32 {
        self.cfg.population as u32
    }

    /// Where the current phase stands: its name, and units done of all it has.
    pub fn progress(&self) -> (String, usize, usize) {
        let label = match self.phase {
            Phase::Reference => "reference pass".to_string(),
            Phase::Generation => format!("generation {}", self.gen.generation),
        };
        let done = self.units.iter().filter(|u| u.done.is_some()).count();
        (label, done, self.units.len())
    }

    /// Whether the current phase is the reference pass.
    pub fn in_reference_pass(&self) -> bool {
        self.phase == Phase::Reference
    }

    fn unit(&self, key: &UnitKey) -> Option<&Planned> {
        self.index.get(key).map(|&i| &self.units[i])
    }

    /// Whether `key` names a unit of the current phase.
    pub fn knows(&self, key: &UnitKey) -> bool {
        self.index.contains_key(key)
    }

    /// Units of the current phase that have no result yet.
    pub fn missing_units(&self) -> Vec<UnitKey> {
        self.units
            .iter()
            .filter(|u| u.done.is_none())
            .map(|u| u.key)
            .collect()
    }

    pub fn has_result(&self, key: &UnitKey) -> bool {
        self.unit(key).is_some_and(|u| u.done.is_some())
    }

    /// The items a unit's report must carry, in order.
    pub fn item_ids(&self, key: &UnitKey) -> Vec<String> {
        self.unit(key).map(|u| u.items.clone()).unwrap_or_default()
    }

    /// The model a worker needs for this run's units (none for benchmarks).
    pub fn model_sha256(&self) -> Option<&str> {
        self.namm().map(|n| n.model_sha256.as_str())
    }

    pub fn objective(&self, key: &UnitKey) -> Objective {
        let kind = match self.namm() {
            None => objective::Kind::Benchmark(BenchmarkObjective {
                kind: self.spec.objective.kind.to_string(),
                dim: self.spec.dim() as u32,
            }),
            Some(namm) => {
                let measure = self.unit(key).map_or(Measure::Decode, |u| u.measure);
                // The first reference pass runs without statistics: it produces them.
                let accumulate_stats =
                    key.kind() == UnitKind::Reference && self.record.frozen_stats.is_none();
                objective::Kind::Namm(NammObjective {
                    model_sha256: namm.model_sha256.clone(),
                    task_seed: namm.task_seed,
                    norm_stats: self.record.frozen_stats.clone(),
                    accumulate_stats,
                    budget: namm.budget().map(|b| b.to_string()).unwrap_or_default(),
                    features: match namm.features {
                        FeatureSet::Spectral => String::new(),
                        other => other.name().into(),
                    },
                    decode: measure == Measure::Decode,
                    answer_likelihood: measure == Measure::AnswerLikelihood,
                })
            }
        };
        Objective { kind: Some(kind) }
    }

    pub fn params(&self, key: &UnitKey) -> Vec<f64> {
        match key.kind() {
            UnitKind::Candidate => self
                .gen
                .population
                .get(key.candidate as usize)
                .map(|v| v.values.clone())
                .unwrap_or_default(),
            UnitKind::Reference => vec![0.0; self.spec.dim()],
            UnitKind::Heldout => self.gen.mean_before.clone(),
        }
    }

    /// Checks a report against the unit it claims to answer.
    pub fn validate_items(&self, key: &UnitKey, items: &[ItemResult]) -> Result<(), CoordError> {
        let expected = self.item_ids(key);
        if items.len() != expected.len() {
            return Err(CoordError::InvalidArgument(format!(
                "items has {} entries but unit {} expects {} (item ids {:?})",
                items.len(),
                unit_id(key),
                expected.len(),
                expected
            )));
        }
        for (i, (item, want)) in items.iter().zip(&expected).enumerate() {
            if &item.item_id != want {
                return Err(CoordError::InvalidArgument(format!(
                    "items[{i}].item_id = {:?} but unit {} expects {want:?}",
                    item.item_id,
                    unit_id(key)
                )));
            }
        }
        Ok(())
    }

    /// Records a stored report. Returns true when the current phase is now complete.
    pub fn record_result(&mut self, eval: EvalRecord) -> bool {
        let key = eval.key.unwrap_or_default();
        if let Some(&i) = self.index.get(&key) {
            self.units[i].done = Some(eval);
        }
        self.is_complete()
    }

    pub fn is_complete(&self) -> bool {
        self.units.iter().all(|u| u.done.is_some())
    }

    /// Moves on once the current phase is complete: a finished reference pass freezes its
    /// results into the run and plans the candidates; a finished generation is told to the
    /// strategy. Returns what watchers should see (None while nothing finished).
    pub fn advance(&mut self, store: &Store) -> Result<Option<Told>, CoordError> {
        if !self.is_complete() {
            return Ok(None);
        }
        match self.phase {
            Phase::Reference => self.finish_reference(store),
            Phase::Generation => self.finish_generation(store).map(Some),
        }
    }

    /// Stores the reference scores (and, the first time, the merged statistics) and plans the
    /// generation's candidates. A reference pass that failed ends the run: no fitness can be
    /// normalised without it.
    fn finish_reference(&mut self, store: &Store) -> Result<Option<Told>, CoordError> {
        let mut scores = Vec::new();
        let mut logprobs = Vec::new();
        let mut merged: Option<NormStats> = None;
        let mut failure = None;
        for u in &self.units {
            let eval = u.done.as_ref().expect("phase complete");
            for item in &eval.items {
                let logprob = item.extra.get(ANSWER_LOGPROB).copied();
                let measured = match u.measure {
                    Measure::Decode => item.score.is_finite(),
                    Measure::AnswerLikelihood => logprob.is_some_and(f64::is_finite),
                };
                if measured {
                    scores.push((item.item_id.clone(), item.score));
                    if let Some(l) = logprob.filter(|_| u.measure == Measure::AnswerLikelihood) {
                        logprobs.push((item.item_id.clone(), l));
                    }
                } else if failure.is_none() {
                    failure = Some(format!(
                        "the full-cache reference pass failed on prompt {:?} (worker {}); see \
                         that worker's log",
                        item.item_id, eval.worker_name
                    ));
                }
            }
            if self.record.frozen_stats.is_none() && failure.is_none() {
                let stats = eval
                    .norm_stats
                    .as_ref()
                    .ok_or_else(|| {
                        format!("reference unit {} reported no statistics", unit_id(&u.key))
                    })
                    .and_then(|s| {
                        NormStats::new(s.mean.clone(), s.var.clone(), s.count).map_err(|e| {
                            format!(
                                "reference unit {} reported bad statistics: {e}",
                                unit_id(&u.key)
                            )
                        })
                    })
                    .and_then(|s| match &merged {
                        None => Ok(s),
                        Some(m) => m.merge(&s).map_err(|e| e.to_string()),
                    });
                match stats {
                    Ok(s) => merged = Some(s),
                    Err(e) => failure = Some(e),
                }
            }
        }
        if let Some(reason) = failure {
            self.record.status = RunStatus::Failed as i32;
            self.record.stop_reason = reason;
            self.record.finished_unix_ms = now_unix_ms();
            store.put_run(&self.record)?;
            return Ok(Some(Told {
                finished: None,
                run: self.record.clone(),
            }));
        }
        self.record.reference_scores.extend(scores);
        self.record.reference_logprobs.extend(logprobs);
        if let Some(m) = merged {
            self.record.frozen_stats = Some(namm_proto::NormStats {
                mean: m.mean,
                var: m.var,
                count: m.count,
            });
        }
        store.put_run(&self.record)?;
        tracing::info!(
            run = self.id(),
            generation = self.generation(),
            prompts = self.record.reference_scores.len(),
            "reference pass complete; statistics frozen"
        );
        self.plan();
        Ok(None)
    }

    fn done_items(&self, kind: UnitKind, candidate: u32) -> Vec<ItemScore<'_>> {
        self.units
            .iter()
            .filter(|u| u.key.kind() == kind && u.key.candidate == candidate)
            .filter_map(|u| u.done.as_ref())
            .flat_map(|e| &e.items)
            .map(|i| ItemScore {
                item_id: &i.item_id,
                score: i.score,
                logprob: i.extra.get(ANSWER_LOGPROB).copied().unwrap_or(f64::NAN),
                kept_fraction: i.extra.get(KEPT_FRACTION).copied().unwrap_or(f64::NAN),
            })
            .collect()
    }

    /// Fitness of each candidate. Benchmarks: the mean of its shards' reported fitness. NAMM:
    /// the mean over tasks of its score over the full cache's (`namm::training::fitness`).
    /// NaN or infinite values pass through; the strategy ranks them last.
    fn score_candidates(&self) -> (Vec<f64>, Vec<CandidateTasks>) {
        let population = self.population_size();
        let Some(namm) = self.namm() else {
            let fitness = (0..population)
                .map(|c| {
                    let shards: Vec<f64> = self
                        .units
                        .iter()
                        .filter(|u| u.key.candidate == c)
                        .map(|u| u.done.as_ref().map_or(f64::NAN, |e| e.fitness))
                        .collect();
                    shards.iter().sum::<f64>() / shards.len().max(1) as f64
                })
                .collect();
            return (fitness, Vec::new());
        };
        let tasks = namm.stage_tasks(self.gen.stage);
        (0..population)
            .map(|c| {
                let items = self.done_items(UnitKind::Candidate, c);
                let f = training::fitness(namm.fitness, tasks, &items, |id| self.reference(id));
                (
                    f.fitness,
                    CandidateTasks {
                        kept_fraction: f.kept_fraction,
                        tasks: f.tasks.iter().map(task_score).collect(),
                    },
                )
            })
            .unzip()
    }

    /// The full cache's result on a pool prompt (its log-likelihood NaN where not measured).
    fn reference(&self, id: &str) -> Option<training::Reference> {
        let score = *self.record.reference_scores.get(id)?;
        let logprob = self
            .record
            .reference_logprobs
            .get(id)
            .copied()
            .unwrap_or(f64::NAN);
        Some(training::Reference { score, logprob })
    }

    fn heldout(&self) -> Option<HeldOut> {
        let namm = self.namm()?;
        let items = self.done_items(UnitKind::Heldout, 0);
        if items.is_empty() {
            return None;
        }
        // The held-out mean always decodes: it is scored by what users care about.
        let tasks = namm.stage_tasks(self.gen.stage);
        let f = training::fitness(FitnessKind::Metric, tasks, &items, |id| self.reference(id));
        Some(HeldOut {
            tasks: f.tasks.iter().map(task_score).collect(),
            fitness: f.fitness,
            kept_fraction: f.kept_fraction,
        })
    }

    /// Tells the strategy the generation's fitness, decides whether the run goes on, draws the
    /// next generation if so, and stores all of it atomically.
    fn finish_generation(&mut self, store: &Store) -> Result<Told, CoordError> {
        let (fitness, candidate_tasks) = self.score_candidates();
        let g = self.generation();
        let tell = self.cmaes.tell(&fitness);
        let mut finished = self.gen.clone();
        finished.population.clear();
        finished.complete = true;
        finished.fitness = fitness.clone();
        finished.shards = self.shards.len().max(1) as u32;
        finished.heldout = self.heldout();
        let kept: Vec<f64> = candidate_tasks
            .iter()
            .map(|c| c.kept_fraction)
            .filter(|k| k.is_finite())
            .collect();
        finished.mean_kept_fraction = kept.iter().sum::<f64>() / kept.len().max(1) as f64;
        finished.candidate_tasks = candidate_tasks;
        let finite: Vec<f64> = fitness.iter().copied().filter(|f| f.is_finite()).collect();
        finished.mean_fitness = if finite.is_empty() {
            f64::NAN
        } else {
            finite.iter().sum::<f64>() / finite.len() as f64
        };
        finished.generation_best_fitness = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if let Some((c, &f)) = fitness
            .iter()
            .enumerate()
            .filter(|(_, f)| f.is_finite())
            .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
        {
            if f > self.record.best_fitness {
                self.record.best_fitness = f;
                self.record.best_params = self.gen.population[c].values.clone();
                self.record.best_generation = g;
                self.record.best_candidate = c as u32;
            }
        }
        finished.best_fitness = self.record.best_fitness;
        finished.sigma_after = self.cmaes.sigma();
        self.record.evaluations_total += u64::from(self.population_size());
        finished.evaluations_total = self.record.evaluations_total;
        finished.generation_seconds = self.gen_started.elapsed().as_secs_f64();
        self.record.wall_seconds = self.wall_base + self.lifetime_start.elapsed().as_secs_f64();
        finished.wall_seconds = self.record.wall_seconds;
        finished.finished_unix_ms = now_unix_ms();
        self.record.generations_done = g + 1;
        self.record.mean = self.cmaes.mean().to_vec();
        self.record.sigma = self.cmaes.sigma();

        // The state is taken before the next ask: that is what a restart rebuilds from.
        let state = strategy::to_proto(self.cmaes.state());
        let stop = match tell {
            Err(e) => Some((
                RunStatus::Failed,
                format!("strategy failed at generation {g}: {e}"),
            )),
            Ok(()) if self.record.best_fitness >= self.spec.stop.target_fitness => Some((
                RunStatus::Finished,
                format!(
                    "target_fitness {:?} reached at generation {g}",
                    self.spec.stop.target_fitness
                ),
            )),
            Ok(()) if g + 1 >= self.spec.stop.max_generations => Some((
                RunStatus::Finished,
                format!("max_generations {} reached", self.spec.stop.max_generations),
            )),
            Ok(()) => None,
        };
        let next = match &stop {
            Some((status, reason)) => {
                self.record.status = *status as i32;
                self.record.stop_reason = reason.clone();
                self.record.finished_unix_ms = now_unix_ms();
                None
            }
            None => {
                let id = self.id();
                Some(draw_generation(&mut self.cmaes, &self.spec, id, g + 1))
            }
        };
        store.commit_generation(GenerationCommit {
            run: &self.record,
            finished: &finished,
            state: &state,
            next: next.as_ref(),
        })?;
        if let Some(next) = next {
            self.gen = next;
            self.gen_started = Instant::now();
            self.plan();
        }
        Ok(Told {
            finished: Some(finished),
            run: self.record.clone(),
        })
    }

    pub fn is_running(&self) -> bool {
        self.record.status == RunStatus::Running as i32
    }
}

/// The reference pass over the pools of `tasks`. With the metric fitness every prompt is
/// decoded; with the likelihood fitness the training pool scores the gold answer (what
/// candidates are compared with) and only the held-out prompts decode (what the held-out
/// mean is compared with).
fn reference_shards(namm: &NammSpec, tasks: &[String]) -> Vec<(Vec<String>, Measure)> {
    let shards = |indices: Vec<u64>, measure| {
        let lists = vec![indices; tasks.len()];
        training::shards(tasks, &lists, namm.shard_size)
            .into_iter()
            .map(move |s| (s, measure))
            .collect::<Vec<_>>()
    };
    if namm.fitness.uses_likelihood() {
        let pool = (0..namm.pool_size as u64).collect();
        let mut all = shards(pool, Measure::AnswerLikelihood);
        all.extend(shards(training::heldout_indices(namm), Measure::Decode));
        all
    } else {
        shards(training::pool_indices(namm), Measure::Decode)
    }
}

/// Resolves `strategy.init_from`: the file's parameters become `x0` (written into the spec,
/// which is stored, so the run never reads the file again) and its frozen statistics, if it
/// has any, the run's. Returns those statistics.
fn warm_start(spec: &mut RunSpec) -> Result<Option<namm_proto::NormStats>, CoordError> {
    let Some(path) = spec.strategy.init_from.clone() else {
        return Ok(None);
    };
    let bad = |reason: String| {
        CoordError::InvalidArgument(format!(
            "run spec field `strategy.init_from` = {path:?}: {reason}"
        ))
    };
    if spec.namm.is_none() {
        return Err(bad("only a NAMM run starts from an exported NAMM".into()));
    }
    if spec.strategy.x0 != X0::Scalar(0.0) {
        return Err(bad("give either init_from or x0, not both".into()));
    }
    let file = NammParams::load(&locate(&path)).map_err(|e| bad(e.to_string()))?;
    let features = file.feature_set().map_err(bad)?;
    let wanted = spec
        .namm
        .as_ref()
        .map_or(FeatureSet::Spectral, |n| n.features);
    if features != wanted {
        return Err(bad(format!(
            "the file's NAMM reads the {} features, the run's `namm.features` is {}",
            features.name(),
            wanted.name()
        )));
    }
    if file.params.len() != spec.dim() {
        return Err(bad(format!(
            "the file has {} parameters, the run {}",
            file.params.len(),
            spec.dim()
        )));
    }
    spec.strategy.x0 = X0::Vector(file.params.iter().map(|&v| f64::from(v)).collect());
    Ok((file.stats.count > 0.0).then(|| namm_proto::NormStats {
        mean: file.stats.mean.clone(),
        var: file.stats.var.clone(),
        count: file.stats.count,
    }))
}

/// A relative `init_from` path names a file under the working directory or, failing that,
/// under the repository (so the default recipe's start file is found from anywhere).
fn locate(path: &str) -> std::path::PathBuf {
    let given = std::path::Path::new(path);
    let in_repo = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join(path);
    if given.is_relative() && !given.exists() && in_repo.is_file() {
        in_repo
    } else {
        given.to_path_buf()
    }
}

fn heldout_due(namm: &NammSpec, g: u32) -> bool {
    namm.heldout_every > 0 && g > 0 && g.is_multiple_of(namm.heldout_every)
}

fn task_score(t: &training::TaskResult) -> TaskScore {
    TaskScore {
        task: t.task.clone(),
        score: t.score,
        reference: t.reference,
        normalised: t.normalised,
        kept_fraction: t.kept_fraction,
        prompts: t.prompts as u32,
    }
}

/// "sphere-10", or "namm:<model>" for NAMM runs.
fn objective_label(spec: &RunSpec) -> String {
    match (spec.objective.kind, &spec.namm) {
        (ObjectiveKind::Namm, Some(n)) => format!("namm:{}", n.model),
        (kind, _) => format!("{kind}-{}", spec.dim()),
    }
}

/// Asks the strategy for generation `g` with the RNG derived for it.
fn draw_generation(cmaes: &mut Cmaes, spec: &RunSpec, run_id: u64, g: u32) -> GenerationRecord {
    let sigma_before = cmaes.sigma();
    let mean_before = cmaes.mean().to_vec();
    let mut rng = rng_for(spec.seed, u64::from(g), Purpose::Ask);
    let population = cmaes
        .ask(&mut rng)
        .into_iter()
        .map(|values| Vector { values })
        .collect();
    GenerationRecord {
        run_id,
        generation: g,
        population,
        sigma_before,
        mean_before,
        started_unix_ms: now_unix_ms(),
        ..Default::default()
    }
}

/// "r<run>-g<gen>-c<cand>-s<shard>" for candidates; "r<run>-g<gen>-ref-s<shard>" and
/// "r<run>-g<gen>-heldout-s<shard>" for the other kinds.
pub fn unit_id(key: &UnitKey) -> String {
    match key.kind() {
        UnitKind::Candidate => format!(
            "r{}-g{}-c{}-s{}",
            key.run_id, key.generation, key.candidate, key.shard
        ),
        UnitKind::Reference => format!("r{}-g{}-ref-s{}", key.run_id, key.generation, key.shard),
        UnitKind::Heldout => {
            format!("r{}-g{}-heldout-s{}", key.run_id, key.generation, key.shard)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RunSpec {
        RunSpec::from_toml("seed = 5\n[objective]\nkind = \"sphere\"\ndim = 4\n").unwrap()
    }

    fn benchmark(run: &ActiveRun) -> namm::objective::Benchmark {
        match run.spec.objective.kind {
            ObjectiveKind::Benchmark(b) => b,
            ObjectiveKind::Namm => panic!("a benchmark run"),
        }
    }

    /// Answers every missing unit of the generation in flight with the benchmark's fitness.
    fn evaluate_generation(run: &mut ActiveRun, store: &Store) -> Option<Told> {
        for key in run.missing_units() {
            let score = benchmark(run).fitness(&run.params(&key));
            let eval = EvalRecord {
                key: Some(key),
                items: vec![ItemResult {
                    item_id: run.item_ids(&key)[0].clone(),
                    score,
                    extra: Default::default(),
                }],
                fitness: score,
                ..Default::default()
            };
            store.put_eval(&eval).unwrap();
            if run.record_result(eval) {
                return run.advance(store).unwrap();
            }
        }
        None
    }

    #[test]
    fn resume_redraws_the_same_generation_and_keeps_its_reports() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut run = ActiveRun::create(&store, spec()).unwrap();
        for _ in 0..3 {
            evaluate_generation(&mut run, &store).unwrap();
        }
        // Half of generation 3 arrives, then the coordinator "dies".
        let half: Vec<UnitKey> = run.missing_units().into_iter().take(3).collect();
        for key in &half {
            let eval = EvalRecord {
                key: Some(*key),
                items: vec![ItemResult {
                    item_id: "sphere".into(),
                    score: -1.0,
                    extra: Default::default(),
                }],
                fitness: -1.0,
                ..Default::default()
            };
            store.put_eval(&eval).unwrap();
            run.record_result(eval);
        }
        let record = store.get_run(run.id()).unwrap().unwrap();
        let resumed = ActiveRun::resume(&store, record).unwrap();
        assert_eq!(resumed.generation(), 3);
        assert_eq!(resumed.gen.population, run.gen.population);
        assert_eq!(resumed.missing_units(), run.missing_units());
        assert_eq!(
            resumed.missing_units().len(),
            run.population_size() as usize - 3
        );
    }

    #[test]
    fn resume_refuses_a_population_it_cannot_redraw() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut run = ActiveRun::create(&store, spec()).unwrap();
        evaluate_generation(&mut run, &store).unwrap();
        let mut record = store.get_run(run.id()).unwrap().unwrap();
        let mut gen = store.get_generation(run.id(), 1).unwrap().unwrap();
        gen.population[0].values[0] += 1e-12;
        let state = store.get_state(run.id(), 1).unwrap().unwrap();
        store
            .commit_generation(GenerationCommit {
                run: &record,
                finished: &store.get_generation(run.id(), 0).unwrap().unwrap(),
                state: &state,
                next: Some(&gen),
            })
            .unwrap();
        record = store.get_run(run.id()).unwrap().unwrap();
        let err = ActiveRun::resume(&store, record)
            .err()
            .expect("resume must fail");
        let msg = err.to_string();
        assert!(
            msg.contains("generation 1") && msg.contains("differs"),
            "{msg}"
        );
    }

    #[test]
    fn a_run_stops_at_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let spec = RunSpec::from_toml(
            "[objective]\nkind = \"sphere\"\ndim = 2\n[stop]\ntarget_fitness = -1e-3\n",
        )
        .unwrap();
        let mut run = ActiveRun::create(&store, spec).unwrap();
        let mut last = None;
        while run.is_running() {
            last = evaluate_generation(&mut run, &store);
        }
        let told = last.unwrap();
        assert_eq!(told.run.status, RunStatus::Finished as i32);
        assert!(told.run.best_fitness >= -1e-3);
        assert!(told.run.stop_reason.contains("target_fitness"));
        let history = store.generations(run.id()).unwrap();
        assert_eq!(history.len() as u32, told.run.generations_done);
        assert!(history
            .iter()
            .all(|g| g.complete && g.population.is_empty()));
    }

    const NAMM_SPEC: &str = r#"
seed = 3
[strategy]
population = 4
[stop]
max_generations = 3
target_fitness = inf
[namm]
tasks = ["passkey:len=600"]
pool_size = 4
heldout_size = 2
prompts_per_task = 2
shard_size = 1
heldout_every = 2
[[namm.stages]]
from_generation = 2
tasks = ["passkey:len=600", "niah-multikey:len=600"]
"#;

    /// The full cache answers the odd prompts; candidate 0 answers every prompt, the others
    /// none. Reference shard s reports statistics with mean s and count 10.
    fn namm_eval(run: &ActiveRun, key: UnitKey) -> EvalRecord {
        let items: Vec<ItemResult> = run
            .item_ids(&key)
            .into_iter()
            .map(|id| {
                let (_, index) = training::parse_item_id(&id).unwrap();
                let score = match key.kind() {
                    UnitKind::Reference => (index % 2) as f64,
                    _ if key.candidate == 0 => 1.0,
                    _ => 0.0,
                };
                ItemResult {
                    item_id: id,
                    score,
                    extra: [(KEPT_FRACTION.to_string(), 0.5)].into(),
                }
            })
            .collect();
        let norm_stats = (key.kind() == UnitKind::Reference).then(|| namm_proto::NormStats {
            mean: vec![f64::from(key.shard); 17],
            var: vec![1.0; 17],
            count: 10.0,
        });
        EvalRecord {
            key: Some(key),
            items,
            norm_stats,
            ..Default::default()
        }
    }

    /// Answers the units of the current phase (not those a finished reference pass plans).
    fn answer_all(run: &mut ActiveRun, store: &Store) -> Option<Told> {
        let mut told = None;
        for key in run.missing_units() {
            let eval = namm_eval(run, key);
            store.put_eval(&eval).unwrap();
            if run.record_result(eval) {
                told = run.advance(store).unwrap();
            }
        }
        told
    }

    /// A likelihood-fitness run under a budget, warm-started from an exported NAMM. The full
    /// cache's gold-answer log-likelihood is −1 per token everywhere; candidate 0 gets −0.5,
    /// the others −2. Decoding units score 1 on even prompts.
    #[test]
    fn a_likelihood_run_under_a_budget_starts_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let file = dir.path().join("start.safetensors");
        let stats = NormStats::new(vec![0.5; 17], vec![2.0; 17], 99.0).unwrap();
        let params: Vec<f32> = (0..4172).map(|i| (i % 7) as f32 * 0.01).collect();
        NammParams {
            params: params.clone(),
            stats: stats.clone(),
            metadata: Default::default(),
        }
        .save(&file)
        .unwrap();
        let text = format!(
            "[strategy]\npopulation = 3\ninit_from = {:?}\n[stop]\nmax_generations = 2\n\
             target_fitness = inf\n[namm]\ntasks = [\"passkey:len=600\"]\npool_size = 4\n\
             heldout_size = 2\nprompts_per_task = 2\nshard_size = 2\nheldout_every = 1\n\
             budget = 0.25\nfitness = \"likelihood\"\n",
            file.display().to_string()
        );
        let spec = RunSpec::from_toml(&text).unwrap();
        let mut run = ActiveRun::create(&store, spec.clone()).unwrap();
        let x0: Vec<f64> = params.iter().map(|&v| f64::from(v)).collect();
        assert_eq!(run.gen.mean_before, x0);
        assert_eq!(run.record.submitted_spec_toml, spec.to_toml());
        assert!(run.record.spec_toml.contains("x0 = ["));
        assert_eq!(run.record.frozen_stats.as_ref().unwrap().count, 99.0);

        let fake = |run: &ActiveRun, key: UnitKey| {
            let Some(objective::Kind::Namm(obj)) = run.objective(&key).kind else {
                panic!("a NAMM objective");
            };
            assert!(!obj.accumulate_stats, "the file's statistics are frozen");
            assert_eq!(obj.budget, "0.25");
            let items = run
                .item_ids(&key)
                .into_iter()
                .map(|id| {
                    let (_, index) = training::parse_item_id(&id).unwrap();
                    let logprob = match key.kind() {
                        UnitKind::Reference => -1.0,
                        _ if key.candidate == 0 => -0.5,
                        _ => -2.0,
                    };
                    let (score, extra) = if obj.answer_likelihood {
                        (
                            f64::exp(logprob),
                            [(ANSWER_LOGPROB.to_string(), logprob)].into(),
                        )
                    } else {
                        ((1 - index % 2) as f64, Default::default())
                    };
                    let mut extra: HashMap<String, f64> = extra;
                    extra.insert(KEPT_FRACTION.to_string(), 0.25);
                    ItemResult {
                        item_id: id,
                        score,
                        extra,
                    }
                })
                .collect();
            EvalRecord {
                key: Some(key),
                items,
                ..Default::default()
            }
        };
        let answer = |run: &mut ActiveRun| {
            let mut told = None;
            for key in run.missing_units() {
                let eval = fake(run, key);
                store.put_eval(&eval).unwrap();
                if run.record_result(eval) {
                    told = run.advance(&store).unwrap();
                }
            }
            told
        };
        // The reference pass: the training pool scores the gold answer, the held-out decodes.
        assert!(run.in_reference_pass());
        for key in run.missing_units() {
            let Some(objective::Kind::Namm(obj)) = run.objective(&key).kind else {
                panic!("a NAMM objective");
            };
            let heldout = run
                .item_ids(&key)
                .iter()
                .all(|id| training::parse_item_id(id).unwrap().1 >= 4);
            assert_eq!(
                (obj.decode, obj.answer_likelihood),
                (heldout, !heldout),
                "{key:?}"
            );
        }
        assert!(answer(&mut run).is_none());
        assert_eq!(run.record.reference_logprobs.len(), 4);
        assert_eq!(run.record.reference_scores.len(), 6);

        let g0 = answer(&mut run).unwrap().finished.unwrap();
        assert!(
            (g0.fitness[0] - 0.5f64.exp()).abs() < 1e-12,
            "{:?}",
            g0.fitness
        );
        assert!((g0.fitness[1] - (-1.0f64).exp()).abs() < 1e-12);
        assert!(g0.heldout.is_none());
        // A restart rebuilds the run from the stored spec, without the file.
        std::fs::remove_file(&file).unwrap();
        let record = store.get_run(run.id()).unwrap().unwrap();
        let mut resumed = ActiveRun::resume(&store, record).unwrap();
        assert_eq!(resumed.generation(), 1);
        // The held-out mean decodes and is scored by the metric: 1 of 2 prompts answered,
        // like the full cache.
        let g1 = answer(&mut resumed).unwrap().finished.unwrap();
        assert_eq!(g1.heldout.unwrap().fitness, 1.0);
    }

    #[test]
    fn init_from_refuses_bad_files_and_a_second_x0() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let missing = dir.path().join("absent.safetensors");
        let spec = |extra: &str| {
            RunSpec::from_toml(&format!(
                "[strategy]\ninit_from = {:?}\n{extra}",
                missing.display().to_string()
            ))
            .unwrap()
        };
        let err = ActiveRun::create(&store, spec(""))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("strategy.init_from") && err.contains("absent"),
            "{err}"
        );
        let err = ActiveRun::create(&store, spec("x0 = 0.5"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not both"), "{err}");
    }

    /// The window start file makes a `features = "window"` run whose every unit (the
    /// statistics pass included) names the feature set; a spectral run refuses the file.
    #[test]
    fn a_window_run_names_its_features_and_refuses_a_mismatched_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let start = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../assets/namm-window-start.safetensors"
        );
        let spec = |features: &str| {
            RunSpec::from_toml(&format!(
                "[strategy]\npopulation = 4\ninit_from = {start:?}\n[namm]\n\
                 tasks = [\"passkey:len=600\"]\npool_size = 2\nheldout_size = 0\n\
                 heldout_every = 0\nprompts_per_task = 1\nbudget = 0.25\n{features}\n"
            ))
            .unwrap()
        };
        let run = ActiveRun::create(&store, spec("features = \"window\"")).unwrap();
        let keys = run.missing_units();
        let Some(objective::Kind::Namm(obj)) = run.objective(&keys[0]).kind else {
            panic!("a NAMM objective");
        };
        assert!(obj.accumulate_stats, "the start file has no statistics");
        assert_eq!(obj.features, "window");
        let err = ActiveRun::create(&store, spec(""))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("strategy.init_from")
                && err.contains("window")
                && err.contains("spectral"),
            "{err}"
        );
    }

    #[test]
    fn a_namm_run_goes_reference_then_candidates_then_stages() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut run = ActiveRun::create(&store, RunSpec::from_toml(NAMM_SPEC).unwrap()).unwrap();

        // Generation 0 starts with the full-cache pass over the pool and held-out prompts.
        assert!(run.in_reference_pass());
        let refs = run.missing_units();
        assert_eq!(refs.len(), 6);
        assert!(refs.iter().all(|k| k.kind() == UnitKind::Reference));
        assert!(run.params(&refs[0]).iter().all(|&v| v == 0.0));
        let Some(objective::Kind::Namm(obj)) = run.objective(&refs[0]).kind else {
            panic!("a NAMM objective");
        };
        assert!(
            obj.norm_stats.is_none() && obj.accumulate_stats,
            "the first pass accumulates"
        );
        assert!(obj.decode && !obj.answer_likelihood && obj.budget.is_empty());
        assert!(answer_all(&mut run, &store).is_none());

        // Statistics merged in shard order (means 0..5, count 10 each) and frozen.
        let stats = run.record.frozen_stats.clone().unwrap();
        assert_eq!(stats.count, 60.0);
        assert!((stats.mean[0] - 2.5).abs() < 1e-12, "{:?}", stats.mean);
        assert_eq!(run.record.reference_scores.len(), 6);
        assert_eq!(
            store.get_run(run.id()).unwrap().unwrap().frozen_stats,
            Some(stats.clone())
        );
        assert!(!run.in_reference_pass());
        let units = run.missing_units();
        assert_eq!(units.len(), 4 * 2, "4 candidates × 2 one-prompt shards");
        let Some(objective::Kind::Namm(obj)) = run.objective(&units[0]).kind else {
            panic!("a NAMM objective");
        };
        assert_eq!(obj.norm_stats, Some(stats));

        // A restart in the middle of the generation asks for exactly what is still missing.
        for key in units.iter().take(3) {
            let eval = namm_eval(&run, *key);
            store.put_eval(&eval).unwrap();
            run.record_result(eval);
        }
        let record = store.get_run(run.id()).unwrap().unwrap();
        let mut run = ActiveRun::resume(&store, record).unwrap();
        assert_eq!(run.missing_units(), units[3..].to_vec());

        let told = answer_all(&mut run, &store).unwrap();
        let g0 = told.finished.unwrap();
        // Candidate 0 answers both drawn prompts: per task score 1 over the reference's mean,
        // floored at one prompt of two.
        let drawn: Vec<String> = run_items(&g0);
        let reference: f64 = drawn
            .iter()
            .map(|id| run.record.reference_scores[id])
            .sum::<f64>()
            / 2.0;
        assert_eq!(g0.fitness[0], 1.0 / reference.max(0.5));
        assert_eq!(g0.fitness[1], 0.0);
        assert_eq!(g0.candidate_tasks.len(), 4);
        assert_eq!(g0.mean_kept_fraction, 0.5);
        assert!(g0.heldout.is_none());
        assert_eq!(run.record.best_candidate, 0);

        // Generation 1: no held-out evaluation (every 2nd generation from 2 on).
        let g1 = answer_all(&mut run, &store).unwrap().finished.unwrap();
        assert!(g1.heldout.is_none());

        // Generation 2 opens stage 1, which adds a task: a reference pass for it alone, now
        // with the frozen statistics, then candidates on both tasks and the held-out prompts.
        assert!(run.in_reference_pass());
        let refs = run.missing_units();
        assert_eq!(refs.len(), 6);
        assert!(run
            .item_ids(&refs[0])
            .iter()
            .all(|id| id.starts_with("niah-multikey")));
        let Some(objective::Kind::Namm(obj)) = run.objective(&refs[0]).kind else {
            panic!("a NAMM objective");
        };
        assert!(obj.norm_stats.is_some());
        assert!(answer_all(&mut run, &store).is_none());
        assert_eq!(run.missing_units().len(), 4 * 4 + 4);
        let told = answer_all(&mut run, &store).unwrap();
        let g2 = told.finished.unwrap();
        assert_eq!(g2.stage, 1);
        assert_eq!(g2.candidate_tasks[0].tasks.len(), 2);
        let heldout = g2.heldout.unwrap();
        assert_eq!(heldout.tasks.len(), 2);
        assert_eq!(heldout.tasks[0].prompts, 2);
        // The held-out units evaluate mean_before; the fake scores it like candidate 0.
        assert!(heldout.fitness > 0.0);
        assert_eq!(told.run.status, RunStatus::Finished as i32);
        assert_eq!(
            store
                .get_run(run.id())
                .unwrap()
                .unwrap()
                .frozen_stats
                .unwrap()
                .count,
            60.0
        );
    }

    /// The training prompts of a finished generation, from its stored evaluations' order.
    fn run_items(g: &GenerationRecord) -> Vec<String> {
        let spec = RunSpec::from_toml(NAMM_SPEC).unwrap();
        let namm = spec.namm.unwrap();
        let tasks = namm.stage_tasks(g.stage).to_vec();
        let mut rng = rng_for(spec.seed, u64::from(g.generation), Purpose::Prompts);
        training::draw_prompts(&namm, &tasks, &mut rng)
            .into_iter()
            .zip(&tasks)
            .flat_map(|(idx, t)| idx.into_iter().map(move |i| training::item_id(t, i)))
            .collect()
    }

    #[test]
    fn a_failed_reference_pass_fails_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut run = ActiveRun::create(&store, RunSpec::from_toml(NAMM_SPEC).unwrap()).unwrap();
        let mut told = None;
        for key in run.missing_units() {
            let mut eval = namm_eval(&run, key);
            if key.shard == 2 {
                eval.items[0].score = f64::NAN;
            }
            store.put_eval(&eval).unwrap();
            if run.record_result(eval) {
                told = run.advance(&store).unwrap();
            }
        }
        let told = told.unwrap();
        assert!(told.finished.is_none());
        assert_eq!(told.run.status, RunStatus::Failed as i32);
        assert!(
            told.run.stop_reason.contains("#2"),
            "{}",
            told.run.stop_reason
        );
        assert!(!run.is_running());
    }
}
