"""LoRA, prefix and prompt adapters between Hugging Face PEFT and deltatune, both directions.

  PY=$(tools/setup_python.sh)
  # PEFT -> deltatune: PEFT-made adapters (random non-zero factors, prefixes,
  # prompts and heads) and PEFT's logits for fixed inputs, the fixtures of
  # LoraPeft.* and PromptPeft.* in CTest.
  $PY tools/peft_interop.py make-fixture --out tests/fixtures/peft --methods lora,prefix,prompt
  # deltatune -> PEFT: an adapter trained by deltatune (<run>/peft) loaded in
  # PEFT gives the probabilities `deltatune predict` gives for the same texts.
  $PY tools/peft_interop.py check --adapter runs/lora/peft --delta runs/lora/delta

The model is all-MiniLM-L6-v2 from $DELTATUNE_HOME/models. Exits non-zero on
a mismatch above --tolerance (default 1e-4).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from peft import (LoraConfig, PeftModel, PrefixTuningConfig, PromptTuningConfig,  # noqa: E402
                  PromptTuningInit, TaskType, get_peft_model)
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

HOME = os.environ.get("DELTATUNE_HOME", os.path.expanduser("~/.cache/deltatune"))
MODEL = os.path.join(HOME, "models", "all-MiniLM-L6-v2")
PAIRS = [
    ("A man is playing a guitar.", "Someone plays an instrument."),
    ("The cat sat on the mat.", "A dog barked at the mailman all night long."),
    ("Stocks fell sharply on Monday.", "Markets dropped at the start of the week."),
]


def peft_config(method):
    if method == "lora":
        return LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, lora_dropout=0.0,
                          target_modules=["query", "value", "intermediate.dense"])
    if method == "prefix":  # trained through the MLP; PEFT saves the prefixes it computes
        return PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=5,
                                  prefix_projection=True, encoder_hidden_size=64)
    return PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=5,
                              prompt_tuning_init=PromptTuningInit.TEXT,
                              prompt_tuning_init_text="is this the same meaning",
                              tokenizer_name_or_path=MODEL)


def make_fixture(args):
    for method in args.methods.split(","):
        torch.manual_seed(0)
        base = AutoModelForSequenceClassification.from_pretrained(MODEL, num_labels=3)
        model = get_peft_model(base, peft_config(method))
        with torch.no_grad():  # as if trained: non-zero B, prompts and a head away from their init
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.02)
                elif "modules_to_save" in name:
                    p.normal_(0.0, 0.1)
                elif "prompt_encoder" in name and method == "prompt":
                    p.add_(torch.randn_like(p) * 0.02)
        model.eval()
        adapter = os.path.join(args.out, f"minilm_{method}")
        model.save_pretrained(adapter)
        for extra in ("README.md",):
            path = os.path.join(adapter, extra)
            if os.path.exists(path):
                os.remove(path)
        tokenizer = AutoTokenizer.from_pretrained(MODEL)
        enc = tokenizer([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True,
                        return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc).logits
        expected = {"input_ids": enc["input_ids"].tolist(),
                    "token_type_ids": enc["token_type_ids"].tolist(),
                    "attention_mask": enc["attention_mask"].tolist(),
                    "logits": logits.tolist(), "pairs": PAIRS,
                    "made_by": f"tools/peft_interop.py make-fixture --methods {method}"}
        with open(os.path.join(args.out, f"minilm_{method}_logits.json"), "w") as f:
            json.dump(expected, f, indent=1)
        print(f"wrote {adapter} and its logits")


def check(args):
    base = AutoModelForSequenceClassification.from_pretrained(
        MODEL, num_labels=json.load(open(os.path.join(args.delta, "delta.json")))["num_labels"])
    model = PeftModel.from_pretrained(base, args.adapter).eval()
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    enc = tokenizer([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True,
                    return_tensors="pt")
    with torch.no_grad():
        peft_probs = torch.softmax(model(**enc).logits, -1)
    with tempfile.TemporaryDirectory() as tmp:
        inputs = os.path.join(tmp, "pairs.tsv")
        with open(inputs, "w") as f:
            f.write("sentence1\tsentence2\n")
            for a, b in PAIRS:
                f.write(f"{a}\t{b}\n")
        out = os.path.join(tmp, "preds.jsonl")
        subprocess.run([args.deltatune, "predict", "--delta", args.adapter, "--input", inputs,
                        "--text-a", "sentence1", "--text-b", "sentence2", "--output", out],
                       check=True)
        rows = [json.loads(line) for line in open(out)]
    labels = json.load(open(os.path.join(args.delta, "delta.json")))["label_names"]
    # `deltatune predict` gives the top label and its probability per line.
    index = torch.tensor([labels.index(r["label"]) for r in rows])
    ours = torch.tensor([r["probability"] for r in rows])
    if not torch.equal(index, peft_probs.argmax(-1)):
        sys.exit(f"top labels differ: deltatune {index.tolist()}, "
                 f"PEFT {peft_probs.argmax(-1).tolist()}")
    peft_probs = peft_probs.gather(1, index[:, None]).squeeze(1)
    diff = (ours - peft_probs).abs().max().item()
    print(f"PEFT {peft_probs.tolist()}\ndeltatune {ours.tolist()}\nmax |diff| {diff:.2e}")
    if diff > args.tolerance:
        sys.exit(f"mismatch above {args.tolerance}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    fixture = sub.add_parser("make-fixture")
    fixture.add_argument("--out", default="tests/fixtures/peft")
    fixture.add_argument("--methods", default="lora,prefix,prompt")
    c = sub.add_parser("check")
    c.add_argument("--adapter", required=True)
    c.add_argument("--delta", required=True)
    c.add_argument("--deltatune", default="build/deltatune")
    c.add_argument("--tolerance", type=float, default=1e-4)
    args = ap.parse_args()
    os.makedirs(getattr(args, "out", "."), exist_ok=True)
    {"make-fixture": make_fixture, "check": check}[args.command](args)


if __name__ == "__main__":
    main()
