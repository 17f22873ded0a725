#!/usr/bin/env python
"""The A/A reading of a timing group under each round order (issue 31: "every bench finetune A/A in [0.97, 1.03]").

A timing pass (axformer/measurement/timing.py) times finetune and every variant of one (task, model, seed)
round-robin; ``finetune`` is also one of the variants, so ``finetune`` against itself (the A/A) says how far a
speedup of 1 can read from 1. Under the earlier ``rotate`` order each model's predecessor inside a round was
always the same model; if a model leaves something behind (a runtime's thread pool still waking, a cache it
evicted), its successor pays for it in every round and the A/A -- or any speedup -- is biased, not just noisy.
``shuffle`` draws a fresh permutation per round.

This benchmark takes one built group (default: the ``timing_check`` profile, workflow/config/timing_check.yaml:
MiniLM fp32 at three sizes, torch int8, ONNX Runtime and OpenVINO int8 with their fp32 graphs) and runs the
suite's own ``timing.time_group`` on it ``--sets`` times per order, the orders alternating so that a drift of
the host hits both alike. It writes, per order: every pass's A/A and speedups, each set's median-of-passes A/A
(what a bench row would report), the spread of every variant's speedup over the sets, and -- from the recorded
round orders -- the neighbour effect: per model, its time after each predecessor relative to its median.

Usage (the group's checkpoints first, ~1 min; then ~6.5 min per set and order on 2 idle cores: 38 min for
--sets 3 with two orders, 2026-12-07):
    AXFORMER_DATA=../shared/data snakemake --cores 2 --configfile workflow/config/timing_check.yaml --omit-from time
    AXFORMER_DATA=../shared/data PYTHONPATH=. python scripts/timing_order.py --sets 3
Keep the host quiet while it runs: every pass records its host noise, and the file says how loaded it was.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROFILE = "workflow/config/timing_check.yaml"
AA = "finetune"  # the variant that is the baseline's own checkpoint


def group_plan(profile: str, target: str) -> dict[str, Any]:
    """The `axformer time --plan-json` value Snakemake would run for ``target`` (a timing.json of ``profile``)."""
    out = subprocess.run(["snakemake", "-n", "-p", "--forcerun", "time", "--configfile", profile, "--", target],
                         capture_output=True, text=True)
    for line in out.stdout.splitlines():
        line = line.removeprefix("Shell command:").strip()  # Snakemake 9 prefixes the printed command
        if line.startswith("axformer time --plan-json"):
            args = shlex.split(line)
            return json.loads(args[args.index("--plan-json") + 1])
    raise SystemExit(f"timing_order: no `axformer time` command for {target} in the dry run of {profile}:\n"
                     f"{out.stdout[-2000:]}{out.stderr[-2000:]}")


def neighbour_effect(samples: dict[str, np.ndarray], names: list[str], bs: int) -> dict[str, dict[str, float]]:
    """Per model: mean of log(ms / the model's pass median) over the rounds it ran right after each other model
    (as a ratio), from the recorded orders (for the models timing.npz keeps: baselines and variants). Models first in their round (no predecessor in it) are left out."""
    order, passes = samples[f"b{bs}/order"], samples[f"b{bs}/pass"]
    out: dict[str, dict[str, float]] = {}
    for j, name in enumerate(names):
        if f"b{bs}/{name}" not in samples:  # a runtime's fp32 reference: timed (a predecessor), not kept
            continue
        ms = samples[f"b{bs}/{name}"].astype(float)
        med = {int(p): float(np.median(ms[passes == p])) for p in np.unique(passes)}
        rel = np.log(ms / np.array([med[int(p)] for p in passes]))
        acc: dict[str, list[float]] = {}
        for r, row in enumerate(order):
            pos = int(np.where(row == j)[0][0])
            if pos > 0:
                acc.setdefault(names[int(row[pos - 1])], []).append(rel[r])
        out[name] = {k: round(float(np.exp(np.mean(v))), 4) for k, v in sorted(acc.items())}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default=PROFILE)
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--orders", default="shuffle,rotate")
    ap.add_argument("--sets", type=int, default=3, help="full pass sets per order (each measure.passes passes)")
    ap.add_argument("--measure", default=None, help='JSON laid over the profile\'s measure block, e.g. {"min_seconds": 10}')
    ap.add_argument("--out", default="results/bench/timing_order.json")
    args = ap.parse_args(argv)
    from axformer.measurement import timing
    from axformer.steps.runs import lineage_rows
    from axformer.utils import atomic_write_json

    import yaml

    prof = yaml.safe_load(Path(args.profile).read_text())
    target = f"{prof['results_dir']}/{args.task}/{prof['models'][0]}/timing/seed{args.seed}/timing.json"
    plan = group_plan(args.profile, target)
    if args.measure:
        plan["measure"].update(json.loads(args.measure))
    orders = [o for o in args.orders.split(",") if o]
    bss = [str(b) for b in plan["measure"]["batch_sizes"]]
    t0 = time.time()
    runs: list[dict[str, Any]] = []
    for s in range(args.sets):
        for policy in (orders if s % 2 == 0 else orders[::-1]):
            p = json.loads(json.dumps(plan))
            p["measure"]["round_order"] = policy
            p["pass_set"] = f"{policy}-set{s}"
            record, samples = timing.time_group(p, lineage_rows)
            names = record["passes"][0]["order_names"]
            res = record["results"]
            runs.append({
                "order": policy, "set": s, "wall_s": round(record["wall_s"], 1),
                "aa": {bs: res[AA][bs]["speedup"] for bs in bss},
                "aa_per_pass": {bs: [round(r["speedup"], 4) for r in res[AA][bs]["passes"]] for bs in bss},
                "speedup": {v: {bs: round(res[v][bs]["speedup"], 4) for bs in bss} for v in record["variants"]},
                "within_pass_cv": {v: {bs: round(float(np.median([
                    np.std(samples[f"b{bs}/{v}"][samples[f"b{bs}/pass"] == k]) /
                    np.mean(samples[f"b{bs}/{v}"][samples[f"b{bs}/pass"] == k])
                    for k in np.unique(samples[f"b{bs}/pass"])])), 4) for bs in bss} for v in record["variants"]},
                "rounds_per_pass": {bs: int(len(samples[f"b{bs}/pass"]) // len(record["passes"])) for bs in bss},
                "neighbour_effect": {bs: neighbour_effect(samples, names, int(bs)) for bs in bss},
                "host": [{k: q["host"].get(k) for k in ("other_cpu_frac", "steal_frac", "loadavg_1m", "cpu_mhz",
                                                         "wall_s")} | {"noisy": q["noisy"]} for q in record["passes"]],
                "threading": record["passes"][0]["threading"],
            })
            aa = ", ".join(f"b{bs} {runs[-1]['aa'][bs]:.3f}" for bs in bss)
            print(f"[{time.time() - t0:5.0f} s] {policy:8s} set {s}: A/A {aa}", file=sys.stderr, flush=True)
    summary: dict[str, Any] = {}
    for policy in orders:
        rs = [r for r in runs if r["order"] == policy]
        per = {}
        for bs in bss:
            aas = [r["aa"][bs] for r in rs]
            passes = [x for r in rs for x in r["aa_per_pass"][bs]]
            nb = [abs(np.log(f)) for r in rs for m in r["neighbour_effect"][bs].values() for f in m.values()]
            sp_cv = {v: round(statistics.pstdev([r["speedup"][v][bs] for r in rs]) /
                              statistics.fmean([r["speedup"][v][bs] for r in rs]), 4) for v in rs[0]["speedup"]}
            per[bs] = {"aa_set_medians": [round(a, 4) for a in aas],
                       "aa_sets_in_band": sum(0.97 <= a <= 1.03 for a in aas),
                       "aa_pass_range": [round(min(passes), 4), round(max(passes), 4)],
                       "aa_pass_abs_log_median": round(float(np.median(np.abs(np.log(passes)))), 4),
                       "speedup_cv_over_sets": sp_cv,
                       "neighbour_effect_abs_log_median": round(float(np.median(nb)), 4) if nb else None,
                       "neighbour_effect_abs_log_max": round(float(np.max(nb)), 4) if nb else None}
        summary[policy] = per
    result = {"what": "A/A (finetune against itself) and speedups of one timing group, per round order",
              "profile": args.profile, "group": {"task": args.task, "model": prof["models"][0], "seed": args.seed},
              "measure": plan["measure"], "variants": [e["variant"] for e in plan["entries"]],
              "sets": args.sets, "summary": summary, "runs": runs, "wall_s": round(time.time() - t0, 1),
              "cpu": timing.cpu_identity()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    print(f"wrote {out} in {result['wall_s']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
