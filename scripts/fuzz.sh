#!/usr/bin/env bash
# Runs every libFuzzer target of a DELTATUNE_FUZZ build for SECONDS each, on a
# working corpus seeded from fuzz/corpus/<target> (new inputs the fuzzer finds
# stay in $DELTATUNE_HOME/fuzz-corpus/<target>, reused by the next run).
# Crashes are saved to fuzz/regressions/<target>/ (CTest's fuzz smoke replays
# them). Prints one line per target and writes fuzz-results.jsonl in the build.
#   scripts/fuzz.sh BUILD_DIR SECONDS [TARGET...]
set -uo pipefail
build=${1:?build directory}; seconds=${2:-60}; shift 2 || true
root=$(cd "$(dirname "$0")/.." && pwd)
home=${DELTATUNE_HOME:-$HOME/.cache/deltatune}
# shellcheck disable=SC1091
source "$build/fuzz/../fuzz_environment.sh" 2>/dev/null || source "$build/fuzz_environment.sh"
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(safetensors torch_pickle config tokenizer dataset delta predict_request)
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
results="$build/fuzz-results.jsonl"
: > "$results"
status=0
for t in "${targets[@]}"; do
  bin="$build/fuzz/${t}_fuzz"
  [ -x "$bin" ] || { echo "fuzz: $bin missing (make fuzz builds it)" >&2; exit 1; }
  work="$home/fuzz-corpus/$t"; mkdir -p "$work" "$root/fuzz/regressions/$t"
  log="$build/fuzz-$t.log"
  "$bin" "$work" "$root/fuzz/corpus/$t" -max_total_time="$seconds" -print_final_stats=1 \
    -rss_limit_mb=4096 -timeout=20 -max_len=262144 \
    -artifact_prefix="$root/fuzz/regressions/$t/" > "$log" 2>&1
  rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  verdict=ok; [ $rc -ne 0 ] && { verdict="FOUND (see $log)"; status=1; }
  printf '%-16s %10s executions in %ss, coverage %s edges: %s\n' "$t" "${runs:-?}" "$seconds" "${cov:-?}" "$verdict"
  printf '{"target": "%s", "seconds": %s, "executions": %s, "coverage_edges": %s, "exit": %s, "date": "%s"}\n' \
    "$t" "$seconds" "${runs:-0}" "${cov:-0}" "$rc" "$(date -u +%FT%TZ)" >> "$results"
done
exit $status
