#!/usr/bin/env bash
# Start-up to answer: `deltatune predict` on 3 sentences, timed from process
# start to output, against the same model in HF Transformers' `pipeline` in a
# fresh Python process (Debian's torch 1.13 venv and the newest torch's), in one run. Also the
# floor: `deltatune --version` (shared libraries, LibTorch's registration) and
# `deltatune tokenize`. Median of RUNS (default 7) wall-clock runs each.
#
#   bench/predict_startup.sh [BUILD_DIR]     (THREADS=2 RUNS=7 by default)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "${1:-build}" && pwd)
threads=${THREADS:-$(nproc)}
runs=${RUNS:-7}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cli=$build/deltatune
model=${DELTATUNE_HOME:-$HOME/.cache/deltatune}/models/all-MiniLM-L6-v2
py113=$("$here/../tools/setup_python.sh")
py_latest=$("$here/../tools/setup_python.sh" latest)

# A BitFit delta of SST-2 (a few steps: start-up, not accuracy, is measured)
# and the same model as a plain HF directory for the pipeline.
# (GLUE SST-2 from GLUE_DIR; a failure says why on stderr.)
"$cli" train --task SST-2 --method bitfit --max-train-samples 64 --max-steps 2 \
  --out "$work/run" --threads "$threads" > /dev/null
"$cli" export --delta "$work/run/delta" --out "$work/hf" > /dev/null
printf 'sentence\nA gripping, beautifully acted film.\nDull and far too long.\nIt was fine, I suppose.\n' > "$work/three.tsv"
cat > "$work/hf.py" <<'PY'
import sys
from transformers import pipeline
p = pipeline("text-classification", model=sys.argv[1], device="cpu")
print(p(["A gripping, beautifully acted film.", "Dull and far too long.", "It was fine, I suppose."]))
PY

# Median wall-clock seconds of `runs` runs of a command.
median() {
  local times=()
  for _ in $(seq "$runs"); do
    local start end
    start=$(date +%s.%N)
    "$@" > /dev/null 2>&1
    end=$(date +%s.%N)
    times+=("$(echo "$end - $start" | bc -l)")
  done
  printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}

export OMP_NUM_THREADS=$threads
version=$(median "$cli" --version)
tokenize=$(median "$cli" tokenize --model "$model" "A gripping film.")
predict=$(median "$cli" predict --delta "$work/run/delta" --input "$work/three.tsv" --threads "$threads")
hf113=$(median "$py113" "$work/hf.py" "$work/hf")
hf_latest=$(median "$py_latest" "$work/hf.py" "$work/hf")
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)
versions() { "$1" -c 'import torch, transformers; print(f"torch {torch.__version__}, transformers {transformers.__version__}")'; }
printf '| CPU | threads | deltatune --version | tokenize | predict (3 sentences) | HF pipeline | HF / predict |\n'
printf '|---|---|---|---|---|---|---|\n'
for side in 113 latest; do
  if [ "$side" = 113 ]; then p=$py113; t=$hf113; else p=$py_latest; t=$hf_latest; fi
  printf '| %s | %s | %.2f s | %.2f s | %.2f s | %.2f s (%s) | %.2fx |\n' "$cpu" "$threads" "$version" \
    "$tokenize" "$predict" "$t" "$(versions "$p")" "$(echo "$t / $predict" | bc -l)"
done
