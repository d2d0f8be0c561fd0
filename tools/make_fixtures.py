#!/usr/bin/env python3
"""Generate deltatune's golden fixtures with HF Transformers / tokenizers.

Run with the reference venv (tools/setup_python.sh prints its python):

    PY=$(tools/setup_python.sh)
    $PY tools/make_fixtures.py --glue-dir /path/to/glue --out tests/fixtures

Everything is deterministic (fixed seeds, files read in order). Writes:

  text/bert_cases.jsonl            MiniLM WordPiece (fast tokenizer) cases
  text/roberta_bpe/                small byte-level BPE trained on GLUE text,
                                   saved by RobertaTokenizerFast.save_pretrained
  text/roberta_cases.jsonl         RobertaTokenizerFast cases
  model/tiny_bert/                 BertForSequenceClassification (3 labels)
  model/tiny_bert_regression/      BertForSequenceClassification (1 label)
  model/tiny_roberta/              RobertaForSequenceClassification (2 labels)
  model/tiny_electra/              ElectraForSequenceClassification (2 labels)
    each with expected.safetensors (inputs + reference outputs)
  model/minilm_inputs.jsonl        16 GLUE inputs
  model/minilm_expected.safetensors  BertModel(all-MiniLM-L6-v2) on them

Python is never needed to build or test the C++; only these files are
committed. See tests/fixtures/README.md.
"""

import argparse
import json
import os
import random
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from tokenizers import ByteLevelBPETokenizer  # noqa: E402
from transformers import (  # noqa: E402
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    ElectraConfig,
    ElectraForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
    RobertaTokenizerFast,
)

transformers.logging.set_verbosity_error()

# ---------------------------------------------------------------------------
# GLUE reading (tab-separated, no quoting)
# ---------------------------------------------------------------------------

# task -> (has header, column of text a, column of text b or None, columns)
GLUE_TASKS = {
    "CoLA": (False, 3, None, 4),
    "SST-2": (True, 0, None, 2),
    "MRPC": (True, 3, 4, 5),
    "STS-B": (True, 7, 8, 10),
    "RTE": (True, 1, 2, 4),
    "QNLI": (True, 1, 2, 4),
}
SINGLE_TASKS = ["CoLA", "SST-2"]
PAIR_TASKS = ["MRPC", "STS-B", "RTE", "QNLI"]


def read_glue(glue_dir, task, split):
    """Return [(a, b_or_None)] of one split, [] when the file is absent."""
    path = os.path.join(glue_dir, task, split + ".tsv")
    if not os.path.exists(path):
        return []
    header, ca, cb, ncols = GLUE_TASKS[task]
    with open(path, encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if header:
        lines = lines[1:]
    out = []
    for line in lines:
        fields = line.split("\t")
        if len(fields) < ncols:
            continue
        out.append((fields[ca], fields[cb] if cb is not None else None))
    return out


def load_glue(glue_dir):
    data = {}
    for task in GLUE_TASKS:
        rows = read_glue(glue_dir, task, "train") + read_glue(glue_dir, task, "dev")
        if rows:
            data[task] = rows
    if not data:
        sys.exit("no GLUE data under %r (use --glue-dir or GLUE_DIR)" % glue_dir)
    return data


def glue_training_text(glue_dir):
    """All train-split sentences (a and b), in file order."""
    for task in GLUE_TASKS:
        for a, b in read_glue(glue_dir, task, "train"):
            yield a
            if b is not None:
                yield b


# ---------------------------------------------------------------------------
# Hand-picked hard cases (shared by the WordPiece and BPE fixtures)
# ---------------------------------------------------------------------------

HARD_SINGLES = [
    # accents and combining marks
    "Café résumé naïve façade déjà vu",
    "ÑANDÚ Ñoño mañana",
    "über Müller Straße GRÜSSE",
    "e\u0301",
    "Cafe\u0301 vs Caf\u00e9",
    "A\u030angstro\u0308m and \u00c5ngstr\u00f6m",
    "\u0130stanbul \u0131s\u0131k",  # Turkish dotted capital I, dotless i
    "\u03a3\u038a\u03a3\u03a5\u03a6\u039f\u03a3 \u03bf\u03b4\u03cc\u03c2",  # Greek final sigma
    "\ufb01nance \ufb02ow",  # fi / fl ligatures
    "\u1e9e \u00df stra\u00dfe",  # capital sharp s
    "Cr\u00e8me br\u00fbl\u00e9e, pi\u00f1a colada, jalape\u00f1o",
    # CJK and other scripts
    "我爱自然语言处理",
    "東京は日本の首都です",
    "ひらがな と カタカナ",
    "한국어 텍스트 처리",
    "中文English混合text测试",
    "\uff21\uff22\uff23\uff11\uff12\uff13 full-width",
    "Привет, мир! Ёлка",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    "สวัสดีครับ",
    "Ελληνικά κείμενα",
    # emoji
    "I love it 😀👍",
    "family 👨\u200d👩\u200d👧\u200d👦 together",
    "flag 🇫🇷 and 🇯🇵",
    "heart ❤\ufe0f and ❤",
    "thumbs 👍🏽 skin tone",
    "🙂",
    # control and invisible characters
    "tab\there",
    "new\nline",
    "carriage\rreturn\r\nwindows",
    "nul\x00char",
    "bell\x07char",
    "zero\u200bwidth space",
    "\ufeffBOM at start",
    "soft\u00adhyphen",
    "non\u00a0breaking\u00a0space",
    "line\u2028separator and paragraph\u2029separator",
    "ideographic\u3000space",
    "del\x7fchar",
    "escape \x1b[31mred\x1b[0m",
    "replacement \ufffd char",
    "word\u200cjoiner\u200dzwj",
    "\x01\x02\x03 leading controls",
    # long words (WordPiece max_input_chars_per_word = 100)
    "a" * 101,
    "a" * 100,
    "short " + "x" * 150 + " tail",
    "antidisestablishmentarianism" * 4,  # 112 chars
    "b" * 99 + " " + "c" * 100 + " " + "d" * 101,
    "é" * 101,
    "e\u0301" * 60,  # 120 code points before normalization, 60 after
    "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis",
    "https://example.com/path/to/page?query=1&x=2#frag user@example.org",
    # punctuation and digits
    "Hello, world! How's it going?? (fine) [ok] {yes} <no>",
    "\u201cquoted\u201d \u2014 dash \u2026 ellipsis \u2013 en dash",
    "\u2018single\u2019 \u00abguillemets\u00bb \u00bfqu\u00e9? \u00a1s\u00ed!",
    "$100.00 50% #hash @user ~tilde `back` ^caret |pipe \\backslash",
    "don't can't won't it's O'Neil rock'n'roll 'quoted'",
    "e.g. U.S.A. Ph.D. a.m.",
    "3.14159 1,000,000 2023-10-05 10:30pm 1st 2nd 3rd 42nd",
    "\u0663\u0664\u0665 Arabic-Indic digits and \u0e51\u0e52 Thai digits",
    "\u00bd \u00b2 \u2460 \u2162 fractions and superscripts",
    "x\u2264y\u2260z \u2211 \u221e \u221a2",
    "\u20ac5 \u00a310 \u00a5100 \u20b9200 \u20bf",
    "...!!!???---___***",
    "a-b_c/d\\e|f",
    "....",
    "!",
    # special-token strings in the raw text
    "[CLS] [SEP] [MASK] [PAD] [UNK] inside text",
    "[cls] lowercase [sep] brackets",
    "<s> </s> <mask> <pad> <unk> inside text",
    "a<mask>b and a <mask> b",
    # whitespace and emptiness
    "",
    " ",
    "   ",
    "\t\n\r ",
    "\u200b",
    "\x00",
    "\u00a0",
    "  leading and trailing  ",
    "multiple     spaces\t\ttabs",
    "UPPER lower MiXeD CaSe",
    # a long single to force truncation at 128
    "The quick brown fox jumps over the lazy dog. " * 30,
]

HARD_PAIRS = [
    ("", "non-empty second"),
    ("non-empty first", ""),
    ("", ""),
    (" ", "x"),
    ("Café", "CAFÉ"),
    ("我爱你", "I love you"),
    ("emoji 😀", "more emoji 👨\u200d👩\u200d👧"),
    ("tab\tin a", "newline\nin b"),
    ("\ufeffbom", "\u200bzero width"),
    ("a" * 101, "a" * 100),
    ("[SEP]", "[CLS]"),
    ("question?", "answer."),
    ("The quick brown fox jumps over the lazy dog. " * 20, "short"),
    ("short", "The quick brown fox jumps over the lazy dog. " * 20),
    ("The quick brown fox jumps over the lazy dog. " * 15,
     "Pack my box with five dozen liquor jugs. " * 15),
]

# (a, b, max_length) hand-picked truncation cases
HARD_TRUNCATION = [
    ("one two three four five six seven eight", "nine ten eleven twelve thirteen fourteen", 8),
    ("one two three four five six seven eight", "nine ten eleven twelve thirteen fourteen", 9),
    ("one two three four five six seven", "eight nine ten eleven twelve thirteen fourteen", 10),
    ("one two three four five six seven", "eight nine ten eleven twelve thirteen fourteen", 11),
    ("short", "one two three four five six seven eight nine ten eleven twelve", 8),
    ("one two three four five six seven eight nine ten eleven twelve", "short", 8),
    ("", "one two three four five six seven eight nine ten eleven twelve", 8),
    ("one two three four five six seven eight nine ten eleven twelve", "", 8),
    ("unbelievably incomprehensibly", "antidisestablishmentarianism", 8),
    ("Café résumé naïve façade déjà vu", "我爱自然语言处理和机器学习", 12),
    ("emoji 😀👍🏽 👨\u200d👩\u200d👧\u200d👦", "more 🇫🇷🇯🇵 flags", 10),
    ("The quick brown fox jumps over the lazy dog.", None, 8),
    ("The quick brown fox jumps over the lazy dog.", None, 3),
]


# ---------------------------------------------------------------------------
# Tokenizer cases
# ---------------------------------------------------------------------------

def encode_case(tok, a, b, max_length, tag):
    if b == "":
        # transformers tests `if text_pair`, so an empty b is encoded as a
        # single sentence ([CLS] a [SEP]); the tag lets a C++ test see that.
        tag += "/empty_b"
    enc = tok(
        a,
        b,
        add_special_tokens=True,
        truncation="longest_first",
        max_length=max_length,
        padding=False,
        return_token_type_ids=True,
        return_attention_mask=True,
    )
    ids = list(enc["input_ids"])
    return {
        "tag": tag,
        "a": a,
        "b": b,
        "max_length": max_length,
        "input_ids": ids,
        "token_type_ids": list(enc["token_type_ids"]),
        "attention_mask": list(enc["attention_mask"]),
        "tokens": tok.convert_ids_to_tokens(ids),
    }


def content_len(tok, text):
    return len(tok(text, add_special_tokens=False)["input_ids"])


# real GLUE cases per task at max_length 128 (long RTE/QNLI/MRPC pairs are
# fewer to keep each jsonl near 1 MB)
PER_TASK = {"CoLA": 260, "SST-2": 260, "STS-B": 220, "MRPC": 100, "RTE": 70, "QNLI": 90}


def real_cases(tok, glue, rng, per_task=PER_TASK, max_length=128):
    cases = []
    for task in SINGLE_TASKS + PAIR_TASKS:
        rows = glue.get(task)
        if not rows:
            continue
        for i in sorted(rng.sample(range(len(rows)), min(per_task[task], len(rows)))):
            a, b = rows[i]
            cases.append(encode_case(tok, a, b, max_length, "glue/" + task))
    return cases


def truncation_cases(tok, glue, rng, per_category=12):
    """Pairs with small max_length that exercise longest_first truncation."""
    nsp = tok.num_special_tokens_to_add(pair=True)
    pool = []
    for task in PAIR_TASKS:
        pool.extend(glue.get(task, []))
    pool = [pool[i] for i in rng.sample(range(len(pool)), min(3000, len(pool)))]
    lens = [(a, b, content_len(tok, a), content_len(tok, b)) for a, b in pool]

    def both_long(la, lb, bud, parity):
        return bud % 2 == parity and min(la, lb) > bud // 2 + 1 and la != lb

    categories = [
        ("both_longer_even_budget", lambda la, lb, bud: both_long(la, lb, bud, 0)),
        ("both_longer_odd_budget", lambda la, lb, bud: both_long(la, lb, bud, 1)),
        ("a_longer_b_fits", lambda la, lb, bud: lb < bud // 2 and la + lb > bud),
        ("b_longer_a_fits", lambda la, lb, bud: la < bud // 2 and la + lb > bud),
        ("equal_lengths", lambda la, lb, bud: la == lb and la + lb > bud),
        ("shorter_is_half_budget", lambda la, lb, bud: min(la, lb) in (bud // 2, (bud + 1) // 2) and la != lb and la + lb > bud),
        ("exact_fit", lambda la, lb, bud: la + lb == bud),
        ("over_by_one", lambda la, lb, bud: la + lb == bud + 1),
    ]
    used = set()
    cases = []
    for name, cond in categories:
        got = 0
        order = list(range(len(lens)))
        rng.shuffle(order)
        for i in order:
            if got >= per_category:
                break
            if i in used:
                continue
            a, b, la, lb = lens[i]
            ms = list(range(8, 41))
            rng.shuffle(ms)
            for m in ms:
                if cond(la, lb, m - nsp):
                    cases.append(encode_case(tok, a, b, m, "trunc/" + name))
                    used.add(i)
                    got += 1
                    break
    # singles truncated at small max_length
    singles = []
    for task in SINGLE_TASKS:
        singles.extend(glue.get(task, []))
    for i in rng.sample(range(len(singles)), min(12, len(singles))):
        a = singles[i][0]
        cases.append(encode_case(tok, a, None, rng.randint(4, 12), "trunc/single"))
    return cases


def hard_cases(tok):
    cases = []
    for s in HARD_SINGLES:
        cases.append(encode_case(tok, s, None, 128, "hard/single"))
    # each hard single also as the b side of a pair with a plain a
    for s in HARD_SINGLES[:40]:
        cases.append(encode_case(tok, "A plain first sentence.", s, 128, "hard/pair_b"))
    for a, b in HARD_PAIRS:
        cases.append(encode_case(tok, a, b, 128, "hard/pair"))
    for a, b, m in HARD_TRUNCATION:
        cases.append(encode_case(tok, a, b, m, "hard/truncation"))
    return cases


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")


def bert_tokenizer(model_dir):
    tok = AutoTokenizer.from_pretrained(model_dir, use_fast=True, local_files_only=True)
    assert tok.is_fast, "expected the fast tokenizer (tokenizer.json)"
    return tok


def make_bert_cases(tok, glue, out):
    rng = random.Random(1234)
    cases = real_cases(tok, glue, rng)
    cases += truncation_cases(tok, glue, rng)
    cases += hard_cases(tok)
    write_jsonl(os.path.join(out, "text", "bert_cases.jsonl"), cases)
    return cases


# ---------------------------------------------------------------------------
# Byte-level BPE (RoBERTa style)
# ---------------------------------------------------------------------------

ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def train_roberta_bpe(glue_dir, out_dir, vocab_size=2000):
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        glue_training_text(glue_dir),
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=ROBERTA_SPECIALS,
        show_progress=False,
    )
    for i, t in enumerate(ROBERTA_SPECIALS):
        assert bpe.token_to_id(t) == i, (t, bpe.token_to_id(t))
    with tempfile.TemporaryDirectory() as tmp:
        bpe.save_model(tmp)
        tok = RobertaTokenizerFast(
            vocab_file=os.path.join(tmp, "vocab.json"),
            merges_file=os.path.join(tmp, "merges.txt"),
        )
    fresh_dir(out_dir)
    tok.save_pretrained(out_dir)
    # reload from the saved folder, as a user (or the C++ side) would
    return RobertaTokenizerFast.from_pretrained(out_dir, local_files_only=True)


def make_roberta_cases(tok, glue, out):
    rng = random.Random(4321)
    cases = real_cases(tok, glue, rng)
    cases += truncation_cases(tok, glue, rng)
    cases += hard_cases(tok)
    write_jsonl(os.path.join(out, "text", "roberta_cases.jsonl"), cases)
    return cases


# ---------------------------------------------------------------------------
# Tiny random models
# ---------------------------------------------------------------------------

def perturb_(model, seed):
    """Re-randomise every parameter with a larger spread than HF's init.

    HF initialises biases to 0 and LayerNorm to (1, 0), so a loader that
    mixes up biases or LayerNorm parameters would still match. Here every
    parameter is random and attention is far from uniform.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif "embeddings" in name and p.dim() == 2 and "project" not in name:
                p.copy_(1.0 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def random_batch(seed, lengths, pair_rows, vocab, cls_id=2, sep_id=3, pad_id=0):
    """Random ids in 5..vocab-1, [cls] a [sep] (b [sep]), right-padded."""
    g = torch.Generator().manual_seed(seed)
    L = max(lengths)
    B = len(lengths)
    ids = torch.full((B, L), pad_id, dtype=torch.int64)
    tt = torch.zeros((B, L), dtype=torch.int64)
    mask = torch.zeros((B, L), dtype=torch.int64)
    for r, n in enumerate(lengths):
        row = torch.randint(5, vocab, (n,), generator=g)
        row[0] = cls_id
        if n > 1:
            row[n - 1] = sep_id
        if r in pair_rows and n >= 5:
            cut = n // 2
            row[cut - 1] = sep_id
            tt[r, cut:n] = 1
        ids[r, :n] = row
        mask[r, :n] = 1
    return ids, tt, mask


def run_and_save(model, base, dirname, ids, tt, mask, meta, pooler):
    model.eval()
    with torch.no_grad():
        bo = base(input_ids=ids, attention_mask=mask, token_type_ids=tt,
                  output_hidden_states=True, return_dict=True)
        logits = model(input_ids=ids, attention_mask=mask, token_type_ids=tt,
                       return_dict=True).logits
    tensors = {
        "input_ids": ids.contiguous(),
        "attention_mask": mask.contiguous(),
        "token_type_ids": tt.contiguous(),
        "embedding_output": bo.hidden_states[0].float().contiguous(),
        "last_hidden_state": bo.last_hidden_state.float().contiguous(),
        "logits": logits.float().contiguous(),
    }
    if pooler:
        tensors["pooler_output"] = bo.pooler_output.float().contiguous()
    model.save_pretrained(dirname, safe_serialization=True)
    save_file(tensors, os.path.join(dirname, "expected.safetensors"), metadata=meta)
    return tensors


_ST_DTYPES = {torch.float32: "F32", torch.int64: "I64"}


def save_file(tensors, path, metadata=None):
    """safetensors writer with a byte-stable header (sorted keys).

    safetensors' own writer serialises the metadata map in hash order, so
    two identical runs give different bytes; this one does not. Same format:
    u64 little-endian header size, JSON header padded with spaces to a
    multiple of 8, then the raw little-endian data, tensors in name order.
    """
    assert sys.byteorder == "little"
    header = {}
    if metadata:
        header["__metadata__"] = {k: str(metadata[k]) for k in sorted(metadata)}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        data = t.numpy().tobytes()
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)
    # round trip through the real reader
    back = load_file(path)
    assert set(back) == set(tensors)
    for k in tensors:
        assert torch.equal(back[k], tensors[k].detach().cpu()), k


def versions_meta(extra=None):
    meta = {
        "generator": "tools/make_fixtures.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }
    meta.update(extra or {})
    return meta


TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, hidden_act="gelu",
            hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
LENGTHS = [20, 17, 12, 8, 4, 2]
PAIR_ROWS = {1, 3}


# files this script writes into a model folder; anything else there (such as
# tiny_bert/pytorch_model.bin from tools/make_torch_bin_fixture.py) is kept
MODEL_DIR_FILES = ["config.json", "model.safetensors", "expected.safetensors",
                   "vocab.json", "merges.txt", "tokenizer.json",
                   "tokenizer_config.json", "special_tokens_map.json"]


def fresh_dir(path):
    os.makedirs(path, exist_ok=True)
    for f in MODEL_DIR_FILES:
        if os.path.exists(os.path.join(path, f)):
            os.remove(os.path.join(path, f))


def make_tiny_bert(out, name, num_labels, seed):
    d = os.path.join(out, "model", name)
    fresh_dir(d)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=1000, max_position_embeddings=64, type_vocab_size=2,
                     pad_token_id=0, num_labels=num_labels, **TINY)
    if num_labels == 1:
        cfg.problem_type = "regression"
    model = BertForSequenceClassification(cfg)
    perturb_(model, seed)
    ids, tt, mask = random_batch(seed + 100, LENGTHS, PAIR_ROWS, 1000)
    return run_and_save(model.eval(), model.bert, d, ids, tt, mask,
                        versions_meta({"seed": str(seed), "model": name}), pooler=True)


def make_tiny_electra(out, seed):
    d = os.path.join(out, "model", "tiny_electra")
    fresh_dir(d)
    torch.manual_seed(seed)
    cfg = ElectraConfig(vocab_size=1000, embedding_size=16, max_position_embeddings=64,
                        type_vocab_size=2, pad_token_id=0, num_labels=2, **TINY)
    model = ElectraForSequenceClassification(cfg)
    assert hasattr(model.electra, "embeddings_project")
    perturb_(model, seed)
    ids, tt, mask = random_batch(seed + 100, LENGTHS, PAIR_ROWS, 1000)
    return run_and_save(model.eval(), model.electra, d, ids, tt, mask,
                        versions_meta({"seed": str(seed), "model": "tiny_electra"}), pooler=False)


def make_tiny_roberta(out, tok, glue, seed):
    d = os.path.join(out, "model", "tiny_roberta")
    fresh_dir(d)
    torch.manual_seed(seed)
    cfg = RobertaConfig(vocab_size=len(tok), max_position_embeddings=66, type_vocab_size=1,
                        pad_token_id=1, bos_token_id=0, eos_token_id=2, num_labels=2, **TINY)
    model = RobertaForSequenceClassification(cfg)
    perturb_(model, seed)
    # real GLUE text, 6 different lengths (<= 20 tokens), pairs on rows 1 and 3
    rng = random.Random(seed)
    # GLUE pairs are >= 15 BPE tokens with <s> a </s></s> b </s>: pairs on rows 0, 1
    targets = [22, 17, 13, 9, 5, 4]
    pair_rows = {0, 1}
    pool = []
    for task in ["STS-B", "MRPC", "RTE", "CoLA", "SST-2"]:
        pool.extend(glue.get(task, []))
    order = list(range(len(pool)))
    rng.shuffle(order)
    chosen = [None] * len(targets)
    for i in order:
        a, b = pool[i]
        for r, n in enumerate(targets):
            if chosen[r] is not None:
                continue
            want_pair = r in pair_rows
            if want_pair and b is None:
                continue
            bb = b if want_pair else None
            if len(tok(a, bb)["input_ids"]) == n:
                chosen[r] = (a, bb)
                break
        if all(c is not None for c in chosen):
            break
    assert all(c is not None for c in chosen), chosen
    a_list = [c[0] for c in chosen]
    b_list = [c[1] for c in chosen]
    batch = [tok(a, b) for a, b in zip(a_list, b_list)]
    L = max(len(e["input_ids"]) for e in batch)
    B = len(batch)
    ids = torch.full((B, L), tok.pad_token_id, dtype=torch.int64)
    mask = torch.zeros((B, L), dtype=torch.int64)
    for r, e in enumerate(batch):
        n = len(e["input_ids"])
        ids[r, :n] = torch.tensor(e["input_ids"])
        mask[r, :n] = 1
    tt = torch.zeros((B, L), dtype=torch.int64)
    tensors = run_and_save(model.eval(), model.roberta, d, ids, tt, mask,
                           versions_meta({"seed": str(seed), "model": "tiny_roberta",
                                          "texts": json.dumps(list(zip(a_list, b_list)), ensure_ascii=False)}),
                           pooler=False)
    tok.save_pretrained(d)
    return tensors


# ---------------------------------------------------------------------------
# MiniLM reference outputs
# ---------------------------------------------------------------------------

MINILM_TARGETS = [5, 8, 11, 14, 18, 22, 26, 30, 34, 38, 42, 46, 50, 54, 57, 60]


def make_minilm(out, tok, model_dir, glue):
    rng = random.Random(77)
    singles = [r for t in SINGLE_TASKS for r in glue.get(t, [])]
    pairs = [r for t in PAIR_TASKS for r in glue.get(t, [])]
    chosen = []
    for k, n in enumerate(MINILM_TARGETS):
        src = pairs if k % 2 else singles
        order = list(range(len(src)))
        rng.shuffle(order)
        pick = None
        for i in order[:20000]:
            a, b = src[i]
            if (a, b) in chosen:
                continue
            if len(tok(a, b, truncation="longest_first", max_length=128)["input_ids"]) == n:
                pick = (a, b)
                break
        if pick is None:  # fall back to the other kind
            for a, b in singles + pairs:
                if (a, b) not in chosen and len(tok(a, b, truncation="longest_first", max_length=128)["input_ids"]) == n:
                    pick = (a, b)
                    break
        assert pick is not None, n
        chosen.append(pick)
    write_jsonl(os.path.join(out, "model", "minilm_inputs.jsonl"),
                [{"a": a, "b": b, "max_length": 128} for a, b in chosen])
    # encode one by one (mixed singles/pairs), then pad with [PAD]=0 to the longest
    rows = [tok(a, b, truncation="longest_first", max_length=128) for a, b in chosen]
    L = max(len(r["input_ids"]) for r in rows)
    B = len(rows)
    ids = torch.zeros((B, L), dtype=torch.int64)
    tt = torch.zeros((B, L), dtype=torch.int64)
    mask = torch.zeros((B, L), dtype=torch.int64)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        tt[i, :n] = torch.tensor(r["token_type_ids"])
        mask[i, :n] = 1
    assert tok.pad_token_id == 0
    model = BertModel.from_pretrained(model_dir, local_files_only=True).eval()
    with torch.no_grad():
        o = model(input_ids=ids, attention_mask=mask, token_type_ids=tt, return_dict=True)
    tensors = {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": tt,
        "last_hidden_state": o.last_hidden_state.float().contiguous(),
        "pooler_output": o.pooler_output.float().contiguous(),
    }
    save_file(tensors, os.path.join(out, "model", "minilm_expected.safetensors"),
              metadata=versions_meta({"model": "all-MiniLM-L6-v2 (BertModel)"}))
    return tensors


# ---------------------------------------------------------------------------

def default_model_dir():
    home = os.environ.get("DELTATUNE_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "deltatune")
    return os.path.join(home, "models", "all-MiniLM-L6-v2")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR"),
                    help="GLUE root with <TASK>/{train,dev}.tsv (default: $GLUE_DIR)")
    ap.add_argument("--model-dir", default=default_model_dir(),
                    help="all-MiniLM-L6-v2 folder (default: $DELTATUNE_HOME/models/all-MiniLM-L6-v2)")
    ap.add_argument("--out", default="tests/fixtures", help="output folder (default: tests/fixtures)")
    args = ap.parse_args()
    if not args.glue_dir:
        ap.error("--glue-dir or GLUE_DIR is required")
    torch.set_num_threads(1)

    glue = load_glue(args.glue_dir)
    print("GLUE tasks:", {k: len(v) for k, v in glue.items()}, file=sys.stderr)

    tok = bert_tokenizer(args.model_dir)
    n = len(make_bert_cases(tok, glue, args.out))
    print("text/bert_cases.jsonl: %d cases" % n, file=sys.stderr)

    rtok = train_roberta_bpe(args.glue_dir, os.path.join(args.out, "text", "roberta_bpe"))
    print("text/roberta_bpe: vocab %d" % len(rtok), file=sys.stderr)
    n = len(make_roberta_cases(rtok, glue, args.out))
    print("text/roberta_cases.jsonl: %d cases" % n, file=sys.stderr)

    make_tiny_bert(args.out, "tiny_bert", 3, seed=1)
    make_tiny_bert(args.out, "tiny_bert_regression", 1, seed=2)
    make_tiny_roberta(args.out, rtok, glue, seed=3)
    make_tiny_electra(args.out, seed=4)
    print("model/tiny_*: done", file=sys.stderr)

    make_minilm(args.out, tok, args.model_dir, glue)
    print("model/minilm_expected.safetensors: done", file=sys.stderr)


if __name__ == "__main__":
    main()
