#!/usr/bin/env bash
# Server soak (docs/RELIABILITY.md): `deltatune serve` with eight resident
# tasks of different methods, 64 loopback clients sending random valid and
# invalid requests, one task hot-loaded and unloaded all along, resident
# memory sampled each second. Deltas: those the serving tests train once per
# machine (/tmp/deltatune-served-deltas-v1-*, made by `make test`).
#   bench/run_soak.sh [BUILD_DIR] [SECONDS] [CLIENTS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}; seconds=${2:-180}; clients=${3:-64}
deltas=$(ls -d /tmp/deltatune-served-deltas-v1-*/ 2>/dev/null | head -1)
[ -n "$deltas" ] && [ -f "$deltas/complete" ] || { echo "no served deltas: run the ServeEngine tests first" >&2; exit 1; }
glue=${GLUE_DIR:-$root/../shared/data/glue}
texts=$(mktemp); tail -n +2 "$glue/SST-2/dev.tsv" | cut -f1 > "$texts"
hot=(--hot-task "hot=${deltas}lora4-stsb")  # SOAK_NO_HOT=1: no hot loading
[ -n "${SOAK_NO_HOT:-}" ] && hot=()
port=$((20000 + RANDOM % 20000))
args=()
for t in bitfit-sst2 lora-rte prompt-sst2 fish-stsb prefix-rte adapters-stsb diff-pruning-sst2 far-sst2; do
  args+=(--task "$t=$deltas$t")
done
# SOAK_SERVER_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2: the server on another allocator.
env ${SOAK_SERVER_PRELOAD:+LD_PRELOAD="$SOAK_SERVER_PRELOAD"} \
  "$build/deltatune" serve "${args[@]}" --port "$port" --threads 2 > /tmp/deltatune-soak-server.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$texts"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.2; done
echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores, $(date -u +%FT%TZ)" >&2
"$build/bench/serve_soak" --url "http://127.0.0.1:$port" --pid "$pid" --texts "$texts" \
  "${hot[@]}" --clients "$clients" --seconds "$seconds"
