#!/usr/bin/env bash
# A NAMM against the full cache and the six baselines at one budget, on task seed 1 (never
# used in training: runs draw their prompts from task seed 0), 50 samples per task. One
# `namm eval --json` per task for the full cache and the baselines, and one per task for the
# NAMM, into OUT/: each is kept as soon as it is done and a rerun skips what is there, so an
# evaluation spans sessions and a new NAMM only reruns its own column.
# scripts/acceptance-table.py OUT prints the tables.
# Usage: scripts/acceptance.sh BUDGET OUT [TASK...]
#   default tasks: passkey and niah-multikey at 1024 and 1536 tokens (the first two trained
#   on), and niah-multikey with 2 keys at 1024 (not trained on)
# Env: NAMM_BIN_DIR (default $CARGO_TARGET_DIR/release or target/release), SAMPLES (50),
#   SEED (1), NAMM_FILE (default assets/namm-smollm2-135m.safetensors; its own budget is
#   replaced by BUDGET), ONLY (namm or baselines: one of the two), BASELINES (the baselines
#   besides the full cache, default "streaming h2o snapkv tova knorm random").
set -euo pipefail
[[ $# -ge 2 ]] || { sed -n '2,14p' "$0" >&2; exit 2; }
BUDGET=$1 OUT=$2
shift 2
TASKS=("$@")
[[ ${#TASKS[@]} -gt 0 ]] || TASKS=(passkey:len=1024 niah-multikey:len=1024 passkey:len=1536
  niah-multikey:len=1536 niah-multikey:len=1024,keys=2)
BIN=${NAMM_BIN_DIR:-${CARGO_TARGET_DIR:-$(dirname "$0")/../target}/release}
[[ -x $BIN/namm ]] || { echo "missing $BIN/namm: cargo build --release" >&2; exit 1; }
NAMM_FILE=${NAMM_FILE:-$(dirname "$0")/../assets/namm-smollm2-135m.safetensors}
mkdir -p "$OUT"

baselines=(--policy full)
for p in ${BASELINES:-streaming h2o snapkv tova knorm random}; do
  baselines+=(--policy "$p:budget=$BUDGET")
done
namm=(--policy "namm:$NAMM_FILE,budget=$BUDGET")
namm_label=namm-$(basename "$NAMM_FILE" .safetensors)

# eval_column TASK LABEL POLICY-ARGS...: one column of one policy set, skipped when already there
eval_column() {
  local task=$1 label=$2
  shift 2
  local file
  file="$OUT/$(echo "$task" | tr ':=,' '_-_')-$label-budget-$BUDGET.json"
  if [[ -s $file ]]; then
    echo "$task $label: already in $file" >&2
    return
  fi
  echo "$task $label at budget $BUDGET ($(date -u +%H:%M:%S))" >&2
  "$BIN/namm" eval --task "$task" --seed "${SEED:-1}" --samples "${SAMPLES:-50}" "$@" \
    --json > "$file.part"
  mv "$file.part" "$file"
}

for task in "${TASKS[@]}"; do
  [[ ${ONLY:-} == baselines ]] || eval_column "$task" "$namm_label" "${namm[@]}"
  [[ ${ONLY:-} == namm ]] || eval_column "$task" baselines "${baselines[@]}"
done
