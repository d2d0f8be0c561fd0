#!/usr/bin/env python3
"""GLUE accuracy sweep: deltatune against the HF reference (bench/glue_reference.py),
same tasks, methods, seeds, training subsets, batch orders and recipes.

Each run appends one JSON line to --out; runs already there are skipped, so
an interrupted sweep continues where it stopped. Runs are ordered seed-major
and interleave the sides, so a sweep cut short still compares like with like.
bench/summarize_sweep.py turns the file into the tables of docs/RESULTS.md.

  python3 bench/glue_sweep.py --out bench/results/glue_sweep.jsonl
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HOME = os.environ.get("DELTATUNE_HOME", os.path.expanduser("~/.cache/deltatune"))
PYTHONS = {
    "hf113": os.path.join(HOME, "venv-torch113", "bin", "python"),
    "hflatest": os.path.join(HOME, "venv-latest", "bin", "python"),
}
# name -> (deltatune method, bias terms)
METHODS = {
    "bitfit": ("bitfit", ""),
    "bitfit-qi": ("bitfit", "query,intermediate"),
    "full": ("full", ""),
    "frozen": ("frozen", ""),
    "child-tuning-f": ("child-tuning-f", ""),
    "child-tuning-d": ("child-tuning-d", ""),
    "fish": ("fish", ""),
    "diff-pruning": ("diff-pruning", ""),
    "far": ("far", ""),
    "lora": ("lora", ""),
    "prefix-tuning": ("prefix-tuning", ""),
    "prompt-tuning": ("prompt-tuning", ""),
    "adapters": ("adapters", ""),
}
# deltatune's flags for the layouts PEFT computes (the reference side runs PEFT).
PEFT_LAYOUT = {
    "prefix-tuning": ["--prefix-positions", "shifted"],
    "prompt-tuning": ["--prompt-placement", "start", "--prompt-init", "labels"],
}
# Methods deltatune runs that the reference runner does not implement.
OURS_ONLY = {"diff-pruning"}


def blas_env():
    """OPENBLAS_CORETYPE for this CPU. OpenBLAS falls back to its Prescott
    (SSE3) kernels on virtual CPUs it does not recognise, 5x slower for fp32
    products here; the reference's linear layers run through it, so both sides
    get the kernels the CPU supports (deltatune's CLI sets the same itself)."""
    if os.environ.get("OPENBLAS_CORETYPE"):
        return {}
    try:
        flags = set(open("/proc/cpuinfo").read().split())
    except OSError:
        return {}
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return {"OPENBLAS_CORETYPE": "SkylakeX"}
    if {"avx2", "fma"} <= flags:
        return {"OPENBLAS_CORETYPE": "Haswell"}
    return {}


def run_child(cmd, env):
    """Runs cmd; returns (stdout, stderr, wall seconds, peak RSS MiB of that child)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{stderr[-2000:]}")
    return stdout, stderr, wall, usage.ru_maxrss / 1024.0


def command(side, args, task, method, seed, run_dir):
    name, bias_terms = METHODS[method]
    common = ["--task", task, "--seed", str(seed), "--max-train-samples", str(args.samples),
              "--epochs", str(args.epochs[method]), "--max-length", str(args.max_length)]
    common += ["--threads", str(args.threads)]
    if side in ("ours", "ours-bf16"):
        cmd = [args.deltatune, "train", "--model", args.model, "--method", name, "--json", "--overwrite",
               "--out", run_dir] + common
        if side == "ours-bf16":
            cmd.append("--bf16")
        if bias_terms:
            cmd += ["--bias-terms", bias_terms]
        cmd += PEFT_LAYOUT.get(name, [])
        if name == "diff-pruning":  # the fixed-mask stage as long as the relaxed one
            cmd += ["--finetune-epochs", str(args.epochs[method])]
        return cmd
    cmd = [PYTHONS[side], os.path.join(HERE, "glue_reference.py"), "--model", args.model,
           "--method", name] + common
    if bias_terms:
        cmd += ["--bias-terms", bias_terms]
    return cmd


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "results", "glue_sweep.jsonl"))
    ap.add_argument("--sides", default="ours,hf113,hflatest")
    ap.add_argument("--tasks", default="RTE,MRPC,STS-B,CoLA,SST-2")
    ap.add_argument("--methods", default="bitfit,bitfit-qi,full,frozen")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--samples", type=int, default=1000, help="training examples per run")
    ap.add_argument("--epochs", default="2",
                    help="epochs of every method (N), or per method (method=N,...)")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--jobs", type=int, default=2, help="runs at once")
    ap.add_argument("--threads", type=int, default=1, help="threads per run")
    ap.add_argument("--deltatune", default=os.path.join(ROOT, "build", "deltatune"))
    ap.add_argument("--model", default=os.path.join(HOME, "models", "all-MiniLM-L6-v2"))
    args = ap.parse_args()
    if "=" in args.epochs:
        args.epochs = {k: int(v) for k, v in (kv.split("=") for kv in args.epochs.split(","))}
    else:
        args.epochs = {m: int(args.epochs) for m in METHODS}
    if not os.environ.get("GLUE_DIR"):
        sys.exit("set GLUE_DIR to the GLUE data root")
    sides = args.sides.split(",")
    for side in sides:
        if not side.startswith("ours") and not os.path.exists(PYTHONS[side]):
            sys.exit(f"{PYTHONS[side]} is missing: run tools/setup_python.sh"
                     f"{' latest' if side == 'hflatest' else ''}")

    done = set()
    if os.path.exists(args.out):
        with open(args.out) as f:
            for line in f:
                r = json.loads(line)
                done.add((r["side"], r["task"], r["method"], r["seed"]))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), **blas_env())
    runs = [(seed, task, method, side) for seed in map(int, args.seeds.split(","))
            for task in args.tasks.split(",") for method in args.methods.split(",")
            for side in sides if side.startswith("ours") or method not in OURS_ONLY]
    todo = [r for r in runs if (r[3], r[1], r[2], r[0]) not in done]
    print(f"{len(runs)} runs, {len(runs) - len(todo)} already in {args.out}", file=sys.stderr)
    sweep_start = time.perf_counter()
    lock = threading.Lock()
    finished = [0]

    def run_one(run, scratch):
        seed, task, method, side = run
        run_dir = os.path.join(scratch, f"{side}-{task}-{method}-{seed}")
        cmd = command(side, args, task, method, seed, run_dir)
        stdout, _, wall, rss = run_child(cmd, env)
        result = json.loads(stdout.strip().splitlines()[-1])
        record = {
            "side": side, "task": task, "method": method, "seed": seed,
            "samples": args.samples, "epochs": args.epochs[method],
            "max_length": args.max_length, "threads": args.threads, "dev": result["dev"],
            "steps": result["steps"], "wall_seconds": round(wall, 2),
            "peak_rss_mib": round(rss, 1), "train_tokens_per_s": result.get("train_tokens_per_s"),
            "date": time.strftime("%Y-%m-%d"),
        }
        if not side.startswith("ours"):
            record["versions"] = {"torch": result["torch"], "transformers": result["transformers"]}
        main_metric = result["dev"]["main_metric"]
        with lock:
            with open(args.out, "a") as f:
                f.write(json.dumps(record) + "\n")
            finished[0] += 1
            k = finished[0]
            elapsed = time.perf_counter() - sweep_start
            eta = elapsed / k * (len(todo) - k)
            print(f"[{k}/{len(todo)}] {side:8s} {task:5s} {method:9s} seed {seed}: "
                  f"{main_metric} {result['dev'][main_metric]:.4f} in {wall:.0f} s "
                  f"(ETA {eta / 60:.0f} min)", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as scratch, ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_one, run, scratch) for run in todo]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:  # stop at the first failure
                future.cancel()
            raise

if __name__ == "__main__":
    main()
