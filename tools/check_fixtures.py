#!/usr/bin/env python3
"""Re-load the golden fixtures written by tools/make_fixtures.py and check them.

    PY=$(tools/setup_python.sh)
    $PY tools/check_fixtures.py --fixtures tests/fixtures [--model-dir DIR]

Checks: jsonl schema and self-consistency; re-tokenising every case with the
tokenizer gives the stored ids; every model folder loads with
from_pretrained and reproduces its expected.safetensors; MiniLM reproduces
minilm_expected.safetensors and its inputs re-tokenise to the stored ids;
total size. Also prints, for information, where HF's slow (pure Python)
tokenizers disagree with the fast ones on the same cases.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertModel,
    BertTokenizer,
    RobertaTokenizer,
    RobertaTokenizerFast,
)

transformers.logging.set_verbosity_error()

failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)
        print("FAIL:", msg)


def load_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def longest_first(la, lb, budget):
    """Content lengths kept by the fast (Rust) tokenizer's longest_first.

    The shorter side n1 (a when equal) and the longer n2: if n1 fits in
    half the budget n1 is kept and n2 gets the rest; otherwise the shorter
    side gets floor(budget/2) and the longer ceil(budget/2). With equal
    lengths a gets the floor and b the ceil (HF's slow Python tokenizers
    remove one token at a time from the longer side, b on ties, so they
    give a the ceil instead).
    """
    if la + lb <= budget:
        return la, lb
    swap = la > lb
    n1, n2 = (lb, la) if swap else (la, lb)
    t2 = n1 if n1 > budget else max(n1, budget - n1)
    t1 = n1
    if t1 + t2 > budget:
        t1 = budget // 2
        t2 = t1 + budget % 2
    t1, t2 = min(n1, t1), min(n2, t2)
    return (t2, t1) if swap else (t1, t2)


def check_truncation_rule(fast, rows, name):
    nsp = fast.num_special_tokens_to_add(pair=True)
    sep = fast.sep_token_id
    checked = 0
    for i, r in enumerate(rows):
        if not r["b"] or not (r["tag"].startswith("glue/") or r["tag"].startswith("trunc/")):
            continue
        la = len(fast(r["a"], add_special_tokens=False)["input_ids"])
        lb = len(fast(r["b"], add_special_tokens=False)["input_ids"])
        ta = r["input_ids"].index(sep) - 1
        tb = len(r["input_ids"]) - ta - nsp
        want = longest_first(la, lb, r["max_length"] - nsp)
        check((ta, tb) == want, "%s:%d longest_first kept %s of %s, rule says %s (max_length %d)" % (
            name, i, (ta, tb), (la, lb), want, r["max_length"]))
        checked += 1
    print("   longest_first rule holds on %d pair cases" % checked)


def check_cases(path, fast, slow, name):
    rows = load_jsonl(path)
    tags = {}
    slow_diff = {}
    for i, r in enumerate(rows):
        for k in ("a", "b", "max_length", "input_ids", "token_type_ids", "attention_mask", "tokens"):
            check(k in r, "%s:%d missing %s" % (name, i, k))
        n = len(r["input_ids"])
        check(len(r["token_type_ids"]) == n and len(r["attention_mask"]) == n and len(r["tokens"]) == n,
              "%s:%d length mismatch" % (name, i))
        check(all(m == 1 for m in r["attention_mask"]), "%s:%d mask not all ones" % (name, i))
        check(n <= r["max_length"], "%s:%d longer than max_length" % (name, i))
        enc = fast(r["a"], r["b"], truncation="longest_first", max_length=r["max_length"],
                   return_token_type_ids=True)
        check(enc["input_ids"] == r["input_ids"], "%s:%d ids differ on re-tokenising" % (name, i))
        check(enc["token_type_ids"] == r["token_type_ids"], "%s:%d type ids differ" % (name, i))
        check(fast.convert_ids_to_tokens(r["input_ids"]) == r["tokens"], "%s:%d tokens differ" % (name, i))
        tag = r.get("tag", "?")
        tags[tag] = tags.get(tag, 0) + 1
        if slow is not None:
            try:
                s = slow(r["a"], r["b"], truncation="longest_first", max_length=r["max_length"])["input_ids"]
            except Exception as e:  # noqa: BLE001
                s = "error: %s" % e
            if s != r["input_ids"]:
                slow_diff.setdefault(tag, []).append((i, r["a"][:40], (r["b"] or "")[:40], r["max_length"]))
    check_truncation_rule(fast, rows, name)
    real = sum(v for k, v in tags.items() if k.startswith("glue/"))
    print("%s: %d cases (%d real GLUE at max_length 128), %d bytes" % (name, len(rows), real, os.path.getsize(path)))
    print("   tags:", tags)
    check(real >= 1000, "%s: fewer than 1000 real GLUE cases" % name)
    if slow is not None:
        total = sum(len(v) for v in slow_diff.values())
        print("   slow tokenizer differs from fast on %d cases:" % total)
        for tag, lst in sorted(slow_diff.items()):
            print("     %-36s %d  e.g. %r" % (tag, len(lst), lst[:3]))
    return rows


def check_model(d, base_attr):
    exp = load_file(os.path.join(d, "expected.safetensors"))
    model = AutoModelForSequenceClassification.from_pretrained(d, local_files_only=True).eval()
    base = getattr(model, base_attr)
    ids, mask, tt = exp["input_ids"], exp["attention_mask"], exp["token_type_ids"]
    check(ids.dtype == torch.int64 and mask.dtype == torch.int64 and tt.dtype == torch.int64, d + ": int dtypes")
    check(bool((mask == 0).any()), d + ": no padding in the batch")
    lens = mask.sum(1).tolist()
    check(len(set(lens)) == len(lens), d + ": lengths not all different")
    pad = model.config.pad_token_id
    check(bool((ids[mask == 0] == pad).all()), d + ": padding is not pad_token_id")
    with torch.no_grad():
        bo = base(input_ids=ids, attention_mask=mask, token_type_ids=tt, output_hidden_states=True)
        logits = model(input_ids=ids, attention_mask=mask, token_type_ids=tt).logits
    got = {"last_hidden_state": bo.last_hidden_state, "logits": logits,
           "embedding_output": bo.hidden_states[0]}
    if "pooler_output" in exp:
        got["pooler_output"] = bo.pooler_output
    for k, v in got.items():
        check(k in exp, "%s: %s missing" % (d, k))
        if k in exp:
            err = (exp[k] - v).abs().max().item()
            check(exp[k].dtype == torch.float32 and exp[k].shape == v.shape and err < 1e-5,
                  "%s: %s max err %g" % (d, k, err))
    std = exp["last_hidden_state"][mask.bool()].std().item()
    print("%s: B,L=%s lengths=%s num_labels=%d logits=%s hidden std=%.3f" % (
        os.path.basename(d), tuple(ids.shape), lens, model.config.num_labels,
        [round(x, 3) for x in exp["logits"][:, 0].tolist()], std))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", default="tests/fixtures")
    home = os.environ.get("DELTATUNE_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "deltatune")
    ap.add_argument("--model-dir", default=os.path.join(home, "models", "all-MiniLM-L6-v2"))
    ap.add_argument("--no-slow", action="store_true", help="skip the slow-vs-fast comparison")
    args = ap.parse_args()
    fx = args.fixtures
    torch.set_num_threads(1)

    bert_fast = AutoTokenizer.from_pretrained(args.model_dir, use_fast=True, local_files_only=True)
    bert_slow = None if args.no_slow else BertTokenizer.from_pretrained(args.model_dir, local_files_only=True)
    check_cases(os.path.join(fx, "text", "bert_cases.jsonl"), bert_fast, bert_slow, "bert_cases")

    bpe_dir = os.path.join(fx, "text", "roberta_bpe")
    rob_fast = RobertaTokenizerFast.from_pretrained(bpe_dir, local_files_only=True)
    rob_slow = None if args.no_slow else RobertaTokenizer.from_pretrained(bpe_dir, local_files_only=True)
    check(len(rob_fast) == 2000, "roberta_bpe vocab size %d" % len(rob_fast))
    check([rob_fast.convert_tokens_to_ids(t) for t in ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]] == [0, 1, 2, 3, 4],
          "roberta special ids")
    check_cases(os.path.join(fx, "text", "roberta_cases.jsonl"), rob_fast, rob_slow, "roberta_cases")

    for name, attr in [("tiny_bert", "bert"), ("tiny_bert_regression", "bert"),
                       ("tiny_roberta", "roberta"), ("tiny_electra", "electra")]:
        check_model(os.path.join(fx, "model", name), attr)

    exp = load_file(os.path.join(fx, "model", "minilm_expected.safetensors"))
    inputs = load_jsonl(os.path.join(fx, "model", "minilm_inputs.jsonl"))
    check(len(inputs) == exp["input_ids"].shape[0] == 16, "minilm: 16 inputs")
    for i, r in enumerate(inputs):
        ids = bert_fast(r["a"], r["b"], truncation="longest_first", max_length=r["max_length"])["input_ids"]
        n = int(exp["attention_mask"][i].sum())
        check(ids == exp["input_ids"][i, :n].tolist(), "minilm input %d ids" % i)
    model = BertModel.from_pretrained(args.model_dir, local_files_only=True).eval()
    with torch.no_grad():
        o = model(input_ids=exp["input_ids"], attention_mask=exp["attention_mask"],
                  token_type_ids=exp["token_type_ids"])
    for k in ("last_hidden_state", "pooler_output"):
        err = (o[k] - exp[k]).abs().max().item()
        check(err < 1e-4, "minilm %s max err %g" % (k, err))
    # each row alone (no padding) must match the padded batch on real tokens
    worst = 0.0
    with torch.no_grad():
        for i in range(exp["input_ids"].shape[0]):
            n = int(exp["attention_mask"][i].sum())
            oi = model(input_ids=exp["input_ids"][i:i + 1, :n], token_type_ids=exp["token_type_ids"][i:i + 1, :n])
            worst = max(worst, (oi.last_hidden_state[0] - exp["last_hidden_state"][i, :n]).abs().max().item())
    check(worst < 1e-4, "minilm unpadded vs padded max err %g" % worst)
    print("minilm: shape %s, lengths %s, pairs %d, unpadded-vs-padded max err %.2g" % (
        tuple(exp["last_hidden_state"].shape), exp["attention_mask"].sum(1).tolist(),
        sum(r["b"] is not None for r in inputs), worst))

    total = 0
    for root, _, files in os.walk(fx):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    print("total size of %s: %d bytes" % (fx, total))
    check(total < 5 * 1024 * 1024, "fixtures over 5 MiB")

    if failures:
        print("%d check(s) failed" % len(failures))
        sys.exit(1)
    print("all fixture checks passed")


if __name__ == "__main__":
    main()
