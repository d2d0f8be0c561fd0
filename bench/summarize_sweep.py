#!/usr/bin/env python3
"""Tables of a GLUE sweep (bench/glue_sweep.py's JSONL): mean and sample
standard deviation over seeds of each task's main metric (x100), per method and
side, and whether deltatune is within max(1 point, 1 sd of either side) of each
reference.

  python3 bench/summarize_sweep.py bench/results/glue_sweep.jsonl
"""
import argparse
import json
import statistics
from collections import defaultdict

SIDE_NAMES = {"ours": "deltatune", "ours-bf16": "deltatune bf16", "hf113": "HF (torch 1.13)",
              "hflatest": "HF (newest torch)"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep")
    ap.add_argument("--json", help="also write the table here as JSON")
    args = ap.parse_args()
    runs = [json.loads(line) for line in open(args.sweep)]
    values = defaultdict(list)
    settings = {}
    for r in runs:
        metric = r["dev"]["main_metric"]
        values[(r["task"], r["method"], r["side"])].append(100 * r["dev"][metric])
        settings[r["task"]] = (metric, r["samples"], r["max_length"])
    tasks = list(dict.fromkeys(r["task"] for r in runs))
    methods = list(dict.fromkeys(r["method"] for r in runs))
    sides = [s for s in SIDE_NAMES if any(r["side"] == s for r in runs)]

    def stats(key):
        v = values.get(key, [])
        if not v:
            return None
        return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0), len(v)

    header = "| task (metric) | method | " + " | ".join(SIDE_NAMES[s] for s in sides) + " | gap | within |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    table = []
    for task in tasks:
        metric = settings[task][0]
        for method in methods:
            cells, row = [], {"task": task, "metric": metric, "method": method}
            for side in sides:
                s = stats((task, method, side))
                row[side] = s
                cells.append("-" if s is None else f"{s[0]:.1f} ± {s[1]:.1f} (n={s[2]})")
            verdicts, gaps = [], []
            # deltatune's fp32 side when the sweep has one, else its bf16 side.
            ours = row.get("ours") or row.get("ours-bf16")
            for ref in sides:
                if ref.startswith("ours") or ours is None or row.get(ref) is None:
                    continue
                gap = ours[0] - row[ref][0]
                tolerance = max(1.0, ours[1], row[ref][1])
                gaps.append(f"{gap:+.1f}")
                verdicts.append("yes" if abs(gap) <= tolerance else "NO")
                row[f"gap_{ref}"] = gap
                row[f"within_{ref}"] = abs(gap) <= tolerance
            if all(c == "-" for c in cells):
                continue
            print(f"| {task} ({metric}) | {method} | " + " | ".join(cells) +
                  f" | {' / '.join(gaps)} | {' / '.join(verdicts)} |")
            table.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(table, f, indent=1)


if __name__ == "__main__":
    main()
