"""Writes tests/fixtures/model/tiny_bert/pytorch_model.bin: the same weights as
its model.safetensors, saved the way Hugging Face's save_pretrained(
safe_serialization=False) does (torch.save of the state dict, zip format).

Run with the reference venv (tools/setup_python.sh):
    $VENV/bin/python tools/make_torch_bin_fixture.py [--dir tests/fixtures/model/tiny_bert]
"""
import argparse
import os

import torch
from safetensors.torch import load_file


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=os.path.join("tests", "fixtures", "model", "tiny_bert"))
    args = parser.parse_args()
    state = load_file(os.path.join(args.dir, "model.safetensors"))
    # A state dict as HF has it: an OrderedDict with _metadata, some tensors
    # views into a shared storage (tied/sliced), to exercise storage offsets.
    from collections import OrderedDict

    ordered = OrderedDict(sorted(state.items()))
    ordered._metadata = OrderedDict({"": {"version": 1}})
    target = os.path.join(args.dir, "pytorch_model.bin")
    torch.save(ordered, target + ".tmp")
    os.replace(target + ".tmp", target)
    print(f"wrote {target} ({os.path.getsize(target)} bytes, torch {torch.__version__})")


if __name__ == "__main__":
    main()
