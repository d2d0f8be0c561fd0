#!/usr/bin/env bash
# The GPU checks of issue 15, in one go, on a machine with a CUDA GPU (the
# device tool's H200): builds deltatune against that machine's CUDA torch,
# runs the device tests (CPU and CUDA instances), then the GPU benchmark
# (bench/gpu_train.py: deltatune vs HF Transformers + PEFT), and writes
# everything to OUT_DIR. Needs .gpu-carry/ from scripts/gpu-prepare.sh.
#
#   scripts/gpu-check.sh OUT_DIR [--no-bench]
#
# OUT_DIR gets: env.txt (GPU, torch, nvcc, compiler), configure.log,
# build.log, tests.log + tests.xml, bench.jsonl + bench.md, status.txt (one
# line per stage: ok / FAILED). Each stage is timed; a failed stage does not
# stop the ones that do not depend on it.
set -uo pipefail
out=${1:?usage: scripts/gpu-check.sh OUT_DIR [--no-bench]}
bench=1
[ "${2:-}" = "--no-bench" ] && bench=0
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
carry="$root/.gpu-carry"
mkdir -p "$out"
out=$(cd "$out" && pwd)
status="$out/status.txt"
: > "$status"
stage() {  # stage NAME COMMAND...: runs, timed, records ok / FAILED
  local name=$1 start rc
  shift
  start=$(date +%s)
  "$@"
  rc=$?
  printf '%s %s %ss\n' "$name" "$([ $rc -eq 0 ] && echo ok || echo "FAILED($rc)")" \
    "$(($(date +%s) - start))" | tee -a "$status"
  return $rc
}

PY=${PYTHON:-python3}
[ -d "$carry/deps" ] || { echo "no $carry: run scripts/gpu-prepare.sh first" | tee -a "$status"; exit 1; }
deps="$carry/deps/usr"
export LD_LIBRARY_PATH="$deps/lib/x86_64-linux-gnu:$carry/fmt/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -3
  $PY -c 'import torch, transformers, peft; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__, "peft", peft.__version__)' 2>&1
  nvcc --version 2>&1 | tail -1
  ${CXX:-c++} --version 2>&1 | head -1
  cmake --version | head -1
  nproc
  lscpu | grep -E 'Model name' || true
} > "$out/env.txt" 2>&1

# Models, runs and data outside OUT_DIR (only results go back; a full
# fine-tuning delta of BERT-base alone is 440 MB).
work="${TMPDIR:-/tmp}/deltatune-gpu-work"
rm -rf "$work" && mkdir -p "$work"
# The model: the carried fp16 weights (xz of the safetensors header, then
# every value's low bytes, then its high bytes: scripts/gpu-prepare.sh)
# interleaved and widened to fp32, what both sides read.
model="$work/all-MiniLM-L6-v2"
widen_model() {
  mkdir -p "$model" && cp "$carry"/model/*.json "$carry"/model/vocab.txt "$model/" &&
    $PY - "$carry/model/model.fp16.planes.xz" "$model/model.safetensors" <<'PY'
import lzma, struct, sys
from safetensors.torch import load, save_file
import torch
data = lzma.decompress(open(sys.argv[1], "rb").read())
n = struct.unpack("<Q", data[:8])[0]
planes = data[8 + n:]
half = len(planes) // 2
body = bytearray(len(planes))
body[0::2], body[1::2] = planes[:half], planes[half:]
tensors = {k: (v.float() if v.dtype == torch.float16 else v)
           for k, v in load(data[:8 + n] + bytes(body)).items()}
save_file(tensors, sys.argv[2], metadata={"format": "pt"})
PY
}
stage model widen_model || exit 1

prefix=$($PY -c 'import torch; print(torch.utils.cmake_prefix_path)')
build="$root/build-gpu"
configure() {
  # Only the carried packages: no pkg-config, tcmalloc or Gloo from the machine
  # itself, so the build is the same wherever the script runs.
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DDELTATUNE_REQUIRE_CUDA=ON \
    -DDELTATUNE_BUILD_BENCH=OFF -DCMAKE_PREFIX_PATH="$prefix;$deps;$carry/fmt/usr" \
    -DCMAKE_DISABLE_FIND_PACKAGE_PkgConfig=ON -DDELTATUNE_WITH_TCMALLOC=OFF \
    -DDELTATUNE_WITH_GLOO=OFF \
    -DCMAKE_LIBRARY_PATH="$deps/lib/x86_64-linux-gnu" -DCMAKE_INCLUDE_PATH="$deps/include" \
    > "$out/configure.log" 2>&1
}
compile() {
  cmake --build "$build" -j"$(nproc)" --target deltatune_cli deltatune_tests > "$out/build.log" 2>&1
}
stage configure configure || { tail -30 "$out/configure.log"; exit 1; }
stage build compile || { grep -m20 -E 'error' "$out/build.log"; exit 1; }

export DELTATUNE_MODEL_DIR="$model" GLUE_DIR="$carry/glue"
tests() {
  "$build/tests/deltatune_tests" \
    --gtest_filter='Device*:*OnDevice*:GradientCheckpointing*:GradScaler*:MixedBatch.OnCuda*:Rendezvous.*:JoinJob.*' \
    --gtest_output="xml:$out/tests.xml" > "$out/tests.log" 2>&1
}
stage tests tests || tail -40 "$out/tests.log"
grep -E '^\[  (PASSED|FAILED|SKIPPED)' "$out/tests.log" | tee -a "$status"

if [ "$bench" = 1 ]; then
  run_bench() {
    $PY "$root/bench/gpu_train.py" --deltatune "$build/deltatune" --minilm "$model" \
      --work "$work" --out "$out/bench.jsonl" > "$out/bench.md" 2> "$out/bench.log"
  }
  stage bench run_bench || tail -20 "$out/bench.log"
  cat "$out/bench.md"
fi
for run in "$work"/dt-*; do  # each deltatune run's log and summary, not its weights
  [ -d "$run" ] || continue
  mkdir -p "$out/runs/$(basename "$run")"
  cp "$run"/metrics.jsonl "$run"/summary.json "$out/runs/$(basename "$run")/" 2>/dev/null
done
cat "$status"
