"""Issue 31 statistics: Welch–Satterthwaite seed intervals, p-values, timing-pass intervals, multiplicity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm
from scipy.stats import t as student_t

from axformer import stats as S


# ------------------------------------------------------------------------------- Welch–Satterthwaite
def _three_seeds() -> tuple[list[float], list[np.ndarray]]:
    # per-seed Δ 0.01, 0.02, 0.03; every seed's bootstrap = its Δ + (-0.01, 0, +0.01) (3 resamples)
    points = [0.01, 0.02, 0.03]
    return points, [p + np.array([-0.01, 0.0, 0.01]) for p in points]


def test_welch_satterthwaite_by_hand():
    points, boots = _three_seeds()
    # By hand:
    #   mean = 0.02; s² = ((-0.01)² + 0 + 0.01²) / 2 = 1e-4; seed part a = s²/n = 1e-4/3 = 3.333e-5, df 2
    #   resample-wise mean of the seeds = 0.02 + (-0.01, 0, 0.01): v_dev = b = (1e-4 + 0 + 1e-4)/2 = 1e-4 = 3a
    #   V = a + b = 4a = 1.3333e-4, SE = sqrt(V) = 0.0115470
    #   dev_df = 18: ν = V² / (a²/2 + b²/18) = 16a² / (a²/2 + 9a²/18) = 16a² / a² = 16
    #   t(16, 0.975) = 2.11991 -> half-width 2.11991 · 0.0115470 = 0.0244787 -> [-0.0044787, 0.0444787]
    #   (the old rule: t(2) = 4.30265 -> half-width 0.0496827, about twice as wide)
    #   p: t = 0.02 / 0.0115470 = 1.73205 (= sqrt 3) on 16 df -> two-sided p = 2 · 0.05123 = 0.10246
    iv = S.combine_seeds(points, boots, dev_df=18)
    assert iv.df == pytest.approx(16.0)
    assert student_t.ppf(0.975, 16) == pytest.approx(2.11991, abs=1e-5)
    assert (iv.low, iv.high) == pytest.approx((0.02 - 0.0244787, 0.02 + 0.0244787), abs=1e-6)
    assert iv.p == pytest.approx(0.10246, abs=1e-4)
    assert iv.method == "Welch-Satterthwaite t over 3 seeds + dev bootstrap" and iv.n == 3
    # dev_df = inf: ν = 16a² / (a²/2) = 32, t(32) = 2.03693 -> half-width 0.0235205
    inf = S.combine_seeds(points, boots, dev_df=math.inf)
    assert inf.df == pytest.approx(32.0)
    assert inf.high - 0.02 == pytest.approx(0.0235205, abs=1e-6)
    # default dev_df = resamples - 1 = 2: ν = 16a² / (a²/2 + 9a²/2) = 3.2
    assert S.combine_seeds(points, boots).df == pytest.approx(3.2)
    # no dev variance: ν = n - 1 and the plain t interval of the seeds
    flat = S.combine_seeds(points, [np.full(3, p) for p in points], dev_df=18)
    assert flat.df == pytest.approx(2.0)
    assert (flat.low, flat.high) == pytest.approx(S.t_interval(points))


def test_welch_satterthwaite_and_resample_df():
    assert S.welch_satterthwaite([(1.0, 2.0), (3.0, 18.0)]) == pytest.approx(16.0)  # 16 / (1/2 + 9/18)
    assert S.welch_satterthwaite([(1.0, 2.0), (1.0, math.inf)]) == pytest.approx(8.0)  # 4 / (1/2)
    assert S.welch_satterthwaite([(0.0, 2.0), (0.0, 5.0)]) == math.inf
    assert S.welch_satterthwaite([(1.0, 2.0), (1.0, 0.0)]) == pytest.approx(4 / 1.5)  # df 0 (unknown) counts as 1
    # 277 dev rows (RTE), 2000 resamples: 1 / (1/276 + 1/1999) = 242.5
    assert S.resample_df(277, 2000) == pytest.approx(1 / (1 / 276 + 1 / 1999))
    assert S.resample_df(1, 2000) == 0.0 or S.resample_df(1, 2000) < 1e-9


def test_p_values():
    # P(x <= 0) = 10/40, P(x >= 0) = 30/40 -> p = 2 · 1/4 (10 resamples beyond 0: counted)
    assert S.bootstrap_p(np.repeat([-1.0, 1.0, 2.0, 3.0], 10), 0.0) == pytest.approx(0.5)
    assert S.bootstrap_p(np.zeros(10), 0.0) == 1.0  # capped
    assert S.bootstrap_p(np.full(5, 1.2), 1.0) == 0.0  # every resample 1.2: no doubt
    # fewer than 10 beyond the null: the normal approximation of the same samples, here
    # mean 1.2, sd (ddof 1) of (1.1, 1.2, 1.3) = 0.1 -> z = 2 -> p = 2 · Φ(-2) = 0.0455
    assert S.bootstrap_p(np.array([1.1, 1.2, 1.3]), 1.0) == pytest.approx(0.0455, abs=1e-4)
    assert S.bootstrap_p(np.array([-1.0, 1.0, 2.0, 3.0]), 0.0) == pytest.approx(
        2 * norm.sf(1.25 / np.std([-1.0, 1.0, 2.0, 3.0], ddof=1)))
    assert math.isnan(S.bootstrap_p(np.empty(0)))
    assert S.t_p(0.0, 0.0, 5) == 1.0 and S.t_p(0.1, 0.0, 5) == 0.0
    assert S.t_p(2.0, 1.0, math.inf) == pytest.approx(0.0455, abs=1e-4)
    # 1 and 2 seeds: the bootstrap p of the (resample-wise mean of the) seeds' samples
    rng = np.random.default_rng(1)
    b1, b2 = rng.normal(0.01, 0.01, 2000), rng.normal(0.02, 0.01, 2000)
    one = S.combine_seeds([0.01], [b1])
    assert one.p == pytest.approx(S.bootstrap_p(b1)) and math.isnan(one.df)
    two = S.combine_seeds([0.01, 0.02], [b1, b2], null=0.0)
    assert two.p == pytest.approx(S.bootstrap_p((b1 + b2) / 2))
    # speed: the null is 1
    sp = S.combine_seeds([2.0, 2.2, 2.4], [np.full(5, 2.0), np.full(5, 2.2), np.full(5, 2.4)], null=1.0)
    assert sp.p == pytest.approx(2 * student_t.sf((2.2 - 1.0) / (0.2 / math.sqrt(3)), 2))


# ------------------------------------------------------------------------------------------ timing passes
def test_passes_interval_median_and_bootstrap():
    # 3 passes 1, 2, 3: the median of 3 resampled passes is 1 when >= 2 draws are pass 0:
    # 3 · (1/3)² · (2/3) + (1/3)³ = 7/27 = 26 % > 2.5 %, and 3 likewise: the interval is [1, 3], estimate 2
    narrow = [(0.99, 1.01), (1.98, 2.02), (2.97, 3.03)]
    iv = S.passes_interval([1.0, 2.0, 3.0], narrow, resamples=2000, seed=0)
    assert iv.estimate == 2.0 and (iv.low, iv.high) == (1.0, 3.0)
    assert iv.n == 3 and iv.method == "passes-bootstrap, 3 passes"
    assert iv.p == pytest.approx(S.bootstrap_p(S.passes_bootstrap([1.0, 2.0, 3.0], narrow).samples, 1.0))
    # five close passes: the interval lies within the passes' range and around the median
    sp = [2.31, 2.28, 2.35, 2.30, 2.33]
    iv5 = S.passes_interval(sp, [(s - 0.001, s + 0.001) for s in sp], resamples=2000, seed=0)
    assert iv5.estimate == pytest.approx(2.31) and 2.28 <= iv5.low < 2.31 < iv5.high <= 2.35
    assert iv5.p < 1e-10  # no resampled median reaches 1: the normal approximation, z ≈ 90
    again = S.passes_interval(sp, [(s - 0.001, s + 0.001) for s in sp], resamples=2000, seed=0)
    assert (again.low, again.high) == (iv5.low, iv5.high)


def test_passes_interval_never_narrower_than_the_median_pass():
    # five identical passes: the bootstrap has no spread, the median pass's own interval sets it
    cis = [(1.9, 2.1)] * 5
    b = S.passes_bootstrap([2.0] * 5, cis, resamples=4000, seed=0)
    assert (b.low, b.high) == (1.9, 2.1)
    # the samples carry that width for combine_seeds: sd ≈ 0.1 / 1.96, percentiles ≈ the interval
    assert b.samples.std() == pytest.approx(0.1 / 1.959964, rel=0.05)
    assert np.quantile(b.samples, [0.025, 0.975]) == pytest.approx([1.9, 2.1], abs=0.01)
    # passes 1, 2, 3 with a wide median pass [0.5, 3.5]: the floor widens [1, 3] to it, and the samples
    # are stretched so that their percentiles reach it
    w = S.passes_bootstrap([1.0, 2.0, 3.0], [(0.99, 1.01), (0.5, 3.5), (2.97, 3.03)], resamples=2000, seed=0)
    assert (w.low, w.high) == (0.5, 3.5)
    assert np.quantile(w.samples, [0.025, 0.975]) == pytest.approx([0.5, 3.5], abs=1e-9)
    # an even count: the wider of the two middle passes sets the floor
    e = S.passes_bootstrap([1.0, 2.0, 3.0, 4.0], [(1, 1), (1.2, 2.8), (2.95, 3.05), (4, 4)], resamples=2000)
    assert e.estimate == 2.5 and e.low <= 1.2


def test_one_pass_falls_back_to_its_within_pass_interval():
    iv = S.passes_interval([2.5], [(2.4, 2.7)])
    assert (iv.estimate, iv.low, iv.high) == (2.5, 2.4, 2.7) and iv.n == 1 and iv.method == "within-pass, 1 pass"
    b = S.passes_bootstrap([2.5], [(2.4, 2.7)], resamples=4000, seed=3)
    assert np.quantile(b.samples, [0.025, 0.975]) == pytest.approx([2.4, 2.7], abs=0.01)  # split normal
    assert iv.p < 1e-10
    none = S.passes_interval([2.5], [None])
    assert math.isnan(none.low) and math.isnan(none.high)


def test_passes_bad_input():
    with pytest.raises(ValueError, match="pass speedups"):
        S.passes_interval([], [])
    with pytest.raises(ValueError, match="within-pass intervals"):
        S.passes_interval([1.0, 2.0], [(0.9, 1.1)])
    with pytest.raises(ValueError, match="finite positive"):
        S.passes_interval([1.0, math.nan], [None, None])


# ------------------------------------------------------------------------------------------ multiplicity
def test_adjust_pvalues_by_hand():
    p = [0.01, 0.04, 0.03, math.nan]
    # Holm, m = 3 tests (NaN is no test): sorted 0.01, 0.03, 0.04 -> 3·0.01 = 0.03, 2·0.03 = 0.06,
    # 1·0.04 = 0.04 -> running max 0.03, 0.06, 0.06
    holm = S.adjust_pvalues(p, "holm")
    assert holm[:3] == pytest.approx([0.03, 0.06, 0.06]) and math.isnan(holm[3])
    # BH: 3/1·0.01 = 0.03, 3/2·0.03 = 0.045, 3/3·0.04 = 0.04 -> running min from the top 0.03, 0.04, 0.04
    bh = S.adjust_pvalues(p, "bh")
    assert bh[:3] == pytest.approx([0.03, 0.04, 0.04]) and math.isnan(bh[3])
    assert S.adjust_pvalues([0.5, 0.9], "holm") == pytest.approx([1.0, 1.0])  # capped at 1
    assert S.adjust_pvalues([], "holm").size == 0
    with pytest.raises(ValueError, match="unknown multiplicity"):
        S.adjust_pvalues([0.1], "bonferroni-ish")


def test_verdict_adjusted():
    assert S.verdict_adjusted("less accurate", 0.01) == "less accurate"
    assert S.verdict_adjusted("less accurate", 0.2) == "within noise"
    assert S.verdict_adjusted("faster", 0.049) == "faster" and S.verdict_adjusted("faster", 0.05) == "within noise"
    assert S.verdict_adjusted("within noise", 0.0) == "within noise"  # never creates a verdict
    assert S.verdict_adjusted("n/a", math.nan) == "n/a"
