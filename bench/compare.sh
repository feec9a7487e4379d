#!/bin/sh
# Time rlu2net beside the PyTorch version of the same network (an outside tool, not
# part of this project) in one sitting, and print the ratios.
#
#   bench/compare.sh TORCHREF_DIR [PYTHON] [PRESETS]
#
# TORCHREF_DIR holds bench_ref.py (the PyTorch reference); PYTHON is an interpreter
# with torch installed (default: python3); PRESETS defaults to "tiny cpu".
# rlu2net is target/release/rlu2net (build it first: cargo build --release).
# Both sides use 2 threads; PyTorch with oneDNN convolutions (its faster setting here).
set -eu
REF=${1:?usage: bench/compare.sh TORCHREF_DIR [PYTHON] [PRESETS]}
PY=${2:-python3}
PRESETS=${3:-tiny cpu}
BIN=$(dirname "$0")/../target/release/rlu2net
RUNS=${RUNS:-5}
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
[ -f "$REF/bench_ref.py" ] || { echo "$REF/bench_ref.py not found" >&2; exit 1; }

median_ms() { # JSON line on stdin -> median of wall_s in ms
  "$PY" -c 'import json,sys,statistics; d=json.loads(sys.stdin.read().strip().splitlines()[-1]); print("%.0f" % (1000*statistics.median(d["wall_s"])))'
}
ours() { # preset, line prefix -> median ms
  RAYON_NUM_THREADS=2 "$BIN" bench model --backend cpu --preset "$1" --runs "$RUNS" |
    grep "^$2" | sed -E 's/.*median ([0-9.]+) ms.*/\1/'
}

echo "date: $(date -u +%Y-%m-%dT%H:%MZ); cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); threads: 2"
printf '%-7s %-28s %12s %12s %8s\n' preset measurement rlu2net_ms pytorch_ms ratio
for P in $PRESETS; do
  F_OURS=$(ours "$P" "forward (inference")
  T_OURS=$(ours "$P" "training step")
  F_REF=$(cd "$REF" && "$PY" bench_ref.py --worker --phase fwd --preset "$P" --conv mkldnn --runs "$RUNS" --warmup 1 | median_ms)
  T_REF=$(cd "$REF" && "$PY" bench_ref.py --worker --phase train --preset "$P" --conv mkldnn --runs "$RUNS" --warmup 1 | median_ms)
  for row in "forward:$F_OURS:$F_REF" "train step (fwd+bwd+AdamW):$T_OURS:$T_REF"; do
    NAME=${row%%:*}; REST=${row#*:}; A=${REST%%:*}; B=${REST#*:}
    printf '%-7s %-28s %12s %12s %8s\n' "$P" "$NAME" "$A" "$B" "$(echo "$A $B" | awk '{printf "%.2f", $1/$2}')"
  done
done
