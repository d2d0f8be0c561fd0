#!/usr/bin/env bash
# Data-parallel figures for docs/SCALING.md and docs/BENCHMARKS.md, on this
# machine, in one run:
#  1. training tokens/s of 1 process (all cores) and of `deltatune launch
#     --nproc 2` (one intra-op thread each) on the same global batches;
#  2. the gradient all-reduce per step (Gloo, loopback, 2 ranks) for BitFit,
#     LoRA and full fine-tuning on MiniLM and on a BERT-base-sized model;
#  3. two ranks with the all-reduce overlapped with backward against after it
#     (--overlap-all-reduce true / false), alternated OVERLAP_REPEATS times.
#
#   bench/run_scaling.sh [OUT.jsonl]    (needs `make build`; GLUE_DIR or ../shared)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
build=${BUILD_DIR:-$root/build}
model=${DELTATUNE_MODEL:-${DELTATUNE_HOME:-$HOME/.cache/deltatune}/models/all-MiniLM-L6-v2}
glue=${GLUE_DIR:-$root/../shared/data/glue}
out=${1:-$root/bench/results/scaling-$(date +%Y%m%d).jsonl}
steps=${SCALING_STEPS:-40}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$(dirname "$out")"
: > "$out"

cores=$(nproc)
for method in bitfit lora full; do
  common=(train --task SST-2 --glue-dir "$glue" --max-train-samples 4096 --method "$method" --max-steps "$steps"
          --batch-size 32 --max-length 64 --eval-every 0 --seed 1 --model "$model")
  "$build/deltatune" "${common[@]}" --out "$work/one-$method" --threads "$cores" --json \
    > "$work/one.json" 2>/dev/null
  "$build/deltatune" launch --nproc 2 -- "${common[@]}" --out "$work/two-$method" --threads 1 \
    --json > "$work/two.json" 2>/dev/null
  python3 - "$method" "$work/one.json" "$work/two.json" "$work/two-$method/metrics.jsonl" \
    "$cores" >> "$out" <<'EOF'
import json, sys
method, one, two, log, cores = sys.argv[1:]
one = json.load(open(one)); two = json.load(open(two))
summary = [json.loads(l) for l in open(log) if '"summary"' in l][-1]
ar = summary.get("all_reduce", {})
print(json.dumps({"case": "train", "method": method, "steps": two["steps"],
                  "one_process_threads": int(cores), "one_process_tokens_per_s": one["train_tokens_per_s"],
                  "two_ranks_tokens_per_s": two["train_tokens_per_s"],
                  "ratio_two_over_one": two["train_tokens_per_s"] / one["train_tokens_per_s"],
                  "rank0_all_reduce_bytes": ar.get("bytes"), "rank0_all_reduce_s": ar.get("seconds"),
                  "rank0_train_s": two["train_seconds"]}))
EOF
done

# The all-reduce overlapped with backward, or after it: alternated, the same job.
repeats=${OVERLAP_REPEATS:-2}
for method in lora full; do
  common=(train --task SST-2 --glue-dir "$glue" --max-train-samples 4096 --method "$method" --max-steps "$steps"
          --batch-size 32 --max-length 64 --eval-every 0 --seed 1 --model "$model" --threads 1)
  for repeat in $(seq "$repeats"); do
    for overlap in false true; do
      "$build/deltatune" launch --nproc 2 -- "${common[@]}" --overlap-all-reduce "$overlap" \
        --out "$work/overlap-$method-$overlap-$repeat" --json > "$work/two.json" 2>/dev/null
      python3 - "$method" "$overlap" "$work/two.json" \
        "$work/overlap-$method-$overlap-$repeat/metrics.jsonl" >> "$out" <<'EOF'
import json, sys
method, overlap, two, log = sys.argv[1:]
two = json.load(open(two))
summary = [json.loads(l) for l in open(log) if '"summary"' in l][-1]
ar = summary.get("all_reduce", {})
print(json.dumps({"case": "overlap", "method": method, "overlap": overlap == "true",
                  "steps": two["steps"], "two_ranks_tokens_per_s": two["train_tokens_per_s"],
                  "rank0_all_reduce_wait_s": ar.get("seconds"), "rank0_train_s": two["train_seconds"]}))
EOF
    done
  done
done

# A BERT-base-sized architecture (random weights: only its parameter counts matter).
mkdir -p "$work/bert-base"
cat > "$work/bert-base/config.json" <<'EOF'
{"architectures": ["BertModel"], "model_type": "bert", "hidden_size": 768,
 "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
 "vocab_size": 30522, "max_position_embeddings": 512, "type_vocab_size": 2,
 "hidden_act": "gelu", "layer_norm_eps": 1e-12, "hidden_dropout_prob": 0.1,
 "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02, "pad_token_id": 0}
EOF
for config in "$model/config.json" "$work/bert-base/config.json"; do
  port=$((20000 + RANDOM % 20000))
  for rank in 0 1; do
    RANK=$rank WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port OMP_NUM_THREADS=1 \
      "$build/bench/allreduce_step" --config "$config" --methods bitfit,lora,full \
      > "$work/ar.$rank" &
  done
  wait
  sed 's/^{/{"case":"all_reduce",/' "$work/ar.0" >> "$out"
done
cat "$out"
