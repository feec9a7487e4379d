#!/usr/bin/env bash
# The GPU build checked and timed on whatever Vulkan device this machine has, in one
# run, ending with one table (the format BENCHMARKS.md keeps):
#
#   bench/gpu-check.sh [--quick] [--spirv]
#
#   1. builds `--features gpu` (target/gpu; `--spirv`: `gpu-spirv`, SPIR-V passthrough);
#   2. lists the adapters (`rlu2net devices`) and runs the GPU test set against the CPU;
#   3. `bench kernels --device gpu` twice in a fresh autotune environment: the cache file
#      must be written by the first run and the second must be faster (reused);
#   4. `bench model --device gpu` for `--preset paper` and `--preset cpu --patch 64`
#      (forward; forward + backward; forward + backward + AdamW), and the latter on this
#      machine's CPU for the ratio;
#   5. trains `paper` for 3 minutes on a `synth --scale paper` set and reports steps/s and
#      the peak GPU memory (nvidia-smi, where there is one).
#
# --quick is for a software device (lavapipe): `tiny` instead of `paper`, one run each, the
# cpu network at its 32³ patch, one minute of training on a small set, and only the GPU
# tests that take seconds (the whole set is CI's job). On an H100/H200 the full run is about
# 4 minutes after the build.
# BIN=path/to/rlu2net (a `--features gpu` build) skips the build; the test set then needs
# cargo anyway, NO_TESTS=1 skips it.
set -uo pipefail
cd "$(dirname "$0")/.."
QUICK=0
FEATURES=gpu
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1 ;;
    --spirv) FEATURES=gpu-spirv ;;
    *) echo "usage: bench/gpu-check.sh [--quick] [--spirv]" >&2; exit 2 ;;
  esac
done
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/gpu}
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
W=$(mktemp -d)
ROWS=()
row() { ROWS+=("$(printf '%-44s | %-26s | %s' "$1" "$2" "$3")"); }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
median_of() { # "label" file -> the median ms printed on that line
  grep "^$1" "$2" | sed -E 's/.*median ([0-9.]+) ms.*/\1/' | head -1
}

echo "== gpu-check $(date -u +%Y-%m-%dT%H:%MZ), features $FEATURES, quick=$QUICK, commit $(git rev-parse --short HEAD 2>/dev/null)"
if [ -z "${BIN:-}" ]; then
  t0=$(now)
  cargo build --release --features "$FEATURES" 2>&1 | tail -3
  BIN=$CARGO_TARGET_DIR/release/rlu2net
  row "build (--features $FEATURES)" "$(secs "$t0" "$(now)") s" "$(nproc) cores"
fi
[ -x "$BIN" ] || { echo "no binary at $BIN" >&2; exit 1; }

"$BIN" devices | tee "$W/devices.txt"
DEV_NAME=$(grep -m1 '^gpu:0' "$W/devices.txt" | cut -d'|' -f1 | sed 's/^gpu:0 *//')
row "device" "${DEV_NAME:-none}" "$(grep -m1 '^gpu:0' "$W/devices.txt" | cut -d'|' -f4 | xargs)"
[ -n "$DEV_NAME" ] || { printf '%s\n' "${ROWS[@]}"; echo "no GPU adapter" >&2; exit 1; }

if [ -z "${NO_TESTS:-}" ]; then
  FILTER=""
  [ "$QUICK" = 1 ] && FILTER="conv3d_3x3x3 instance_norm windowed_attention"
  t0=$(now)
  # shellcheck disable=SC2086
  cargo test --release --features "$FEATURES" --test gpu -- $FILTER 2>&1 | tee "$W/tests.txt" | grep -E "^test |test result|GPU tests on"
  row "GPU test set vs the CPU" "$(grep -m1 'test result' "$W/tests.txt" | sed 's/; finished.*//;s/test result: //')" "$(secs "$t0" "$(now)") s with the build of the test"
fi

# autotune: a fresh named environment, so its cache file starts empty
export CUBECL_ENVIRONMENT=gpucheck$$
RUNS=5; [ "$QUICK" = 1 ] && RUNS=1
t0=$(now); "$BIN" bench kernels --device gpu --runs "$RUNS" > "$W/k1.txt" 2>&1; t1=$(now)
"$BIN" bench kernels --device gpu --runs "$RUNS" > "$W/k2.txt" 2>&1; t2=$(now)
cat "$W/k2.txt"
DB=$(find target/environment "${XDG_CACHE_HOME:-$HOME/.cache}/cubecl" -name "*gpucheck$$*" 2>/dev/null | head -1)
if [ -n "$DB" ]; then CACHE="written ($(du -k "$DB" | cut -f1) KiB, $(basename "$DB"))"; else CACHE="NOT written"; fi
row "autotune cache" "$CACHE" "bench kernels: $(secs "$t0" "$t1") s first, $(secs "$t1" "$t2") s second (reused)"
while IFS= read -r line; do
  # `bench kernels` prints: name, median, runs, separated by two or more spaces
  name=$(echo "$line" | awk -F '  +' '{ print $1 }')
  ms=$(echo "$line" | awk -F '  +' '{ print $2 }' | xargs)
  row "kernel: $name" "$ms ms" "median of $RUNS, cache warm"
done < <(grep -E '^(Conv3d|InstanceNorm|window)' "$W/k2.txt")

BIG=paper; [ "$QUICK" = 1 ] && BIG=tiny
CPU_PATCH="--patch 64"; [ "$QUICK" = 1 ] && CPU_PATCH=""
MRUNS=3; [ "$QUICK" = 1 ] && MRUNS=1
"$BIN" bench model --device gpu --preset "$BIG" --runs "$MRUNS" > "$W/m_big.txt" 2>&1; cat "$W/m_big.txt"
# shellcheck disable=SC2086
"$BIN" bench model --device gpu --preset cpu $CPU_PATCH --runs "$MRUNS" > "$W/m_cpu_gpu.txt" 2>&1; cat "$W/m_cpu_gpu.txt"
# shellcheck disable=SC2086
"$BIN" bench model --device cpu --preset cpu $CPU_PATCH --runs "$MRUNS" > "$W/m_cpu_cpu.txt" 2>&1; cat "$W/m_cpu_cpu.txt"
for what in "forward (inference" "forward + backward" "training step"; do
  label=$(echo "$what" | sed 's/ (inference//')
  note="one pair"; [ "$what" = "training step" ] && note="one pair, + AdamW; target for paper: <= 1500 ms"
  row "$BIG: $label" "$(median_of "$what" "$W/m_big.txt") ms" "$note"
done
for what in "forward (inference" "training step"; do
  label=$(echo "$what" | sed 's/ (inference//')
  g=$(median_of "$what" "$W/m_cpu_gpu.txt"); c=$(median_of "$what" "$W/m_cpu_cpu.txt")
  row "cpu ${CPU_PATCH:---patch 32}: $label" "$g ms GPU, $c ms CPU" "$(awk -v g="$g" -v c="$c" 'BEGIN { if (g > 0) printf "%.2fx the CPU (target >= 10x)", c / g }')"
done

# training: steps/s and peak GPU memory
SCALE=paper; MINUTES=3; [ "$QUICK" = 1 ] && { SCALE=small; MINUTES=1; }
"$BIN" synth --out "$W/data" --cases 4 --test-cases 1 --scale "$SCALE" > /dev/null 2>&1
PEAK=n/a
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$W/mem.txt" 2>/dev/null &
  SMI=$!
fi
t0=$(now)
"$BIN" train --data "$W/data" --out "$W/run" --preset "$BIG" --device gpu --max-minutes "$MINUTES" --epochs 1000 > "$W/train.txt" 2>&1
t1=$(now)
if [ -n "${SMI:-}" ]; then kill "$SMI" 2>/dev/null; PEAK="$(sort -n "$W/mem.txt" | tail -1) MiB"; fi
STEPS=$(grep -c '"kind":"step"' "$W/run/metrics.jsonl" 2>/dev/null || echo 0)
row "train $BIG, $MINUTES min (synth --scale $SCALE)" "$STEPS steps, $(awk -v s="$STEPS" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", s / (b - a) }') steps/s" "wall time incl. preprocessing and validation; peak GPU memory $PEAK"

echo
printf '%-44s | %-26s | %s\n' "check" "result" "notes"
printf '%s\n' "${ROWS[@]}"
rm -rf "$W"
