#!/usr/bin/env python3
"""Reference encoder-forward throughput: HF Transformers (PyTorch eager), or
with --impl ort the same model exported to ONNX, put through ONNX Runtime's
transformer optimizer (onnxruntime.transformers.optimizer, model_type bert:
fused attention, SkipLayerNorm, BiasGelu, as its users deploy it) and run by
ONNX Runtime's CPU provider (fp32 only: it has no bf16 CPU kernels).

Run with the reference venv (tools/setup_python.sh prints its python):

    PY=$(tools/setup_python.sh)
    $PY bench/hf_forward.py --model minilm --batch 32 --seq-len 32 128 \\
        --dtype fp32 bf16 --threads 2

Random token ids (fixed seed) with a full attention mask, torch.no_grad(),
eval mode. bf16 runs under torch.autocast("cpu", dtype=torch.bfloat16).
Prints one JSON line per (seq_len, dtype) configuration on stdout.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import BertConfig, BertModel  # noqa: E402

transformers.logging.set_verbosity_error()


def default_model_dir():
    home = os.environ.get("DELTATUNE_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "deltatune")
    return os.path.join(home, "models", "all-MiniLM-L6-v2")


def build_model(name, model_dir):
    if name == "minilm":
        model = BertModel.from_pretrained(model_dir, local_files_only=True)
    elif name == "base":
        torch.manual_seed(0)
        cfg = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                         num_attention_heads=12, intermediate_size=3072,
                         max_position_embeddings=512, type_vocab_size=2)
        model = BertModel(cfg)
    else:
        raise ValueError(name)
    return model.eval()


class OrtModel:
    """The model exported once (dynamic batch and length) and optimized."""

    def __init__(self, model, threads, workdir):
        import onnxruntime
        from onnxruntime.transformers import optimizer

        self.config = model.config
        names = ["input_ids", "attention_mask", "token_type_ids"]
        dummy = torch.ones((2, 8), dtype=torch.long)
        raw, optimized = os.path.join(workdir, "model.onnx"), os.path.join(workdir, "model.opt.onnx")
        torch.onnx.export(model, (dummy, dummy, torch.zeros_like(dummy)), raw, input_names=names,
                          output_names=["last_hidden_state"], opset_version=14,
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names + ["last_hidden_state"]})
        opt = optimizer.optimize_model(raw, model_type="bert", num_heads=model.config.num_attention_heads,
                                       hidden_size=model.config.hidden_size)
        opt.save_model_to_file(optimized)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(optimized, options, providers=["CPUExecutionProvider"])
        self.version = onnxruntime.__version__

    def run(self, ids, mask, tt):
        feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": tt.numpy()}
        return self.session.run(None, feed)[0]


def run_config(model, batch, seq_len, dtype, warmup, iters, min_seconds, seed):
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(1000, vocab, (batch, seq_len), generator=g)
    ids[:, 0] = 101
    ids[:, -1] = 102
    mask = torch.ones_like(ids)
    tt = torch.zeros_like(ids)

    def step():
        if isinstance(model, OrtModel):
            return model.run(ids, mask, tt)
        if dtype == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state
        return model(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state

    with torch.no_grad():
        for _ in range(warmup):
            step()
        times = []
        start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
            if iters and len(times) >= iters:
                break
            if not iters and time.perf_counter() - start >= min_seconds and len(times) >= 3:
                break
    total = sum(times)
    return {
        "ms_per_batch": round(1000.0 * total / len(times), 3),
        "seq_per_s": round(batch * len(times) / total, 2),
        "iters": len(times),
        "ms_min": round(1000.0 * min(times), 3),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["minilm", "base"], default="minilm",
                    help="minilm: all-MiniLM-L6-v2 from --model-dir; base: BERT-base-size random weights (seed 0)")
    ap.add_argument("--model-dir", default=default_model_dir())
    ap.add_argument("--impl", choices=["hf", "ort"], default="hf")
    ap.add_argument("--batch", type=int, nargs="+", default=[32])
    ap.add_argument("--seq-len", type=int, nargs="+", default=[128])
    ap.add_argument("--dtype", choices=["fp32", "bf16"], nargs="+", default=["fp32"])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="torch.set_num_threads (default: torch's default)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=0, help="timed iterations (0: use --min-seconds)")
    ap.add_argument("--min-seconds", type=float, default=5.0, help="time each configuration at least this long")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    model = build_model(args.model, args.model_dir)
    extra = {}
    if args.impl == "ort":
        import tempfile
        workdir = tempfile.mkdtemp()
        model = OrtModel(model, args.threads, workdir)
        extra = {"onnxruntime": model.version}
        args.dtype = ["fp32"]
    for dtype, seq_len, batch in ((d, n, b) for d in args.dtype for n in args.seq_len for b in args.batch):
        if seq_len > model.config.max_position_embeddings:
            sys.exit("--seq-len %d exceeds max_position_embeddings" % seq_len)
        r = run_config(model, batch, seq_len, dtype, args.warmup, args.iters,
                       args.min_seconds, args.seed)
        line = {
            "impl": "hf-transformers" if args.impl == "hf" else "onnxruntime-optimized",
            **extra,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "model": args.model,
            "batch": batch,
            "seq_len": seq_len,
            "dtype": dtype,
            "threads": torch.get_num_threads(),
            "seq_per_s": r["seq_per_s"],
            "ms_per_batch": r["ms_per_batch"],
            "ms_min": r["ms_min"],
            "iters": r["iters"],
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
