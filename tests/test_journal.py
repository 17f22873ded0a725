"""The search journal (axformer/search/journal.py): a search killed part-way and run again replays what it had
judged and ends with the decisions an uninterrupted run makes."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from axformer.search import prune, prune_config
from axformer.surgery import elements
from axformer.taskdata import data
from axformer.utils import ConfigError


@pytest.fixture(scope="module")
def planted(fitted):
    """conftest's fitted tiny BERT (its 48 rows the search split) with one head scrambled so the search accepts."""
    task, model, tok, ds = fitted
    model = copy.deepcopy(model)
    sa = model.base_model.encoder.layer[1].attention.self
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        rows = slice(3 * sa.attention_head_size, 4 * sa.attention_head_size)
        sa.value.weight[rows] = torch.randn(sa.value.weight[rows].shape, generator=g) * 8.0
    return task, model, tok, ds


def _cfg(**kw):
    return prune_config.PruneConfig(**{"progress": False, "batch_size": 16, "accept_rule": "meanloss", "topk": 2,
                                       **kw})


def _plain(x):
    return json.loads(json.dumps(x, default=float))


def test_a_killed_search_resumes_to_the_uninterrupted_decisions(planted, tmp_path):
    task, model, tok, ds = planted
    full_journal = tmp_path / "full.partial.jsonl"
    whole = copy.deepcopy(model)
    a = prune.search(whole, ds, tok, task, _cfg(), journal=full_journal)
    lines = full_journal.read_text().splitlines()
    assert len(lines) == 1 + len(a.candidates) and a.replayed == 0
    accepted = [i for i, c in enumerate(a.candidates) if c["accepted"]]
    assert accepted and accepted[0] + 1 < len(a.candidates)  # an acceptance inside the replayed part, work after it
    k = accepted[0] + 2  # killed while judging candidate k + 1: its line half-written
    killed = tmp_path / "killed.partial.jsonl"
    killed.write_text("\n".join(lines[: 1 + k]) + "\n" + lines[1 + k][:25])
    resumed = copy.deepcopy(model)
    b = prune.search(resumed, ds, tok, task, _cfg(), journal=killed)
    assert b.replayed == k and b.passes == a.passes - k  # the replayed candidates were not evaluated
    assert _plain(b.candidates) == _plain(a.candidates)
    assert (b.removed, b.hard_attention_layers, b.final) == (a.removed, a.hard_attention_layers, a.final)
    assert elements.architecture(resumed) == elements.architecture(whole)
    assert killed.read_text().splitlines() == lines  # the journal ends as the uninterrupted run's
    la = prune.decisions_record(a, whole, _cfg(), task, len(ds), [])
    lb = prune.decisions_record(b, resumed, _cfg(), task, len(ds), [])
    assert lb.pop("replayed") == k and "replayed" not in la
    for d in (la, lb):
        del d["wall_s"], d["passes"]
    assert _plain(lb) == _plain(la)


def test_a_journal_of_another_search_is_set_aside(planted, tmp_path, capsys):
    task, model, tok, ds = planted
    j = tmp_path / "d.partial.jsonl"
    prune.search(copy.deepcopy(model), ds, tok, task, _cfg(mode="prune"), journal=j)
    res = prune.search(copy.deepcopy(model), ds, tok, task, _cfg(mode="prune", less_important=1.3), journal=j)
    assert res.replayed == 0 and j.with_name(j.name + ".stale").exists()
    assert "is from another search" in capsys.readouterr().err


def test_a_journal_out_of_step_or_broken_inside_is_refused_with_its_name(planted, tmp_path):
    task, model, tok, ds = planted
    j = tmp_path / "d.partial.jsonl"
    prune.search(copy.deepcopy(model), ds, tok, task, _cfg(mode="prune", granularity="blocks"), journal=j)
    lines = j.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["cand"]["element"] = "L0.ffn"  # the search starts at the last layer
    j.write_text("\n".join([lines[0], json.dumps(entry), *lines[2:]]) + "\n")
    with pytest.raises(ConfigError, match=r"d\.partial\.jsonl: entry 1 is \('L0\.ffn', 'prune'\)"):
        prune.search(copy.deepcopy(model), ds, tok, task, _cfg(mode="prune", granularity="blocks"), journal=j)
    j.write_text("\n".join([lines[0], "{not json", *lines[2:]]) + "\n")
    with pytest.raises(ConfigError, match=r"d\.partial\.jsonl: line 2 is not JSON"):
        prune.search(copy.deepcopy(model), ds, tok, task, _cfg(mode="prune", granularity="blocks"), journal=j)


def test_replayed_hard_attention_candidates_keep_their_timing_and_are_not_timed_again(planted, data_dir, tmp_path,
                                                                                       monkeypatch):
    from axformer.measurement import measure
    from axformer.surgery import hard_attention

    task, model, tok, ds = planted
    timed = []

    def fake(models_, inputs, cfg):  # 10 ms x 0.8 per hard-attention layer: every such layer pays
        timed.append(tuple(models_))
        return {n: measure.LatencyStats.from_values([10.0 * 0.8 ** len(hard_attention.enabled_layers(m))])
                for n, m in models_.items()}

    monkeypatch.setattr(measure, "time_interleaved", fake)
    texts = list(data.load_split(task, "train", data_dir).select(range(48))["text_a"]), None
    cfg = _cfg(mode="hardattn", accept_rule="metric", less_important=10.0, latency_aware=True, lat_batch_size=4,
               lat_seq_len=16)
    j = tmp_path / "d.partial.jsonl"
    a = prune.search(copy.deepcopy(model), ds, tok, task, cfg, texts, journal=j)
    n_timed = len(timed)
    lines = j.read_text().splitlines()
    assert len(a.candidates) == 2 and all("latency" in c for c in a.candidates)
    j.write_text("\n".join(lines[:2]) + "\n")  # killed after the first hard-attention candidate
    timed.clear()
    b = prune.search(copy.deepcopy(model), ds, tok, task, cfg, texts, journal=j)
    assert b.replayed == 1 and len(timed) == n_timed - 1  # the replayed candidate was not timed again
    assert _plain(b.candidates) == _plain(a.candidates) and b.hard_attention_layers == a.hard_attention_layers
