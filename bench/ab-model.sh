#!/bin/sh
# Two rlu2net binaries timed alternately by `bench model` (A, B, A, B, …), so that both
# see the same machine state; prints each run's medians and the B/A ratio of the means.
#
#   bench/ab-model.sh BIN_A BIN_B [PAIRS] [PRESET] [PATCH]
#
# PAIRS defaults to 3, PRESET to tiny; PATCH (e.g. 64) is passed as --patch.
set -eu
A=${1:?usage: bench/ab-model.sh BIN_A BIN_B [PAIRS] [PRESET] [PATCH]}
B=${2:?usage: bench/ab-model.sh BIN_A BIN_B [PAIRS] [PRESET] [PATCH]}
PAIRS=${3:-3}
PRESET=${4:-tiny}
PATCH=${5:+--patch $5}
RUNS=${RUNS:-5}
one() { # binary -> "forward_ms step_ms"
  RAYON_NUM_THREADS=2 "$1" bench model --backend cpu --preset "$PRESET" $PATCH --runs "$RUNS" |
    awk '/^forward \(inference/ {f=$0} /^training step/ {t=$0} END {
      sub(/.*median /, "", f); sub(/ ms.*/, "", f); sub(/.*median /, "", t); sub(/ ms.*/, "", t); print f, t }'
}
echo "date: $(date -u +%Y-%m-%dT%H:%MZ); preset $PRESET $PATCH; runs $RUNS per measurement"
echo "pair A_forward A_step B_forward B_step"
i=1
TOT=""
while [ "$i" -le "$PAIRS" ]; do
  RA=$(one "$A"); RB=$(one "$B")
  echo "$i $RA $RB"
  TOT="$TOT
$RA $RB"
  i=$((i + 1))
done
echo "$TOT" | awk 'NF == 4 {af += $1; as += $2; bf += $3; bs += $4; n++} END {
  printf "mean A: forward %.1f ms, step %.1f ms; B: forward %.1f ms, step %.1f ms; B/A forward %.3f, step %.3f\n",
    af/n, as/n, bf/n, bs/n, bf/af, bs/as }'
