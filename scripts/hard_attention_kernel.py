#!/usr/bin/env python
"""Micro-benchmark of one hard-attention layer against sdpa (DESIGN §7) -> results/bench/hard_attention_kernel.json.

The attention function alone (no projections) on MiniLM's shape: batch 32, length 128, 12 heads of 32 dims,
random q/k/v (seeded), the boolean padding mask transformers builds for sdpa. Two batches:

* ``sst2_like``: real lengths of 32 SST-2 dev rows drawn at random (seeded), tokenized with the MiniLM
  tokenizer (truncated to 128): most rows are shorter than K = 30 and take the per-sequence fallback;
* ``all_long``: every row 128 real tokens: every row goes through top-K.

Functions: ``sdpa`` (transformers' registered sdpa attention), ``official`` and ``renorm`` (hard attention,
K = 30, axformer.hard_attention). They are timed interleaved (one call of each per round, after warm-up) at
``--threads`` intra-op threads (one run per count); the JSON records the median and min ms, their ratios to
sdpa, the host CPU and its load average (other processes on a shared host distort multi-thread timings).

Usage: AXFORMER_DATA=../shared/data python scripts/hard_attention_kernel.py [--threads 2] [--rounds 40]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from axformer import hard_attention  # noqa: E402  (registers the implementation)
from axformer.models import embedded_model_dir  # noqa: E402
from axformer.utils import atomic_write_json, env_info, git_commit  # noqa: E402

B, T, H, D, K = 32, 128, 12, 32, 30


def sst2_lengths(data_dir: Path, n: int, seed: int) -> list[int]:
    """Token counts (with [CLS]/[SEP], truncated to T) of ``n`` SST-2 dev rows drawn at random."""
    from transformers import AutoTokenizer

    with open(data_dir / "glue" / "SST-2" / "dev.tsv", newline="") as f:
        rows = [r["sentence"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(rows), generator=g)[:n].tolist()
    tok = AutoTokenizer.from_pretrained(str(embedded_model_dir()))
    return [len(tok(rows[i], truncation=True, max_length=T)["input_ids"]) for i in pick]


def module(form: str | None) -> nn.Module:
    m = nn.Module()
    if form is not None:
        m.axformer_topk, m.axformer_topk_form = K, form
    return m.eval()


def bench(lengths: list[int], rounds: int, warmup: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, generator=g) for _ in range(3))
    allowed = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]  # right padding, like the tokenizer
    mask = allowed[:, None, None, :].expand(B, 1, T, T).contiguous()  # the sdpa mask transformers builds
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    fns = {
        "sdpa": lambda: sdpa(module(None), q, k, v, mask, scaling=D**-0.5),
        "official": lambda: hard_attention.topk_attention_forward(module("official"), q, k, v, mask, scaling=D**-0.5),
        "renorm": lambda: hard_attention.topk_attention_forward(module("renorm"), q, k, v, mask, scaling=D**-0.5),
    }
    ms: dict[str, list[float]] = {name: [] for name in fns}
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        for _ in range(rounds):  # interleaved: load bursts hit every function alike
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                ms[name].append((time.perf_counter() - t0) * 1e3)
    med = {name: statistics.median(v) for name, v in ms.items()}
    low = {name: min(v) for name, v in ms.items()}  # least disturbed by other processes on a shared host
    return {
        "lengths": {"mean": statistics.mean(lengths), "min": min(lengths), "max": max(lengths),
                    "rows_longer_than_k": sum(n > K for n in lengths)},
        "median_ms": med,
        "ratio_to_sdpa": {name: med[name] / med["sdpa"] for name in fns},
        "min_ms": low,
        "min_ratio_to_sdpa": {name: low[name] / low["sdpa"] for name in fns},
        "n_rounds": rounds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("AXFORMER_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--threads", type=int, nargs="+", default=[2], help="one run per thread count")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "results" / "bench" / "hard_attention_kernel.json"))
    args = ap.parse_args()
    lengths = sst2_lengths(Path(args.data_dir), B, args.seed)
    load0 = os.getloadavg()[0]
    runs = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        runs.append({"threads": threads,
                     "batches": {"sst2_like": bench(lengths, args.rounds, args.warmup, args.seed),
                                 "all_long": bench([T] * B, args.rounds, args.warmup, args.seed)}})
    rec = {
        "what": f"one attention layer, batch {B} x length {T}, {H} heads x {D} dims (MiniLM), K = {K}; "
                "attention function only (no projections), median (and min) ms over interleaved rounds",
        "runs": runs,
        # other processes on the host share its cores: the 1-minute load average before / after the timing
        "loadavg_1min": [load0, os.getloadavg()[0]],
        "seed": args.seed,
        "env": env_info() | {"git_commit": git_commit()},
        "command": "python scripts/hard_attention_kernel.py " + " ".join(sys.argv[1:]),
    }
    atomic_write_json(args.out, rec)
    for run in runs:
        for name, b in run["batches"].items():
            print(run["threads"], "threads", name, "median ratio", {k: round(v, 2) for k, v in b["ratio_to_sdpa"].items()},
                  "min ratio", {k: round(v, 2) for k, v in b["min_ratio_to_sdpa"].items()},
                  "median ms", {k: round(v, 2) for k, v in b["median_ms"].items()})


if __name__ == "__main__":
    main()
