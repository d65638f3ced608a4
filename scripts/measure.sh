#!/usr/bin/env bash
# Cluster measurements for the closing note of issue 2:
#  1. evaluations to reach the target (-1e-8), median of 11 seeds, default population, for
#     sphere, ellipsoid and rosenbrock in dims 10 and 40, each run through a coordinator and
#     one worker process leasing a whole generation at a time (--slots 64), over gRPC and sled;
#  2. generations per second on sphere-10 (fixed 300 generations) with 1 and with 4 external
#     worker processes.
# Usage: scripts/measure.sh [BIN_DIR]   (default: $CARGO_TARGET_DIR/release or target/release)
# ONLY=evals or ONLY=speed runs one part.
set -euo pipefail
BIN=${1:-${NAMM_BIN_DIR:-${CARGO_TARGET_DIR:-$(dirname "$0")/../target}/release}}
for b in namm-coord namm-worker namm; do
  [[ -x $BIN/$b ]] || { echo "missing $BIN/$b: cargo build --release -p namm-coord -p namm-worker -p namm-cli" >&2; exit 1; }
done
# A tmpfs by default: fsync on a disk shared with compilers costs up to ~50 ms, which
# would measure the disk, not the cluster. MEASURE_DIR=/some/disk/dir measures with fsync.
WORK=$(mktemp -d "${MEASURE_DIR:-/dev/shm}/namm-measure.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
PORT=${PORT:-50300}

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

if [[ ${ONLY:-evals} == evals ]]; then
echo "== evaluations to target -1e-8 (median of 11 seeds, default population, sigma0 0.5)"
printf '%-12s %4s %10s %8s %s\n' objective dim median reached all
for kind in sphere ellipsoid rosenbrock; do
  # x0 away from the optimum: 1 for sphere/ellipsoid (optimum 0), 0 for rosenbrock (optimum 1).
  x0=1.0; [[ $kind == rosenbrock ]] && x0=0.0
  for dim in 10 40; do
    evals=()
    reached=0
    for seed in $(seq 1 11); do
      db=$WORK/db-$kind-$dim-$seed
      cat > "$WORK/spec.toml" <<TOML
seed = $seed
[objective]
kind = "$kind"
dim = $dim
[strategy]
sigma0 = 0.5
x0 = $x0
[stop]
max_generations = 100000
target_fitness = -1e-8
TOML
      PORT=$((PORT + 1))
      "$BIN/namm-worker" --coordinator 127.0.0.1:$PORT --slots 64 2>/dev/null &
      wpid=$!
      "$BIN/namm-coord" start --listen 127.0.0.1:$PORT --db "$db" --run "$WORK/spec.toml" \
        --exit-when-done >/dev/null 2>"$WORK/coord.log"
      kill "$wpid" 2>/dev/null || true
      wait "$wpid" 2>/dev/null || true
      line=$("$BIN/namm" --db "$db" runs --csv | tail -1)
      e=$(echo "$line" | cut -d, -f7)
      [[ $line == *"target_fitness"* ]] && reached=$((reached + 1))
      evals+=("$e")
    done
    med=$(printf '%s\n' "${evals[@]}" | median)
    printf '%-12s %4s %10s %5s/11 %s\n' "$kind" "$dim" "$med" "$reached" "${evals[*]}"
  done
done

fi

if [[ ${ONLY:-speed} == speed ]]; then
echo "== generations per second, sphere-10, 300 generations, external workers"
for workers in 1 4; do
  db=$WORK/db-speed-$workers
  cat > "$WORK/spec.toml" <<TOML
seed = 1
[objective]
kind = "sphere"
dim = 10
[stop]
max_generations = 300
# Unreachable (fitness = -f <= 0), so every run does exactly max_generations.
target_fitness = 1.0
TOML
  PORT=$((PORT + 1))
  pids=()
  for i in $(seq 1 "$workers"); do
    "$BIN/namm-worker" --coordinator 127.0.0.1:$PORT --name "w$i" 2>/dev/null &
    pids+=($!)
  done
  "$BIN/namm-coord" start --listen 127.0.0.1:$PORT --db "$db" --run "$WORK/spec.toml" \
    --exit-when-done >/dev/null 2>"$WORK/coord.log"
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  "$BIN/namm" --db "$db" history --json 1 >"$WORK/h.json"
  python3 - "$WORK/h.json" "$workers" <<'PY'
import json, sys
h = json.load(open(sys.argv[1]))
first, last = h[0], h[-1]
# Wall time from the end of generation 0 to the end of the last: excludes worker start-up.
span = last["wall_seconds"] - first["wall_seconds"]
n = len(h) - 1
print(f"workers={sys.argv[2]} generations={len(h)} gen/s={n/span:.1f} units/s={n*10/span:.0f}")
PY
done
fi
