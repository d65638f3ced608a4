//! Read-only questions about stored runs, shared by the gRPC service and the CLI's `--db` mode.

use crate::coordinator::not_found_run;
use crate::error::CoordError;
use crate::store::Store;
use namm_proto::{GenerationRecord, GetGenerationResponse};

/// The finished generations of a run, in order, without populations.
pub fn history(store: &Store, run_id: u64) -> Result<Vec<GenerationRecord>, CoordError> {
    if store.get_run(run_id)?.is_none() {
        return Err(not_found_run(run_id));
    }
    Ok(store
        .generations(run_id)?
        .into_iter()
        .filter(|g| g.complete)
        .collect())
}

/// One generation with its stored evaluations (in flight or finished).
pub fn generation(
    store: &Store,
    run_id: u64,
    generation: u32,
) -> Result<GetGenerationResponse, CoordError> {
    let run = store
        .get_run(run_id)?
        .ok_or_else(|| not_found_run(run_id))?;
    let record = store.get_generation(run_id, generation)?.ok_or_else(|| {
        CoordError::NotFound(format!(
            "generation = {generation} not found in run {run_id} ({} generation(s) done)",
            run.generations_done
        ))
    })?;
    Ok(GetGenerationResponse {
        generation: Some(record),
        evals: store.evals(run_id, generation)?,
    })
}
