#!/usr/bin/env python3
"""Training speed and memory: deltatune against HF Transformers, in one run.

For each model (all-MiniLM-L6-v2, and a BERT-base-size model with random
weights), method (BitFit, full fine-tuning) and precision (fp32; bf16, which is
autocast on both sides), trains the same MRPC subset for the same number of
steps with the same recipe, batch order and thread count, and reports:
training tokens/s (real tokens, training steps only) and peak RSS of the whole
process. Runs alternate sides and repeat --repeats times; the best tokens/s of
each is kept (the figure least disturbed by other load). Writes
bench/results/train-speed-<date>.json and prints a Markdown table of ratios.

  python3 bench/train_speed.py                     # everything, ~25 min on 2 cores
  python3 bench/train_speed.py --models minilm --steps 40
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from glue_sweep import HOME, PEFT_LAYOUT, PYTHONS, blas_env, run_child  # noqa: E402

MINILM = os.path.join(HOME, "models", "all-MiniLM-L6-v2")

MAKE_BERT_BASE = r"""
import os, shutil, sys, torch
from transformers import BertConfig, BertModel
out, tokenizer_dir = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
config = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                    num_attention_heads=12, intermediate_size=3072)
BertModel(config).save_pretrained(out, safe_serialization=True)
for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
    shutil.copy(os.path.join(tokenizer_dir, f), out)
"""


def bert_base_dir():
    path = os.path.join(HOME, "models", "bert-base-random")
    if not os.path.exists(os.path.join(path, "model.safetensors")):
        tmp = path + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run([PYTHONS["hf113"], "-c", MAKE_BERT_BASE, tmp, MINILM], check=True)
        os.replace(tmp, path)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="minilm,bert-base")
    ap.add_argument("--methods", default="bitfit,full")
    ap.add_argument("--precisions", default="fp32,bf16,bf16-plain",
                    help="bf16-plain: deltatune with plain autocast (frozen weights cast on "
                         "every forward pass, DELTATUNE_PREPARED_WEIGHTS=0); deltatune only")
    ap.add_argument("--sides", default="ours,hf113")
    ap.add_argument("--task", default="MRPC")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps per run (MiniLM)")
    ap.add_argument("--base-steps", type=int, default=10, help="optimizer steps per run (BERT-base)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--deltatune", default=os.path.join(ROOT, "build", "deltatune"))
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if not os.environ.get("GLUE_DIR"):
        sys.exit("set GLUE_DIR to the GLUE data root")
    models = {"minilm": MINILM}
    if "bert-base" in args.models:
        models["bert-base"] = bert_base_dir()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), **blas_env())

    rows = []
    for model in args.models.split(","):
        steps = args.steps if model == "minilm" else args.base_steps
        for method in args.methods.split(","):
            for precision in args.precisions.split(","):
                best = {}
                for _ in range(args.repeats):
                    for side in args.sides.split(","):
                        if precision == "bf16-plain" and side != "ours":
                            continue
                        run_env = dict(env)
                        if precision == "bf16-plain":
                            run_env["DELTATUNE_PREPARED_WEIGHTS"] = "0"
                        common = ["--task", args.task, "--method", method, "--model",
                                  models[model], "--max-train-samples", str(args.samples),
                                  "--max-steps", str(steps), "--batch-size",
                                  str(args.batch_size), "--threads", str(args.threads)]
                        if precision.startswith("bf16"):
                            common.append("--bf16")
                        if side.startswith("ours"):
                            cmd = [args.deltatune, "train", "--json", "--overwrite", "--out",
                                   f"/tmp/deltatune-speed-{os.getpid()}"] + common
                            cmd += PEFT_LAYOUT.get(method, [])  # what the PEFT side computes
                        else:
                            cmd = [PYTHONS[side], os.path.join(HERE, "glue_reference.py")
                                   ] + common
                        stdout, _, wall, rss = run_child(cmd, run_env)
                        result = json.loads(stdout.strip().splitlines()[-1])
                        tps = result["train_tokens_per_s"]
                        print(f"{model} {method} {precision} {side}: {tps:.0f} tok/s, "
                              f"peak RSS {rss:.0f} MiB", file=sys.stderr, flush=True)
                        if side not in best or tps > best[side]["tokens_per_s"]:
                            best[side] = {"tokens_per_s": tps, "peak_rss_mib": rss,
                                          "steps": result["steps"]}
                            if not side.startswith("ours"):  # its train_seconds exclude eval
                                best[side]["tokens_per_example"] = (
                                    tps * result["train_seconds"]
                                    / (result["steps"] * args.batch_size))
                            if "stages" in result:
                                best[side]["stages"] = {
                                    st["stage"]: st.get("train_tokens_per_s")
                                    for st in result["stages"] if "steps" in st}
                        best[side]["peak_rss_mib"] = min(best[side]["peak_rss_mib"], rss)
                rows.append({"model": model, "method": method, "precision": precision,
                             "sides": best})
    peak = gemm_peak(args.threads, env) if "fp32" in args.precisions.split(",") else None
    stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
    out = args.out or os.path.join(HERE, "results", f"train-speed-{stamp}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    meta = {"date": stamp, "threads": args.threads, "task": args.task, "samples": args.samples,
            "batch_size": args.batch_size, "blas": env.get("OPENBLAS_CORETYPE", "auto"),
            "steps": {"minilm": args.steps,
                                                     "bert-base": args.base_steps},
            "command": " ".join(sys.argv), "gemm_peak_fp32_gflops": peak}

    print_ratio_table(rows, next(s for s in args.sides.split(",") if not s.startswith("ours")))
    print_method_table(rows)
    if peak:
        print_gemm_share(rows, models, peak)
    with open(out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(f"results: {out}", file=sys.stderr)


def print_ratio_table(rows, reference):
    """deltatune against `reference` (hf113, hflatest) per model, method and precision."""
    print(f"reference: {reference}")
    ref_fp32 = {(r["model"], r["method"]): r["sides"].get(reference, {}).get("tokens_per_s")
                for r in rows if r["precision"] == "fp32"}
    print("| model | method | precision | deltatune tok/s | HF tok/s | ratio | vs HF fp32 "
          "| deltatune RSS MiB | HF RSS MiB | RSS ratio |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    ref_bf16 = {(r["model"], r["method"]): r["sides"].get(reference)
                for r in rows if r["precision"] == "bf16"}
    for r in rows:
        ours, hf = r["sides"].get("ours"), r["sides"].get(reference)
        if r["precision"] == "bf16-plain":
            hf = ref_bf16.get((r["model"], r["method"]))
        if not ours or not hf:
            continue
        base = ref_fp32.get((r["model"], r["method"]))
        vs_fp32 = f"{ours['tokens_per_s'] / base:.2f}x" if base else "-"
        print(f"| {r['model']} | {r['method']} | {r['precision']} | {ours['tokens_per_s']:.0f} "
              f"| {hf['tokens_per_s']:.0f} | {ours['tokens_per_s'] / hf['tokens_per_s']:.2f}x "
              f"| {vs_fp32} | {ours['peak_rss_mib']:.0f} "
              f"| {hf['peak_rss_mib']:.0f} | {ours['peak_rss_mib'] / hf['peak_rss_mib']:.2f} |")


GEMM_PEAK = r"""
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
best = 0.0
for _ in range(7):
    start = time.perf_counter()
    for _ in range(10):
        torch.matmul(a, b)
    best = max(best, 10 * 2 * 1024 ** 3 / (time.perf_counter() - start) / 1e9)
print(best)
"""


def gemm_peak(threads, env):
    """fp32 GFLOP/s of a 1024^3 product through torch 1.13 (the reference's
    BLAS), best of 7: the machine's GEMM rate in this run."""
    out = subprocess.run([PYTHONS["hf113"], "-c", GEMM_PEAK, str(threads)], env=env,
                         check=True, capture_output=True, text=True).stdout
    return float(out.strip())


def step_flops_per_token(model_dir, method, tokens_per_example):
    """Floating-point operations of one training step per real token: the
    encoder's linear layers forward (2 P per token for P weights), their input
    gradients backward (2 P, every method: the lowest trained tensor sits in
    the embeddings or the first layer) and, for full fine-tuning, their weight
    gradients (2 P); attention's two products forward (4 L H per token and
    layer, L the sequence length) and four backward (8 L H). Padding and the
    elementwise work are not counted, so the rate is a lower bound."""
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    h, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    linear = layers * (4 * h * h + 2 * h * i)
    passes = 3 if method == "full" else 2
    attention = layers * 12 * tokens_per_example * h
    return 2 * linear * passes + attention


def print_gemm_share(rows, models, peak):
    print()
    print(f"GEMM peak (fp32, 1024^3 torch.matmul, this run): {peak:.0f} GFLOP/s")
    print()
    print("| model | method | tok/s | tokens/example | GFLOP/token | GFLOP/s | share of peak |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        # Both sides train the same batches; the reference times its steps alone.
        ours = r["sides"].get("ours")
        per_example = next((side["tokens_per_example"] for name, side in r["sides"].items()
                            if "tokens_per_example" in side), None)
        if r["precision"] != "fp32" or not ours or not per_example:
            continue
        flops = step_flops_per_token(models[r["model"]], r["method"], per_example)
        rate = flops * ours["tokens_per_s"] / 1e9
        ours["step_gflops"] = rate
        print(f"| {r['model']} | {r['method']} | {ours['tokens_per_s']:.0f} "
              f"| {per_example:.1f} | {flops / 1e9:.3f} | {rate:.0f} | {rate / peak:.0%} |")


def print_method_table(rows):
    """deltatune's methods against its own full fine-tuning and BitFit on the
    same batches: tokens/s (for methods with stages, the last stage's, others
    listed), time per step relative to full fine-tuning, peak RSS."""
    ours = {(r["model"], r["precision"], r["method"]): r["sides"]["ours"]
            for r in rows if "ours" in r["sides"]}
    if len({m for (_, _, m) in ours}) < 3:
        return
    print()
    print("| model | precision | method | tok/s | time/step vs full | time/step vs BitFit "
          "| peak RSS MiB | RSS vs full | stages tok/s |")
    print("|---|---|---|---:|---:|---:|---:|---:|---|")
    for (model, precision, method), o in ours.items():
        full = ours.get((model, precision, "full"))
        bitfit = ours.get((model, precision, "bitfit"))
        vs = lambda ref: f"{ref['tokens_per_s'] / o['tokens_per_s']:.2f}" if ref else "-"
        rss = f"{o['peak_rss_mib'] / full['peak_rss_mib']:.2f}" if full else "-"
        stages = ", ".join(f"{k} {v:.0f}" for k, v in o.get("stages", {}).items() if v)
        print(f"| {model} | {precision} | {method} | {o['tokens_per_s']:.0f} | {vs(full)} "
              f"| {vs(bitfit)} | {o['peak_rss_mib']:.0f} | {rss} | {stages or '-'} |")


if __name__ == "__main__":
    main()
