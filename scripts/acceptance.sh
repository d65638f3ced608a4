#!/usr/bin/env bash
# The shipped NAMM against the full cache and the six baselines at one budget, on task seed 1
# (never used in training: runs draw their prompts from task seed 0), 50 samples per task:
# one `namm eval --json` per task into OUT/, so each column is kept as soon as it is done and a
# rerun skips the columns already there. scripts/acceptance-table.py OUT prints the tables.
# Usage: scripts/acceptance.sh BUDGET OUT [TASK...]
#   default tasks: passkey and niah-multikey at 1024 and 1536 tokens (the first two trained
#   on), and niah-multikey with 2 keys at 1024 (not trained on)
# Env: NAMM_BIN_DIR (default $CARGO_TARGET_DIR/release or target/release), SAMPLES (50),
#   SEED (1), NAMM_POLICY (namm:default: the file's own budget is replaced by BUDGET).
set -euo pipefail
[[ $# -ge 2 ]] || { sed -n '2,11p' "$0" >&2; exit 2; }
BUDGET=$1 OUT=$2
shift 2
TASKS=("$@")
[[ ${#TASKS[@]} -gt 0 ]] || TASKS=(passkey:len=1024 niah-multikey:len=1024 passkey:len=1536
  niah-multikey:len=1536 niah-multikey:len=1024,keys=2)
BIN=${NAMM_BIN_DIR:-${CARGO_TARGET_DIR:-$(dirname "$0")/../target}/release}
[[ -x $BIN/namm ]] || { echo "missing $BIN/namm: cargo build --release" >&2; exit 1; }
mkdir -p "$OUT"
policies=(--policy full --policy "${NAMM_POLICY:-namm:default},budget=$BUDGET")
for p in streaming h2o snapkv tova knorm random; do
  policies+=(--policy "$p:budget=$BUDGET")
done
for task in "${TASKS[@]}"; do
  file="$OUT/$(echo "$task" | tr ':=,' '_-_')-budget-$BUDGET.json"
  if [[ -s $file ]]; then
    echo "$task: already in $file" >&2
    continue
  fi
  echo "$task at budget $BUDGET ($(date -u +%H:%M:%S))" >&2
  "$BIN/namm" eval --task "$task" --seed "${SEED:-1}" --samples "${SAMPLES:-50}" \
    "${policies[@]}" --json > "$file.part"
  mv "$file.part" "$file"
done
