#!/usr/bin/env python
"""Micro-benchmark of one hard-attention layer against sdpa (DESIGN §7) -> results/bench/hard_attention_kernel.json.

The attention function alone (no projections) on MiniLM's shape: batch 32, length 128, 12 heads of 32 dims,
random q/k/v (seeded), the boolean padding mask transformers builds for sdpa. Two batches:

* ``sst2_like``: real lengths of 32 SST-2 dev rows drawn at random (seeded), tokenized with the MiniLM
  tokenizer (truncated to 128): most rows are shorter than K = 30 and take the per-sequence fallback;
* ``all_long``: every row 128 real tokens: every row goes through top-K.

Functions: ``sdpa`` (transformers' registered sdpa attention), ``official`` and ``renorm`` (hard attention,
K = 30, axformer.surgery.hard_attention). They are timed interleaved (one call of each per round, after warm-up) at
``--threads`` intra-op threads (one run per count); the JSON records the median and min ms, their ratios to
sdpa, the host CPU and its load average (other processes on a shared host distort multi-thread timings).

``--device cuda`` times the same functions on the GPU with CUDA events (``--dtype`` fp32 with TF32 as torch
leaves it, recorded; fp16; bf16). On CUDA hard attention takes its static path (no per-sequence fallback, no
key trimming: nothing is read back to the host), the path no whole-model GPU timing has exercised yet.
``--model`` adds whole-encoder timings: the 6-layer MiniLM architecture (its config.json; random weights,
seeded: latency does not depend on weight values) without hard attention, with K = 30 in layer 4 (the layer
the SST-2 searches keep) and in every layer, interleaved with ``measure.time_interleaved`` on the same two
batches of token ids. ``--tokenizer`` is a folder holding the MiniLM tokenizer and config.json (default: the
embedded model's folder), so a GPU host needs no weights.

Usage: AXFORMER_DATA=../shared/data python scripts/hard_attention_kernel.py [--threads 2] [--rounds 40]
       python scripts/hard_attention_kernel.py --device cuda --dtype fp16 --model --out results/gpu/...json
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from axformer.surgery import hard_attention  # noqa: E402  (registers the implementation)
from axformer.device import DTYPES, on_device, resolve_device, tf32_state, torch_dtype  # noqa: E402
from axformer.encoders.models import embedded_model_dir  # noqa: E402
from axformer.utils import ConfigError, atomic_write_json, env_info, git_commit  # noqa: E402

CPU = torch.device("cpu")

B, T, H, D, K = 32, 128, 12, 32, 30


def sst2_lengths(data_dir: Path, n: int, seed: int, tokenizer_dir: Path) -> list[int]:
    """Token counts (with [CLS]/[SEP], truncated to T) of ``n`` SST-2 dev rows drawn at random."""
    from transformers import AutoTokenizer

    with open(data_dir / "glue" / "SST-2" / "dev.tsv", newline="") as f:
        rows = [r["sentence"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(rows), generator=g)[:n].tolist()
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    return [len(tok(rows[i], truncation=True, max_length=T)["input_ids"]) for i in pick]


def module(form: str | None) -> nn.Module:
    m = nn.Module()
    if form is not None:
        m.axformer_topk, m.axformer_topk_form = K, form
    return m.eval()


def timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """ms of one call: perf_counter on CPU; CUDA events around the call, then a sync of the end event."""
    if device.type != "cuda":
        def cpu_ms(fn: Callable[[], object]) -> float:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        return cpu_ms

    def cuda_ms(fn: Callable[[], object]) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    return cuda_ms


def bench(lengths: list[int], rounds: int, warmup: int, seed: int, device: torch.device = CPU,
          dtype: torch.dtype = torch.float32) -> dict:
    g = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same q/k/v on every device
    q, k, v = (torch.randn(B, H, T, D, generator=g).to(device=device, dtype=dtype) for _ in range(3))
    allowed = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]  # right padding, like the tokenizer
    mask = allowed[:, None, None, :].expand(B, 1, T, T).contiguous().to(device)  # the sdpa mask transformers builds
    time_ms = timer(device)
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
                ms[name].append(time_ms(fn))
        agree = None
        if device.type != "cpu":  # the device path (static: no fallback, no trimming) against the CPU path
            cpu_q, cpu_k, cpu_v, cpu_mask = (t.to("cpu", torch.float32) if t.is_floating_point() else t.cpu()
                                             for t in (q, k, v, mask))
            real = allowed[:, :, None, None]  # (B, T, 1, 1): real query rows of the (B, T, H, D) output
            agree = {}
            for form in ("official", "renorm"):
                ref = hard_attention.topk_attention_forward(module(form), cpu_q, cpu_k, cpu_v, cpu_mask,
                                                            scaling=D**-0.5)[0]
                out = fns[form]()[0].to("cpu", torch.float32)
                agree[form] = float(((out - ref).abs() * real).amax())
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
        # max |device output - CPU fp32 output| over real query rows (None on the CPU itself)
        "max_abs_diff_vs_cpu": agree,
    }


def bench_model(lengths: list[int], config_dir: Path, device: torch.device, dtype: str, threads: int,
                seed: int, rounds: int, warmup: int) -> dict:
    """Whole-encoder p50 ms (``measure.time_interleaved``) without hard attention, in layer 4, in every layer."""
    from transformers import AutoConfig, AutoModel

    from axformer.measurement.measure import time_interleaved
    from axformer.measurement.measure_config import MeasureConfig

    cfg = AutoConfig.from_pretrained(str(config_dir))
    models = {}
    for name, layers in (("none", []), ("layer4", [4]), ("all_layers", list(range(cfg.num_hidden_layers)))):
        torch.manual_seed(seed)  # the same random weights in every copy
        m = AutoModel.from_config(cfg, attn_implementation="sdpa").eval()
        if layers:
            hard_attention.enable(m, layers, K, "official")
        models[name] = m
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, cfg.vocab_size, (B, T), generator=g)
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()
    mcfg = MeasureConfig(device=str(device), dtype=dtype, threads=threads, warmup=warmup, min_iters=rounds,
                         min_seconds=2.0)
    for m in models.values():
        m.to(device=device, dtype=torch_dtype(dtype))
    stats = time_interleaved(models, {"input_ids": ids, "attention_mask": mask}, mcfg)
    p50 = {name: s.p50_ms for name, s in stats.items()}
    return {"p50_ms": p50, "ratio_to_none": {name: v / p50["none"] for name, v in p50.items()},
            "n_iters": {name: s.n_iters for name, s in stats.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("AXFORMER_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--threads", type=int, nargs="+", default=[2], help="one run per thread count")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "results" / "bench" / "hard_attention_kernel.json"))
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--dtype", default="fp32", choices=DTYPES)
    ap.add_argument("--model", action="store_true", help="also time the whole encoder (random MiniLM weights)")
    ap.add_argument("--tokenizer", type=Path, default=None,
                    help="folder with the MiniLM tokenizer and config.json (default: the embedded model's)")
    args = ap.parse_args()
    try:  # bad values fail here, before any timing
        device = resolve_device(args.device)
        tok_dir = args.tokenizer or embedded_model_dir()
        if not (Path(tok_dir) / "config.json").is_file():
            raise ConfigError(f"--tokenizer {tok_dir}: no config.json there (give the MiniLM model folder).")
        if args.dtype != "fp32" and device.type == "cpu":
            raise ConfigError(f"--dtype {args.dtype} is for --device cuda (the CPU timing is fp32).")
        dev_tsv = Path(args.data_dir) / "glue" / "SST-2" / "dev.tsv"
        if not dev_tsv.is_file():
            raise ConfigError(f"{dev_tsv} not found: set --data-dir or AXFORMER_DATA to the data folder "
                              "(it holds glue/).")
        if args.rounds < 1 or args.warmup < 0 or min(args.threads) < 1:
            raise ConfigError(f"--rounds must be >= 1, --warmup >= 0 and --threads >= 1 (got {args.rounds}, "
                              f"{args.warmup}, {args.threads}).")
    except ConfigError as e:
        sys.exit(f"hard_attention_kernel: {e}")
    lengths = sst2_lengths(Path(args.data_dir), B, args.seed, Path(tok_dir))
    dtype = torch_dtype(args.dtype)
    load0 = os.getloadavg()[0]
    runs = []
    with on_device(device):
        for threads in args.threads:
            torch.set_num_threads(threads)
            run = {"threads": threads,
                   "batches": {"sst2_like": bench(lengths, args.rounds, args.warmup, args.seed, device, dtype),
                               "all_long": bench([T] * B, args.rounds, args.warmup, args.seed, device, dtype)}}
            if args.model:
                run["model"] = {name: bench_model(lens, Path(tok_dir), device, args.dtype, threads, args.seed,
                                                   args.rounds, args.warmup)
                                for name, lens in (("sst2_like", lengths), ("all_long", [T] * B))}
            runs.append(run)
    rec = {
        "what": f"one attention layer, batch {B} x length {T}, {H} heads x {D} dims (MiniLM), K = {K}; "
                "attention function only (no projections), median (and min) ms over interleaved rounds"
                + ("; model: the whole 6-layer encoder (random weights), p50 ms" if args.model else ""),
        "device": str(device),
        "dtype": args.dtype,
        "tf32": tf32_state(),
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
        for name, b in run.get("model", {}).items():
            print(run["threads"], "threads", "model", name, "p50 ms", {k: round(v, 2) for k, v in b["p50_ms"].items()},
                  "ratio", {k: round(v, 2) for k, v in b["ratio_to_none"].items()})


if __name__ == "__main__":
    main()
