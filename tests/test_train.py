"""The one training/eval loop: learns, deterministic, per-sample losses, regression."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from axformer.taskdata import data
from axformer.encoders import models
from axformer.training import train
from axformer.training import train_config
from axformer.training import batches
from axformer.taskdata.tasks import get_task


def _tiny(task_name, data_dir, n=48, seed=0):
    task = get_task(task_name)
    model, tok = models.load_pretrained(models.TINY, task, seed=seed)
    ds = data.load_split(task, "train", data_dir).select(range(n))
    return task, model, tok, data.tokenize(ds, tok, task, max_length=32)


@pytest.mark.slow
def test_finetune_tiny_lowers_loss_on_real_sst2(data_dir):
    task, model, tok, ds = _tiny("sst2", data_dir, n=32)
    before = train.evaluate(model, ds, tok, task).mean_loss
    log = train.train(model, ds, tok, task, train_config.TrainConfig(epochs=30, batch_size=16, lr=1e-3, progress=False))
    after = train.evaluate(model, ds, tok, task).mean_loss
    assert after < 0.5 * before, (before, after)  # it fits 32 real rows
    assert log["steps"] == 30 * 2


@pytest.mark.slow
def test_same_seed_same_loss_curve(data_dir):
    curves = []
    for _ in range(2):
        task, model, tok, ds = _tiny("sst2", data_dir, n=32, seed=1)
        curves.append(train.train(model, ds, tok, task, train_config.TrainConfig(epochs=2, batch_size=8, lr=1e-3,
                                                                           seed=1, progress=False))["loss_curve"])
    assert curves[0] == curves[1]
    task, model, tok, ds = _tiny("sst2", data_dir, n=32, seed=2)
    other = train.train(model, ds, tok, task, train_config.TrainConfig(epochs=2, batch_size=8, lr=1e-3, seed=2,
                                                                progress=False))["loss_curve"]
    assert other != curves[0]


def test_evaluate_per_sample_losses_match_model_loss(data_dir):
    task, model, tok, ds = _tiny("rte", data_dir, n=20)
    res = train.evaluate(model, ds, tok, task, batch_size=7)
    assert res.losses.shape == (20,) and res.predictions.shape == (20,)
    batch = next(iter(batches.make_loader(ds, tok, 20, shuffle=False)))
    with torch.no_grad():
        out = model(**batch)  # HF's own mean CE
    assert res.mean_loss == pytest.approx(float(out.loss), rel=1e-5)
    assert set(res.metrics) == {"accuracy"}


def test_regression_stsb_squared_error(data_dir):
    task, model, tok, ds = _tiny("stsb", data_dir, n=16)
    res = train.evaluate(model, ds, tok, task)
    assert res.logits.shape == (16, 1)
    np.testing.assert_allclose(res.losses, (res.logits[:, 0] - res.labels) ** 2, rtol=1e-5)
    assert set(res.metrics) == {"pearson", "spearman"}
    train.train(model, ds, tok, task, train_config.TrainConfig(epochs=6, batch_size=8, lr=1e-3, progress=False))
    assert train.evaluate(model, ds, tok, task).mean_loss < res.mean_loss


def test_bad_train_config():
    from axformer.utils import ConfigError

    with pytest.raises(ConfigError, match="train.lr"):
        train_config.TrainConfig(lr=0).validate()


def test_select_keeps_the_best_scoring_epoch(data_dir):
    """train(select=...) scores after every epoch and restores the best epoch's weights, not the last."""
    task, model, tok, ds = _tiny("sst2", data_dir, n=16)
    snapshots: list[dict[str, torch.Tensor]] = []
    wanted = [0.1, 0.9, 0.3, 0.2]  # epoch 2 of 4 is the best

    def score(m):
        snapshots.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        return wanted[len(snapshots) - 1]

    log = train.train(model, ds, tok, task, train_config.TrainConfig(epochs=4, batch_size=8, lr=1e-3, progress=False),
                      select=score)
    assert [s["score"] for s in log["select_scores"]] == wanted
    assert log["selected_epoch"] == 2.0 and log["selected_step"] == 4
    final = model.state_dict()
    for k, v in snapshots[1].items():
        assert torch.equal(final[k], v), k
    assert not all(torch.equal(final[k], v) for k, v in snapshots[-1].items())  # not the last epoch


def test_select_on_search_metric_from_cli_scorer(data_dir):
    """The CLI's scorer is the search-split headline metric; 'none' means no selection."""
    from axformer.cli import search_selector
    from axformer.utils import ConfigError

    task, model, tok, ds = _tiny("sst2", data_dir, n=24)
    assert search_selector("none", ds, tok, task) is None
    res = train.evaluate(model, ds, tok, task)
    assert search_selector("metric", ds, tok, task)(model) == pytest.approx(res.metrics["accuracy"], abs=1e-5)
    assert search_selector("loss", ds, tok, task)(model) == pytest.approx(-res.mean_loss)
    with pytest.raises(ConfigError, match="--select"):
        search_selector("dev", ds, tok, task)
