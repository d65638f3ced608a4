#!/usr/bin/env bash
# The GPU check of the GPU-workers issue, on a machine with an NVIDIA GPU (H100/H200: the
# binary is built for sm_90) and a `namm` binary built with `--features namm-cli/cuda`:
#
#   bash scripts/gpu-check.sh [NAMM_BINARY] [OUT_DIR]
#
# Needs no model file: it uses `random:smollm2-135m` (SmolLM2-135M's shape, seeded random
# weights). Writes OUT_DIR/gpu-bench.json and prints a summary:
#   - prefill tok/s with attention taps (what a NAMM reads) and decode tok/s at batch 1, 8
#     and 32, 2048-token prompts (the HF anchor: 3.3k tok/s at batch 1, 102k at batch 32, bf16);
#   - parity with the CPU in f32: max |Δ| of the logits (prompt and 16 greedy steps), whether
#     the greedy tokens agree, and how many kept (layer, head, position) entries of a NAMM with
#     seeded random parameters differ.
set -euo pipefail
namm=${1:-target/release/namm}
out=${2:-${OUT:-.}}
mkdir -p "$out"
# The binary links libcudart.so.13, libcublas(Lt).so.13 and libcurand.so.10 at load time; on
# the GPU machines they come with the Python CUDA packages.
for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10; do
  found=$(find /usr/local /opt /usr/lib /root -name "$lib" -print -quit 2>/dev/null || true)
  if [ -z "$found" ]; then
    echo "gpu-check: $lib not found; the cuda build cannot start" >&2
    exit 1
  fi
  LD_LIBRARY_PATH="$(dirname "$found"):${LD_LIBRARY_PATH:-}"
done
export LD_LIBRARY_PATH
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$namm" --version
"$namm" bench --model random:smollm2-135m --device cuda:0 --tokens 2048 --decode 16 \
  --batch 1,8,32 --parity cpu --json > "$out/gpu-bench.json"
python3 - "$out/gpu-bench.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
for t in r["throughput"]:
    print(f"batch {t['batch']:>3}: prefill {t['prefill_tokens_per_sec']:>9.0f} tok/s, "
          f"decode {t['decode_tokens_per_sec']:>8.1f} tok/s")
p = r["parity"]
print(f"parity vs {p['against']} ({p['format']}): max |dlogit| {p['max_abs_logit_diff']:.3e} "
      f"of max |logit| {p['max_abs_logit']:.2f}; same greedy tokens: {p['same_greedy_tokens']}; "
      f"kept entries differing: {p['kept_entries_differing']} of {p['kept_entries']}")
EOF
