#!/usr/bin/env python3
"""Golden gradients: HF BertForSequenceClassification (all-MiniLM-L6-v2, 2
labels) on 6 MRPC dev pairs, eval mode (no dropout), cross-entropy on the gold
labels, every parameter requiring grad. Writes

  tests/fixtures/train/minilm_gradients.safetensors
    input.{input_ids,token_type_ids,attention_mask,labels}
    init.classifier.{weight,bias}      the head the gradients were taken at
    grad.<HF name>                     for every bias, every LayerNorm weight,
                                       the pooler and classifier weights and
                                       layer 5's query weight
    loss                               the mean loss

so that tests/train/gradient_parity_test.cpp checks deltatune's backward pass
(fused QKV, oneDNN products, attention, LayerNorm) against PyTorch's autograd.

    PY=$(tools/setup_python.sh); $PY tools/make_gradient_fixture.py --glue-dir "$GLUE_DIR"
"""
import argparse
import os

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, BertForSequenceClassification

HOME = os.environ.get("DELTATUNE_HOME", os.path.expanduser("~/.cache/deltatune"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR"))
    ap.add_argument("--model-dir", default=os.path.join(HOME, "models", "all-MiniLM-L6-v2"))
    ap.add_argument("--out", default="tests/fixtures/train/minilm_gradients.safetensors")
    args = ap.parse_args()
    with open(os.path.join(args.glue_dir, "MRPC", "dev.tsv"), encoding="utf-8-sig") as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:7]
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    enc = tokenizer([r[3] for r in rows], [r[4] for r in rows], padding=True, truncation=True,
                    max_length=64, return_tensors="pt")
    labels = torch.tensor([int(r[0]) for r in rows])
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(args.model_dir, num_labels=2)
    model.eval()
    out = model(**enc, labels=labels)
    out.loss.backward()
    tensors = {f"input.{k}": v.contiguous() for k, v in enc.items()}
    tensors["input.labels"] = labels
    tensors["init.classifier.weight"] = model.classifier.weight.detach().clone()
    tensors["init.classifier.bias"] = model.classifier.bias.detach().clone()
    tensors["loss"] = out.loss.detach().reshape(1)
    keep = ("bert.encoder.layer.5.attention.self.query.weight", "bert.pooler.dense.weight",
            "classifier.weight")
    for name, p in model.named_parameters():
        if name.endswith(".bias") or "LayerNorm" in name or name in keep:
            tensors[f"grad.{name}"] = p.grad.detach().clone().contiguous()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    save_file(dict(sorted(tensors.items())), args.out)
    print(f"{args.out}: {len(tensors)} tensors, loss {out.loss.item():.6f}")


if __name__ == "__main__":
    main()
