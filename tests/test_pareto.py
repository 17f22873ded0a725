"""The peers' frontier (axformer/reporting/pareto.py): a hand-made set of points with a known answer."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from axformer.reporting import pareto

NAN = math.nan


def _pts(rows):
    out = []
    for kind, method, variant, sp, enc, d, lo, hi in rows:
        out.append({"task": "t", "model": "m", "kind": kind, "method": method, "variant": variant, "budget": "b",
                    "speedup": sp, "encoder_ratio": enc, "delta": d, "ci_low": lo, "ci_high": hi, "speed_batch": 32,
                    "metric": "accuracy"})
    return pd.DataFrame(out, columns=list(pareto.COLUMNS))


# peer A: two budgets, peer B: one; AxFormer variants V1..V6 (speedup, encoder ratio, Δ [low, high])
POINTS = _pts([
    ("peer", "A", "finetune+a90", 1.2, 0.8, -0.01, -0.02, 0.00),
    ("peer", "A", "finetune+a50", 2.0, 0.5, -0.05, -0.06, -0.04),
    ("peer", "B", "finetune+b", 1.5, 0.6, -0.03, -0.035, -0.025),
    ("AxFormer", "axformer", "finetune+v1", 1.6, 0.7, 0.0, -0.005, 0.005),
    ("AxFormer", "axformer", "finetune+v2", 1.3, 0.9, -0.012, -0.02, -0.004),
    ("AxFormer", "axformer", "finetune+v3", 1.1, 0.95, -0.04, -0.05, -0.03),
    ("AxFormer", "axformer", "finetune+v4", 2.5, 0.4, 0.01, 0.001, 0.02),
    ("AxFormer", "axformer", "finetune+v5", 2.5, 0.45, -0.06, -0.07, -0.05),
    ("AxFormer", "axformer", "finetune+v6", 1.6, 0.7, 0.0, NAN, NAN),
])


def test_frontier_interpolates_between_budgets_and_takes_the_best_peer():
    peers = POINTS[POINTS["kind"] == "peer"]
    # speed 1.6: A halfway between 1.2 and 2.0 -> -0.03 [-0.04, -0.02]; B's only budget (1.5) is slower: ignored;
    # A's 2.0 budget (-0.05) is faster but worse
    fr = pareto.frontier_at(peers, "speed", 1.6)
    assert fr["method"] == "A" and fr["x"] == pytest.approx(1.6)
    assert (fr["delta"], fr["low"], fr["high"]) == pytest.approx((-0.03, -0.04, -0.02))
    # speed 1.4: A at 1.4 is -0.02, B at 1.5 (faster) -0.03: A wins
    assert pareto.frontier_at(peers, "speed", 1.4)["delta"] == pytest.approx(-0.02)
    # size 0.7 (smaller is better): A a third of the way from 0.8 to 0.5 -> -0.01 - 0.04 / 3
    fr = pareto.frontier_at(peers, "size", 0.7)
    assert fr["method"] == "A" and (fr["delta"], fr["low"], fr["high"]) == pytest.approx(
        (-0.01 - 0.04 / 3, -0.02 - 0.04 / 3, -0.04 / 3))
    # a larger encoder than every peer point: the best smaller peer point (A at 0.8)
    fr = pareto.frontier_at(peers, "size", 0.9)
    assert (fr["method"], fr["x"], fr["delta"]) == ("A", pytest.approx(0.8), pytest.approx(-0.01))
    # faster than every peer point: no frontier
    assert pareto.frontier_at(peers, "speed", 2.5) is None
    # a peer better on the axis and more accurate than the interpolated line sets the frontier (Pareto)
    more = pd.concat([peers, _pts([("peer", "C", "finetune+c", 1.9, 0.55, 0.0, -0.01, 0.01)])])
    assert pareto.frontier_at(more, "speed", 1.6)["method"] == "C"


def test_verdicts_of_the_hand_made_points():
    out = pareto.with_verdicts(POINTS).set_index("variant")
    expect = {  # variant: (at its speed, at its size)
        "finetune+v1": ("above", "above"),     # [-0.005, 0.005] vs A's [-0.04, -0.02] / [-0.033, -0.013]
        "finetune+v2": ("on", "on"),           # overlaps A's [-0.025, -0.005] at 1.3 and A's [-0.02, 0] at 0.8
        "finetune+v3": ("below", "below"),     # under A's first budget [-0.02, 0], which is faster and smaller
        "finetune+v4": ("above", "above"),     # beyond every peer, and its interval above every peer point's
        "finetune+v5": ("outside", "outside"),  # beyond every peer, not above them
        "finetune+v6": ("n/a", "n/a"),         # no interval
    }
    for v, (speed, size) in expect.items():
        assert (out.loc[v, "verdict_speed"], out.loc[v, "verdict_size"]) == (speed, size), v
    assert out.loc["finetune+v1", "frontier_speed_method"] == "A"
    assert out.loc["finetune+v1", "frontier_speed_delta"] == pytest.approx(-0.03)
    assert out.loc[out["kind"] == "peer", "verdict_speed"].isna().all()


def _frame_and_verdicts():
    """A run frame and verdict table as axformer.reporting.report / axformer.reporting.verdicts give them, for two peer budgets."""
    def run(variant, cmds, method=None, cfg=None, flops=100.0, seed=0):
        r = {"task": "t", "model": "m", "variant": variant, "seed": seed, "commands": cmds,
             "flops": json.dumps([{"batch_size": 32, "seq_len": 128, "forward_flops": flops}]),
             "baseline_method": method}
        for k, v in (cfg or {}).items():
            r[f"baseline_cfg_{k}"] = v
        return r

    df = pd.DataFrame([run("finetune", "finetune"),
                       run("finetune+f90", "finetune>baseline", "fisher", {"flops_frac": 0.9}, 90.0),
                       run("finetune+f50", "finetune>baseline", "fisher", {"flops_frac": 0.5}, 50.0),
                       run("finetune+l2", "finetune>baseline", "layerdrop", {"k": 2}, 66.0),
                       run("finetune+fisher+int8", "finetune>baseline>quantize", "fisher", {"flops_frac": 0.5}),
                       run("finetune+axformer", "finetune>approximate", flops=80.0)])

    def vrow(variant, d, lo, hi, sp, enc):
        return {"task": "t", "model": "m", "variant": variant, "n_seeds": 1, "metric": "accuracy", "delta": d,
                "ci_low": lo, "ci_high": hi, "speed_batch": 32, "speedup_b32": sp, "speedup_b32_low": sp - 0.05,
                "speedup_b32_high": sp + 0.05, "encoder_ratio": enc}

    vt = pd.DataFrame([vrow("finetune", 0, 0, 0, 1.0, 1.0), vrow("finetune+f90", -0.01, -0.02, 0.0, 1.1, 0.9),
                       vrow("finetune+f50", -0.05, -0.06, -0.04, 1.9, 0.5), vrow("finetune+l2", 0, -0.01, 0.01, 1.5, 0.67),
                       vrow("finetune+fisher+int8", -0.05, -0.07, -0.03, 4.0, 0.5),
                       vrow("finetune+axformer", 0.01, 0.005, 0.015, 1.2, 0.8)])
    return df, vt


def test_points_and_render(tmp_path):
    df, vt = _frame_and_verdicts()
    pts = pareto.points(df, vt)
    assert list(pts.columns) == list(pareto.COLUMNS)
    by = pts.set_index("variant")
    assert set(by.index) == {"finetune+f90", "finetune+f50", "finetune+l2", "finetune+axformer"}  # no int8 chain
    assert by.loc["finetune+f90", "budget"] == "FLOPs 0.9" and by.loc["finetune+l2", "budget"] == "-2 layers"
    assert by.loc["finetune+f50", "flops_ratio"] == pytest.approx(0.5) and by.loc["finetune+axformer", "kind"] == "AxFormer"
    assert by.loc["finetune+l2", "method"] == "layerdrop" and by.loc["finetune+axformer", "speedup"] == 1.2
    notes: list[str] = []
    files = pareto.render(df, vt, tmp_path / "res" / "pareto.csv", tmp_path / "fig", notes)
    assert [p.name for p in files] == ["pareto.csv", "pareto_t.pdf", "pareto_t.png", "pareto.md"]
    back = pd.read_csv(files[0]).set_index("variant")
    # at speed 1.2: fisher interpolated between 1.1 and 1.9 = -0.015; layerdrop at 1.5 (faster) = 0 [-0.01, 0.01];
    # AxFormer's [0.005, 0.015] overlaps it -> on; at size 0.8: the same layerdrop point (smaller) -> on
    assert back.loc["finetune+axformer", "frontier_speed_method"] == "layerdrop"
    assert back.loc["finetune+axformer", ["verdict_speed", "verdict_size"]].tolist() == ["on", "on"]
    assert all(p.stat().st_size > 0 for p in files)
    # one budget per peer: no line to draw, nothing written, a note says why
    one = df[df["variant"] != "finetune+f50"]
    assert pareto.render(one, vt, tmp_path / "x.csv", tmp_path / "fig2", notes) == []
    assert "two or more budgets" in notes[-1] and not (tmp_path / "x.csv").exists()
