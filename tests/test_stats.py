"""axformer.stats (paired bootstrap, speedup interval, seeds, verdicts) and axformer.reporting.verdicts (the table)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as student_t

from axformer.taskdata import metrics as M
from axformer.reporting import report
from axformer import stats as S
from axformer.reporting import verdicts as V
from axformer.taskdata.tasks import get_task
from axformer.utils import ConfigError


# ------------------------------------------------------------------------------------- paired bootstrap
def test_every_resample_gives_the_same_delta():
    labels = np.array([0, 1, 1, 0, 1])
    base = 1 - labels  # every prediction wrong
    var = labels.copy()  # every prediction right: accuracy difference is 1 on any resample
    b = S.paired_bootstrap("accuracy", base, var, labels, resamples=500, seed=3)
    assert b.estimate == 1.0 and b.low == 1.0 and b.high == 1.0
    assert np.all(b.samples == 1.0) and len(b.samples) == 500
    # Pearson is unchanged by an increasing affine map of the predictions: the difference is 0 on every resample
    rng = np.random.default_rng(0)
    y = rng.random(40)
    p = y + rng.normal(0, 0.3, 40)
    b = S.paired_bootstrap("pearson", p, 3.0 * p + 2.0, y, resamples=500, seed=1)
    assert b.estimate == pytest.approx(0.0, abs=1e-12)
    assert np.abs(b.samples).max() < 1e-12


def test_enumerable_case_matches_hand_computation():
    # 4 dev rows: both right on rows 0-1, only finetune right on row 2, only the variant right on row 3, so a
    # resample's accuracy difference is (#row3 - #row2) / 4. By hand (4 draws, each row 1/4):
    # P(Δ = -1) = (1/4)^4 = 1/256, P(Δ = -3/4) = 4 · (1/4)^3 · (1/2) = 8/256; the CDF crosses 2.5 % at -3/4
    # (1/256 < 0.025 < 9/256), and by symmetry 97.5 % at +3/4: the 95 % interval is [-0.75, 0.75].
    labels = np.array([1, 0, 1, 1])
    base = np.array([1, 0, 1, 0])
    var = np.array([1, 0, 0, 1])
    b = S.paired_bootstrap("accuracy", base, var, labels, resamples=20_000, seed=0)
    assert b.estimate == 0.0
    assert (b.low, b.high) == (-0.75, 0.75)
    # the whole resampling distribution against exact enumeration of the 4^4 index tuples
    exact: dict[float, float] = {}
    for idx in itertools.product(range(4), repeat=4):
        d = (np.sum(np.array(idx) == 3) - np.sum(np.array(idx) == 2)) / 4
        exact[d] = exact.get(d, 0.0) + 1 / 256
    assert exact[-1.0] == pytest.approx(1 / 256) and exact[-0.75] == pytest.approx(8 / 256)
    n = len(b.samples)
    for d, p in exact.items():
        freq = np.mean(b.samples == d)
        assert abs(freq - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-9, (d, freq, p)


def test_same_seed_same_interval_other_seed_other_draws():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 200)
    a = np.where(rng.random(200) < 0.8, y, 1 - y)
    c = np.where(rng.random(200) < 0.85, y, 1 - y)
    one = S.paired_bootstrap("f1", a, c, y, resamples=1000, seed=7)
    two = S.paired_bootstrap("f1", a, c, y, resamples=1000, seed=7)
    other = S.paired_bootstrap("f1", a, c, y, resamples=1000, seed=8)
    assert (one.low, one.high) == (two.low, two.high) and np.array_equal(one.samples, two.samples)
    assert not np.array_equal(one.samples, other.samples)
    assert one.low <= one.estimate <= one.high


@pytest.mark.parametrize("kind", ["accuracy", "f1", "mcc", "pearson", "spearman"])
def test_vectorised_metrics_agree_with_metrics_module(kind):
    rng = np.random.default_rng(11)
    n = 60
    if kind in ("pearson", "spearman"):
        y = np.round(rng.random(n) * 5, 1)  # ties, as STS-B has
        p = y + rng.normal(0, 1, n)
    else:
        y = rng.integers(0, 2, n)
        p = np.where(rng.random(n) < 0.7, y, 1 - y)
    idx = np.vstack([rng.integers(0, n, size=(30, n)), np.zeros((1, n), dtype=int)])  # last row: one example
    got = S.resampled_metric(kind, p, y)(idx)
    want = [M.METRICS[kind](p[row], y[row]) for row in idx]
    np.testing.assert_allclose(got, want, atol=1e-10)


def test_multiclass_mcc_falls_back_to_metrics_module():
    rng = np.random.default_rng(2)
    y, p = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    idx = rng.integers(0, 50, size=(10, 50))
    np.testing.assert_allclose(S.resampled_metric("mcc", p, y)(idx), [M.mcc(p[r], y[r]) for r in idx])


def test_squad_per_question_means_are_the_official_scores():
    answers = ["the Eiffel Tower", "1889", "Paris France", ""]
    golds = [["Eiffel Tower"], ["in 1889", "1889"], ["Paris"], ["nothing"]]
    per = S.squad_per_question(answers, golds)
    want = M.squad_scores(answers, golds)
    assert per["f1"].mean() == pytest.approx(want["f1"]) and per["exact_match"].mean() == pytest.approx(want["exact_match"])
    b = S.paired_bootstrap("mean", per["f1"], np.ones(4), resamples=1000, seed=0)
    assert b.estimate == pytest.approx(1 - want["f1"])


def test_unknown_metric_is_config_error():
    with pytest.raises(ConfigError, match="no bootstrap for metric"):
        S.resampled_metric("bleu", np.zeros(3), np.zeros(3))


# ------------------------------------------------------------------------------------- speedup interval
def test_speedup_interval():
    rng = np.random.default_rng(0)
    base = 10.0 + rng.gamma(2.0, 1.0, 80)  # drifting, skewed host noise
    exact = S.speedup_interval(base, base / 2.0, resamples=1000, seed=0)
    assert exact.estimate == pytest.approx(2.0) and exact.low == pytest.approx(2.0) and exact.high == pytest.approx(2.0)
    same = S.speedup_interval(base, base.copy(), resamples=1000, seed=0)
    assert (same.low, same.high) == (1.0, 1.0)
    var = base * 0.8 * (1 + rng.normal(0, 0.05, 80))
    iv = S.speedup_interval(base, var, resamples=2000, seed=4)
    assert iv.estimate == pytest.approx(np.median(base) / np.median(var))
    assert iv.low < iv.estimate < iv.high and 1.0 < iv.low
    again = S.speedup_interval(base, var, resamples=2000, seed=4)
    assert (again.low, again.high) == (iv.low, iv.high)
    with pytest.raises(ValueError, match="as many baseline as variant"):
        S.speedup_interval(base, var[:-1])


# ---------------------------------------------------------------------------------------------- seeds
def test_combine_seeds():
    boots = [np.full(100, 0.01), np.full(100, 0.02), np.full(100, 0.03)]
    iv = S.combine_seeds([0.01, 0.02, 0.03], boots)
    hw = student_t.ppf(0.975, 2) * 0.01 / math.sqrt(3)  # no dev variance: the plain t interval of the mean
    assert iv.estimate == pytest.approx(0.02) and iv.n == 3
    assert (iv.low, iv.high) == pytest.approx((0.02 - hw, 0.02 + hw))
    assert S.t_interval([0.01, 0.02, 0.03]) == pytest.approx((0.02 - hw, 0.02 + hw))
    # one seed: its own bootstrap percentiles
    rng = np.random.default_rng(0)
    b = rng.normal(0.05, 0.01, 2000)
    one = S.combine_seeds([0.05], [b])
    assert (one.low, one.high) == pytest.approx(tuple(np.quantile(b, [0.025, 0.975])))
    # with dev noise the 3-seed interval is wider than the seed spread alone
    noisy = S.combine_seeds([0.01, 0.02, 0.03], [p + rng.normal(0, 0.02, 2000) for p in (0.01, 0.02, 0.03)])
    assert noisy.high - noisy.low > 2 * hw
    none = S.combine_seeds([0.01, 0.02], [None, None])
    assert math.isnan(none.low) and none.estimate == pytest.approx(0.015) and none.method.startswith("n/a")
    assert all(math.isnan(x) for x in S.t_interval([0.1, 0.2]))  # no t interval below 3 seeds


# ------------------------------------------------------------------------------------------- verdicts
def test_verdict_thresholds():
    assert S.verdict_accuracy(0.001, 0.02) == "more accurate"
    assert S.verdict_accuracy(-0.02, -0.001) == "less accurate"
    assert S.verdict_accuracy(-0.01, 0.01) == "within noise"
    assert S.verdict_accuracy(0.0, 0.01) == "within noise"  # an interval touching 0 does not exclude it
    assert S.verdict_accuracy(math.nan, math.nan) == "n/a"
    assert S.verdict_speed(1.01, 1.2) == "faster"
    assert S.verdict_speed(0.8, 0.99) == "slower"
    assert S.verdict_speed(0.97, 1.03) == "within noise"
    assert S.verdict_speed(1.0, 1.1) == "within noise"
    assert S.verdict_speed(None, None) == "n/a"
    # the A/A band of finetune against itself widens "within noise": 0.97-0.99 is not "slower" when the
    # same model timed against itself spans 0.96-1.00, and 1.01-1.03 is not "faster" when it spans 0.99-1.04
    assert S.verdict_speed(0.97, 0.99, 0.96, 1.00) == "within noise"
    assert S.verdict_speed(1.01, 1.03, 0.99, 1.04) == "within noise"
    assert S.verdict_speed(1.05, 1.2, 0.99, 1.04) == "faster" and S.verdict_speed(0.8, 0.9, 0.96, 1.0) == "slower"
    assert S.verdict_size(0.81, 0.83) == "smaller"
    assert S.verdict_size(1.0, 0.26) == "smaller"  # int8: same parameters, a quarter of the bytes
    assert S.verdict_size(1.0, 1.001) == "same"
    assert S.verdict_size(math.nan, None) == "n/a"


# ------------------------------------------------------------------------------------ predictions.npz
def test_predictions_roundtrip(tmp_path):
    sst2, stsb, squad = get_task("sst2"), get_task("stsb"), get_task("squad")
    p = S.write_predictions(tmp_path / "a" / "predictions.npz", sst2, [3, 1, 2], preds=np.array([1, 0, 1]),
                            labels=np.array([1, 1, 0]), iter_ms={1: {"baseline": [2.0, 2.5], "variant": [1.0, 1.2]}})
    r = S.read_predictions(p)
    assert r.task == "sst2" and r.metric == "accuracy" and r.ids.tolist() == [3, 1, 2]
    assert r.preds.dtype == np.int8 and r.labels.tolist() == [1, 1, 0]
    assert r.iter_ms[1][0].tolist() == [2.0, 2.5] and r.iter_ms[1][1] == pytest.approx([1.0, 1.2])
    scores = np.array([0.25, 3.75, 4.8125], dtype=np.float32)
    r = S.read_predictions(S.write_predictions(tmp_path / "b.npz", stsb, [0, 1, 2], preds=scores, labels=scores))
    assert r.preds.dtype == np.float32 and np.array_equal(r.preds, scores)
    assert r.metric_inputs() == ("pearson", r.preds, r.labels)
    r = S.read_predictions(S.write_predictions(tmp_path / "c.npz", squad, ["q1", "q2"],
                                               scores={"f1": [0.5, 1.0], "exact_match": [0.0, 1.0]}))
    kind, vals, labels = r.metric_inputs()
    assert kind == "mean" and vals.tolist() == [0.5, 1.0] and labels is None and r.ids.tolist() == ["q1", "q2"]
    with pytest.raises(ConfigError, match="does not exist"):
        S.read_predictions(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(ConfigError, match="bad.npz"):
        S.read_predictions(tmp_path / "bad.npz")


# ------------------------------------------------------------------------------------- verdict table
def _run(root: Path, variant: str, seed: int, dev: float, enc: int | None, speed: float | None,
         preds: np.ndarray | None, labels: np.ndarray, ids: np.ndarray | None = None, iters: int = 40,
         extra: dict | None = None, passes: list[dict] | None = None) -> None:
    run = root / "sst2" / "minilm" / variant / f"seed{seed}"
    run.mkdir(parents=True)
    lat = None if speed is None else [
        {"device": "cpu", "batch_size": b, "seq_len": 128, "p50_ms": 10.0 / speed, "p90_ms": 11.0, "mean_ms": 10.0,
         "std_ms": 0.1, "n_iters": iters, "threads": 2, "baseline_p50_ms": 10.0, "speedup": speed,
         **({} if passes is None else {"passes": passes, "ci_method": "passes-bootstrap"})} for b in (1, 32)]
    rec = {"task": "sst2", "model": "minilm", "variant": variant, "seed": seed, "profile": "t", "git_commit": None,
           "created": "x", "metric": {"name": "accuracy", "dev": dev, "n_dev": len(labels)},
           "size": None if enc is None else {"params_total": enc + 100, "params_encoder": enc, "bytes_on_disk": enc * 4},
           "latency": lat, "memory": None, "env": {}, **(extra or {})}
    (run / "metrics.json").write_text(json.dumps(rec))
    if preds is not None:
        rng = np.random.default_rng(seed)
        base_ms = 10.0 + rng.gamma(2.0, 0.2, iters)
        it = None if speed is None else {b: {"baseline": base_ms, "variant": base_ms / speed} for b in (1, 32)}
        S.write_predictions(run / "predictions.npz", get_task("sst2"), np.arange(len(labels)) if ids is None else ids,
                            preds=preds, labels=labels, iter_ms=it)


def test_verdict_table_by_hand(tmp_path):
    root = tmp_path / "results"
    labels = np.array([1, 0] * 50)
    ft = labels.copy()
    ft[:20] = 1 - ft[:20]  # finetune: 80 % right
    worse = ft.copy()
    worse[20:60] = 1 - worse[20:60]  # 40 more rows wrong: 40 % right
    same = ft.copy()
    same[[20, 21]] = 1 - same[[20, 21]]  # 2 rows flipped: 78 %
    for s in (0, 1, 2):
        _run(root, "finetune", s, 0.80, 1000, 1.0, ft, labels)
    for s in (0, 1, 2):  # three seeds, all clearly worse and faster, smaller
        _run(root, "finetune+axformer", s, 0.40, 800, 1.5, worse, labels, extra={"search": {"passes": 3}})
    _run(root, "finetune+int8", 0, 0.78, 1000, 1.0, same, labels)  # same speed: interval [1, 1] -> within noise
    # majority: predictions in another row order (paired by id), no size / latency
    order = np.arange(100)[::-1]
    _run(root, "majority", 0, 0.5, None, None, np.ones(100, dtype=int)[order], labels[order], ids=order)
    _run(root, "finetune+old", 0, 0.79, 900, 1.2, None, labels)  # an older run: no predictions.npz

    df = report.collect(root)
    raw = V.verdict_table(df, root, resamples=1000, seed=0)
    assert list(raw.columns[: len(V.COLUMNS)]) == list(V.COLUMNS)
    assert raw["variant"].tolist() == ["finetune", "finetune+axformer", "finetune+int8", "finetune+old", "majority"]
    vt = raw.set_index("variant")

    ax = vt.loc["finetune+axformer"]
    assert ax["n_seeds"] == 3 and ax["kind"] == "AxFormer"
    assert ax["delta"] == pytest.approx(-0.40) and ax["base_value"] == pytest.approx(0.80)
    assert ax["ci_high"] < 0 and ax["verdict_accuracy"] == "less accurate" and "t over 3 seeds" in ax["ci_method"]
    assert ax["speedup_b32"] == pytest.approx(1.5) and ax["verdict_speed"] == "faster"
    assert ax["encoder_ratio"] == pytest.approx(0.8) and ax["verdict_size"] == "smaller"
    assert ax["value_std"] == pytest.approx(0.0) and ax["value_low"] == pytest.approx(0.40)

    f = vt.loc["finetune"]
    assert (f["delta"], f["ci_low"], f["ci_high"]) == (0.0, 0.0, 0.0) and f["verdict_accuracy"] == "within noise"
    assert f["verdict_size"] == "same" and f["kind"] == "reference"

    i8 = vt.loc["finetune+int8"]
    assert i8["n_seeds"] == 1 and i8["ci_method"] == "bootstrap, 1 seed"
    # 2 of 100 rows flipped to wrong: no resample makes the variant better, (98/100)^100 = 13 % of them leave
    # both rows out (Δ = 0), so the upper end is exactly 0: the interval touches 0 and does not exclude it
    assert i8["delta"] == pytest.approx(-0.02) and i8["ci_low"] < -0.02 and i8["ci_high"] == 0.0
    assert i8["verdict_accuracy"] == "within noise" and i8["verdict_speed"] == "within noise"

    mj = vt.loc["majority"]
    assert mj["delta"] == pytest.approx(-0.30) and mj["verdict_accuracy"] == "less accurate"
    assert mj["verdict_speed"] == "n/a" and mj["verdict_size"] == "n/a"

    old = vt.loc["finetune+old"]
    assert math.isnan(old["ci_low"]) and math.isnan(old["ci_high"]) and old["verdict_accuracy"] == "n/a"
    assert old["verdict_speed"] == "n/a" and old["ci_method"].startswith("n/a: no predictions.npz")
    assert old["delta"] == pytest.approx(-0.01) and old["speedup_b32"] == pytest.approx(1.2)


def test_verdict_table_mismatched_ids_is_na(tmp_path):
    root = tmp_path / "results"
    labels = np.array([1, 0, 1, 0])
    _run(root, "finetune", 0, 1.0, 10, 1.0, labels, labels)
    _run(root, "finetune+x", 0, 1.0, 10, 1.0, labels, labels, ids=np.array([0, 1, 2, 9]))
    vt = V.verdict_table(report.collect(root), root, resamples=1000).set_index("variant")
    assert vt.loc["finetune+x", "verdict_accuracy"] == "n/a" and "dev ids" in vt.loc["finetune+x", "ci_method"]


def test_too_few_resamples_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="resamples must be >= 1000"):
        V.verdict_table(pd.DataFrame({"task": ["sst2"]}), tmp_path, resamples=100)


def test_render_writes_table_and_figure(tmp_path):
    root = tmp_path / "results"
    labels = np.array([1, 0] * 20)
    _run(root, "finetune", 0, 1.0, 100, 1.0, labels, labels)
    _run(root, "finetune+axformer", 0, 1.0, 80, 1.3, labels, labels)
    files = V.render(report.collect(root), root, tmp_path / "figs", root / "verdicts.csv", resamples=1000)
    names = {p.name for p in files}
    assert {"verdicts.csv", "verdicts.md", "verdicts.tex", "verdicts.pdf", "verdicts.png"} <= names
    md = (tmp_path / "figs" / "tables" / "verdicts.md").read_text()
    assert "Δ [95% CI]" in md and "finetune+axformer" in md
    tex = (tmp_path / "figs" / "tables" / "verdicts.tex").read_text()
    assert r"$\Delta$" in tex and "Δ" not in tex


# ------------------------------------------------------------------------------------ CLI (real data)
def test_majority_cli_writes_predictions(tmp_path, data_dir):
    from axformer.cli import main

    out = tmp_path / "majority" / "seed0" / "metrics.json"
    main(["majority", "--task", "mrpc", "--seed", "0", "--data-dir", str(data_dir), "--metrics", str(out)])
    rec = json.loads(out.read_text())
    pred = S.read_predictions(out.with_name("predictions.npz"))
    assert len(pred.ids) == rec["metric"]["n_dev"] and len(set(pred.ids.tolist())) == len(pred.ids)
    assert M.f1(pred.preds, pred.labels) == pytest.approx(rec["metric"]["dev"])


@pytest.mark.parametrize("chain_speed, scale", [(20.0, "log"), (1.5, "linear")])
def test_verdicts_figure_log_axis_only_for_a_wide_span(tmp_path, monkeypatch, chain_speed, scale):
    from axformer.reporting import figures as F

    root = tmp_path / "results"
    labels = np.array([1, 0] * 20)
    _run(root, "finetune", 0, 1.0, 100, 1.0, labels, labels)
    _run(root, "finetune+axformer", 0, 1.0, 95, 1.05, labels, labels)
    _run(root, "finetune+distill", 0, 1.0, 20, chain_speed, labels, labels)
    vt = V.verdict_table(report.collect(root), root, resamples=1000)
    seen = []
    monkeypatch.setattr(F, "save", lambda fig, d, name: seen.append(fig) or [])
    V.plot_verdicts(vt, tmp_path / "figs")
    assert [ax.get_xscale() for ax in seen[0].axes if ax.get_title()] == [scale]


# ------------------------------------------------------------------------- timing passes in the table
def _pass(i: int, speedup: float, half: float = 0.01, superseded_by: int | None = None, noisy: bool = False) -> dict:
    """One pass of the TIMING_RECORD shape (docs: the lead's timing-pass record)."""
    return {"pass": i, "pass_set": "ps-test", "speedup": speedup, "speedup_ci": [speedup - half, speedup + half],
            "p50_ms": 10.0 / speedup, "baseline_p50_ms": 10.0, "n_iters": 12,
            "host": {"loadavg_1m": 0.4, "steal_frac": 0.0, "iowait_frac": 0.0, "busy_frac_other": 0.0,
                     "cpu_model": "test", "cpu_mhz": None, "busy_processes": [], "threads": 2},
            "noisy": noisy, "superseded_by": superseded_by}


def test_verdict_table_uses_timing_passes(tmp_path):
    root = tmp_path / "results"
    labels = np.array([1, 0] * 50)
    ft = labels.copy()
    ft[:20] = 1 - ft[:20]
    aa = [0.99, 1.00, 1.01, 0.995, 1.005]  # finetune timed against itself: the A/A band
    for s in (0, 1, 2):
        _run(root, "finetune", s, 0.80, 1000, 1.0, ft, labels, passes=[_pass(i, x) for i, x in enumerate(aa)])
    # three seeds of five passes; seed 0 has a noisy pass (0.4) repeated by pass 5: it is kept but not used
    seeds = {0: [2.0, 2.1, 1.9, 0.4, 2.05, 1.95], 1: [2.2, 2.3, 2.25, 2.15, 2.2], 2: [2.4, 2.5, 2.45, 2.35, 2.4]}
    for s, sp in seeds.items():
        ps = [_pass(i, x, superseded_by=5 if (s, i) == (0, 3) else None, noisy=(s, i) == (0, 3))
              for i, x in enumerate(sp)]
        _run(root, "finetune+int8", s, 0.80, 1000, float(np.median([x for i, x in enumerate(sp) if (s, i) != (0, 3)])),
             ft, labels, passes=ps)
    _run(root, "finetune+one", 0, 0.80, 1000, 1.5, ft, labels, passes=[_pass(0, 1.5, half=0.2)])  # a 1-pass record
    _run(root, "finetune+old", 0, 0.80, 1000, 1.3, ft, labels)  # an old record: no passes
    vt = V.verdict_table(report.collect(root), root, resamples=1000, seed=0).set_index("variant")

    i8 = vt.loc["finetune+int8"]
    medians = [2.0, 2.2, 2.4]  # per seed, the superseded 0.4 left out: median(2.0, 2.1, 1.9, 2.05, 1.95) = 2.0
    assert i8["speedup_b32"] == pytest.approx(np.mean(medians))
    assert "Welch-Satterthwaite t over 3 seeds" in i8["speed_ci_method"]
    assert "per seed: passes-bootstrap over 5 passes" in i8["speed_ci_method"]
    # seed spread s² = 0.04, a = 0.04/3; the per-seed pass variance is small and has 4 df: ν a little above 2
    assert i8["speed_ci_df"] >= 2.0 and i8["speedup_b32_low"] < 2.2 < i8["speedup_b32_high"]
    se = (i8["speedup_b32_high"] - 2.2) / student_t.ppf(0.975, i8["speed_ci_df"])
    assert i8["speed_p_value"] == pytest.approx(2 * student_t.sf(1.2 / se, i8["speed_ci_df"]))
    assert i8["verdict_speed"] == "faster"

    f = vt.loc["finetune"]  # the A/A band from the same pass machinery: per seed median 1.0 of the five passes
    assert f["speedup_b32"] == pytest.approx(1.0) and "passes-bootstrap" in f["speed_ci_method"]
    assert f["speed_floor_low"] == f["speedup_b32_low"] and f["speed_floor_high"] == f["speedup_b32_high"]
    assert f["speedup_b32_low"] < 1.0 < f["speedup_b32_high"] and math.isnan(f["speed_p_adjusted"])

    one = vt.loc["finetune+one"]  # one pass: its within-pass interval, exactly
    assert (one["speedup_b32"], one["speedup_b32_low"], one["speedup_b32_high"]) == pytest.approx((1.5, 1.3, 1.7))
    assert "within-pass interval of 1 pass" in one["speed_ci_method"] and one["verdict_speed"] == "faster"

    old = vt.loc["finetune+old"]  # no passes: the single job's rounds, as before
    assert old["speedup_b32"] == pytest.approx(1.3) and "rounds bootstrap of one job" in old["speed_ci_method"]
    assert old["speedup_b32_low"] == pytest.approx(1.3) and old["verdict_speed"] == "faster"

    # Holm across the table's rows (finetune's rows are no test): 3 speed tests
    assert set(vt["adjustment"]) == {"Holm across 3 accuracy / 3 speed rows"}
    p = vt.loc[["finetune+int8", "finetune+one", "finetune+old"], "speed_p_value"].to_numpy()
    assert vt.loc[["finetune+int8", "finetune+one", "finetune+old"], "speed_p_adjusted"].to_numpy() == \
        pytest.approx(S.adjust_pvalues(p, "holm"))
    for v in ("finetune+int8", "finetune+one", "finetune+old"):
        r = vt.loc[v]
        assert r["verdict_speed_adjusted"] == S.verdict_adjusted(r["verdict_speed"], r["speed_p_adjusted"])
    # accuracy: identical predictions everywhere, Δ = 0 on every resample: p = 1, within noise
    assert vt.loc["finetune+int8", "p_value"] == 1.0
    assert vt.loc["finetune+int8", "verdict_accuracy_adjusted"] == "within noise"


def test_malformed_passes_is_config_error(tmp_path):
    root = tmp_path / "results"
    labels = np.array([1, 0] * 5)
    _run(root, "finetune", 0, 1.0, 10, 1.0, labels, labels)
    _run(root, "finetune+x", 0, 1.0, 10, 1.2, labels, labels, passes=[{"pass": 0}])  # no speedup
    with pytest.raises(ConfigError, match="'passes' must be a list of objects with a 'speedup'"):
        V.verdict_table(report.collect(root), root, resamples=1000)
