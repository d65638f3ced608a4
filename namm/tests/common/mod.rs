//! Where the tests and benches that need the real model find it.

use std::path::PathBuf;

/// `$NAMM_MODEL`, else the default model that `scripts/fetch-model.sh` puts in `models/`.
/// Fails loudly when it is missing: CI fetches it first, so a silent skip would hide a break.
pub fn model_path() -> PathBuf {
    let path = std::env::var_os("NAMM_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../models/SmolLM2-135M-Instruct.Q4_1.gguf"
            ))
        });
    assert!(
        path.is_file(),
        "model file {} not found: run scripts/fetch-model.sh (or set NAMM_MODEL)",
        path.display()
    );
    path
}
