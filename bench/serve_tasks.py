#!/usr/bin/env python3
"""Many distinct tasks for the serving benchmark, from one trained delta.

Each copy is the trained delta with its floating-point values moved by
seeded Gaussian noise (std `--noise` times each tensor's own std), so that no
two tasks share values and a server cannot dedupe them. Random values are
fine here: the benchmark measures speed and memory, never accuracy.

    serve_tasks.py DELTA_DIR OUT_DIR --count 1000 --prefix bitfit [--peft PEFT_DIR]

With --peft, the matching PEFT adapter gets the same noise under
OUT_DIR-peft/<prefix>-<i> (for PEFT's adapter_names comparison).
"""
import argparse
import json
import os
import shutil

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file


def perturbed(path, rng, noise):
    with safe_open(path, "np") as f:
        metadata = f.metadata()
        tensors = {}
        for name in f.keys():
            value = f.get_tensor(name)
            if value.dtype.kind == "f" and value.size > 1:
                scale = float(value.std()) or 1e-3
                value = (value + rng.normal(0, noise * scale, value.shape)).astype(value.dtype)
            tensors[name] = value
    return tensors, metadata


def copy_task(source, target, weights, rng, noise):
    os.makedirs(target, exist_ok=True)
    for entry in os.listdir(source):
        if entry != weights:
            shutil.copy(os.path.join(source, entry), os.path.join(target, entry))
    tensors, metadata = perturbed(os.path.join(source, weights), rng, noise)
    save_file(tensors, os.path.join(target, weights), metadata=metadata)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("delta")
    parser.add_argument("out")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--peft", help="the delta's PEFT adapter directory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for i in range(args.count):
        name = f"{args.prefix}-{i:04d}"
        copy_task(args.delta, os.path.join(args.out, name), "delta.safetensors",
                  np.random.default_rng([args.seed, i]), args.noise)
        if args.peft:
            copy_task(args.peft, os.path.join(args.out + "-peft", name), "adapter_model.safetensors",
                      np.random.default_rng([args.seed, i]), args.noise)
    print(json.dumps({"tasks": args.count, "out": args.out, "prefix": args.prefix}))


if __name__ == "__main__":
    main()
