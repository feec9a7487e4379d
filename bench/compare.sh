#!/bin/sh
# Time rlu2net beside the PyTorch version of the same network (an outside tool, not
# part of this project) in one sitting, and print the ratios.
#
#   bench/compare.sh TORCHREF_DIR [PYTHON] [PRESETS]
#
# TORCHREF_DIR holds bench_ref.py (the PyTorch reference); PYTHON is an interpreter
# with torch installed (default: python3); PRESETS defaults to "tiny cpu".
# rlu2net is target/release/rlu2net (build it first: cargo build --release), or $BIN.
# Both sides use 2 threads; PyTorch with oneDNN convolutions (its faster setting here).
# For `cpu` it also times the sliding window over a 160×160×128 pair (NO_SW=1 skips it).
set -eu
REF=${1:?usage: bench/compare.sh TORCHREF_DIR [PYTHON] [PRESETS]}
PY=${2:-python3}
PRESETS=${3:-tiny cpu}
BIN=${BIN:-$(dirname "$0")/../target/release/rlu2net}
RUNS=${RUNS:-5}
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
[ -f "$REF/bench_ref.py" ] || { echo "$REF/bench_ref.py not found" >&2; exit 1; }

median_ms() { # JSON line on stdin -> median of wall_s in ms
  "$PY" -c 'import json,sys,statistics; d=json.loads(sys.stdin.read().strip().splitlines()[-1]); print("%.0f" % (1000*statistics.median(d["wall_s"])))'
}
ours() { # preset, line prefix -> median ms
  # the reference's `cpu` is 64³ patches (this project's `cpu` preset trains on 32³)
  PATCH=""; [ "$1" = cpu ] && PATCH="--patch 64"
  RAYON_NUM_THREADS=2 "$BIN" bench model --backend cpu --preset "$1" $PATCH --runs "$RUNS" |
    grep "^$2" | sed -E 's/.*median ([0-9.]+) ms.*/\1/'
}

echo "date: $(date -u +%Y-%m-%dT%H:%MZ); cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); threads: 2"
printf '%-7s %-28s %12s %12s %8s\n' preset measurement rlu2net_ms pytorch_ms ratio
for P in $PRESETS; do
  F_OURS=$(ours "$P" "forward (inference")
  T_OURS=$(ours "$P" "training step")
  F_REF=$(cd "$REF" && "$PY" bench_ref.py --worker --phase fwd --preset "$P" --conv mkldnn --runs "$RUNS" --warmup 1 | median_ms)
  T_REF=$(cd "$REF" && "$PY" bench_ref.py --worker --phase train --preset "$P" --conv mkldnn --runs "$RUNS" --warmup 1 | median_ms)
  ROWS="forward:$F_OURS:$F_REF train_step_(fwd+bwd+AdamW):$T_OURS:$T_REF"
  if [ "$P" = cpu ] && [ -z "${NO_SW:-}" ]; then
    # sliding window over a 160×160×128 pair, 64³ windows, overlap 0.5 (one run each: it is long)
    S_OURS=$(RAYON_NUM_THREADS=2 "$BIN" bench sw --backend cpu --preset cpu --patch 64 --runs 1 |
      grep "^sliding window" | sed -E 's/.*median ([0-9.]+) ms.*/\1/')
    S_REF=$(cd "$REF" && "$PY" bench_ref.py --worker --phase sw --preset cpu --conv mkldnn --runs 1 --warmup 0 | median_ms)
    ROWS="$ROWS sliding_window_160x160x128:$S_OURS:$S_REF"
  fi
  for row in $ROWS; do
    NAME=${row%%:*}; REST=${row#*:}; A=${REST%%:*}; B=${REST#*:}
    printf '%-7s %-28s %12s %12s %8s\n' "$P" "$NAME" "$A" "$B" "$(echo "$A $B" | awk '{printf "%.2f", $1/$2}')"
  done
done
