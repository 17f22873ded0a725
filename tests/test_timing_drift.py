"""scripts/timing_drift.py: drift between consecutive forwards and the A/A band's demand on passes, on
hand-made timing groups whose answer is known."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "timing_drift.py"
SPEC = importlib.util.spec_from_file_location("timing_drift", SCRIPT)
td = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(td)

NAMES = ["__baseline__", "finetune", "v1", "v1::ort_fp32"]  # the reference is timed but not kept


def make_group(root: Path, drift: bool, passes: int = 3, rounds: int = 40, seed: int = 0) -> Path:
    """A timing group dir like the `time` rule writes: per batch, every kept model's ms, the pass and order of
    each round. ``drift``: a slow AR(1) factor shared by consecutive forwards (rho 0.9); else i.i.d. noise."""
    rng = np.random.default_rng(seed)
    d = root / "t" / "m" / "timing" / "seed0"
    d.mkdir(parents=True)
    arrays: dict[str, np.ndarray] = {}
    base_ms = {"__baseline__": 10.0, "finetune": 10.0, "v1": 5.0, "v1::ort_fp32": 8.0}
    aa_passes = []
    order = np.array([rng.permutation(len(NAMES)) for _ in range(passes * rounds)])
    samples: dict[str, list[float]] = {n: [] for n in NAMES}
    level = 0.0
    for r in range(passes * rounds):
        for j in order[r]:
            eps = rng.normal(0, 0.05)
            level = 0.9 * level + eps if drift else eps
            samples[NAMES[j]].append(base_ms[NAMES[j]] * float(np.exp(level)))
    pass_of_round = np.repeat(np.arange(passes), rounds)
    arrays = {f"b1/{n}": np.array(v, dtype=np.float32) for n, v in samples.items() if "::" not in n}
    arrays["b1/order"], arrays["b1/pass"] = order, pass_of_round
    for p in range(passes):
        sel = pass_of_round == p
        aa_passes.append(float(np.median(arrays["b1/__baseline__"][sel]) / np.median(arrays["b1/finetune"][sel])))
    np.savez(d / "timing.npz", **arrays)
    rec = {"pass_set": "ps-test", "measure": {"batch_sizes": [1]},
           "passes": [{"pass": p, "order_names": NAMES, "superseded_by": None,
                       "host": {"other_cpu_frac": 0.001, "steal_frac": 0.0}} for p in range(passes)],
           "results": {"finetune": {"1": {"speedup": float(np.median(aa_passes)),
                                          "passes": [{"speedup": a, "superseded_by": None} for a in aa_passes]}}}}
    (d / "timing.json").write_text(json.dumps(rec))
    return d


def test_drift_shows_as_lag1_autocorrelation(tmp_path: Path) -> None:
    drift = td.group_drift(make_group(tmp_path / "a", drift=True), window=12)["batch"]["1"]
    iid = td.group_drift(make_group(tmp_path / "b", drift=False), window=12)["batch"]["1"]
    assert min(drift["lag1_autocorr"]) > 0.5
    assert max(abs(x) for x in iid["lag1_autocorr"]) < 0.25
    assert max(drift["slowest_window"]) > max(iid["slowest_window"])
    assert drift["rounds_per_pass"] == 40 and len(drift["aa_per_pass"]) == 3


def test_relative_times_follow_the_recorded_order(tmp_path: Path) -> None:
    d = make_group(tmp_path, drift=False, passes=1, rounds=2)
    npz = np.load(d / "timing.npz")
    seq = td.relative_log_times(npz, NAMES, 1)[0]
    assert len(seq) == 2 * len(NAMES)
    # the reference's slots are unknown (NaN); a kept model's slot holds log(its ms / its pass median)
    first = npz["b1/order"][0]
    for k, j in enumerate(first):
        name = NAMES[j]
        if "::" in name:
            assert np.isnan(seq[k])
        else:
            ms = npz[f"b1/{name}"].astype(float)
            assert seq[k] == pytest.approx(np.log(ms[0] / np.median(ms)))


def test_predecessor_effect_finds_a_runtime_that_slows_its_successor(tmp_path: Path) -> None:
    d = make_group(tmp_path, drift=False, passes=2, rounds=60)
    npz = dict(np.load(d / "timing.npz"))
    order = npz["b1/order"]
    # every kept (torch) forward right after the ORT reference made 30 % slower, by hand
    j_ref = NAMES.index("v1::ort_fp32")
    for name in ("__baseline__", "finetune", "v1"):
        slowed, j = npz[f"b1/{name}"].astype(float).copy(), NAMES.index(name)
        for r, row in enumerate(order):
            pos = int(np.flatnonzero(row == j)[0])
            if pos > 0 and row[pos - 1] == j_ref:
                slowed[r] *= 1.3
        npz[f"b1/{name}"] = slowed
    eff = td.predecessor_effect(npz, NAMES, 1)
    assert td.backend("v1::ort_fp32") == "ort" and td.backend("x+int8_ov") == "ov" and td.backend("v1") == "torch"
    assert eff["torch"]["ort"]["ratio"] > 1.1 > eff["torch"]["torch"]["ratio"]
    assert eff["torch"]["torch"]["ratio"] == pytest.approx(1.0, abs=0.05)


def test_lag1_and_window_by_hand() -> None:
    assert td.lag1_autocorr(np.array([1.0, 2.0, 3.0, 4.0, 5.0])) == pytest.approx(1.0)
    assert td.lag1_autocorr(np.array([1.0, -1.0, 1.0, -1.0, 1.0])) == pytest.approx(-1.0)
    assert np.isnan(td.lag1_autocorr(np.array([1.0, np.nan, 2.0])))
    seq = np.log(np.array([1.0, 1.0, 1.2, 1.2, 1.0]))
    assert td.slowest_window(seq, 2) == pytest.approx(1.2)


def test_out_of_band_rate_tracks_the_spread() -> None:
    assert td.out_of_band_rate(np.zeros(20), 5) == 0.0
    wide = np.log(np.array([0.8, 0.9, 1.0, 1.1, 1.2] * 4))
    narrow = wide / 20
    assert td.out_of_band_rate(wide, 5) > 0.3
    assert td.out_of_band_rate(narrow, 5) == 0.0
    # more passes per median never widen it
    assert td.out_of_band_rate(wide, 25) < td.out_of_band_rate(wide, 5)


def test_main_writes_the_summary_and_refuses_an_empty_tree(tmp_path: Path) -> None:
    make_group(tmp_path / "res", drift=True)
    out = tmp_path / "drift.json"
    assert td.main(["--results", str(tmp_path / "res"), "--out", str(out), "--passes", "5"]) == 0
    data = json.loads(out.read_text())
    assert list(data["groups"]) == ["t/m/0"]
    assert data["summary"]["1"]["pass_readings"] == 3 and "5" in data["summary"]["1"]["out_of_band_rate"]
    with pytest.raises(SystemExit, match="no timing group"):
        td.main(["--results", str(tmp_path / "empty"), "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


def test_a_corrupt_group_is_one_clear_error_and_no_file(tmp_path: Path) -> None:
    d = make_group(tmp_path / "res", drift=False)
    (d / "timing.json").write_text("{not json")
    out = tmp_path / "drift.json"
    with pytest.raises(SystemExit, match="timing.json or timing.npz is not a readable timing group"):
        td.main(["--results", str(tmp_path / "res"), "--out", str(out)])
    assert not out.exists()
