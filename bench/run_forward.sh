#!/usr/bin/env bash
# Encoder forward throughput: deltatune (C++), HF Transformers (PyTorch eager)
# and ONNX Runtime (optimized export) on the same machine, same thread count,
# same shapes, in one run.
# Writes bench/results/forward-<date>.json and prints a Markdown table of ratios.
# Both sides report their best batch time (deltatune: best of REPETITIONS=3
# Google Benchmark runs; HF: the fastest timed batch), which is the figure
# least disturbed by other load on a shared machine.
#
#   bench/run_forward.sh [BUILD_DIR]          (THREADS=2 MIN_SECONDS=5 by default)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-build}
threads=${THREADS:-$(nproc)}
min_seconds=${MIN_SECONDS:-5}
out_dir="$here/results"
mkdir -p "$out_dir"
stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

py=$("$here/../tools/setup_python.sh")
DELTATUNE_HOME_DIR=${DELTATUNE_HOME:-$HOME/.cache/deltatune}

echo "[bench] deltatune: $build/bench/encoder_forward (threads=$threads)" >&2
DELTATUNE_THREADS=$threads "$build/bench/encoder_forward" --benchmark_format=json \
  --benchmark_min_time="$min_seconds" --benchmark_repetitions="${REPETITIONS:-3}" --benchmark_out="$work/cpp.json" --benchmark_out_format=json >&2

# ONNX Runtime beside Debian's torch 1.13, pinned in tools/requirements-serve.txt.
py_ort=$DELTATUNE_HOME_DIR/venv-serve/bin/python
if [ ! -x "$py_ort" ]; then
  /usr/bin/python3 -m venv --system-site-packages "$DELTATUNE_HOME_DIR/venv-serve"
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$py_ort" -m pip install -q --no-deps -r "$here/../tools/requirements-serve.txt"
fi
for model in minilm base; do
  echo "[bench] HF Transformers: $model (threads=$threads)" >&2
  "$py" "$here/hf_forward.py" --model "$model" --batch 1 32 --seq-len 16 64 128 --dtype fp32 bf16 \
    --threads "$threads" --min-seconds "$min_seconds" >> "$work/hf.jsonl"
  echo "[bench] ONNX Runtime: $model (threads=$threads)" >&2
  "$py_ort" "$here/hf_forward.py" --impl ort --model "$model" --batch 1 32 --seq-len 16 64 128 \
    --threads "$threads" --min-seconds "$min_seconds" >> "$work/hf.jsonl"
done

"$py" "$here/compare_forward.py" --cpp "$work/cpp.json" --hf "$work/hf.jsonl" \
  --out "$out_dir/forward-$stamp.json"
