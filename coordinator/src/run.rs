//! One run in flight: its CMA-ES, the generation being evaluated and the results so far.

use crate::cmaes::{Cmaes, CmaesConfig};
use crate::error::CoordError;
use crate::seed::{rng_for, Purpose};
use crate::store::{GenerationCommit, Store};
use crate::strategy;
use namm::spec::RunSpec;
use namm_proto::{
    objective, BenchmarkObjective, EvalRecord, GenerationRecord, ItemResult, Objective, RunRecord,
    RunStatus, UnitKey, Vector,
};
use std::time::Instant;

pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub struct ActiveRun {
    pub record: RunRecord,
    pub spec: RunSpec,
    cfg: CmaesConfig,
    cmaes: Cmaes,
    /// The generation in flight.
    pub gen: GenerationRecord,
    /// Per (candidate, shard), row-major: the reported shard fitness.
    results: Vec<Option<f64>>,
    pub shards: u32,
    gen_started: Instant,
    /// `record.wall_seconds` when this coordinator took the run over, and when.
    wall_base: f64,
    lifetime_start: Instant,
}

/// What finishing a generation produced, for the watchers.
pub struct Told {
    pub finished: GenerationRecord,
    pub run: RunRecord,
}

impl ActiveRun {
    /// Starts a new run from a validated spec: draws generation 0 and stores everything.
    pub fn create(store: &Store, spec: RunSpec) -> Result<ActiveRun, CoordError> {
        let cfg = strategy::config_for(&spec);
        let mut cmaes = Cmaes::new(&cfg).map_err(|e| CoordError::InvalidArgument(e.to_string()))?;
        let state = strategy::to_proto(cmaes.state());
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
            objective: format!("{}-{}", spec.objective.kind, spec.objective.dim),
            dim: spec.objective.dim as u32,
            population: cfg.population as u32,
            ..Default::default()
        };
        let record = store.create_run(record, &state, gen.clone())?;
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
        let state = store
            .get_state(id)?
            .ok_or_else(|| corrupt("no strategy state stored".into()))?;
        let mut cmaes = Cmaes::from_state(&cfg, strategy::from_proto(state))
            .map_err(|e| corrupt(format!("stored strategy state: {e}")))?;
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
            let key = eval.key.unwrap_or_default();
            if let Some(i) = run.slot(&key) {
                run.results[i] = Some(eval.fitness);
            }
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
        let shards = 1;
        let slots = cfg.population * shards as usize;
        ActiveRun {
            wall_base: record.wall_seconds,
            record,
            spec,
            cfg,
            cmaes,
            gen,
            results: vec![None; slots],
            shards,
            gen_started: Instant::now(),
            lifetime_start: Instant::now(),
        }
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

    fn slot(&self, key: &UnitKey) -> Option<usize> {
        (key.run_id == self.id()
            && key.generation == self.generation()
            && key.candidate < self.population_size()
            && key.shard < self.shards)
            .then(|| (key.candidate * self.shards + key.shard) as usize)
    }

    /// Units of the generation in flight that have no result yet.
    pub fn missing_units(&self) -> Vec<UnitKey> {
        (0..self.population_size())
            .flat_map(|c| (0..self.shards).map(move |s| (c, s)))
            .filter(|&(c, s)| self.results[(c * self.shards + s) as usize].is_none())
            .map(|(candidate, shard)| UnitKey {
                run_id: self.id(),
                generation: self.generation(),
                candidate,
                shard,
            })
            .collect()
    }

    pub fn has_result(&self, key: &UnitKey) -> bool {
        self.slot(key).is_some_and(|i| self.results[i].is_some())
    }

    /// The items a unit's report must carry, in order.
    pub fn item_ids(&self, _key: &UnitKey) -> Vec<String> {
        vec![self.spec.objective.kind.to_string()]
    }

    pub fn objective(&self) -> Objective {
        Objective {
            kind: Some(objective::Kind::Benchmark(BenchmarkObjective {
                kind: self.spec.objective.kind.to_string(),
                dim: self.spec.objective.dim as u32,
            })),
        }
    }

    pub fn params(&self, key: &UnitKey) -> Vec<f64> {
        self.gen
            .population
            .get(key.candidate as usize)
            .map(|v| v.values.clone())
            .unwrap_or_default()
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

    /// Records a stored report. Returns true when the generation is now complete.
    pub fn record_result(&mut self, eval: EvalRecord) -> bool {
        let key = eval.key.unwrap_or_default();
        if let Some(i) = self.slot(&key) {
            self.results[i] = Some(eval.fitness);
        }
        self.is_complete()
    }

    pub fn is_complete(&self) -> bool {
        self.results.iter().all(Option::is_some)
    }

    /// Fitness of each candidate: the mean of its shards' reported fitness. NaN or infinite
    /// values pass through; the strategy ranks them last.
    fn fitness(&self) -> Vec<f64> {
        let shards = self.shards as usize;
        (0..self.population_size() as usize)
            .map(|c| {
                let sum: f64 = self.results[c * shards..(c + 1) * shards]
                    .iter()
                    .map(|f| f.unwrap_or(f64::NAN))
                    .sum();
                sum / shards as f64
            })
            .collect()
    }

    /// Tells the strategy the generation's fitness, decides whether the run goes on, draws the
    /// next generation if so, and stores all of it atomically.
    pub fn finish_generation(&mut self, store: &Store) -> Result<Told, CoordError> {
        let fitness = self.fitness();
        let g = self.generation();
        let id = self.id();
        let tell = self.cmaes.tell(&fitness);
        let mut finished = self.gen.clone();
        finished.population.clear();
        finished.complete = true;
        finished.fitness = fitness.clone();
        finished.shards = self.shards;
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
                self.record.best_params = self.params(&UnitKey {
                    candidate: c as u32,
                    ..Default::default()
                });
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
            None => Some(draw_generation(&mut self.cmaes, &self.spec, id, g + 1)),
        };
        store.commit_generation(GenerationCommit {
            run: &self.record,
            finished: &finished,
            state: &state,
            next: next.as_ref(),
        })?;
        if let Some(next) = next {
            self.gen = next;
            self.results.iter_mut().for_each(|r| *r = None);
            self.gen_started = Instant::now();
        }
        Ok(Told {
            finished,
            run: self.record.clone(),
        })
    }

    pub fn is_running(&self) -> bool {
        self.record.status == RunStatus::Running as i32
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

pub fn unit_id(key: &UnitKey) -> String {
    format!(
        "r{}-g{}-c{}-s{}",
        key.run_id, key.generation, key.candidate, key.shard
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RunSpec {
        RunSpec::from_toml("seed = 5\n[objective]\nkind = \"sphere\"\ndim = 4\n").unwrap()
    }

    /// Answers every missing unit of the generation in flight with the benchmark's fitness.
    fn evaluate_generation(run: &mut ActiveRun, store: &Store) -> Option<Told> {
        for key in run.missing_units() {
            let score = run.spec.objective.kind.fitness(&run.params(&key));
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
                return Some(run.finish_generation(store).unwrap());
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
        let state = store.get_state(run.id()).unwrap().unwrap();
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
}
