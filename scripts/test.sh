#!/usr/bin/env bash
# The project's test command: one release build (the only profile: the LLM is unusable
# unoptimised) of every binary, then every test of the workspace. The end-to-end tests in
# tests/ start the built binaries, so they are built first.
set -euo pipefail
cd "$(dirname "$0")/.."
# The LLM tests need the default model; fetching is a no-op once it is there.
[ -n "${NAMM_MODEL:-}" ] || bash scripts/fetch-model.sh
# The diagonal CMA-ES is compared live against pycma's (coordinator/src/cmaes/tests/pycma.rs).
python3 -c "import cma" 2>/dev/null || python3 -m pip install --quiet "cma==4.5.0"
# namm-serve is tested with the official OpenAI client (tests/tests/serve.rs).
python3 -c "import openai" 2>/dev/null || python3 -m pip install --quiet "openai==3.57.0"
cargo build --release --workspace --bins
cargo test --release --workspace "$@"
