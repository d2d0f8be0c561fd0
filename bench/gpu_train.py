#!/usr/bin/env python3
"""Training speed and GPU memory on CUDA: deltatune against HF Transformers + PEFT, in one run.

For each model (all-MiniLM-L6-v2, and a BERT-base-size model with random
weights made here) and method (BitFit, full fine-tuning, LoRA r=8 on query and
value), both sides train the same data (sequences of exactly --length tokens)
for the same steps, batch and precision (bf16 autocast), and report training
tokens/s (every training step, first included, on both sides) and peak GPU
memory: torch.cuda.max_memory_allocated for the reference, the CUDA caching
allocator's peak for deltatune (its run summary), both reset after the model is
on the device. Inference sequences/s (forward only, batch --batch) go beside.
Writes --out (JSON lines) and prints a Markdown table of ratios.

Self-contained (no venv): runs with the Python that has torch, transformers and
peft (the GPU machine's), with the deltatune binary of a CUDA build.

  python3 bench/gpu_train.py --deltatune build-cuda/deltatune --minilm DIR --work /tmp/w \
      --out results.jsonl
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time


def make_bert_base(out, tokenizer_dir):
    import torch
    from transformers import BertConfig, BertModel
    if os.path.exists(os.path.join(out, "model.safetensors")):
        return out
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                        num_attention_heads=12, intermediate_size=3072)
    BertModel(config).save_pretrained(out, safe_serialization=True)
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if os.path.exists(os.path.join(tokenizer_dir, f)):
            shutil.copy(os.path.join(tokenizer_dir, f), out)
    return out


def make_data(path, rows, tokenizer_dir, seed):
    """TSV of sentences long enough that every one truncates to --length tokens."""
    words = [w for w in open(os.path.join(tokenizer_dir, "vocab.txt"), encoding="utf-8").read().split("\n")
             if w.isalpha() and len(w) > 2][:5000]
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        f.write("sentence\tlabel\n")
        for _ in range(rows):
            f.write(" ".join(rng.choice(words) for _ in range(200)) + f"\t{rng.randint(0, 1)}\n")


def run_deltatune(args, model_dir, variant, train_tsv, dev_tsv, work):
    method, _, option = variant.partition(":")
    out = os.path.join(work, f"dt-{os.path.basename(model_dir)}-{method}{option}")
    cmd = [args.deltatune, "train", "--model", model_dir, "--train", train_tsv, "--dev", dev_tsv,
           "--text-a", "sentence", "--label", "label", "--method", method,
           "--max-length", str(args.length), "--batch-size", str(args.batch),
           "--max-steps", str(args.steps), "--device", args.device, "--out", out, "--overwrite",
           "--json", "--log-every", "0"]
    if args.precision == "bf16":
        cmd.append("--bf16")
    # deltatune's frozen Dense weights stored in bf16 (its default under --bf16),
    # or kept fp32 for the plain rows
    cmd += ["--frozen-weights", "bf16" if option == "frozen-bf16" else "fp32"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:] or ["?"]}
    summary = None
    for line in open(os.path.join(out, "metrics.jsonl")):
        record = json.loads(line)
        if record.get("split") == "summary":
            summary = record
    infer = subprocess.run([args.deltatune, "eval", "--model", model_dir, "--delta",
                            os.path.join(out, "delta"), "--dev", dev_tsv, "--text-a", "sentence",
                            "--label", "label", "--batch-size", str(args.batch), "--device", args.device,
                            "--json"] + (["--bf16"] if args.precision == "bf16" else []),
                           capture_output=True, text=True)
    inference = json.loads(infer.stdout) if infer.returncode == 0 else {}
    return {"tokens_per_s": summary["train_tokens_per_s"],
            "peak_bytes": summary.get("device_peak_allocated_bytes"),
            "inference_seq_per_s": inference.get("examples_per_second")}


def run_reference(args, model_dir, variant, train_tsv, dev_tsv):
    method = variant.partition(":")[0]  # the reference keeps fp32 frozen weights (PEFT's usual)
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    device = torch.device(args.device)
    cuda = device.type == "cuda"

    def synchronize():
        if cuda:
            torch.cuda.synchronize()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = [l.rstrip("\n").split("\t") for l in open(train_tsv, encoding="utf-8")][1:]
    texts, labels = [r[0] for r in rows], [int(r[1]) for r in rows]
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    if method == "bitfit":
        for name, p in model.named_parameters():
            p.requires_grad_(name.endswith(".bias") or name.startswith("classifier"))
    elif method == "lora":
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=8,
                                                 target_modules=["query", "value"],
                                                 lora_dropout=0.0))
    model.to(device).train()
    lr = {"bitfit": 1e-3, "full": 4e-5, "lora": 5e-4}[method]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    batches = []
    for start in range(0, args.steps * args.batch, args.batch):
        idx = [(start + i) % len(texts) for i in range(args.batch)]
        enc = tokenizer([texts[i] for i in idx], truncation=True, max_length=args.length,
                        padding=True, return_tensors="pt")
        batches.append((enc, torch.tensor([labels[i] for i in idx])))
    synchronize()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    tokens = 0
    start = time.perf_counter()
    for enc, y in batches:
        enc = {k: v.to(device) for k, v in enc.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = model(**enc, labels=y.to(device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(enc["attention_mask"].sum())
    synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if cuda else None
    # Inference: the dev set, forward only.
    model.eval()
    dev = [l.rstrip("\n").split("\t")[0] for l in open(dev_tsv, encoding="utf-8")][1:]
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16,
                                         enabled=args.precision == "bf16"):
        for warm in range(2):
            synchronize()
            t0 = time.perf_counter()
            for s in range(0, len(dev), args.batch):
                enc = tokenizer(dev[s:s + args.batch], truncation=True, max_length=args.length,
                                padding=True, return_tensors="pt").to(device)
                model(**enc).logits.float().cpu()
            synchronize()
            infer_seconds = time.perf_counter() - t0
    del model, optimizer
    if cuda:
        torch.cuda.empty_cache()
    return {"tokens_per_s": tokens / seconds, "peak_bytes": peak,
            "inference_seq_per_s": len(dev) / infer_seconds}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--deltatune", required=True)
    ap.add_argument("--minilm", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--models", default="minilm,bert-base")
    ap.add_argument("--methods", default="bitfit,full,lora,bitfit:frozen-bf16,lora:frozen-bf16",
                    help="method[:frozen-bf16]: deltatune with --frozen-weights bf16 (bf16 only)")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--device", default="cuda", help="cpu: a smoke test of this script only")
    ap.add_argument("--dev-rows", type=int, default=512)
    args = ap.parse_args()
    import torch
    os.makedirs(args.work, exist_ok=True)
    train_tsv, dev_tsv = os.path.join(args.work, "train.tsv"), os.path.join(args.work, "dev.tsv")
    make_data(train_tsv, args.steps * args.batch, args.minilm, 1)
    make_data(dev_tsv, args.dev_rows, args.minilm, 2)
    models = {"minilm": args.minilm,
              "bert-base": lambda: make_bert_base(os.path.join(args.work, "bert-base-random"),
                                                  args.minilm)}
    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    rows = []
    with open(args.out, "a") as out:
        for name in args.models.split(","):
            model_dir = models[name]() if callable(models[name]) else models[name]
            for method in args.methods.split(","):
                if method.endswith(":frozen-bf16") and args.precision != "bf16":
                    continue
                ours = run_deltatune(args, model_dir, method, train_tsv, dev_tsv, args.work)
                ref = run_reference(args, model_dir, method, train_tsv, dev_tsv)
                row = {"model": name, "method": method, "precision": args.precision,
                       "batch": args.batch, "length": args.length, "steps": args.steps,
                       "gpu": gpu, "torch": torch.__version__, "deltatune": ours, "reference": ref,
                       "date": time.strftime("%Y-%m-%d")}
                rows.append(row)
                out.write(json.dumps(row) + "\n")
                out.flush()
                print(json.dumps(row), file=sys.stderr)
    print(f"| model | method | tokens/s ours | HF+PEFT | ratio | peak GiB ours | HF+PEFT | ratio "
          f"| infer seq/s ours | HF | ratio |  ({gpu}, torch {torch.__version__}, {args.precision}, "
          f"batch {args.batch} x {args.length})")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        o, h = r["deltatune"], r["reference"]
        if "error" in o:
            print(f"| {r['model']} | {r['method']} | error: {o['error']} |")
            continue
        gib = lambda b: (b or 0) / 2**30  # noqa: E731
        memory_ratio = gib(o['peak_bytes']) / gib(h['peak_bytes']) if h['peak_bytes'] else 0
        infer = o.get("inference_seq_per_s") or 0
        print(f"| {r['model']} | {r['method']} | {o['tokens_per_s']:.0f} | {h['tokens_per_s']:.0f} | "
              f"{o['tokens_per_s'] / h['tokens_per_s']:.2f}x | {gib(o['peak_bytes']):.2f} | "
              f"{gib(h['peak_bytes']):.2f} | {memory_ratio:.2f}x | "
              f"{infer:.0f} | {h['inference_seq_per_s']:.0f} | "
              f"{infer / h['inference_seq_per_s']:.2f}x |")


if __name__ == "__main__":
    main()
