#!/usr/bin/env bash
# The project's test command: one release build (the only profile: the LLM is unusable
# unoptimised) of every binary, then every test of the workspace. The end-to-end tests in
# tests/ start the built binaries, so they are built first.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f models/SmolLM2-135M-Instruct.Q4_1.gguf ] && [ -z "${NAMM_MODEL:-}" ]; then
  echo "models/SmolLM2-135M-Instruct.Q4_1.gguf is missing: run scripts/fetch-model.sh first" >&2
  exit 1
fi
cargo build --release --workspace --bins
cargo test --release --workspace "$@"
