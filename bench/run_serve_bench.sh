#!/usr/bin/env bash
# The serving benchmark (docs/BENCHMARKS.md "Serving many tasks"), all in one run:
#   1. `deltatune serve` on loopback under bench/serve_load (closed loop, one
#      input per request, requests spread evenly over the tasks): 1, 16, 64 and
#      1,000 BitFit tasks mixed, 64 grouped per task, 16 LoRA, 16 prompt tasks;
#      resident memory with 1 and 1,000 tasks;
#   2. HF Transformers' pipeline behind a minimal Python HTTP server, one
#      process per task, for 2 and 16 tasks, under the same load generator;
#   3. compute only, batch 32 x 64 tokens: the engine's forward pass (single
#      task, mixed, grouped; sparse corrections vs merged copies), PEFT's
#      adapter_names mixed LoRA batch, ONNX Runtime (optimized) and HF.
# Output: one JSON line per measurement in $OUT (default
# bench/results/serve-<UTC stamp>.jsonl), the machine record first.
#
#   bench/run_serve_bench.sh [BUILD_DIR]
# Environment: THREADS (2), CLIENTS (32), REQUESTS (2000), SECONDS_COMPUTE (10),
# WORK (/tmp/deltatune-serve-bench), GLUE_DIR, DELTATUNE_MODEL_DIR.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
cli=$build/deltatune
model=${DELTATUNE_MODEL_DIR:-$HOME/.cache/deltatune/models/all-MiniLM-L6-v2}
glue=${GLUE_DIR:-$root/../shared/data/glue}
work=${WORK:-/tmp/deltatune-serve-bench}
threads=${THREADS:-2}
clients=${CLIENTS:-32}
requests=${REQUESTS:-2000}
compute_seconds=${SECONDS_COMPUTE:-10}
out=${OUT:-$root/bench/results/serve-$(date -u +%Y-%m-%dT%H%M%SZ).jsonl}
py_serve=$HOME/.cache/deltatune/venv-serve/bin/python
py_latest=$HOME/.cache/deltatune/venv-latest/bin/python
export HF_HUB_OFFLINE=1 GLUE_DIR=$glue
# The references' venv: Debian's torch 1.13 (as the other benchmarks) with
# ONNX Runtime beside it, pinned in tools/requirements-serve.txt.
if [ ! -x "$py_serve" ]; then
  /usr/bin/python3 -m venv --system-site-packages "$(dirname "$(dirname "$py_serve")")"
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$py_serve" -m pip install -q --no-deps -r "$root/tools/requirements-serve.txt"
fi
mkdir -p "$work" "$(dirname "$out")"
: > "$out"
log() { printf '[serve-bench] %s\n' "$*" >&2; }
record() { printf '%s\n' "$1" | tee -a "$out"; }

# --- the machine -------------------------------------------------------------
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
blas_core=$(/usr/bin/python3 -c 'import ctypes; f=ctypes.CDLL("libopenblas.so.0").openblas_get_corename; f.restype=ctypes.c_char_p; print(f().decode())' 2>/dev/null || echo unknown)
record "$(printf '{"machine": {"cpu": "%s", "cores": %s, "openblas_core": "%s", "OPENBLAS_CORETYPE": "%s", "threads": %s, "date": "%s", "clients": %s, "requests": %s}}' \
  "$cpu" "$(nproc)" "$blas_core" "${OPENBLAS_CORETYPE:-}" "$threads" "$(date -u +%FT%TZ)" "$clients" "$requests")"

# --- tasks ---------------------------------------------------------------------
train_delta() {  # METHOD DIR [flags]: a real SST-2 delta, trained once
  local method=$1 dir=$2; shift 2
  [ -f "$dir/delta/delta.json" ] && return
  log "training $method on SST-2 (2,000 examples, 200 steps)"
  "$cli" train --task sst2 --method "$method" --max-train-samples 2000 --max-steps 200 \
    --max-length 64 --threads "$threads" --out "$dir" "$@" >&2
}
train_delta bitfit "$work/trained/bitfit"
train_delta lora "$work/trained/lora"
train_delta prompt-tuning "$work/trained/prompt" --num-virtual-tokens 20
train_delta fish "$work/trained/fish" --fisher-samples 256
copies() {  # NAME COUNT [--peft DIR]
  local name=$1 count=$2; shift 2
  [ -d "$work/tasks-$name/$name-$(printf %04d $((count - 1)))" ] && return
  "$py_serve" "$root/bench/serve_tasks.py" "$work/trained/$name/delta" "$work/tasks-$name" \
    --count "$count" --prefix "$name" "$@" >&2
}
copies bitfit 1000
copies lora 16 --peft "$work/trained/lora/peft"
copies prompt 16
copies fish 16
subset() {  # NAME COUNT -> a directory of COUNT task links
  local dir=$work/sets/$1-$2
  if [ ! -d "$dir" ]; then
    mkdir -p "$dir"
    for task in $(ls "$work/tasks-$1" | head -n "$2"); do ln -s "$work/tasks-$1/$task" "$dir/$task"; done
  fi
  echo "$dir"
}
tail -n +2 "$glue/SST-2/dev.tsv" | cut -f1 > "$work/sst2.txt"

# --- deltatune serve under load -----------------------------------------------------
serve_pid=""
start_serve() {  # TASKS_DIR [flags]: sets $port
  "$cli" serve --model "$model" --tasks-dir "$1" --port 0 --threads "$threads" "${@:2}" \
    > "$work/serve.out" 2> "$work/serve.err" &
  serve_pid=$!
  for _ in $(seq 600); do
    port=$(grep -o 'http://[^ ]*' "$work/serve.out" 2>/dev/null | sed 's/.*://' || true)
    [ -n "$port" ] && return
    sleep 0.1
  done
  log "serve did not start"; cat "$work/serve.err" >&2; exit 1
}
stop_serve() { kill -TERM "$serve_pid"; wait "$serve_pid" || true; }
resident() { curl -s "http://127.0.0.1:$port/metrics" | sed -n 's/^deltatune_resident_bytes //p'; }
delta_bytes() { curl -s "http://127.0.0.1:$port/tasks" | "$py_serve" -c 'import json,sys; print(sum(t["delta_bytes"] for t in json.load(sys.stdin)))'; }
load() {  # LABEL [serve_load flags]
  "$build/bench/serve_load" --url "http://127.0.0.1:$port" --texts "$work/sst2.txt" \
    --clients "$clients" --requests "$requests" --label "$1" "${@:2}"
}

for scenario in "bitfit 1" "bitfit 16" "bitfit 64" "bitfit 1000" "lora 16" "prompt 16"; do
  set -- $scenario
  start_serve "$(subset "$1" "$2")"
  idle=$(resident)
  result=$(load "deltatune serve: $2 $1 tasks, mixed")
  record "$(printf '{"serve": %s, "resident_bytes_loaded": %s, "resident_bytes_after": %s, "delta_bytes": %s}' \
    "$result" "$idle" "$(resident)" "$(delta_bytes)")"
  stop_serve
done
start_serve "$(subset bitfit 64)" --group-per-task
record "$(printf '{"serve": %s}' "$(load "deltatune serve: 64 bitfit tasks, grouped per task")")"
stop_serve
# The base alone, for the resident cost of tasks.
mkdir -p "$work/sets/none"
start_serve "$work/sets/none"
record "$(printf '{"serve_no_tasks": {"resident_bytes": %s}}' "$(resident)")"
stop_serve

# --- HF pipeline servers, one process per task ---------------------------------------
for i in $(seq 0 15); do
  name=bitfit-$(printf %04d "$i")
  [ -f "$work/hf/$name/config.json" ] || "$cli" export -d "$work/tasks-bitfit/$name" -o "$work/hf/$name" >&2
done
for count in 1 2 16; do
  pids=() urls=()
  for i in $(seq 0 $((count - 1))); do
    p=$((9100 + i))
    OMP_NUM_THREADS=$threads "$py_serve" "$root/bench/serve_reference.py" hf-server \
      --model "$work/hf/bitfit-$(printf %04d "$i")" --port "$p" > "$work/hf-$i.out" 2>&1 &
    pids+=($!) urls+=(--url "http://127.0.0.1:$p")
  done
  for i in $(seq 0 $((count - 1))); do
    until grep -q hf-server "$work/hf-$i.out" 2>/dev/null; do sleep 0.2; done
  done
  result=$("$build/bench/serve_load" "${urls[@]}" --texts "$work/sst2.txt" --clients "$clients" \
    --requests "$requests" --label "HF pipeline servers: $count processes")
  rss=0
  for pid in "${pids[@]}"; do rss=$((rss + $(ps -o rss= -p "$pid") * 1024)); done
  record "$(printf '{"hf_servers": %s, "resident_bytes": %s}' "$result" "$rss")"
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
done

# --- compute only, batch 32 x 64 ------------------------------------------------------
compute() { "$build/bench/serve_compute" --model "$model" --texts "$work/sst2.txt" --batch 32 \
  --length 64 --threads "$threads" --seconds "$compute_seconds" "$@"; }
record "{\"compute\": $(compute --tasks-dir "$work/tasks-bitfit" --tasks 1 --mode single)}"
record "{\"compute\": $(compute --tasks-dir "$work/tasks-bitfit" --tasks 64 --mode mixed)}"
record "{\"compute\": $(compute --tasks-dir "$work/tasks-bitfit" --tasks 64 --mode grouped)}"
for mode in single mixed grouped; do
  record "{\"compute\": $(compute --tasks-dir "$work/tasks-lora" --tasks 16 --mode $mode)}"
done
for sparse in correction merged; do
  record "{\"compute\": $(compute --tasks-dir "$work/tasks-fish" --tasks 16 --mode mixed --sparse $sparse)}"
done
record "{\"compute\": $("$py_serve" "$root/bench/serve_reference.py" ort --threads "$threads" \
  --model "$work/hf/bitfit-0000" --texts "$work/sst2.txt" --seconds "$compute_seconds" 2>/dev/null | tail -1)}"
record "{\"compute\": $("$py_serve" "$root/bench/serve_reference.py" hf-compute --threads "$threads" \
  --model "$work/hf/bitfit-0000" --texts "$work/sst2.txt" --seconds "$compute_seconds" 2>/dev/null | tail -1)}"
if [ -x "$py_latest" ]; then
  adapters=$(ls -d "$work/tasks-lora-peft"/lora-00{00..15})
  record "{\"compute\": $("$py_latest" "$root/bench/serve_reference.py" peft-mixed --threads "$threads" \
    --base "$model" --adapters $adapters --texts "$work/sst2.txt" --seconds "$compute_seconds" 2>/dev/null | tail -1)}"
else
  log "no $py_latest (tools/setup_python.sh latest): PEFT's adapter_names needs torch >= 2; skipped"
fi
log "results: $out"
