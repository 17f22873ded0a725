#!/usr/bin/env python
"""Where a committed pass set's timing noise comes from, and what it means for the A/A band (issue 31).

Read-only over the committed timing groups of a profile (``results/<profile>/<task>/<model>/timing/seed<k>/``:
timing.json and timing.npz, which keep every forward's time, the pass of each round and each round's order).
Nothing is timed again. Per group and batch size it writes:

- ``lag1_autocorr``: the correlation of log(forward time / that model's pass median) between consecutive
  forwards of a pass (whichever models they were). Near 0 when each forward's noise is its own; clearly above
  0 when the host drifts -- a stretch of seconds in which every model runs slow -- which the /proc/stat
  fields of a pass (foreign CPU, steal) do not see on a VM whose neighbours share the physical cores' caches
  and memory;
- ``slowest_window``: the largest mean relative time over ``--window`` consecutive forwards of a pass;
- ``forward_sd``: the spread of one forward's relative time (log scale);
- ``after``: per backend of a forward (torch, ort, ov) and backend of the forward just before it in its round,
  the geometric mean relative time: whether a runtime leaves something behind for the next model;
- the A/A (``finetune`` against its own checkpoint) per pass and its median, as the group reports it.

And over all groups: the spread of one pass's A/A (log scale), and -- by drawing R passes at a time from those
pooled per-pass readings -- how often a median of R passes falls outside [0.97, 1.03] for each R of ``--passes``
(5, the bench's, and larger): what the done-when band asks of the number of passes at this host's noise. The
drift figures use every pass the npz keeps (a repeated noisy pass's forwards are real forwards too); the A/A
figures only the kept passes, as the group reports them.

Usage (seconds; any host, it reads files only):
    PYTHONPATH=. python scripts/timing_drift.py --results results/bench --out results/bench/timing_drift.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

AA = "finetune"  # the variant that is the baseline's own checkpoint
BAND = (0.97, 1.03)


def _relative(npz: Any, names: list[str], bs: int) -> dict[str, np.ndarray]:
    """Per kept model, log(forward ms / the model's median in the forward's pass), in the npz's round order."""
    passes = npz[f"b{bs}/pass"]
    out: dict[str, np.ndarray] = {}
    for name in names:
        key = f"b{bs}/{name}"
        if key in npz:
            ms = npz[key].astype(float)
            out[name] = np.log(ms / np.array([np.median(ms[passes == p]) for p in passes]))
    return out


def relative_log_times(npz: Any, names: list[str], bs: int) -> list[np.ndarray]:
    """Per pass, log(forward ms / the model's median in that pass) in execution order (NaN where the model's
    times are not kept: a runtime's fp32 reference is timed, so it is a neighbour, but not stored)."""
    order, passes = npz[f"b{bs}/order"], npz[f"b{bs}/pass"]
    rel = _relative(npz, names, bs)
    return [np.array([rel[names[j]][r] if names[j] in rel else np.nan
                      for r in np.flatnonzero(passes == p) for j in order[r]], dtype=float)
            for p in np.unique(passes)]


def backend(name: str) -> str:
    """The runtime a timed entry runs on, from its name: ONNX Runtime (``int8_ort``, ``::ort_fp32``), OpenVINO
    (``int8_ov``, ``::ov_fp32``) or torch (everything else)."""
    if "::ort" in name or "int8_ort" in name:
        return "ort"
    if "::ov" in name or "int8_ov" in name:
        return "ov"
    return "torch"


def predecessor_effect(npz: Any, names: list[str], bs: int) -> dict[str, dict[str, dict[str, float]]]:
    """Geometric mean of a forward's relative time (over its model's pass median) by its backend and its round
    predecessor's backend, with the count; forwards first in their round are left out."""
    order = npz[f"b{bs}/order"]
    acc: dict[tuple[str, str], list[float]] = {}
    for name, rel in _relative(npz, names, bs).items():
        j = names.index(name)
        for r, row in enumerate(order):
            pos = int(np.flatnonzero(row == j)[0])
            if pos > 0:
                acc.setdefault((backend(name), backend(names[int(row[pos - 1])])), []).append(rel[r])
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (mine, prev), v in sorted(acc.items()):
        out.setdefault(mine, {})[prev] = {"ratio": round(float(np.exp(np.mean(v))), 4), "n": len(v)}
    return out


def lag1_autocorr(seq: np.ndarray) -> float:
    """Correlation of consecutive entries of ``seq`` over the pairs where both are known (NaN: unknown)."""
    a, b = seq[:-1], seq[1:]
    ok = ~np.isnan(a) & ~np.isnan(b)
    if ok.sum() < 3:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def slowest_window(seq: np.ndarray, window: int) -> float:
    """The largest mean relative time (as a ratio) over ``window`` consecutive forwards (unknowns skipped)."""
    best = float("nan")
    for k in range(0, max(1, len(seq) - window + 1)):
        w = seq[k:k + window]
        w = w[~np.isnan(w)]
        if len(w):
            best = np.nanmax([best, float(np.exp(w.mean()))])
    return best


def out_of_band_rate(log_aa: np.ndarray, passes: int, draws: int = 20000, seed: int = 0) -> float:
    """How often the median of ``passes`` per-pass A/A readings, drawn with replacement from ``log_aa`` (log
    scale, centred on 0 so that only the spread counts), falls outside ``BAND``."""
    rng = np.random.default_rng(seed)
    centred = log_aa - np.median(log_aa)
    med = np.exp(np.median(rng.choice(centred, size=(draws, passes), replace=True), axis=1))
    return float(np.mean((med < BAND[0]) | (med > BAND[1])))


def group_drift(group_dir: Path, window: int) -> dict[str, Any]:
    """The drift figures of one committed timing group (see the module docstring)."""
    rec = json.loads((group_dir / "timing.json").read_text())
    npz = np.load(group_dir / "timing.npz")
    kept = [p for p in rec["passes"] if not p.get("superseded_by")]
    names = kept[0]["order_names"]
    out: dict[str, Any] = {"pass_set": rec["pass_set"], "passes": len(kept), "models_per_round": len(names),
                           "foreign_cpu_max": max(p["host"].get("other_cpu_frac") or 0.0 for p in kept),
                           "steal_max": max(p["host"].get("steal_frac") or 0.0 for p in kept), "batch": {}}
    for bs in rec["measure"]["batch_sizes"]:
        seqs = relative_log_times(npz, names, int(bs))
        aa = [float(p["speedup"]) for p in rec["results"][AA][str(bs)]["passes"] if not p.get("superseded_by")]
        allv = np.concatenate(seqs)
        out["batch"][str(bs)] = {
            "rounds_per_pass": int(len(npz[f"b{bs}/pass"]) // len(seqs)),
            "lag1_autocorr": [round(lag1_autocorr(s), 3) for s in seqs],
            "slowest_window": [round(slowest_window(s, window), 3) for s in seqs],
            "forward_sd": round(float(np.nanstd(allv)), 4),
            "after": predecessor_effect(npz, names, int(bs)),
            "aa_per_pass": [round(a, 4) for a in aa],
            "aa_median": round(float(rec["results"][AA][str(bs)]["speedup"]), 4),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="results/bench", help="a profile's results directory")
    ap.add_argument("--window", type=int, default=12, help="forwards per window for slowest_window")
    ap.add_argument("--passes", default="5,9,15,25", help="pass counts for the out-of-band rate")
    ap.add_argument("--out", default="results/bench/timing_drift.json")
    args = ap.parse_args(argv)
    from axformer.utils import atomic_write_json

    root = Path(args.results)
    dirs = sorted(d for d in root.glob("*/*/timing/seed*") if (d / "timing.json").is_file()
                  and (d / "timing.npz").is_file())
    if not dirs:
        raise SystemExit(f"timing_drift: no timing group (timing/seed*/timing.json + timing.npz) under {root}; "
                         "run the profile's `time` rule first.")
    groups: dict[str, Any] = {}
    for d in dirs:
        try:
            rec = json.loads((d / "timing.json").read_text())
            keys = set(np.load(d / "timing.npz").keys())
            if not rec.get("passes") or not all(f"b{b}/order" in keys for b in rec["measure"]["batch_sizes"]):
                continue  # a group timed before the pass protocol: no pass or round-order record to read
            groups[f"{d.parts[-4]}/{d.parts[-3]}/{d.name.removeprefix('seed')}"] = group_drift(d, args.window)
        except (OSError, ValueError, KeyError, IndexError) as e:  # JSONDecodeError is a ValueError
            raise SystemExit(f"timing_drift: {d}/timing.json or timing.npz is not a readable timing group "
                             f"({type(e).__name__}: {e}); re-run that group's `time` rule or restore the file "
                             "from git.") from None
    summary: dict[str, Any] = {}
    for bs in sorted({b for g in groups.values() for b in g["batch"]}, key=int):
        rows = [g["batch"][bs] for g in groups.values() if bs in g["batch"]]
        log_aa = np.log([a for r in rows for a in r["aa_per_pass"]])
        lag = [x for r in rows for x in r["lag1_autocorr"] if x == x]
        summary[bs] = {
            "groups": len(rows), "pass_readings": int(len(log_aa)),
            "aa_pass_sd_log": round(float(np.std(log_aa, ddof=1)), 4),
            "aa_medians_outside_band": [k for k, g in groups.items() if bs in g["batch"]
                                        and not BAND[0] <= g["batch"][bs]["aa_median"] <= BAND[1]],
            "lag1_autocorr_median": round(float(np.median(lag)), 3),
            "forward_sd_median": round(float(np.median([r["forward_sd"] for r in rows])), 4),
            "torch_after_range": {prev: [min(r["after"]["torch"][prev]["ratio"] for r in rows
                                             if prev in r["after"].get("torch", {})),
                                         max(r["after"]["torch"][prev]["ratio"] for r in rows
                                             if prev in r["after"].get("torch", {}))]
                                  for prev in ("torch", "ort", "ov")
                                  if any(prev in r["after"].get("torch", {}) for r in rows)},
            "out_of_band_rate": {str(r): round(out_of_band_rate(log_aa, int(r)), 4)
                                 for r in args.passes.split(",") if r},
        }
    result = {"what": "timing noise of the committed pass sets: drift between consecutive forwards and the A/A "
                      "band's demand on the number of passes (scripts/timing_drift.py; reads files only)",
              "results": str(root), "window": args.window, "band": list(BAND), "summary": summary,
              "groups": groups}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    for bs, s in summary.items():
        print(f"batch {bs}: {s['groups']} groups, A/A pass sd {s['aa_pass_sd_log']:.3f} (log), lag-1 "
              f"{s['lag1_autocorr_median']:+.2f}, outside band {s['aa_medians_outside_band']}, "
              f"P(median outside) {s['out_of_band_rate']}", file=sys.stderr)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
