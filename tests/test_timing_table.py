"""The timing-protocol table of the report (axformer.reporting.tables.timing_table): read off hand-made records."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from axformer.reporting.tables import latency_passes, timing_summary_text, timing_table
from axformer.utils import ConfigError


def _pass(i: int, speedup: float, *, noisy: bool = False, superseded_by: int | None = None, other: float = 0.01,
          pass_set: str = "ps-A") -> dict:
    return {"pass": i, "pass_set": pass_set, "speedup": speedup, "noisy": noisy, "superseded_by": superseded_by,
            "host": {"other_cpu_frac": other, "steal_frac": 0.002 * (i + 1), "wall_s": 10.0, "cpu_model": "AMD EPYC"}}


def _run(variant: str, seed: int, passes: list[dict] | None, speedup: float, want: int = 3, **extra) -> dict:
    row = {"task": "rte", "model": "minilm", "seed": seed, "variant": variant, "latency_measured": True,
           "measure_passes": want, "latency_b1_speedup": speedup, "latency_b1_speedup_ci": json.dumps([0.9, 1.1]),
           "run_dir": f"rte/minilm/{variant}/seed{seed}"}
    if passes is not None:
        row["latency_b1_passes"] = json.dumps(passes)
    row.update(extra)
    return row


def _frame() -> pd.DataFrame:
    # seed 0: three passes, the second noisy and repeated as pass 3 (kept: 0, 2, 3); the variant's figure has
    # the same four passes.  seed 1: the variant rests on two kept passes of three configured; the majority
    # row was not timed; another run has no passes at all (a single interleaved job).
    s0 = [_pass(0, 1.0), _pass(1, 1.2, noisy=True, superseded_by=3, other=0.4), _pass(2, 0.98), _pass(3, 1.01)]
    v0 = [dict(p, speedup=2 * p["speedup"]) for p in s0]
    s1 = [_pass(0, 0.95, pass_set="ps-B"), _pass(1, 0.96, pass_set="ps-B"), _pass(2, 0.99, pass_set="ps-B")]
    return pd.DataFrame([
        # seed 0's finetune also at batch 8: the same four pass processes, counted once
        _run("finetune", 0, s0, 1.0, latency_b8_passes=json.dumps(s0), latency_b8_speedup=1.01),
        _run("finetune+prune", 0, v0, 2.0),
        _run("finetune", 1, s1, 0.96), _run("finetune+prune", 1, s1[:2], 1.5),
        _run("finetune+int8", 1, None, 2.5),
        _run("majority", 1, None, float("nan"), latency_measured=False),
    ])


def test_timing_table_reads_the_passes():
    table, summary = timing_table(_frame())
    assert list(table["Seed"]) == ["0", "1"] and "Model" not in table.columns  # one model: no model column
    s0, s1 = table.iloc[0], table.iloc[1]
    assert s0["Pass set"] == "ps-A" and s0["Timed runs"] == "2" and s0["Passes (fewest)"] == "3"
    assert s0["Noisy (repeated)"] == "1 (1)"  # counted once although two runs carry the pass
    assert s0["Foreign CPU (max)"] == "0.400" and s0["Steal (max)"] == "0.008" and s0["Pass wall (s)"] == "40"
    assert s0["A/A b1"] == "1.000 [0.900, 1.100]" and s0["CPU"] == "AMD EPYC"
    assert s1["Timed runs"] == "3" and s1["Passes (fewest)"] == "2" and s1["Noisy (repeated)"] == "0 (0)"
    assert s0["A/A b8"] == "1.010" and s1["A/A b8"] == "–"  # no interval recorded at b8; seed 1 not timed at b8
    assert s1["A/A b1"].startswith("0.960 ")
    assert summary == {"groups": 2, "timed_runs": 5, "runs_without_passes": 1, "runs_short_of_passes": 1,
                       "pass_sets": ["ps-A", "ps-B"], "aa_min": 0.96, "aa_max": 1.01, "aa_within_3pct": 2,
                       "aa_readings": 3}
    text = timing_summary_text(summary)
    assert "2 timing groups, 5 timed runs: 1 without timing passes" in text and "2 pass-set ids (one per time job)" in text
    assert "0.960–1.010, 2 of 3 readings in [0.97, 1.03]" in text
    stamped = dict(summary, pass_sets=["ps-20261206T225906-ce96508152e5", "ps-20261207T010203-ce96508152e5",
                                       "ps-20261207T020000-abcdef012345"])
    assert ("3 pass-set ids (one per time job) from commits abcdef012345, ce96508152e5, started 2026-12-06 22:59 "
            "to 2026-12-07 02:00 UTC") in timing_summary_text(stamped)


def test_timing_table_is_empty_without_passes():
    df = _frame().drop(columns=["latency_b1_passes", "latency_b8_passes"])
    table, summary = timing_table(df)
    assert table.empty and summary == {}


@pytest.mark.parametrize("cell", ["not json", json.dumps([{"p50_ms": 3.0}]), json.dumps({"speedup": 1.0})])
def test_malformed_passes_name_the_run(cell):
    with pytest.raises(ConfigError, match=r"rte/minilm/x/seed0: latency batch 1 'passes'"):
        latency_passes({"latency_b1_passes": cell}, 1, "rte/minilm/x/seed0")
