"""Tests for axformer.reporting.report on a small hand-made results tree."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

from axformer.reporting import report
from axformer.reporting import tables
from axformer.reporting import figures
from axformer.utils import ConfigError

# (task, variant, seed) -> (dev metric, params_encoder, params_total, bytes, p50 b1, p50 b32) ; None = no latency
DEV = {
    ("sst2", "finetune", 0): 0.910, ("sst2", "finetune", 1): 0.920,
    ("sst2", "finetune+axformer", 0): 0.905, ("sst2", "finetune+axformer", 1): 0.895,
    ("sst2", "majority", 0): 0.509, ("sst2", "majority", 1): 0.509,
    ("rte", "finetune", 0): 0.650, ("rte", "finetune", 1): 0.670,
    ("rte", "finetune+axformer", 0): 0.660, ("rte", "finetune+axformer", 1): 0.640,
    ("rte", "majority", 0): 0.527, ("rte", "majority", 1): 0.527,
}
ENC = {"finetune": 10_000_000, "finetune+axformer": 6_000_000, "majority": None}
TOT = {"finetune": 22_000_000, "finetune+axformer": 18_000_000, "majority": None}
# p50 ms at batch 1 / 32; the axformer variant is faster.
P50 = {"finetune": (8.0, 100.0), "finetune+axformer": (5.0, 60.0)}


def _latency(variant: str, seed: int) -> list[dict] | None:
    if variant == "majority":
        return None
    base = P50["finetune"]
    mine = P50[variant]
    jitter = 1.0 + 0.02 * seed
    return [
        {"device": "cpu", "batch_size": b, "seq_len": 128, "p50_ms": p * jitter, "p90_ms": p * 1.1, "mean_ms": p,
         "std_ms": 0.1, "n_iters": 30, "threads": 2, "baseline_p50_ms": b0, "speedup": b0 / (p * jitter)}
        for b, p, b0 in ((1, mine[0], base[0]), (32, mine[1], base[1]))
    ]


def _metrics(task: str, variant: str, seed: int) -> dict:
    return {
        "task": task, "model": "minilm", "variant": variant, "seed": seed, "profile": "default",
        "git_commit": "abc", "created": "2024-01-01T00:00:00",
        "metric": {"name": "accuracy", "dev": DEV[(task, variant, seed)], "search": 0.9, "n_dev": 100,
                   "secondary": {"f1": 0.5}},
        "size": {"params_total": TOT[variant], "params_encoder": ENC[variant],
                 "bytes_on_disk": None if TOT[variant] is None else TOT[variant] * 4},
        "latency": _latency(variant, seed),
        "memory": None if variant == "majority" else {"peak_bytes": 123, "source": "rss"},
        "env": {"torch": "2.0", "transformers": "4.0", "cuda": None, "gpu_name": None, "driver": None,
                "cpu": "test", "threads": 2},
        "train": {"wall_s": 10.0},
    }


def _cand(layer: int, kind: str, index: int | None, accepted: bool, phase: str = "prune") -> dict:
    # the element name is only a label: the report reads layer / kind / index
    return {"element": f"x{layer}{kind}{index}", "phase": phase, "layer": layer, "kind": kind, "index": index,
            "loss": 0.3, "frac_no_worse": 0.4, "class": "harmful" if accepted else "important", "accepted": accepted}


DECISIONS = {
    "hard_attention": {"k": 30, "layers_selected": [0, 2]},
    "removed": ["L5.ffn", "L4.head3", "L3.ffn_group2", "L1.attn"],
    "n_layers": 6, "n_heads": 12, "n_groups": 12,
    "candidates": [
        _cand(0, "hardattn", None, True, "hard_attention"), _cand(1, "hardattn", None, False, "hard_attention"),
        _cand(5, "ffn", None, True), _cand(4, "ffn", None, False), _cand(4, "head", 3, True),
        _cand(3, "ffn_group", 2, True), _cand(1, "attn", None, True), _cand(2, "head", 7, False),
    ],
}


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    for task, variant, seed in DEV:
        run = results / task / "minilm" / variant / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps(_metrics(task, variant, seed)))
    (results / "sst2" / "minilm" / "finetune+axformer" / "seed0" / "decisions.json").write_text(json.dumps(DECISIONS))
    return results


def test_collect_and_summary(tree: Path, tmp_path: Path) -> None:
    df = report.collect(tree)
    assert len(df) == len(DEV)
    for col in ("task", "model", "variant", "seed", "metric_dev", "metric_name", "metric_secondary_f1",
                "size_params_encoder", "env_torch", "memory_peak_bytes", "train_wall_s",
                "latency_b1_p50_ms", "latency_b32_speedup", "latency_b32_baseline_p50_ms", "run_dir"):
        assert col in df.columns, col
    maj = df[df["variant"] == "majority"]
    assert maj["latency_b32_p50_ms"].isna().all() and not maj["latency_measured"].any()
    row = df[(df["task"] == "sst2") & (df["variant"] == "finetune+axformer") & (df["seed"] == 1)].iloc[0]
    assert row["latency_b32_p50_ms"] == pytest.approx(60.0 * 1.02)
    assert bool(row["has_decisions"]) is False

    assert set(df["family"]) == {"reference"} and set(df["commands"]) == {"finetune"}  # every fixture run has "train"


def test_tidy_tables_by_hand(tree: Path, tmp_path: Path) -> None:
    from axformer.reporting import tidy

    report.render(tree, tmp_path / "figures", tmp_path / "out" / "summary.csv")
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert list(summary.columns) == list(tidy.SUMMARY_COLUMNS) and len(summary.columns) <= 40
    assert set(zip(summary["task"], summary["variant"], summary["seed"])) == set(DEV)
    cells = summary.astype(str).stack()
    assert not cells.str.startswith(("[", "{")).any()  # no JSON in a cell
    row = summary[(summary["task"] == "sst2") & (summary["variant"] == "finetune+axformer") & (summary["seed"] == 1)].iloc[0]
    assert row["latency_batch"] == 32 and row["latency_p50_ms"] == pytest.approx(60.0 * 1.02)
    assert row["latency_finetune_p50_ms"] == pytest.approx(100.0)
    assert row["speedup_vs_finetune"] == pytest.approx(100.0 / (60.0 * 1.02))
    assert row["metric2_name"] == "f1" and row["params_encoder"] == 6_000_000 and row["train_wall_s"] == 10.0
    lat = pd.read_csv(tmp_path / "out" / "latency.csv")
    assert list(lat.columns) == list(tidy.LATENCY_COLUMNS)
    timed = [k for k in DEV if k[1] != "majority"]
    assert len(lat) == 2 * len(timed) and sorted(set(lat["batch_size"])) == [1, 32]
    el = pd.read_csv(tmp_path / "out" / "elements.csv")
    assert list(el.columns) == list(tidy.ELEMENT_COLUMNS) and len(el) == len(DECISIONS["candidates"])
    assert set(el["variant"]) == {"finetune+axformer"} and el["accepted"].sum() == 5
    assert (tmp_path / "out" / "baseline_scores.csv").is_file()


def test_baseline_scores_long(tree: Path, tmp_path: Path) -> None:
    from axformer.reporting import tidy

    run = tree / "sst2" / "minilm" / "finetune+headprune" / "seed0"
    run.mkdir(parents=True)
    rec = {**_metrics("sst2", "finetune+axformer", 0), "variant": "finetune+headprune",
           "baseline": {"method": "headprune", "wall_s": 3.0,
                        "info": {"scores": {"L0": {"head0": 0.1, "head1": 0.9}, "L1": {"head0": 0.5, "head1": 0.2}}}}}
    (run / "metrics.json").write_text(json.dumps(rec))
    tabs = tidy.tables([(d, r, None) for d, r in report.runs(tree)])
    sc = tabs["baseline_scores"]
    assert len(sc) == 4 and set(sc["peer_method"]) == {"headprune"}
    assert sc.set_index(["group", "unit"]).loc[("L0", "head1"), "score"] == pytest.approx(0.9)
    peer = tabs["summary"][tabs["summary"]["variant"] == "finetune+headprune"].iloc[0]
    assert peer["family"] == "peer" and peer["peer_method"] == "headprune" and peer["peer_wall_s"] == 3.0


def test_tidy_tables_carry_dtype_tf32_and_compute_dtype() -> None:
    """Issue 35 B: an LLM.int8 run timed against an fp16 finetune says so in summary.csv and latency.csv."""
    from axformer.reporting import tidy
    from axformer.records.record import Run

    m = _metrics("sst2", "finetune+axformer", 0)
    m["variant"] = "finetune+int8"
    for e in m["latency"]:
        e["dtypes"] = {"measure_dtype": "fp16", "baseline": ["float16"], "variant": ["float16", "float32"]}
        e["tf32"] = {"matmul_allow_tf32": False, "cudnn_allow_tf32": True, "float32_matmul_precision": "highest"}
    m["measure"] = {"dtype": "fp16"}
    m["quantize"] = {"dtype": "int8", "compute_dtype": "float16", "backend": "bitsandbytes"}
    old = _metrics("sst2", "finetune", 0)  # a record from before the dtype keys: cells stay empty
    tabs = tidy.tables([("a", Run.from_json(m), None), ("b", Run.from_json(old), None)])
    s, lat = tabs["summary"], tabs["latency"]
    assert list(s.iloc[0][["measure_dtype", "tf32", "quantize_compute_dtype"]]) == ["fp16", False, "float16"]
    assert s.iloc[1][["measure_dtype", "tf32", "quantize_compute_dtype"]].isna().all()
    row = lat[lat["variant"] == "finetune+int8"].iloc[0]
    assert (row["measure_dtype"], row["finetune_dtypes"], row["variant_dtypes"], row["tf32"], row["compute_dtype"]) \
        == ("fp16", "float16", "float16|float32", False, "float16")


def test_committed_summaries_share_the_columns() -> None:
    """Every profile's committed summary.csv is the narrow one (regenerated with `axformer report`)."""
    from axformer.reporting import tidy

    repo = Path(__file__).resolve().parents[1]
    found = sorted((repo / "results").rglob("summary.csv"))
    assert found
    for path in found:
        header = path.read_text().splitlines()[0].split(",")
        assert header == list(tidy.SUMMARY_COLUMNS), path
        assert (path.parent / "latency.csv").is_file() and (path.parent / "elements.csv").is_file(), path


def test_variant_table_by_hand(tree: Path) -> None:
    df = report.collect(tree)
    vt = tables.variant_table(df, "sst2")
    assert list(vt["variant"]) == ["finetune", "finetune+axformer", "majority"]
    ax = vt.set_index("variant").loc["finetune+axformer"]
    vals = [0.905, 0.895]
    assert ax["metric_mean"] == pytest.approx(0.900)
    assert ax["metric_std"] == pytest.approx(math.sqrt(((0.905 - 0.9) ** 2 + (0.895 - 0.9) ** 2) / 1))
    assert ax["metric_std"] == pytest.approx(float(np.std(vals, ddof=1)))
    assert ax["n_seeds"] == 2
    assert ax["params_encoder_ratio"] == pytest.approx(0.6)
    assert ax["params_total_ratio"] == pytest.approx(18 / 22)
    sp32 = np.mean([100.0 / 60.0, 100.0 / (60.0 * 1.02)])
    assert ax["speedup_b32"] == pytest.approx(sp32)
    assert ax["size_mb"] == pytest.approx(72.0)
    ft = vt.set_index("variant").loc["finetune"]
    assert ft["params_encoder_ratio"] == pytest.approx(1.0)
    assert ft["metric_std"] == pytest.approx(float(np.std([0.91, 0.92], ddof=1)))
    maj = vt.set_index("variant").loc["majority"]
    assert math.isnan(maj["speedup_b32"]) and math.isnan(maj["params_encoder_ratio"])

    md = tables.to_markdown(vt)
    assert "| finetune+axformer |" in md and "0.900 ± 0.007" in md and "1.65×" in md
    tex = tables.to_latex(vt)
    assert "\\toprule" in tex and "0.900 $\\pm$ 0.007" in tex and "finetune+axformer" in tex

    head = tables.all_tasks_table(df)
    assert list(head["variant"]) == ["finetune", "finetune+axformer", "majority"]
    cell = head.set_index("variant").loc["finetune+axformer", "sst2 (accuracy)"]
    assert cell == f"0.900 ± 0.007 ({sp32:.2f}×)"
    assert head.set_index("variant").loc["majority", "rte (accuracy)"] == "0.527 ± 0.000"


def test_pareto_front() -> None:
    pts = [(1.0, 0.8), (2.0, 0.9), (3.0, 0.85), (2.0, 0.7), (0.5, 0.5), (float("nan"), 0.99), (2.0, 0.9)]
    assert figures.pareto_front(pts) == [True, True, False, False, True, False, True]
    assert figures.pareto_front([]) == []


def test_removal_grid() -> None:
    grid, dims = figures.removal_grid(DECISIONS)
    assert dims["n_layers"] == 6 and dims["n_head"] == 12 and dims["n_ffn_group"] == 12
    assert grid.shape == (6, 12 + 12 + 3)
    attn, ffn, ha = 24, 25, 26
    assert dims["columns"][attn] == ("attn", None) and dims["columns"][ha] == ("hardattn", None)
    assert grid[4, 3] == figures.REMOVED and grid[3, 12 + 2] == figures.REMOVED
    assert grid[5, ffn] == figures.REMOVED and (grid[5, 12:24] == figures.IMPLIED).all()
    assert grid[1, attn] == figures.REMOVED and (grid[1, :12] == figures.IMPLIED).all()
    assert grid[4, ffn] == figures.TRIED and grid[2, 7] == figures.TRIED
    assert list(np.nonzero(grid[:, ha] == figures.HARD)[0]) == [0, 2]
    # no decisions-level sizes: the widths come from the candidates, never a default head count
    grid2, dims2 = figures.removal_grid({**DECISIONS, "n_heads": None, "n_groups": None})
    assert dims2["n_head"] == 8 and dims2["n_ffn_group"] == 3 and grid2.shape == (6, 8 + 3 + 3)


def test_render_writes_everything(tree: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    figs = tmp_path / "figures"
    caplog.set_level("INFO", logger="axformer.reporting.figures")
    out = report.render(tree, figs, tmp_path / "summary.csv")
    expected = [f"{kind}_{task}.{ext}" for kind in ("accuracy_vs_latency", "speedup_size_bars")
                for task in ("sst2", "rte") for ext in ("pdf", "png")]
    expected += [f"removal_map_sst2_minilm_finetune-axformer_seed0.{ext}" for ext in ("pdf", "png")]
    for name in expected:
        p = figs / name
        assert p.is_file() and p.stat().st_size > 0, name
        assert p in out
    assert (figs / "accuracy_vs_latency_sst2.pdf").read_bytes().startswith(b"%PDF")
    assert (figs / "accuracy_vs_latency_sst2.png").read_bytes().startswith(b"\x89PNG")
    for name in ("tables/sst2.md", "tables/sst2.tex", "tables/rte.md", "tables/rte.tex", "tables/all_tasks.md", "README.md"):
        assert (figs / name).is_file() and (figs / name).stat().st_size > 0, name
    readme = (figs / "README.md").read_text()
    assert "accuracy_vs_latency_sst2.png" in readme and "removal_map_sst2" in readme
    assert "majority: no latency measured" in readme
    assert any("skipped minilm/majority" in r.getMessage() for r in caplog.records)
    assert len(pd.read_csv(tmp_path / "summary.csv")) == len(DEV)
    assert not list(figs.rglob("*.tmp"))


def test_render_writes_verdicts_csv(tree: Path, tmp_path: Path) -> None:
    from axformer.reporting import verdicts

    figs = tmp_path / "figures"
    out = report.render(tree, figs, tmp_path / "summary.csv")
    csv_path = tmp_path / "verdicts.csv"
    assert csv_path in out and (figs / "verdicts.png") in out and (figs / "tables" / "verdicts.md") in out
    vt = pd.read_csv(csv_path, keep_default_na=False, na_values=[""])
    assert list(vt.columns[: len(verdicts.COLUMNS)]) == list(verdicts.COLUMNS)
    assert sorted(zip(vt["task"], vt["variant"])) == sorted({(t, v) for t, v, _ in DEV})
    # this hand-made tree has no predictions.npz: no intervals, verdict n/a, but the point values are there
    assert set(vt["verdict_accuracy"]) == {"n/a"} and vt["ci_low"].isna().all()
    ax = vt[(vt["task"] == "sst2") & (vt["variant"] == "finetune+axformer")].iloc[0]
    assert ax["n_seeds"] == 2 and ax["delta"] == pytest.approx((0.905 + 0.895) / 2 - (0.910 + 0.920) / 2)
    assert ax["speedup_b32"] == pytest.approx(np.mean([100.0 / 60.0, 100.0 / (60.0 * 1.02)]))
    assert ax["encoder_ratio"] == pytest.approx(0.6) and ax["verdict_size"] == "smaller"
    assert ax["verdict_speed"] == "n/a" and "verdicts" in (figs / "README.md").read_text()


def test_verdict_table_shows_the_speed_verdicts_batch(tree: Path) -> None:
    """A profile that reports batch 8 (base) gets a b8 column beside the fixed b1 / b32 ones."""
    from axformer.reporting import verdicts

    vt = verdicts.verdict_table(report.collect(tree), tree, batch_size=32)
    assert "Speedup b8 [95%]" not in verdicts.display_table(vt).columns
    vt["speed_batch"] = 8
    vt["speedup_b8"], vt["speedup_b8_low"], vt["speedup_b8_high"] = 1.04, 1.03, 1.06
    shown = verdicts.display_table(vt)
    assert list(shown.columns).index("Speedup b8 [95%]") == list(shown.columns).index("Speedup b32 [95%]") + 1
    assert set(shown["Speedup b8 [95%]"]) == {"1.04× [1.03, 1.06]"}


def test_malformed_metrics_names_file(tree: Path) -> None:
    bad = tree / "rte" / "minilm" / "finetune" / "seed1" / "metrics.json"
    bad.write_text('{"task": "rte", "metric": ')
    with pytest.raises(ConfigError, match="rte/minilm/finetune/seed1/metrics.json"):
        report.collect(tree)
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="seed1/metrics.json"):
        report.collect(tree)


def test_missing_results_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        report.collect(tmp_path / "nope")


def test_figure_styles_by_family() -> None:
    from axformer.reporting import figures

    # more AxFormer variants than its palette, peers and compression chains: one family each, no colour twice
    fam = {f"finetune+ax{i}": "axformer" for i in range(9)}
    fam |= {"finetune": "reference", "majority": "reference", "finetune+headprune": "peer",
            "finetune+layerdrop": "peer", "finetune+int8": "compression", "finetune+distill": "compression"}
    st = figures.styles(fam)
    assert len({s.colour for s in st.values()}) == len(fam)
    assert st["finetune"].colour == "#000000" and st["finetune+headprune"].colour in figures.FAMILY_COLOURS["peer"]
    for family in ("peer", "compression", "reference"):
        markers = [s.marker for v, s in st.items() if s.family == family]
        assert len(set(markers)) == len(markers), family
    blues = [matplotlib.colors.to_rgb(s.colour) for s in st.values() if s.family == "axformer"]
    assert all(b > r and b > g for r, g, b in blues)  # shades of the family's hue


def test_figures_are_column_sized_with_embedded_fonts(tree: Path, tmp_path: Path) -> None:
    from PIL import Image

    from axformer.reporting import figures

    figs = tmp_path / "figures"
    report.render(tree, figs, tmp_path / "summary.csv")
    for name, width in (("accuracy_vs_latency_sst2", figures.SINGLE_COLUMN_IN),
                        ("speedup_size_bars_sst2", figures.DOUBLE_COLUMN_IN),
                        ("removal_map_sst2_minilm_finetune-axformer_seed0", figures.DOUBLE_COLUMN_IN),
                        ("verdicts", figures.DOUBLE_COLUMN_IN)):
        with Image.open(figs / f"{name}.png") as im:
            assert im.size[0] == round(width * 300), name
        pdf = (figs / f"{name}.pdf").read_bytes()
        assert b"/FontFile2" in pdf and b"/Type3" not in pdf, name  # TrueType embedded (pdf.fonttype 42)


def test_collect_ignores_nested_profile_tree(tree: Path) -> None:
    # the bench profile writes results/bench/<task>/...: the default report over results/ must not take them
    nested = tree / "bench" / "rte" / "minilm" / "finetune" / "seed0"
    nested.mkdir(parents=True)
    (nested / "metrics.json").write_text(json.dumps(_metrics("rte", "finetune", 0)))
    df = report.collect(tree)
    assert len(df) == len(DEV)
    assert not df["run_dir"].astype(str).str.startswith("bench").any()


def test_search_cost_table_by_hand(tree: Path) -> None:
    # give the axformer runs a search block (and an int8 copy, which shares its parent's search)
    for task, fte_wall, walls in (("sst2", 10.0, (4.0, 6.0)), ("rte", 10.0, (30.0, 30.0))):
        for seed, wall in enumerate(walls):
            p = tree / task / "minilm" / "finetune+axformer" / f"seed{seed}" / "metrics.json"
            m = json.loads(p.read_text())
            m["search"] = {"wall_s": wall, "passes": 40 + seed, "candidates": 38, "removed": ["L5.ffn", "L4.head3"],
                           "hard_attention_layers": [0, 2], "loss_before": 0.4, "loss_after": 0.3}
            p.write_text(json.dumps(m))
            q = tree / task / "minilm" / "finetune+axformer+int8" / f"seed{seed}"
            q.mkdir(parents=True)
            (q / "metrics.json").write_text(json.dumps({**m, "variant": "finetune+axformer+int8",
                                                        "quantize": {"dtype": "int8"}}))
    t = tables.search_cost_table(report.collect(tree))
    assert list(t["Task"]) == ["sst2", "rte"] and list(t["Variant"]) == ["finetune+axformer"] * 2
    sst2 = t.iloc[0]
    assert sst2["Removed"] == "2" and sst2["Passes"] == "40" and sst2["Search loss"] == "0.400 → 0.300"
    # mean search wall 5 s over the fine-tune's 10 s; RTE's search costs 3x its fine-tuning
    assert sst2["Search (s)"] == "5" and sst2["Fine-tune (s)"] == "10" and sst2["Search / fine-tune"] == "0.50"
    assert t.iloc[1]["Search / fine-tune"] == "3.00"
    md = tables.to_markdown(t)
    assert md.splitlines()[0].endswith("| Search / fine-tune |") and "| sst2 | finetune+axformer | 2 | [0, 2] |" in md


def test_search_cost_table_lists_the_fisher_peer(tree: Path) -> None:
    """finetune+fisher (baselines/fisher.py) is a search too: its wall time sits beside AxFormer's."""
    p = tree / "sst2" / "minilm" / "finetune+axformer" / "seed0" / "metrics.json"
    m = json.loads(p.read_text())
    m["search"] = {"wall_s": 4.0, "passes": 40, "removed": ["L5.ffn"], "loss_before": 0.4, "loss_after": 0.3}
    p.write_text(json.dumps(m))
    ft = tree / "sst2" / "minilm" / "finetune" / "seed0" / "metrics.json"
    f = json.loads(ft.read_text())
    f["metric"]["search_loss"] = 0.25
    ft.write_text(json.dumps(f))
    for variant in ("finetune+fisher", "finetune+fisher+int8"):
        run = tree / "sst2" / "minilm" / variant / "seed0"
        run.mkdir(parents=True)
        rec = {**_metrics("sst2", "finetune+axformer", 0), "variant": variant,
               "baseline": {"method": "fisher", "wall_s": 7.0,
                            "info": {"heads_before": 72, "heads_after": 60, "neurons_before": 9216,
                                     "neurons_after": 8000}}}
        rec["metric"] = {**rec["metric"], "search_loss": 0.35}
        if variant.endswith("int8"):  # the record says it was quantized (the name is not read)
            rec["quantize"] = {"dtype": "int8"}
        (run / "metrics.json").write_text(json.dumps(rec))
    t = tables.search_cost_table(report.collect(tree))
    assert list(t["Variant"]) == ["finetune+axformer", "finetune+fisher"]  # the int8 copy shares the search
    row = t.iloc[1]
    assert row["Removed"] == "12 heads, 1216 neurons" and row["Search (s)"] == "7" and row["Passes"] == tables.DASH
    assert row["Search loss"] == "0.250 → 0.350" and row["Search / fine-tune"] == "0.70"


def test_compute_table_counts_each_step_once(tree: Path) -> None:
    """A search block copied into its int8 descendant, and the finetune block copied into every variant,
    are counted once (by the step record in the lineage); measurement jobs add where they recorded a time."""
    def lineage(task: str, seed: int, *names: str) -> list[dict]:
        chain = ["finetune", *names]
        return [{"name": n, "command": "finetune" if n == "finetune" else "approximate",
                 "record": f"ckpt/{task}/{'+'.join(chain[:i + 1])}/seed{seed}/step.json"} for i, n in enumerate(chain)]

    for task in ("sst2", "rte"):
        for seed in (0, 1):
            for variant in ("finetune", "finetune+axformer", "majority"):
                p = tree / task / "minilm" / variant / f"seed{seed}" / "metrics.json"
                m = json.loads(p.read_text())
                if variant == "majority":
                    m.pop("train")  # the constant predictor ran no step
                else:
                    m["steps"] = lineage(task, seed, *variant.split("+")[1:])
                    m["measure"] = {"threads": 2, "wall_s": 30.0}
                if variant == "finetune+axformer":
                    m["search"] = {"wall_s": 120.0 + 60 * seed}
                    q = tree / task / "minilm" / "finetune+axformer+int8" / f"seed{seed}"
                    q.mkdir(parents=True)
                    # an older measurement record without measure.wall_s
                    (q / "metrics.json").write_text(json.dumps({**m, "variant": "finetune+axformer+int8",
                                                                "quantize": {"dtype": "int8"}, "measure": {}}))
                p.write_text(json.dumps(m))
    # an older record: bare step.json paths, no commands; its copied train block is still the seed's finetune
    p = tree / "rte" / "minilm" / "finetune+axformer" / "seed1" / "metrics.json"
    m = json.loads(p.read_text())
    m["steps"] = [s["record"] for s in m["steps"]]
    p.write_text(json.dumps(m))
    t = tables.compute_table(report.collect(tree))
    assert list(t["Task"]) == ["sst2", "rte"] and "Model" not in t.columns
    assert t.iloc[1]["Fine-tuning"] == t.iloc[0]["Fine-tuning"] and t.iloc[1]["Searches"] == "5.0"
    row = t.iloc[0]
    # fine-tuning: two seeds x 10 s (not once per run); searches 120 + 180 s; four timed measurements of 30 s
    assert row["Runs"] == "8" and row["Seeds"] == "2"
    assert row["Fine-tuning"] == f"{20 / 60:.1f}" and row["Searches"] == "5.0" and row["Peers"] == "0.0"
    assert row["Measurement"] == "2.0 (4 of 8 runs)" and row["Total"] == f"{(20 + 300 + 120) / 60:.1f}"
    md = tables.to_markdown(t)
    assert md.splitlines()[0].startswith("| Task | Runs | Seeds | Fine-tuning | Searches |")


def test_axformer_official_outside_the_released_tasks_is_noted_as_extrapolation():
    df = pd.DataFrame({"task": ["sst2", "sst2", "cola", "mrpc"],
                       "variant": ["finetune", "finetune+axformer_official", "finetune+axformer_official",
                                   "finetune+axformer"]})
    notes = report.extrapolation_notes(df)
    assert len(notes) == 1 and notes[0].startswith("sst2: finetune+axformer_official is an extrapolation")
    assert report.extrapolation_notes(df[df["task"] != "sst2"]) == [] and report.extrapolation_notes(pd.DataFrame()) == []
