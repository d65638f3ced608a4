//! Per-sample random streams.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

/// The RNG of sample `index` of `task` under `seed`: the ChaCha8 key is a hash of (task, seed)
/// and the index selects the stream, so every sample has its own sequence and sample i does not
/// depend on which other samples were generated, or in what order.
pub(crate) fn sample_rng(task: &str, seed: u64, index: u64) -> ChaCha8Rng {
    let mut hasher = Sha256::new();
    hasher.update(b"namm/tasks/v1\0");
    hasher.update(task.as_bytes());
    hasher.update(b"\0");
    hasher.update(seed.to_le_bytes());
    let mut rng = ChaCha8Rng::from_seed(hasher.finalize().into());
    rng.set_stream(index);
    rng
}
