#!/usr/bin/env python3
"""The reference side of deltatune's GLUE accuracy sweep and training benchmark.

HF Transformers in plain PyTorch, done the way the BitFit authors' runner does
it: `requires_grad` is set on the biases (all, or the chosen groups) and the
classifier, everything else is frozen; AdamW with gradient clipping at 1.0.
The recipe and the data are deltatune's, reproduced exactly so that the two
sides differ only in the implementation:

  * the training subset of --max-train-samples and the batch order of every
    epoch (length-grouped mega-batches, as HF's LengthGroupedSampler) are the
    same permutations deltatune draws: MT19937-64 seeded through SplitMix64,
    re-implemented here and checked against tests/data/shuffle_test.cpp;
  * the same recipes per method (lr, batch, epochs, schedule, warmup, weight
    decay with HF Trainer's no-decay rule for biases and LayerNorm weights);
  * evaluation on the dev set at each epoch end, the best main metric kept.

Only the head initialisation and the dropout masks differ (each side's RNG).

Prints one JSON line like `deltatune train --json` (dev metrics, steps, train
seconds, training tokens/s without padding, peak RSS in MiB).

  python bench/glue_reference.py --task RTE --method bitfit --seed 0 \
      --max-train-samples 1000 --epochs 3 --model ~/.cache/deltatune/models/all-MiniLM-L6-v2
"""
import argparse
import json
import math
import os
import resource
import sys
import time

import numpy as np
import torch
import transformers
from transformers import AutoModelForSequenceClassification, AutoTokenizer

MASK64 = (1 << 64) - 1


# --- deltatune's seeded permutations (src/data/shuffle.cpp) -------------------
class MT19937_64:
    """std::mt19937_64 (Matsumoto & Nishimura's mt19937-64.c)."""

    def __init__(self, seed):
        self.mt = [0] * 312
        self.mt[0] = seed & MASK64
        for i in range(1, 312):
            prev = self.mt[i - 1]
            self.mt[i] = (6364136223846793005 * (prev ^ (prev >> 62)) + i) & MASK64
        self.index = 312

    def _twist(self):
        mt = self.mt
        for i in range(312):
            x = (mt[i] & 0xFFFFFFFF80000000) | (mt[(i + 1) % 312] & 0x7FFFFFFF)
            xa = x >> 1
            if x & 1:
                xa ^= 0xB5026F5AA96619E9
            mt[i] = mt[(i + 156) % 312] ^ xa
        self.index = 0

    def __call__(self):
        if self.index >= 312:
            self._twist()
        x = self.mt[self.index]
        self.index += 1
        x ^= (x >> 29) & 0x5555555555555555
        x ^= (x << 17) & 0x71D67FFFEDA60000
        x ^= (x << 37) & 0xFFF7EEE000000000
        x ^= x >> 43
        return x & MASK64


def splitmix(x):
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def make_generator(seed, stream=0):
    return MT19937_64(splitmix(splitmix(seed) ^ stream))


def uniform_below(gen, n):
    threshold = ((1 << 64) - n) % n
    while True:
        x = gen()
        if x >= threshold:
            return x % n


def shuffle_in_place(values, gen):
    for i in range(len(values), 1, -1):
        j = uniform_below(gen, i)
        values[i - 1], values[j] = values[j], values[i - 1]


def shuffled_indices(n, seed, stream=0):
    order = list(range(n))
    shuffle_in_place(order, make_generator(seed, stream))
    return order


EPOCH_STREAM_BASE = 1 << 32
MEGA_BATCH_FACTOR = 50


def epoch_batches(lengths, batch_size, seed, epoch):
    """deltatune's Batcher::global_batches with shuffle and group_by_length on."""
    n = len(lengths)
    order = list(range(n))
    gen = make_generator(seed, EPOCH_STREAM_BASE + epoch)
    shuffle_in_place(order, gen)
    mult = max(1, min(MEGA_BATCH_FACTOR, n // (4 * batch_size)))
    mega = mult * batch_size
    for start in range(0, n, mega):
        # Python's sort is stable, as std::stable_sort.
        order[start:start + mega] = sorted(order[start:start + mega], key=lambda i: -lengths[i])
    batches = [order[s:s + batch_size] for s in range(0, n, batch_size)]
    shuffle_in_place(batches, gen)
    return batches


# --- GLUE files (src/data/glue.cpp) ------------------------------------------
# task: (header, text_a, text_b, label, file labels by id or None for scores,
#        main metric, eval splits)
TASKS = {
    "cola": (False, 3, None, 1, ["0", "1"], "matthews_correlation", ["dev"]),
    "sst2": (True, "sentence", None, "label", ["0", "1"], "accuracy", ["dev"]),
    "mrpc": (True, "#1 String", "#2 String", "Quality", ["0", "1"], "f1", ["dev"]),
    "stsb": (True, "sentence1", "sentence2", "score", None, "pearson", ["dev"]),
    "qqp": (True, "question1", "question2", "is_duplicate", ["0", "1"], "f1", ["dev"]),
    "mnli": (True, "sentence1", "sentence2", "gold_label",
             ["entailment", "neutral", "contradiction"], "accuracy",
             ["dev_matched", "dev_mismatched"]),
    "qnli": (True, "question", "sentence", "label", ["entailment", "not_entailment"],
             "accuracy", ["dev"]),
    "rte": (True, "sentence1", "sentence2", "label", ["entailment", "not_entailment"],
            "accuracy", ["dev"]),
}
DIRS = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP",
        "mnli": "MNLI", "qnli": "QNLI", "rte": "RTE"}


def task_key(name):
    key = name.lower().replace("-", "").replace("_", "")
    if key not in TASKS:
        sys.exit(f"unknown task {name}")
    return key


def read_glue(glue_dir, task, split):
    header, a, b, label, labels, _, _ = TASKS[task]
    path = os.path.join(glue_dir, DIRS[task], split + ".tsv")
    with open(path, encoding="utf-8-sig") as f:  # MRPC starts with a BOM
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    col = lambda c: c  # noqa: E731
    if header:
        names = lines[0].rstrip("\r").split("\t")
        col = names.index
        lines = lines[1:]
    examples = []
    for line in lines:
        f = line.rstrip("\r").split("\t")
        text_a = f[col(a)]
        text_b = f[col(b)] if b is not None else None
        value = f[col(label)]
        y = float(value) if labels is None else labels.index(value)
        examples.append((text_a, text_b, y))
    return examples


# --- metrics -----------------------------------------------------------------
def metrics_of(task, logits, labels):
    labels = np.asarray(labels)
    if TASKS[task][4] is None:
        p = logits[:, 0].astype(np.float64)
        y = labels.astype(np.float64)
        pearson = float(np.corrcoef(p, y)[0, 1])
        rank = lambda v: _average_ranks(v)  # noqa: E731
        spearman = float(np.corrcoef(rank(p), rank(y))[0, 1])
        return {"pearson": pearson, "spearman": spearman}
    pred = logits.argmax(-1)
    out = {"accuracy": float((pred == labels).mean())}
    if task in ("mrpc", "qqp"):
        tp = float(((pred == 1) & (labels == 1)).sum())
        fp = float(((pred == 1) & (labels == 0)).sum())
        fn = float(((pred == 0) & (labels == 1)).sum())
        out["f1"] = 2 * tp / (2 * tp + fp + fn) if tp > 0 else 0.0
    if task == "cola":
        tp = float(((pred == 1) & (labels == 1)).sum())
        tn = float(((pred == 0) & (labels == 0)).sum())
        fp = float(((pred == 1) & (labels == 0)).sum())
        fn = float(((pred == 0) & (labels == 1)).sum())
        denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        out["matthews_correlation"] = (tp * tn - fp * fn) / denominator if denominator else 0.0
    return out


def _average_ranks(v):
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v))
    sorted_v = v[order]
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0
        i = j + 1
    return ranks


# --- methods (src/methods) ---------------------------------------------------
BIAS_GROUPS = {
    "query": "attention.self.query.bias", "key": "attention.self.key.bias",
    "value": "attention.self.value.bias", "attention_output": "attention.output.dense.bias",
    "intermediate": "intermediate.dense.bias", "output": "output.dense.bias",
    "attention_layernorm": "attention.output.LayerNorm.bias",
    "output_layernorm": "output.LayerNorm.bias",
    "embeddings_layernorm": "embeddings.LayerNorm.bias", "pooler": "pooler.dense.bias",
}


def bias_group(name):
    if name.endswith("attention.output.LayerNorm.bias"):
        return "attention_layernorm"
    if name.endswith("attention.output.dense.bias"):
        return "attention_output"
    for group, suffix in BIAS_GROUPS.items():
        if group in ("attention_layernorm", "attention_output"):
            continue
        if name.endswith(suffix):
            return group
    return None


def is_ffn(name):
    """W1, b1, W2, b2 of a BERT layer's FFN (FAR's priming set)."""
    return ".encoder.layer." in name and (".intermediate.dense." in name or (
        ".output.dense." in name and ".attention." not in name))


def set_trainable(model, method, bias_terms):
    for name, p in model.named_parameters():
        head = name.startswith("classifier.")
        if method in ("full", "child-tuning-f", "child-tuning-d", "fish"):
            train = True
        elif method == "far":  # FFN nodes, and every bias, LayerNorm and the head throughout
            train = head or is_ffn(name) or no_decay(name)
        elif method == "frozen":
            train = head or ".pooler." in name
        elif method == "adapters":
            train = head or ".adapter." in name or "LayerNorm." in name
        elif method in PEFT_METHODS:
            continue  # PEFT sets what trains
        elif method == "bitfit":
            group = bias_group(name) if name.endswith(".bias") else None
            train = head or (group is not None and (not bias_terms or group in bias_terms))
        else:
            sys.exit(f"unknown method {method}")
        p.requires_grad_(train)


# --- PEFT's methods and Houlsby adapters ------------------------------------------
# The words deltatune's `--prompt-init labels` starts a prompt from
# (src/cli/train_verbs.cpp label_words).
LABEL_WORDS = {"cola": ["unacceptable", "acceptable"], "sst2": ["negative", "positive"],
               "mrpc": ["different", "equivalent"], "qqp": ["different", "duplicate"],
               "stsb": ["similarity"]}


class HoulsbyAdapter(torch.nn.Module):
    """h + W_up gelu(W_down h + b_down) + b_up, weights N(0, 1e-3) truncated at
    2 std, biases 0 (adapter-bert's feedforward_adapter)."""

    def __init__(self, hidden, bottleneck, init_std=1e-3):
        super().__init__()
        self.down = torch.nn.Linear(hidden, bottleneck)
        self.up = torch.nn.Linear(bottleneck, hidden)
        for layer in (self.down, self.up):
            torch.nn.init.trunc_normal_(layer.weight, std=init_std, a=-2 * init_std,
                                        b=2 * init_std)
            torch.nn.init.zeros_(layer.bias)

    def forward(self, h):
        return h + self.up(torch.nn.functional.gelu(self.down(h)))


def add_houlsby_adapters(model, bottleneck):
    """An adapter after each layer's attention-output and FFN-output dropout,
    before the residual and LayerNorm (BertSelfOutput, BertOutput)."""
    for layer in model.base_model.encoder.layer:
        for sub in (layer.attention.output, layer.output):
            sub.adapter = HoulsbyAdapter(model.config.hidden_size, bottleneck)

            def forward(hidden_states, input_tensor, sub=sub):
                h = sub.adapter(sub.dropout(sub.dense(hidden_states)))
                return sub.LayerNorm(h + input_tensor)
            sub.forward = forward


def deltatune_name(name, encoder, method, projection_size):
    """deltatune's name of a trainable parameter of the (PEFT-wrapped) model."""
    # LoRA wraps as base_model (LoraModel).model, prefix and prompt as base_model.
    name = name.removeprefix("base_model.model.").removeprefix("base_model.")
    name = name.replace(".modules_to_save.default.", ".")
    name = name.replace(".lora_A.default.", ".lora.lora_A.")
    name = name.replace(".lora_B.default.", ".lora.lora_B.")
    mlp = "prefix.reparameterization"
    prompt_encoder = {
        "embedding.weight": "prompt.embedding" if method == "prompt-tuning"
        else f"{mlp}.embedding" if projection_size > 0 else "prefix.key_values",
        "transform.0.weight": f"{mlp}.transform_in.weight",
        "transform.0.bias": f"{mlp}.transform_in.bias",
        "transform.2.weight": f"{mlp}.transform_out.weight",
        "transform.2.bias": f"{mlp}.transform_out.bias",
    }
    inside = name.removeprefix("prompt_encoder.default.")
    return f"{encoder}.{prompt_encoder[inside]}" if inside != name else name


def dump_starting_values(model, method, args, path):
    from safetensors.torch import save_file
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    values = {deltatune_name(name, inner.base_model_prefix, method, args.projection_size):
              p.detach().clone().contiguous()
              for name, p in model.named_parameters() if p.requires_grad}
    save_file(values, path)


def wrap_with_peft(model, method, args, tokenizer, task):
    """LoRA, prefix or prompt tuning through PEFT with deltatune's settings:
    the prefix trained through PEFT's MLP (deltatune --projection-size, with
    --prefix-positions shifted), the prompt before [CLS] starting from the
    class-label words (deltatune --prompt-placement start --prompt-init labels)."""
    import peft
    if method == "lora":
        config = peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, r=8, lora_alpha=8,
                                 lora_dropout=0.0, target_modules=["query", "value"])
    elif method == "prefix-tuning":
        config = peft.PrefixTuningConfig(task_type=peft.TaskType.SEQ_CLS,
                                         num_virtual_tokens=args.virtual_tokens,
                                         prefix_projection=args.projection_size > 0,
                                         encoder_hidden_size=args.projection_size or None)
    else:
        config = peft.PromptTuningConfig(task_type=peft.TaskType.SEQ_CLS,
                                         num_virtual_tokens=args.virtual_tokens)
    wrapped = peft.get_peft_model(model, config)
    if method == "prompt-tuning":
        words = LABEL_WORDS.get(task) or [
            name.replace("_", " ") for name in TASKS[task][4]]
        ids = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
        ids = [ids[i % len(ids)] for i in range(args.virtual_tokens)]
        with torch.no_grad():
            table = model.get_input_embeddings().weight
            wrapped.prompt_encoder["default"].embedding.weight.copy_(table[ids])
    return wrapped


RECIPES = {  # lr, batch, epochs, schedule, warmup ratio, weight decay
    "bitfit": (1e-3, 8, 16, "constant", 0.0, 0.0),
    "frozen": (1e-3, 8, 16, "constant", 0.0, 0.0),
    "full": (2e-5, 16, 3, "linear", 0.1, 0.01),
    "child-tuning-f": (4e-5, 16, 3, "linear", 0.1, 0.01),
    "child-tuning-d": (4e-5, 16, 3, "linear", 0.1, 0.01),
    "fish": (5e-5, 16, 7, "constant", 0.0, 0.0),
    "far": (2e-5, 16, 3, "linear", 0.1, 0.01),
    "lora": (5e-4, 16, 30, "linear", 0.06, 0.0),
    "prefix-tuning": (5e-3, 16, 20, "linear", 0.06, 0.0),
    "prompt-tuning": (5e-3, 16, 20, "linear", 0.06, 0.0),
    "adapters": (3e-4, 32, 20, "linear", 0.1, 0.01),
}
PEFT_METHODS = ("lora", "prefix-tuning", "prompt-tuning")


def lr_lambda(schedule, warmup_steps, total_steps, offset=0):
    """HF's get_linear_schedule_with_warmup / get_constant_schedule factor at
    step s + offset (FAR's second optimizer continues the run's schedule)."""
    def factor(s):
        s += offset
        if schedule != "linear":
            return 1.0
        if s < warmup_steps:
            return s / max(1, warmup_steps)
        return max(0.0, (total_steps - s) / max(1, total_steps - warmup_steps))
    return factor


# --- the selective methods, the authors' way --------------------------------
def squared_gradients(model, names, batches, batch_loss, clip_norm):
    """Sum over `batches` of each parameter's squared gradient, in eval mode.
    With clip_norm, each tensor's gradient is clipped on its own first, as
    Child-Tuning's calculate_fisher calls clip_grad_norm_(params, ...)."""
    params = dict(model.named_parameters())
    sums = {n: torch.zeros_like(params[n]) for n in names}
    model.eval()
    for rows in batches:
        model.zero_grad(set_to_none=True)
        batch_loss(rows).backward()
        for n in names:
            if params[n].grad is None:
                continue
            if clip_norm:
                torch.nn.utils.clip_grad_norm_([params[n]], clip_norm)
            sums[n] += params[n].grad ** 2
    model.zero_grad(set_to_none=True)
    model.train()
    return sums


def child_tuning_d_masks(model, n_train, batch_loss, reserve_p, batch_size, clip_norm):
    """AliceMind's calculate_fisher: encoder-layer parameters ('layer' in the
    name), the global (1 - p) percentile of the Fisher, mask = F >= it."""
    names = [n for n, _ in model.named_parameters() if "layer" in n]
    batches = [list(range(s, min(n_train, s + batch_size))) for s in range(0, n_train, batch_size)]
    fisher = squared_gradients(model, names, batches, batch_loss, clip_norm)
    for n in fisher:
        fisher[n] /= len(batches)
    polar = np.percentile(torch.cat([f.flatten() for f in fisher.values()]).numpy(),
                          (1 - reserve_p) * 100)
    return {n: (f >= polar) for n, f in fisher.items()}


def fish_masks(model, n_train, batch_loss, density, samples, seed):
    """FISH's calculate_the_importance_label + create_mask_gradient: squared
    gold-label gradients at batch size 1; the classifier always trains and
    counts inside the budget; one global top-k over everything else."""
    rows = list(range(n_train))
    if samples < n_train:
        rows = shuffled_indices(n_train, seed)[:samples]
    params = dict(model.named_parameters())
    names = [n for n in params if not n.startswith("classifier.")]
    fisher = squared_gradients(model, names, [[r] for r in rows], batch_loss, 0)
    total = sum(p.numel() for p in params.values())
    head = sum(p.numel() for n, p in params.items() if n.startswith("classifier."))
    keep = round(density * total) - head
    flat = torch.cat([fisher[n].flatten() for n in names])
    selected = torch.zeros(flat.numel(), dtype=torch.bool)
    selected[torch.topk(flat, keep).indices] = True
    masks, offset = {}, 0
    for n in names:
        masks[n] = selected[offset:offset + fisher[n].numel()].view_as(fisher[n])
        offset += fisher[n].numel()
    return masks


def far_reconfigure(model, initial, learned_fraction):
    """FAR after priming: per layer, each FFN node's L1 change since the start
    (row of W1, entry of b1, column of W2); the top r learned, the rest reset
    to their initial values. Returns {name: mask of entries that may train}."""
    params = dict(model.named_parameters())
    masks, learned_total = {}, 0
    layers = sorted({n.split(".encoder.layer.")[1].split(".")[0] for n in initial})
    for layer in layers:
        prefix = next(n for n in params if f".encoder.layer.{layer}." in n).split(
            f".encoder.layer.{layer}.")[0] + f".encoder.layer.{layer}."
        w1, b1 = prefix + "intermediate.dense.weight", prefix + "intermediate.dense.bias"
        w2 = prefix + "output.dense.weight"
        with torch.no_grad():
            metric = ((params[w1] - initial[w1]).abs().sum(1) + (params[b1] - initial[b1]).abs() +
                      (params[w2] - initial[w2]).abs().sum(0))
            nodes = metric.numel()
            k = min(nodes, max(1, round(learned_fraction * nodes)))
            learned = torch.zeros(nodes, dtype=torch.bool)
            learned[torch.topk(metric, k).indices] = True
            learned_total += k
            for name, node_mask in ((w1, learned[:, None].expand_as(params[w1])),
                                    (b1, learned), (w2, learned[None, :].expand_as(params[w2]))):
                params[name].copy_(torch.where(node_mask, params[name], initial[name]))
                masks[name] = node_mask.clone()
    return masks, learned_total


def no_decay(name):
    return name.endswith(".bias") or "LayerNorm." in name


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", required=True)
    ap.add_argument("--method", default="bitfit", choices=sorted(RECIPES))
    ap.add_argument("--reserve-p", type=float, default=0.3, help="child-tuning-f/-d")
    ap.add_argument("--density", type=float, default=0.005, help="fish")
    ap.add_argument("--fisher-samples", type=int, default=1024, help="fish")
    ap.add_argument("--priming", type=float, default=0.1, help="far")
    ap.add_argument("--learned-fraction", type=float, default=0.1, help="far")
    ap.add_argument("--bias-terms", default="")
    ap.add_argument("--num-virtual-tokens", dest="virtual_tokens", type=int, default=20,
                    help="prefix-tuning, prompt-tuning")
    ap.add_argument("--projection-size", type=int, default=512, help="prefix-tuning (0: no MLP)")
    ap.add_argument("--bottleneck", type=int, default=64, help="adapters")
    ap.add_argument("--model", default=os.path.expanduser(
        os.path.join(os.environ.get("DELTATUNE_HOME", "~/.cache/deltatune"),
                     "models/all-MiniLM-L6-v2")))
    ap.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR", ""))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-train-samples", type=int, default=0)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--eval-batch-size", type=int, default=64)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for forward passes")
    ap.add_argument("--no-eval", action="store_true", help="skip evaluation (speed runs)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--dropout", type=float, help="every dropout rate (default: the config's)")
    ap.add_argument("--init-from", help="safetensors of starting values by parameter name "
                    "(deltatune's --init-from), loaded before any PEFT wrapping")
    ap.add_argument("--dump-init", help="write the trainable parameters' starting values, "
                    "under deltatune's names, to this safetensors file (for its --init-from)")
    ap.add_argument("--log-every", type=int, default=0,
                    help="record the mean training loss every N steps in the summary's 'losses'")
    args = ap.parse_args()
    if not args.glue_dir:
        sys.exit("give --glue-dir or set GLUE_DIR")

    torch.set_num_threads(args.threads)
    task = task_key(args.task)
    lr, batch, epochs, schedule, warmup, wd = RECIPES[args.method]
    lr = args.lr if args.lr is not None else lr
    batch = args.batch_size or batch
    epochs = args.epochs or epochs
    bias_terms = [t for t in args.bias_terms.split(",") if t]
    regression = TASKS[task][4] is None
    main_metric = TASKS[task][5]

    train = read_glue(args.glue_dir, task, "train")
    if 0 < args.max_train_samples < len(train):
        keep = sorted(shuffled_indices(len(train), args.seed)[:args.max_train_samples])
        train = [train[i] for i in keep]
    dev_splits = {s: read_glue(args.glue_dir, task, s) for s in TASKS[task][6]}

    tokenizer = AutoTokenizer.from_pretrained(args.model)

    def encode(examples):
        a = [e[0] for e in examples]
        b = [e[1] for e in examples] if examples[0][1] is not None else None
        enc = tokenizer(a, b, truncation=True, max_length=args.max_length)
        return enc["input_ids"], enc["token_type_ids"], [e[2] for e in examples]

    def collate(ids, types, rows):
        width = max(len(ids[i]) for i in rows)
        x = torch.zeros(len(rows), width, dtype=torch.long)
        t = torch.zeros(len(rows), width, dtype=torch.long)
        m = torch.zeros(len(rows), width, dtype=torch.long)
        for k, i in enumerate(rows):
            x[k, :len(ids[i])] = torch.tensor(ids[i])
            t[k, :len(ids[i])] = torch.tensor(types[i])
            m[k, :len(ids[i])] = 1
        return x, t, m

    train_ids, train_types, train_labels = encode(train)
    dev_encoded = {s: encode(ex) for s, ex in dev_splits.items()}

    torch.manual_seed(args.seed)
    dropout = {} if args.dropout is None else {
        "hidden_dropout_prob": args.dropout, "attention_probs_dropout_prob": args.dropout,
        "classifier_dropout": args.dropout}
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model, num_labels=1 if regression else len(TASKS[task][4]), **dropout)
    # HF's head initialisation, drawn after loading so that it depends on the seed.
    torch.manual_seed(args.seed)
    model.classifier.weight.data.normal_(0.0, model.config.initializer_range)
    model.classifier.bias.data.zero_()
    if args.init_from:
        from safetensors.torch import load_file
        named = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in load_file(args.init_from).items():
                if name not in named:
                    sys.exit(f"{args.init_from}: tensor '{name}' is not a parameter of the model")
                named[name].copy_(value)
    if args.method == "adapters":
        torch.manual_seed(args.seed)
        add_houlsby_adapters(model, args.bottleneck)
    if args.method in PEFT_METHODS:
        torch.manual_seed(args.seed)
        model = wrap_with_peft(model, args.method, args, tokenizer, task)
    set_trainable(model, args.method, bias_terms)
    if args.dump_init:
        dump_starting_values(model, args.method, args, args.dump_init)

    def make_optimizer(offset=0):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        decay = [p for n, p in named if not no_decay(n)]
        rest = [p for n, p in named if no_decay(n)]
        groups = [{"params": rest, "weight_decay": 0.0}]
        if decay:
            groups.insert(0, {"params": decay, "weight_decay": wd if wd > 0 else 0.0})
        opt = torch.optim.AdamW(groups, lr=lr, eps=1e-8)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lr_lambda(schedule, warmup_steps, total_steps, offset))
        return opt, sched, [p for g in groups for p in g["params"]]

    lengths = [len(x) for x in train_ids]
    batches_per_epoch = math.ceil(len(train_ids) / batch)
    total_steps = args.max_steps or batches_per_epoch * epochs
    warmup_steps = math.ceil(warmup * total_steps)
    optimizer, scheduler, trainable = make_optimizer()

    def batch_loss(rows):
        x, t, m = collate(train_ids, train_types, rows)
        y = torch.tensor([train_labels[i] for i in rows],
                         dtype=torch.float if regression else torch.long)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(input_ids=x, token_type_ids=t, attention_mask=m).logits
        logits = logits.float()
        if regression:
            return torch.nn.functional.mse_loss(logits.squeeze(-1), y)
        return torch.nn.functional.cross_entropy(logits, y)

    # Masks by parameter: applied to gradients after backward (FISH, FAR) or
    # after clipping (Child-Tuning_D, as ChildTuningAdamW does inside step()).
    params = dict(model.named_parameters())
    masks_after_backward, masks_after_clip = {}, {}
    if args.method == "child-tuning-d":
        masks_after_clip = child_tuning_d_masks(model, len(train_ids), batch_loss, args.reserve_p,
                                                batch, 1.0)
    elif args.method == "fish":
        masks_after_backward = fish_masks(model, len(train_ids), batch_loss, args.density,
                                          args.fisher_samples, args.seed)
    priming_steps, frozen_values, far_reconfigured = 0, {}, args.method != "far"
    if args.method == "far":
        priming_steps = max(1, round(args.priming * total_steps))
        initial = {n: p.detach().clone() for n, p in model.named_parameters() if is_ffn(n)}

    def evaluate():
        model.eval()
        results = {}
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            for split, (ids, types, labels) in dev_encoded.items():
                out = []
                for s in range(0, len(ids), args.eval_batch_size):
                    rows = list(range(s, min(len(ids), s + args.eval_batch_size)))
                    x, t, m = collate(ids, types, rows)
                    out.append(model(input_ids=x, token_type_ids=t, attention_mask=m).logits.float())
                results[split] = metrics_of(task, torch.cat(out).numpy(), labels)
        model.train()
        merged = dict(results[TASKS[task][6][0]])
        if len(results) > 1:
            merged = {f"{s}_{k}": v for s, r in results.items() for k, v in r.items()}
            merged[main_metric] = float(np.mean([r[main_metric] for r in results.values()]))
        return merged

    model.train()
    # Dropout masks from the start of the seed's stream, as deltatune's trainer.
    torch.manual_seed(args.seed)
    best, best_step, step, tokens, train_seconds = None, 0, 0, 0, 0.0
    history, losses, loss_window = [], [], []
    for epoch in range(epochs):
        for rows in epoch_batches(lengths, batch, args.seed, epoch):
            if step >= total_steps:
                break
            start = time.perf_counter()
            loss = batch_loss(rows)
            if args.log_every:
                loss_window.append(loss.item())
            loss.backward()
            for n, mask in masks_after_backward.items():
                if params[n].grad is not None:
                    params[n].grad.mul_(mask)
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            for n, mask in masks_after_clip.items():
                if params[n].grad is not None:
                    params[n].grad.mul_(mask)
            if args.method == "child-tuning-f":
                for p in trainable:
                    if p.grad is not None:
                        p.grad.mul_(torch.bernoulli(torch.full_like(p.grad, args.reserve_p))
                                    / args.reserve_p)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():  # FAR: frozen nodes stay as reset (no decay either)
                for n, values in frozen_values.items():
                    params[n].copy_(torch.where(masks_after_backward[n], params[n], values))
            train_seconds += time.perf_counter() - start
            tokens += sum(len(train_ids[i]) for i in rows)
            step += 1
            if args.log_every and step % args.log_every == 0:
                losses.append({"step": step, "loss": sum(loss_window) / len(loss_window)})
                loss_window = []
            if not far_reconfigured and step == priming_steps:
                # The learned nodes train on from here with a fresh optimizer,
                # the schedule continuing; the frozen ones keep their reset values.
                masks_after_backward, learned_nodes = far_reconfigure(
                    model, initial, args.learned_fraction)
                frozen_values = {n: params[n].detach().clone() for n in masks_after_backward}
                for n, p in params.items():
                    p.grad = None
                optimizer, scheduler, trainable = make_optimizer(offset=priming_steps)
                far_reconfigured = True
        if not args.no_eval and far_reconfigured:
            result = evaluate()
            history.append({"step": step, **result})
            if best is None or result[main_metric] > best[main_metric]:
                best, best_step = result, step
        if step >= total_steps:
            break
    summary = {
        "side": "hf", "torch": torch.__version__, "transformers": transformers.__version__,
        "task": DIRS[task], "method": args.method + (f"[{args.bias_terms}]" if bias_terms else ""),
        "seed": args.seed, "train_examples": len(train_ids), "steps": step,
        "dev": dict(best or {}, main_metric=main_metric), "best_step": best_step,
        "history": history, "losses": losses, "train_seconds": train_seconds,
        "train_tokens_per_s": tokens / train_seconds if train_seconds else 0.0,
        "peak_rss_mib": peak_rss_mib(), "bf16": args.bf16, "threads": args.threads,
        "trainable_parameters": sum(p.numel() for p in trainable),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
