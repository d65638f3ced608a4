#!/usr/bin/env bash
# The project's test command: one release build (the only profile: the LLM is unusable
# unoptimised) of every binary, then every test of the workspace. The end-to-end tests in
# tests/ start the built binaries, so they are built first.
set -euo pipefail
cd "$(dirname "$0")/.."
# The LLM tests need the default model; fetching is a no-op once it is there.
[ -n "${NAMM_MODEL:-}" ] || bash scripts/fetch-model.sh
cargo build --release --workspace --bins
cargo test --release --workspace "$@"
