#!/usr/bin/env python3
"""Step-by-step training trajectory: deltatune against the HF reference.

Runs one GLUE configuration on both sides (bench/glue_sweep.py's commands,
same training subset, batch order, recipe and seed) with the training loss
logged at every step, and prints where the two losses part. Both sides seed
the generator right before the head's draw and again before the first step,
so with the same seed they start from the same head and, where the forward
passes call dropout in the same order on the same shapes, draw the same
dropout masks: the trajectories can then agree to rounding, and any gap in
the dev metric is not randomness. --dropout 0 takes the masks out of the
comparison; --init-from copies given starting values into both sides.

    GLUE_DIR=../shared/data/glue python3 bench/trajectory.py --task STS-B \\
        --method bitfit-qi --seed 0 --samples 500 --epochs 2

Writes one JSON line per run (both sides' losses and dev metrics) to --out.
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import glue_sweep  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", required=True)
    ap.add_argument("--method", required=True, choices=sorted(glue_sweep.METHODS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--dropout", type=float, help="every dropout rate, both sides")
    ap.add_argument("--init-from", help="safetensors of starting values, both sides")
    ap.add_argument("--copy-init", action="store_true",
                    help="start deltatune from the reference's initial trainable values "
                    "(LoRA factors, prefix MLP, adapters: drawn differently on each side)")
    ap.add_argument("--reference", default="hf113", choices=sorted(glue_sweep.PYTHONS))
    ap.add_argument("--bf16", action="store_true", help="both sides in bf16 autocast")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--deltatune", default=os.path.join(glue_sweep.ROOT, "build", "deltatune"))
    ap.add_argument("--model", default=os.path.join(glue_sweep.HOME, "models",
                                                    "all-MiniLM-L6-v2"))
    ap.add_argument("--out", default=os.path.join(glue_sweep.HERE, "results",
                                                  "trajectories.jsonl"))
    args = ap.parse_args()
    if not os.environ.get("GLUE_DIR"):
        sys.exit("set GLUE_DIR to the GLUE data root")
    sweep_args = argparse.Namespace(samples=args.samples, epochs={args.method: args.epochs},
                                    max_length=args.max_length, threads=args.threads,
                                    deltatune=args.deltatune, model=args.model)
    extra = ["--log-every", "1"]
    if args.max_steps:
        extra += ["--max-steps", str(args.max_steps)]
    if args.dropout is not None:
        extra += ["--dropout", str(args.dropout)]
    if args.init_from:
        extra += ["--init-from", args.init_from]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), **glue_sweep.blas_env())

    sides = {}
    with tempfile.TemporaryDirectory() as scratch:
        ours_side = "ours-bf16" if args.bf16 else "ours"
        copied = os.path.join(scratch, "reference-init.safetensors")
        for side in (args.reference, ours_side) if args.copy_init else (ours_side,
                                                                         args.reference):
            run_dir = os.path.join(scratch, side)
            cmd = glue_sweep.command(side, sweep_args, args.task, args.method, args.seed,
                                     run_dir) + extra
            if args.copy_init:
                cmd += ["--init-from", copied] if side == ours_side else ["--dump-init", copied]
            if args.bf16 and not side.startswith("ours"):
                cmd.append("--bf16")
            print(f"[trajectory] {' '.join(cmd)}", file=sys.stderr, flush=True)
            stdout, _, wall, _ = glue_sweep.run_child(cmd, env)
            summary = json.loads(stdout.strip().splitlines()[-1])
            if side.startswith("ours"):
                with open(os.path.join(run_dir, "metrics.jsonl")) as f:
                    lines = [json.loads(line) for line in f]
                losses = [(r["step"], r["loss"]) for r in lines if r.get("split") == "train"]
                evals = [r for r in lines if r.get("split") == "dev"]
            else:
                losses = [(r["step"], r["loss"]) for r in summary["losses"]]
                evals = summary["history"]
            metric = summary["dev"]["main_metric"]
            sides[side] = {"losses": losses, "dev": summary["dev"], "wall_seconds": wall,
                           "dev_history": [(r["step"], r[metric]) for r in evals]}

    ours, ref = sides[ours_side], sides[args.reference]
    ref_loss = dict(ref["losses"])
    diffs = [(step, loss, ref_loss[step]) for step, loss in ours["losses"] if step in ref_loss]
    if not diffs:
        sys.exit("no common logged steps")
    rel = [abs(a - b) / max(abs(b), 1e-12) for _, a, b in diffs]
    first_apart = next((step for (step, _, _), r in zip(diffs, rel) if r > 1e-3), None)
    metric = ours["dev"]["main_metric"]
    print(f"{'step':>5} {'deltatune':>12} {'reference':>12} {'rel diff':>9}")
    shown = sorted({0, 1, 2, 4, 9, 19, 49, 99, len(diffs) - 1} & set(range(len(diffs))))
    for i in shown:
        step, a, b = diffs[i]
        print(f"{step:5d} {a:12.6f} {b:12.6f} {rel[i]:9.2e}")
    print(f"steps compared {len(diffs)}; max relative loss difference {max(rel):.2e}; "
          f"first step more than 1e-3 apart: {first_apart}")
    ref_history = dict(ref["dev_history"])
    for step, value in ours["dev_history"]:
        if step in ref_history:
            print(f"dev {metric} after step {step}: deltatune {value:.4f}, reference "
                  f"{ref_history[step]:.4f}")
    print(f"dev {metric} (best): deltatune {ours['dev'][metric]:.4f}, reference "
          f"{ref['dev'][metric]:.4f}")
    record = {"task": args.task, "method": args.method, "seed": args.seed,
              "samples": args.samples, "epochs": args.epochs, "max_steps": args.max_steps,
              "dropout": args.dropout, "init_from": args.init_from, "copy_init": args.copy_init, "bf16": args.bf16,
              "reference": args.reference, "date": time.strftime("%Y-%m-%d"),
              "max_relative_loss_difference": max(rel), "first_step_apart": first_apart,
              "sides": sides}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
