"""Distillation: student construction from teacher layers, the KD loss, training, round trip, CLI + search."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from axformer.taskdata import data
from axformer.compress import distill
from axformer.compress import distill_config
from axformer.surgery import elements, hard_attention
from axformer.encoders import models
from axformer.training import train
from axformer.training import train_config
from axformer.training import batches
from axformer.taskdata.tasks import get_task
from axformer.utils import ConfigError


def _teacher(n_layers: int = 4, task: str = "sst2", seed: int = 0):
    """A tiny random BERT of ``n_layers`` layers (same class and tokenizer as models.TINY)."""
    t = get_task(task)
    model, tok = models.load_pretrained(models.TINY, t, seed=seed)
    cfg = copy.deepcopy(model.config)
    cfg.num_hidden_layers = n_layers
    torch.manual_seed(seed)
    return type(model)(cfg).eval(), tok


def test_student_has_configured_layers_and_teacher_weights():
    teacher, _ = _teacher(4)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    for n, expected in [(2, [0, 2]), (None, [0, 2]), (3, [0, 1, 2]), (1, [0]), (4, [0, 1, 2, 3])]:
        student = distill.make_student(teacher, n)
        n = 2 if n is None else n
        assert student.config.num_hidden_layers == n == len(student.bert.encoder.layer)
        assert student.config.axformer_distill["teacher_layers"] == expected
        s_state, t_state = student.state_dict(), teacher.state_dict()
        for key, value in s_state.items():
            if ".encoder.layer." in key:
                i, rest = key.split(".encoder.layer.")[1].split(".", 1)
                src = f"bert.encoder.layer.{expected[int(i)]}.{rest}"
            else:  # embeddings, pooler, classifier: copied unchanged
                src = key
            assert torch.equal(value, t_state[src]), key
        assert not hasattr(student.config, "axformer")
    assert distill.select_layers(12, 6) == [0, 2, 4, 6, 8, 10]  # DistilBERT: one layer out of two
    assert distill.select_layers(12, 6, "evenly") == [0, 2, 4, 7, 9, 11]
    assert distill.select_layers(6, 2, "first") == [0, 1]
    for key, value in teacher.state_dict().items():  # the teacher is untouched
        assert torch.equal(value, before[key])
    assert teacher.config.num_hidden_layers == 4


def test_bad_input_is_config_error(tmp_path):
    teacher, tok = _teacher(2)
    for n in (0, 3, -1):
        with pytest.raises(ConfigError, match="student layers"):
            distill.make_student(teacher, n)
    with pytest.raises(ConfigError, match="strategy"):
        distill.make_student(teacher, 1, strategy="random")
    for bad in (dict(temperature=0.0), dict(alpha=1.5), dict(init="pretrained"), dict(init="other")):
        with pytest.raises(ConfigError):
            distill_config.DistillConfig(**bad).validate()
    edited = copy.deepcopy(teacher)
    elements.remove(edited, elements.Element(0, "head", 1))
    with pytest.raises(ConfigError, match="unedited"):
        distill.make_student(edited, 1)
    hard = copy.deepcopy(teacher)
    hard_attention.enable(hard, [1], 3)
    with pytest.raises(ConfigError, match="unedited"):
        distill.make_student(hard, 1)
    # a pretrained student must be of a supported encoder family (surgery runs on it): GPT-2 is not
    from transformers import GPT2Config

    GPT2Config(vocab_size=100, n_embd=32, n_layer=1, n_head=2).save_pretrained(tmp_path / "g2")
    with pytest.raises(ConfigError, match="encoder families"):
        distill.pretrained_student(str(tmp_path / "g2"), get_task("sst2"), tok)


def _softmax(x):
    e = [math.exp(v) for v in x]
    return [v / sum(e) for v in e]


def test_kd_loss_matches_hand_computation():
    s = [[1.0, -0.5, 0.3], [0.2, 0.1, -1.0]]
    t = [[2.0, 0.0, -1.0], [-0.3, 0.8, 0.4]]
    y = [0, 2]
    T, alpha = 2.0, 0.3
    kl = 0.0
    ce = 0.0
    for sb, tb, yb in zip(s, t, y):
        ps = _softmax([v / T for v in sb])
        pt = _softmax([v / T for v in tb])
        kl += sum(pt[c] * (math.log(pt[c]) - math.log(ps[c])) for c in range(3))
        ce += -math.log(_softmax(sb)[yb])
    expected = alpha * T * T * kl / 2 + (1 - alpha) * ce / 2
    got = distill.kd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), False, temperature=T, alpha=alpha)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # alpha = 1 and equal logits: zero loss
    z = distill.kd_loss(torch.tensor(s), torch.tensor(s), torch.tensor(y), False, temperature=T, alpha=1.0)
    assert z.item() == pytest.approx(0.0, abs=1e-7)
    # regression: alpha * MSE(s, t) + (1 - alpha) * MSE(s, y)
    sr, tr, yr = [0.5, 2.0, -1.0], [1.0, 1.5, 0.0], [0.0, 3.0, -2.0]
    mse_t = sum((a - b) ** 2 for a, b in zip(sr, tr)) / 3
    mse_y = sum((a - b) ** 2 for a, b in zip(sr, yr)) / 3
    got = distill.kd_loss(torch.tensor(sr).view(3, 1), torch.tensor(tr).view(3, 1), torch.tensor(yr), True, alpha=alpha)
    assert got.item() == pytest.approx(alpha * mse_t + (1 - alpha) * mse_y, rel=1e-6)
    # gradients reach the student only
    sg, tg = torch.tensor(s, requires_grad=True), torch.tensor(t, requires_grad=True)
    distill.kd_loss(sg, tg, torch.tensor(y), False).backward()
    assert sg.grad is not None and tg.grad is None


@pytest.mark.slow
def test_student_learns_and_round_trips(data_dir, tmp_path):
    task = get_task("sst2")
    teacher, tok = _teacher(4)
    ds = data.tokenize(data.load_split(task, "train", data_dir).select(range(32)), tok, task, max_length=32)
    train.train(teacher, ds, tok, task, train_config.TrainConfig(epochs=12, batch_size=32, lr=2e-3, progress=False))
    t_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = distill.make_student(teacher, 2)
    log = distill.distill(teacher, student, ds, tok, task,
                          train_config.TrainConfig(epochs=12, batch_size=32, lr=2e-3, progress=False), 2.0, 0.5)
    curve = log["loss_curve"]
    assert len(curve) == log["steps"] == 12 and log["temperature"] == 2.0
    assert np.mean(curve[-3:]) < 0.75 * np.mean(curve[:2])
    assert not teacher.training and all(torch.equal(v, t_state[k]) for k, v in teacher.state_dict().items())

    models.save_checkpoint(student, tok, tmp_path / "student")
    loaded, _ = models.load_checkpoint(tmp_path / "student")
    assert loaded.config.num_hidden_layers == 2
    assert loaded.config.axformer_distill["teacher_layers"] == [0, 2]
    a, _ = batches.predict_logits(student, ds, tok, batch_size=16)
    b, _ = batches.predict_logits(loaded, ds, tok, batch_size=16)
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_cli_distill_then_approximate(tmp_path, data_dir):
    from axformer.cli import main

    ft = ["finetune", "--task", "mrpc", "--model", models.TINY, "--data-dir", str(data_dir), "--train-max", "16",
          "--search-max", "16", "--dev-max", "8", "--epochs", "1", "--max-length", "32", "--no-progress",
          "--ckpt", str(tmp_path / "ft"), "--metrics", str(tmp_path / "ft.json")]
    assert main(ft) == 0
    dist = ["distill", "--parent", str(tmp_path / "ft"), "--ckpt", str(tmp_path / "st"), "--metrics",
            str(tmp_path / "st.json"), "--layers", "1", "--epochs", "1", "--batch-size", "8", "--no-progress"]
    assert main(dist) == 0
    rec = json.loads((tmp_path / "st.json").read_text())
    assert set(rec) >= {"distill", "size", "data", "metric"}
    assert rec["distill"]["n_layers"] == 1 and rec["distill"]["teacher_layers"] == [0]
    assert rec["distill"]["steps"] == 2 and rec["metric"]["n_dev"] == 8 and rec["metric"]["n_search"] == 16
    assert rec["distill"]["strategy"] == "every_other" and rec["distill"]["init"] == "teacher"
    # a pretrained student chooses no teacher layers: the record says so instead of naming a strategy
    pre = ["distill", "--parent", str(tmp_path / "ft"), "--ckpt", str(tmp_path / "pre"), "--metrics",
           str(tmp_path / "pre.json"), "--init", "pretrained", "--pretrained", models.TINY, "--epochs", "1",
           "--batch-size", "8", "--no-progress"]
    assert main(pre) == 0
    block = json.loads((tmp_path / "pre.json").read_text())["distill"]
    assert block["init"] == "pretrained" and block["strategy"] is None and block["teacher_layers"] is None
    ft_rec = json.loads((tmp_path / "ft.json").read_text())
    assert rec["size"]["params_encoder"] < ft_rec["size"]["params_encoder"]
    step = json.loads((tmp_path / "st" / "axformer_step.json").read_text())
    assert step["variant"] == "finetune+distill" and step["task"] == "mrpc" and step["split"]["train_max"] == 16

    ax = ["approximate", "--parent", str(tmp_path / "st"), "--ckpt", str(tmp_path / "ax"), "--metrics",
          str(tmp_path / "ax.json"), "--decisions", str(tmp_path / "dec.json"), "--accept-rule", "meanloss",
          "--topk", "0.5", "--no-progress"]
    assert main(ax) == 0
    assert json.loads((tmp_path / "dec.json").read_text())["n_search"] == 16
    ax_step = json.loads((tmp_path / "ax" / "axformer_step.json").read_text())
    assert ax_step["variant"] == "finetune+distill+axformer"
    model, _ = models.load_checkpoint(tmp_path / "ax")
    assert model.config.num_hidden_layers == 1

    # bad input: deeper than the teacher, a soft-loss weight outside [0, 1]: exit 2, nothing written
    bad = ["distill", "--parent", str(tmp_path / "ft"), "--ckpt", str(tmp_path / "bad"), "--metrics",
           str(tmp_path / "bad.json"), "--epochs", "1", "--no-progress"]
    assert main(bad + ["--layers", "3"]) == 2
    assert main(bad + ["--layers", "0"]) == 2
    assert main(bad + ["--alpha", "2"]) == 2
    edited, etok = models.load_checkpoint(tmp_path / "ft")  # an AxFormer-edited teacher
    elements.remove(edited, elements.Element(0, "head", 0))
    ft_step = json.loads((tmp_path / "ft" / "axformer_step.json").read_text())
    models.save_checkpoint(edited, etok, tmp_path / "edited", extra=ft_step)
    assert main(["distill", "--parent", str(tmp_path / "edited")] + bad[3:]) == 2
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.json").exists()
