#!/usr/bin/env python3
"""Golden training trajectory: the HF reference (bench/glue_reference.py, plain
PyTorch, BitFit the authors' way) trains all-MiniLM-L6-v2 on a seeded
64-example SST-2 subset for 8 steps (batch 8, lr 1e-3 constant, clipping 1.0,
max length 48, seed 0, 1 thread) and records the loss of every step, once with
the config's dropout and once with dropout 0. Writes

  tests/fixtures/train/reference_trajectory.json

so that tests/train/trajectory_parity_test.cpp checks that deltatune's trainer,
from the same seed, starts from the same head (the seed's first normals),
draws the same dropout masks and takes the same steps as PyTorch.

    PY=$(tools/setup_python.sh); GLUE_DIR=../shared/data/glue $PY tools/make_trajectory_fixture.py
"""
import json
import os
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HOME = os.environ.get("DELTATUNE_HOME", os.path.expanduser("~/.cache/deltatune"))
SETTINGS = {"task": "SST-2", "method": "bitfit", "seed": 0, "max_train_samples": 64,
            "max_steps": 8, "max_length": 48, "batch_size": 8, "lr": 1e-3}


def losses(dropout):
    cmd = [sys.executable, os.path.join(ROOT, "bench", "glue_reference.py"),
           "--model", os.path.join(HOME, "models", "all-MiniLM-L6-v2"), "--threads", "1",
           "--log-every", "1", "--no-eval", "--epochs", "1"]
    for key, value in SETTINGS.items():
        cmd += ["--" + key.replace("_", "-"), str(value)]
    if dropout is not None:
        cmd += ["--dropout", str(dropout)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [r["loss"] for r in json.loads(out.strip().splitlines()[-1])["losses"]]


def main():
    if not os.environ.get("GLUE_DIR"):
        sys.exit("set GLUE_DIR to the GLUE data root")
    fixture = {
        "settings": SETTINGS,
        "torch": torch.__version__,
        # Dropout masks come from bernoulli_, whose CPU kernel differs with MKL.
        "mkl": torch.backends.mkl.is_available(),
        "losses_with_dropout": losses(None),
        "losses_without_dropout": losses(0.0),
    }
    path = os.path.join(ROOT, "tests", "fixtures", "train", "reference_trajectory.json")
    with open(path + ".tmp", "w") as f:
        json.dump(fixture, f, indent=1)
        f.write("\n")
    os.replace(path + ".tmp", path)
    print(path)


if __name__ == "__main__":
    main()
