"""Checks that a directory written by `deltatune export` loads in Hugging Face
Transformers and gives the probabilities deltatune gives for the same texts.

    PY=$(tools/setup_python.sh)
    build/deltatune export --delta runs/demo/delta --out /tmp/exported
    $PY tools/check_export.py --dir /tmp/exported --deltatune build/deltatune
Exits non-zero on a mismatch above --tolerance (default 1e-4).
"""
import argparse
import json
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

TEXTS = [
    "a gorgeous , witty , seductive movie .",
    "the plot is a mess and the acting is worse .",
    "it is neither as funny nor as clever as it thinks it is .",
    "an utterly charming and hilarious film that reminded me why i love going to the movies .",
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--deltatune", default="build/deltatune")
    ap.add_argument("--tolerance", type=float, default=1e-4)
    args = ap.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.dir)
    model = AutoModelForSequenceClassification.from_pretrained(args.dir).eval()
    with torch.no_grad():
        enc = tokenizer(TEXTS, padding=True, truncation=True, max_length=128, return_tensors="pt")
        hf = torch.softmax(model(**enc).logits, -1)
    ours = json.loads(subprocess.run([args.deltatune, "classify", "--model", args.dir, "--json", *TEXTS],
                                     check=True, capture_output=True, text=True).stdout)
    worst = 0.0
    for i, row in enumerate(ours):
        label = model.config.label2id[row["label"]]
        diff = abs(hf[i, label].item() - row["probability"])
        worst = max(worst, diff)
        print(f"{row['label']:>10} deltatune {row['probability']:.6f} HF {hf[i, label].item():.6f}  {TEXTS[i][:50]}")
    print(f"max |diff| = {worst:.2e} (tolerance {args.tolerance:g}); HF architecture "
          f"{model.config.architectures}, labels {model.config.id2label}")
    sys.exit(0 if worst <= args.tolerance else 1)


if __name__ == "__main__":
    main()
