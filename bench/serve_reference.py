#!/usr/bin/env python3
"""What users run today, for bench/run_serve_bench.sh to set beside `deltatune serve`.

  hf-server --model HF_DIR --port P
      HF Transformers' text-classification pipeline behind a minimal HTTP
      server answering TEI's POST /predict ({"inputs": text | [a, b]}), one
      process per task, as users deploy one model each.
  peft-mixed --base MODEL --adapters DIR... --texts FILE [--batch 32 --length 64]
      PEFT's mixed-adapter batch (forward(..., adapter_names=[...])) for LoRA,
      rows spread over the adapters; compute only.
  ort --model HF_DIR --texts FILE [--batch 32 --length 64]
      ONNX Runtime on the exported single-task model after its transformer
      optimizer (onnxruntime.transformers.optimizer, model_type bert), as its
      users run it; compute only.
  hf-compute --model HF_DIR --texts FILE
      The HF model's forward pass alone, for the same batches.

Rows are the same as bench/serve_compute.cpp's: a text's ids repeated to exactly
`length` tokens between [CLS] and [SEP]. Each prints one JSON line.
"""
import argparse
import json
import os
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch


def fixed_rows(tokenizer, texts_file, batch, length):
    texts = [line.rstrip("\n") for line in open(texts_file) if line.strip()]
    rows = []
    for r in range(batch):
        ids = tokenizer(texts[r % len(texts)])["input_ids"]
        body = ids[1:-1]
        row = [ids[0]] + [body[k % len(body)] for k in range(length - 2)] + [ids[-1]]
        rows.append(row)
    ids = torch.tensor(rows)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def timed(run, seconds):
    for _ in range(3):
        run()
    iterations, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run()
        iterations += 1
    return iterations, time.perf_counter() - start


def hf_server(args):
    from transformers import pipeline

    classify = pipeline("text-classification", model=args.model, device=-1, top_k=None)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *unused):
            pass

        def do_GET(self):
            body = b"[]" if self.path == "/tasks" else b""
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            inputs = request["inputs"]
            if isinstance(inputs, list) and len(inputs) == 2:
                inputs = {"text": inputs[0], "text_pair": inputs[1]}
            with lock:  # one forward at a time, as the pipeline is not thread-safe
                scores = classify(inputs, truncation=True)
            if scores and isinstance(scores[0], list):
                scores = scores[0]
            body = json.dumps(scores).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    ThreadingHTTPServer.request_queue_size = 1024  # the listen backlog, as deltatune serve's
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"hf-server on http://127.0.0.1:{args.port}", flush=True)
    server.serve_forever()


def peft_mixed(args):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.base)
    base = AutoModelForSequenceClassification.from_pretrained(args.base, num_labels=2)
    names = [os.path.basename(a.rstrip("/")) for a in args.adapters]
    model = PeftModel.from_pretrained(base, args.adapters[0], adapter_name=names[0])
    for name, path in zip(names[1:], args.adapters[1:]):
        model.load_adapter(path, adapter_name=name)
    model.eval()
    batch = fixed_rows(tokenizer, args.texts, args.batch, args.length)
    adapter_names = [names[r % len(names)] for r in range(args.batch)]

    def run():
        with torch.inference_mode():
            model(**batch, adapter_names=adapter_names)

    iterations, elapsed = timed(run, args.seconds)
    print(json.dumps({"reference": "peft-adapter-names", "adapters": len(names), "batch": args.batch,
                      "length": args.length, "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "seq_per_s": iterations * args.batch / elapsed}))


def ort(args):
    import onnxruntime
    from onnxruntime.transformers import optimizer
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    config = AutoConfig.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model).eval()
    batch = fixed_rows(tokenizer, args.texts, args.batch, args.length)
    with tempfile.TemporaryDirectory() as tmp:
        raw, optimized = os.path.join(tmp, "model.onnx"), os.path.join(tmp, "model.opt.onnx")
        names = ["input_ids", "attention_mask", "token_type_ids"]
        torch.onnx.export(model, tuple(batch[n] for n in names), raw, input_names=names,
                          output_names=["logits"], opset_version=14,
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names})
        opt = optimizer.optimize_model(raw, model_type="bert", num_heads=config.num_attention_heads,
                                       hidden_size=config.hidden_size)
        opt.save_model_to_file(optimized)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = onnxruntime.InferenceSession(optimized, options, providers=["CPUExecutionProvider"])
        feed = {n: batch[n].numpy() for n in names}
        iterations, elapsed = timed(lambda: session.run(None, feed), args.seconds)
    print(json.dumps({"reference": "onnxruntime-optimized", "batch": args.batch, "length": args.length,
                      "threads": options.intra_op_num_threads, "onnxruntime": onnxruntime.__version__,
                      "seq_per_s": iterations * args.batch / elapsed}))


def hf_compute(args):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model).eval()
    batch = fixed_rows(tokenizer, args.texts, args.batch, args.length)

    def run():
        with torch.inference_mode():
            model(**batch)

    iterations, elapsed = timed(run, args.seconds)
    print(json.dumps({"reference": "hf-forward", "batch": args.batch, "length": args.length,
                      "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "seq_per_s": iterations * args.batch / elapsed}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    server = sub.add_parser("hf-server")
    server.add_argument("--model", required=True)
    server.add_argument("--port", type=int, required=True)
    for name in ("peft-mixed", "ort", "hf-compute"):
        p = sub.add_parser(name)
        p.add_argument("--texts", required=True)
        p.add_argument("--batch", type=int, default=32)
        p.add_argument("--length", type=int, default=64)
        p.add_argument("--seconds", type=float, default=10)
        p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
        if name == "peft-mixed":
            p.add_argument("--base", required=True)
            p.add_argument("--adapters", nargs="+", required=True)
        else:
            p.add_argument("--model", required=True)
    args = parser.parse_args()
    if hasattr(args, "threads"):
        torch.set_num_threads(args.threads)
    {"hf-server": hf_server, "peft-mixed": peft_mixed, "ort": ort, "hf-compute": hf_compute}[args.command](args)


if __name__ == "__main__":
    main()
