//! Property tests (fuzzing) of the two places that take untrusted input: the run-spec parser
//! and the report handler. Cases: `PROPTEST_CASES` (proptest's default 256 for the parser,
//! 64 for the report handler, whose cases each open a sled database).

use namm::spec::{RunSpec, MAX_DIM, MAX_GENERATION_VALUES};
use namm_coord::coordinator::Coordinator;
use namm_coord::error::CoordError;
use namm_coord::store::Store;
use namm_proto::{ItemResult, ReportRequest, RunStatus, UnitKey, WorkUnit, WorkerInfo};
use proptest::prelude::*;
use std::collections::HashSet;
use std::time::Duration;

fn spec_text() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            Just("sphere"),
            Just("rosenbrock"),
            Just("rastrigin"),
            Just("ellipsoid"),
            Just("namm"),
            Just("nope")
        ],
        -5i64..20_000,
        prop::option::of(-3i64..200_000),
        prop_oneof![
            any::<f64>(),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(0.0),
            Just(0.3)
        ],
        prop::option::of(prop::collection::vec(any::<f64>(), 0..12)),
        0i64..5_000_000_000,
        any::<u64>(),
    )
        .prop_map(|(kind, dim, pop, sigma, x0, max_gen, seed)| {
            let mut t =
                format!("seed = {seed}\n[objective]\nkind = \"{kind}\"\ndim = {dim}\n[strategy]\n");
            if let Some(p) = pop {
                t += &format!("population = {p}\n");
            }
            t += &format!("sigma0 = {}\n", toml_float(sigma));
            if let Some(x) = x0 {
                let xs: Vec<String> = x.iter().map(|v| toml_float(*v)).collect();
                t += &format!("x0 = [{}]\n", xs.join(", "));
            }
            t += &format!("[stop]\nmax_generations = {max_gen}\n");
            t
        })
}

fn toml_float(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v == f64::INFINITY {
        "inf".into()
    } else if v == f64::NEG_INFINITY {
        "-inf".into()
    } else {
        format!("{v:?}")
    }
}

/// Either an error that says it is about the run spec, or a spec within every bound that
/// round-trips through its canonical TOML.
fn check_spec(text: &str) -> Result<(), TestCaseError> {
    match RunSpec::from_toml(text) {
        Ok(spec) => {
            prop_assert!(spec.dim() >= 1 && spec.dim() <= MAX_DIM);
            prop_assert!(spec.population() >= 2);
            prop_assert!(spec.population() * spec.dim() <= MAX_GENERATION_VALUES);
            prop_assert!(spec.sigma0().is_finite() && spec.sigma0() > 0.0);
            prop_assert!(spec.x0().iter().all(|x| x.is_finite()));
            prop_assert_eq!(spec.x0().len(), spec.dim());
            let again = RunSpec::from_toml(&spec.to_toml());
            prop_assert_eq!(again.as_ref(), Ok(&spec));
        }
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(msg.starts_with("run spec"), "{}", msg);
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn spec_parser_never_panics_on_arbitrary_text(text in ".{0,400}") {
        check_spec(&text)?;
    }

    #[test]
    fn spec_parser_accepts_only_specs_within_bounds(text in spec_text()) {
        check_spec(&text)?;
    }
}

/// One fuzzed report: which real lease it starts from and how it is mangled.
#[derive(Debug, Clone)]
struct Mangle {
    unit: usize,
    worker: u8,
    lease: u8,
    key: u8,
    delta: u32,
    items: u8,
    score: f64,
    eval_seconds: f64,
}

fn mangle() -> impl Strategy<Value = Mangle> {
    (
        0usize..8,
        0u8..3,
        0u8..3,
        0u8..6,
        any::<u32>(),
        0u8..4,
        prop_oneof![
            any::<f64>(),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            -10.0..0.0f64
        ],
        prop_oneof![any::<f64>(), 0.0..1.0f64],
    )
        .prop_map(
            |(unit, worker, lease, key, delta, items, score, eval_seconds)| Mangle {
                unit,
                worker,
                lease,
                key,
                delta,
                items,
                score,
                eval_seconds,
            },
        )
}

fn report_for(m: &Mangle, units: &[WorkUnit], workers: &[String]) -> ReportRequest {
    let unit = &units[m.unit % units.len()];
    let mut key: UnitKey = unit.key.unwrap();
    let delta = m.delta.max(1);
    match m.key {
        1 => key.candidate = key.candidate.wrapping_add(delta),
        2 => key.generation = key.generation.wrapping_add(delta),
        3 => key.shard = key.shard.wrapping_add(delta),
        4 => key.run_id = key.run_id.wrapping_add(u64::from(delta)),
        _ => {}
    }
    let item = |id: &str| ItemResult {
        item_id: id.into(),
        score: m.score,
        extra: Default::default(),
    };
    ReportRequest {
        worker_id: match m.worker {
            0 => workers[0].clone(),
            1 => workers[1].clone(),
            _ => format!("w-forged-{}", m.delta),
        },
        lease_id: match m.lease {
            0 => unit.lease_id.clone(),
            1 => units[(m.unit + 1) % units.len()].lease_id.clone(),
            _ => format!("l-forged-{}", m.delta),
        },
        key: (m.key != 5).then_some(key),
        items: match m.items {
            0 => vec![item(&unit.item_ids[0])],
            1 => vec![],
            2 => vec![item("other"); 2],
            _ => vec![item("bogus")],
        },
        eval_seconds: m.eval_seconds,
        norm_stats: None,
    }
}

fn report_cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: report_cases(), ..ProptestConfig::default() })]

    /// Random reports against real leases: only a report that matches its lease, worker, key
    /// and items is accepted, at most once per unit; NaN and infinite fitness are accepted
    /// and recorded; every refusal is a client error, and the generation still completes.
    #[test]
    fn report_handler_accepts_exactly_the_matching_reports(
        mangles in prop::collection::vec(mangle(), 1..40)
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let coord = Coordinator::open(
            Store::open(dir.path()).unwrap(),
            Duration::from_secs(600),
            Duration::from_secs(3600),
        )
        .unwrap();
        let run = coord
            .submit("seed = 1\n[objective]\nkind = \"sphere\"\ndim = 3\n[strategy]\npopulation = 8\n[stop]\nmax_generations = 3\ntarget_fitness = inf\n")
            .unwrap();
        let workers: Vec<String> = (0..2)
            .map(|i| coord.register(WorkerInfo { name: format!("w{i}"), ..Default::default() }))
            .collect();
        let mut units = rt.block_on(coord.lease(&workers[0], 4, Duration::ZERO)).unwrap();
        units.extend(rt.block_on(coord.lease(&workers[1], 4, Duration::ZERO)).unwrap());
        prop_assert_eq!(units.len(), 8);
        let first: HashSet<String> = units[..4].iter().map(|u| u.lease_id.clone()).collect();
        let owner = |u: &WorkUnit| if first.contains(&u.lease_id) { &workers[0] } else { &workers[1] };
        let mut done = HashSet::new();
        for m in &mangles {
            let req = report_for(m, &units, &workers);
            let unit = &units[m.unit % units.len()];
            let matching = m.lease == 0
                && m.key == 0
                && m.items == 0
                && &req.worker_id == owner(unit)
                && m.eval_seconds.is_finite()
                && m.eval_seconds >= 0.0;
            match coord.report(req) {
                Ok(r) => {
                    prop_assert!(matching || !r.accepted, "accepted a mismatched report: {:?}", m);
                    if r.accepted {
                        prop_assert!(done.insert(unit.lease_id.clone()), "accepted twice: {:?}", m);
                    }
                }
                Err(e) => {
                    prop_assert!(
                        matches!(
                            e,
                            CoordError::InvalidArgument(_)
                                | CoordError::NotFound(_)
                                | CoordError::FailedPrecondition(_)
                        ),
                        "{:?}: {}", m, e
                    );
                    prop_assert!(
                        !matching || done.contains(&unit.lease_id),
                        "refused a matching report {:?}: {}", m, e
                    );
                }
            }
        }
        // The remaining units are answered properly: the generation completes.
        for u in &units {
            if done.contains(&u.lease_id) {
                continue;
            }
            let r = coord.report(ReportRequest {
                worker_id: owner(u).clone(),
                lease_id: u.lease_id.clone(),
                key: u.key,
                items: vec![ItemResult {
                    item_id: u.item_ids[0].clone(),
                    score: -1.0,
                    extra: Default::default(),
                }],
                eval_seconds: 0.0,
                norm_stats: None,
            });
            prop_assert!(r.map(|r| r.accepted).unwrap_or(false));
        }
        let rec = coord.store().unwrap().get_run(run.run_id).unwrap().unwrap();
        prop_assert_eq!(rec.generations_done, 1);
        prop_assert_eq!(rec.status, RunStatus::Running as i32);
        let evals = coord.store().unwrap().evals(run.run_id, 0).unwrap();
        prop_assert_eq!(evals.len(), 8);
        let gen = coord.store().unwrap().get_generation(run.run_id, 0).unwrap().unwrap();
        for e in &evals {
            let c = e.key.unwrap().candidate as usize;
            prop_assert_eq!(e.fitness.to_bits(), gen.fitness[c].to_bits());
        }
    }
}
