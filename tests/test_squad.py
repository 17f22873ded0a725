"""SQuAD v1.1 through the pipeline (issue 8, DESIGN §8): official-style EM/F1, article splits of both protocols,
sliding windows and offsets on real dev articles, per-question span loss, and a tiny QA model through
fine-tune -> AxFormer -> measure (+ distillation, head pruning and int8 on the QA head)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from axformer.training import batches, train
from axformer.training import train_config
from axformer.taskdata import losses, metrics, squad, taskkinds
from axformer.encoders import models
from axformer import stats
from axformer.cli import main
from axformer.taskdata.tasks import get_task, with_qa_settings
from axformer.utils import ConfigError

SQUAD = get_task("squad")


# ------------------------------------------------------------------------------------------ EM / F1
def test_normalisation_rules():
    # lower case, ASCII punctuation dropped, articles a/an/the dropped as words only, whitespace collapsed
    assert metrics.normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert metrics.normalize_answer("An apple, a day.") == "apple day"
    assert metrics.normalize_answer("Theatre anthem") == "theatre anthem"  # 'the'/'an' inside words stay
    assert metrics.normalize_answer("the-end") == "theend"  # punctuation goes before articles are removed
    assert metrics.normalize_answer("  A\tB\nC ") == "b c"  # 'a' is an article; tabs / newlines are spaces
    assert metrics.normalize_answer("$1,000 (US)") == "1000 us"


def test_em_f1_hand_computed():
    # normalised: pred [cat, sat, on, mat], gold [cat, on, mat]: 3 common, P = 3/4, R = 1, F1 = 6/7
    assert metrics.squad_f1("the cat sat on the mat", "a cat on a mat") == pytest.approx(6 / 7)
    assert metrics.squad_exact("the cat sat on the mat", "a cat on a mat") == 0.0
    assert metrics.squad_exact("The Cat, on the MAT!", "cat on mat") == 1.0
    # tokens count with multiplicity: pred {x: 2, y: 1} vs gold {x: 1, y: 2} share one x and one y: P = R = 2/3
    assert metrics.squad_f1("x x y", "x y y") == pytest.approx(2 / 3)
    assert metrics.squad_f1("", "denver") == 0.0 and metrics.squad_f1("the", "denver") == 0.0
    # several gold answers: the best one counts, for EM and F1 separately
    preds = ["Denver Broncos", "in 1990", "the blue house"]
    golds = [["Broncos", "Denver Broncos"],          # EM 1, F1 1
             ["1990s", "the year 1990", "1990"],      # EM 0; F1: vs '1990': P 1/2, R 1 -> 2/3; vs 'year 1990': 1/2
             ["red house", "a house"]]                # EM 0; F1: vs 'house' P 1/2 R 1 -> 2/3; vs 'red house' 1/2
    got = metrics.squad_scores(preds, golds)
    assert got["exact_match"] == pytest.approx(1 / 3)
    assert got["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert metrics.compute(SQUAD, preds, golds) == got  # headline f1 + secondary exact_match
    assert SQUAD.metric == "f1" and SQUAD.secondary == ("exact_match",)
    with pytest.raises(ValueError):
        metrics.squad_scores(["a"], [[]])


# ------------------------------------------------------------------------------------------ splits
def test_local_protocol_article_split_no_overlap(data_dir):
    sp = taskkinds.make_splits(SQUAD, data_dir, seed=0, protocol="local", local_fractions=[0.6, 0.1, 0.3],
                          search_max=None)
    arts = {k: set(v) for k, v in sp.info["articles"].items()}
    assert arts["train"].isdisjoint(arts["search"]) and arts["train"].isdisjoint(arts["dev"])
    assert arts["search"].isdisjoint(arts["dev"])
    assert arts["train"] | arts["search"] | arts["dev"] == set(range(48))  # dev-v1.1 has 48 articles
    assert [len(arts[k]) for k in ("train", "search", "dev")] == [29, 5, 14]  # 28.8 / 4.8 / 14.4, largest remainder
    for name in ("train", "search", "dev"):  # every question sits in an article of its own split
        assert set(getattr(sp, name)["article"]) <= arts[name]
    ids = [set(getattr(sp, n)["id"]) for n in ("train", "search", "dev")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert sum(map(len, ids)) == 10570
    assert sp.info["protocol"] == "local" and sp.info["local_fractions"] == [0.6, 0.1, 0.3]
    again = taskkinds.make_splits(SQUAD, data_dir, seed=0, protocol="local", search_max=None)  # default fractions
    assert again.info["articles"] == sp.info["articles"]  # seeded
    other = taskkinds.make_splits(SQUAD, data_dir, seed=1, protocol="local", search_max=None)
    assert other.info["articles"] != sp.info["articles"]
    capped = taskkinds.make_splits(SQUAD, data_dir, seed=0, protocol="local", search_max=50, train_max=70, dev_max=30)
    assert (len(capped.train), len(capped.search), len(capped.dev)) == (70, 50, 30)
    assert set(capped.dev["article"]) <= arts["dev"]  # caps subsample questions inside their split
    for bad in ("0.5,0.5", "0.7,0.2,0.2", "0.6,0,0.4", "a,b,c"):
        with pytest.raises(ConfigError, match="squad-fractions"):
            taskkinds.make_splits(SQUAD, data_dir, seed=0, protocol="local", local_fractions=bad)
    with pytest.raises(ConfigError, match="squad-protocol"):
        taskkinds.make_splits(SQUAD, data_dir, seed=0, protocol="nope")


def test_standard_protocol_needs_train_file(data_dir, tmp_path):
    with pytest.raises(ConfigError) as err:
        taskkinds.make_splits(SQUAD, data_dir, seed=0, protocol="standard")
    msg = str(err.value)
    assert str(data_dir / "squad" / "train-v1.1.json") in msg and "--squad-protocol local" in msg
    # with a train file (here: 6 dev articles standing in for it) the search split is whole held-out articles
    raw = json.loads((data_dir / "squad" / "dev-v1.1.json").read_text())
    (tmp_path / "squad").mkdir()
    (tmp_path / "squad" / "train-v1.1.json").write_text(json.dumps({"data": raw["data"][:6], "version": "1.1"}))
    (tmp_path / "squad" / "dev-v1.1.json").write_text(json.dumps({"data": raw["data"][40:42], "version": "1.1"}))
    sp = taskkinds.make_splits(SQUAD, tmp_path, seed=0, protocol="standard", search_frac=0.34, search_max=None)
    assert sp.info["articles"] == {"train": 4, "search": 2, "dev": 2}
    assert set(sp.train["article"]).isdisjoint(set(sp.search["article"]))
    assert len(sp.dev) == sum(len(q["qas"]) for a in raw["data"][40:42] for q in a["paragraphs"])
    # a corrupted answer offset is refused, naming the question
    raw["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] += 1
    (tmp_path / "squad" / "dev-v1.1.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=raw["data"][0]["paragraphs"][0]["qas"][0]["id"]):
        taskkinds.load_split(SQUAD, "dev", tmp_path)


# ------------------------------------------------------------------------------------------ windows
@pytest.fixture(scope="module")
def dev_sample(data_dir):
    """Every question of 4 seeded dev articles."""
    dev = taskkinds.load_split(SQUAD, "dev", data_dir)
    arts = np.random.default_rng(0).choice(48, size=4, replace=False)
    return dev.select(np.flatnonzero(np.isin(np.asarray(dev["article"]), arts)))


def test_windows_recover_gold_answer_text(dev_sample, tokenizer):
    task = with_qa_settings(SQUAD, doc_stride=32)
    tok = taskkinds.tokenize(dev_sample, tokenizer, task, max_length=128)  # short windows: most contexts need several
    view = squad.QAView.of(tok)
    labels = np.asarray(tok["labels"])
    ctx_of = list(dev_sample["context"])
    n_windows = np.bincount(view.example_idx)
    assert n_windows.max() >= 3 and len(tok) > len(dev_sample)
    exact = 0
    for q in range(len(dev_sample)):
        gold = dev_sample[q]["answers"][0]
        s0 = dev_sample[q]["answer_starts"][0]
        e0 = s0 + len(gold)
        holding = [w for w in np.flatnonzero(view.example_idx == q) if labels[w, 0] > 0]
        assert holding, f"question {q}: no window holds its answer"
        for w in np.flatnonzero(view.example_idx == q):
            offs = view.offsets[w]
            ctx = offs[offs[:, 0] >= 0]
            inside = ctx[0, 0] <= s0 and ctx[-1, 1] >= e0
            assert (labels[w, 0] > 0) == inside  # [CLS] label exactly when the window misses the answer
            if not inside:
                continue
            a, b = labels[w]
            text = ctx_of[q][offs[a, 0]:offs[b, 1]]
            # the gold token span is the smallest one covering the answer characters
            assert offs[a, 0] <= s0 < offs[a, 1] and offs[b, 0] < e0 <= offs[b, 1] and gold in text
            exact += text == gold
    n_held = int((labels[:, 0] > 0).sum())
    # an answer that starts or ends inside a word piece ('gold' in 'golden') cannot be cut out exactly
    assert exact / n_held > 0.99
    # consecutive windows of a question share doc_stride context tokens
    for q in np.flatnonzero(n_windows >= 2)[:20]:
        w0, w1 = np.flatnonzero(view.example_idx == q)[:2]
        c0 = view.offsets[w0][view.offsets[w0][:, 0] >= 0]
        c1 = view.offsets[w1][view.offsets[w1][:, 0] >= 0]
        assert np.array_equal(c0[-32:], c1[:32])
    # post-processing: logits that peak on the gold span of the answer windows give back the gold text
    t = max(map(len, tok["input_ids"]))
    logits = np.full((len(tok), t, 2), -5.0, dtype=np.float32)
    for w in np.flatnonzero(labels[:, 0] > 0):
        logits[w, labels[w, 0], 0] = logits[w, labels[w, 1], 1] = 5.0
    answers = squad.best_answers(logits, view, n_best=20, max_answer_len=1000)
    got = metrics.squad_scores(answers, view.golds)
    assert got["exact_match"] > 0.99 and got["f1"] > 0.99


def test_question_budget_and_long_questions(tokenizer):
    with pytest.raises(ConfigError, match="doc-stride"):
        squad.question_budget(128, 120)
    task = with_qa_settings(SQUAD, doc_stride=40)
    long_q = "what " * 200 + "is it?"
    import datasets

    rows = datasets.Dataset.from_dict({"id": ["x"], "article": [0], "title": ["t"], "context": ["word " * 300 + "end."],
                                       "question": [long_q], "answers": [["end"]], "answer_starts": [[1500]]})
    tok = squad.tokenize(rows, tokenizer, task, 64)  # would abort the process without the question cut
    seq_lens = [len(x) for x in tok["input_ids"]]
    assert max(seq_lens) <= 64 and len(tok) > 1
    assert np.asarray(tok["labels"])[-1, 0] > 0  # the answer at the very end is found in the last window


def test_question_loss_reduction():
    view = squad.QAView(example_idx=np.array([0, 0, 1, 1, 2, 2, 2]), offsets=[], contexts=[],
                        questions=np.array([0, 1, 2]), golds=[], has_answer=np.array([0, 1, 0, 0, 1, 1, 0], bool))
    losses = np.array([0.1, 3.0, 5.0, 4.0, 2.0, 1.5, 0.2])
    # q0: only window 1 holds the answer -> 3.0 (not the lower 0.1 of the [CLS] window); q1: none -> min 4.0;
    # q2: both answer windows -> min 1.5
    assert squad.question_losses(losses, view).tolist() == [3.0, 4.0, 1.5]


def test_span_loss_is_start_plus_end_ce_and_padding_free():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [1.0, 3.0]]])  # (1, T=3, 2)
    labels = torch.tensor([[0, 2]])
    ce = lambda v, i: -torch.log_softmax(v, 0)[i]  # noqa: E731
    want = ce(logits[0, :, 0], 0) + ce(logits[0, :, 1], 2)
    assert losses.per_sample_loss(logits, labels, False).item() == pytest.approx(want.item())
    # a padded copy of the same window (NEG logits past its end) has the same loss
    out = type("Out", (), {"start_logits": torch.cat([logits[..., 0], torch.zeros(1, 2)], 1),
                           "end_logits": torch.cat([logits[..., 1], torch.zeros(1, 2)], 1)})()
    padded = losses.output_logits(out, {"attention_mask": torch.tensor([[1, 1, 1, 0, 0]])})
    assert padded[0, 3:].eq(losses.NEG).all()
    assert losses.per_sample_loss(padded, labels, False).item() == pytest.approx(want.item(), abs=1e-5)


# ------------------------------------------------------------------------------------------ models
@pytest.fixture(scope="module")
def tiny_qa(data_dir):
    """A tiny random QA BERT briefly trained on 64 local-protocol questions, and tokenized splits."""
    task = with_qa_settings(SQUAD, doc_stride=32)
    sp = taskkinds.make_splits(task, data_dir, 0, protocol="local", search_max=24, train_max=64, dev_max=24)
    model, tok = models.load_pretrained(models.TINY, task, seed=0)
    tk = {n: taskkinds.tokenize(getattr(sp, n), tok, task, 96) for n in ("train", "search", "dev")}
    train.train(model, tk["train"], tok, task, train_config.TrainConfig(epochs=1, batch_size=16, lr=1e-3, progress=False))
    return task, model, tok, tk


@pytest.mark.slow
def test_evaluate_per_question_and_batch_invariant(tiny_qa):
    task, model, tok, tk = tiny_qa
    a = train.evaluate(model, tk["dev"], tok, task, batch_size=64)
    b = train.evaluate(model, tk["dev"], tok, task, batch_size=3)  # other padding per batch
    assert len(a.losses) == 24 and len(a.answers) == 24 and len(tk["dev"]) > 24  # one loss per question
    np.testing.assert_allclose(a.losses, b.losses, rtol=1e-5)
    assert a.answers == b.answers and set(a.metrics) == {"f1", "exact_match"}
    assert 0.0 <= a.metrics["exact_match"] <= a.metrics["f1"] <= 1.0
    assert all(isinstance(x, str) for x in a.predictions)


def test_search_cache_matches_evaluate(tiny_qa):
    from axformer.search import prune

    task, model, tok, tk = tiny_qa
    ev = prune.CachedEvaluator(model, tk["search"], tok, task, batch_size=8)
    losses, f1 = ev.score(None)
    ref = train.evaluate(model, tk["search"], tok, task)
    assert ev.n == 24
    np.testing.assert_allclose(losses, ref.losses, rtol=1e-4)  # same questions, same order
    assert f1 == pytest.approx(ref.metrics["f1"])
    ev.prepare(1)
    np.testing.assert_allclose(ev.score(1)[0], losses, rtol=1e-4)  # from the cached hidden states of layer 1


def test_minilm_qa_head_offline_and_checkpoint_roundtrip(tmp_path):
    m1, tok = models.load_pretrained("minilm", SQUAD, seed=3)
    m2, _ = models.load_pretrained("minilm", SQUAD, seed=3)
    assert type(m1).__name__ == "BertForQuestionAnswering" and m1.base_model.pooler is None
    assert m1.qa_outputs.out_features == 2 and torch.equal(m1.qa_outputs.weight, m2.qa_outputs.weight)
    ref, _ = models.load_pretrained(models.EMBEDDED, get_task("sst2"))  # encoder weights are the pretrained ones
    emb = lambda m: m.base_model.embeddings.word_embeddings.weight  # noqa: E731
    assert torch.equal(emb(ref), emb(m1))
    small, stok = models.load_pretrained(models.TINY, SQUAD)
    models.save_checkpoint(small, stok, tmp_path / "ck")
    back, _ = models.load_checkpoint(tmp_path / "ck")
    assert type(back).__name__ == "BertForQuestionAnswering"
    assert torch.equal(back.qa_outputs.weight, small.qa_outputs.weight)


@pytest.mark.slow
def test_distill_headprune_int8_on_qa(tiny_qa):
    from axformer.compress import distill, quantize
    from axformer.compress import quantize_config
    from baselines.headprune import head_importance

    task, model, tok, tk = tiny_qa
    batch = next(iter(batches.make_loader(tk["dev"], tok, 8, shuffle=False)))
    inputs = batches.model_inputs(batch, torch.device("cpu"))
    with torch.no_grad():
        t = losses.output_logits(model(**inputs), inputs)
    # KD on start and end distributions: alpha 0 = the span loss; a student equal to its teacher has no soft loss
    hard = losses.per_sample_loss(t, batch["labels"], False).mean()
    assert distill.kd_loss(t, t, batch["labels"], False, 2.0, 0.0).item() == pytest.approx(hard.item(), rel=1e-5)
    assert distill.kd_loss(t, t, batch["labels"], False, 2.0, 1.0).item() == pytest.approx(0.0, abs=1e-5)
    student = distill.make_student(model, 1)
    log = distill.distill(model, student, tk["train"], tok, task, train_config.TrainConfig(epochs=1, batch_size=16,
                                                                                     progress=False))
    assert type(student).__name__ == "BertForQuestionAnswering" and all(map(math.isfinite, log["loss_curve"]))
    # gradient head importance through the span loss
    imp = head_importance(model, tk["search"], tok, task, batch_size=8)
    scores = [s for row in imp["raw"].values() for s in row.values()]
    assert len(scores) == 8 and all(math.isfinite(s) for s in scores) and max(scores) > 0
    # int8 dynamic: encoder Linears quantized, the QA head kept fp32, span logits close to fp32
    q, info = quantize.quantize(model, quantize_config.QuantizeConfig(backend="torch_dynamic", device="cpu"))
    assert any("qa_outputs" in m for m in info["skipped_modules"])
    assert isinstance(q.qa_outputs, torch.nn.Linear)
    with torch.no_grad():
        tq = losses.output_logits(q(**inputs), inputs)
    real = inputs["attention_mask"].bool()
    assert (tq - t).abs()[real].max().item() < 0.1


# ------------------------------------------------------------------------------------------ CLI pipeline
@pytest.mark.slow
def test_tiny_qa_finetune_axformer_measure_cli(tmp_path, data_dir):
    from axformer.reporting import report

    c, r = tmp_path / "ck", tmp_path / "results" / "squad" / "tiny-random"
    common = ["--data-dir", str(data_dir), "--threads", "1"]
    assert main(["finetune", "--task", "squad", "--model", models.TINY, "--squad-protocol", "local",
                 "--squad-fractions", "0.6,0.1,0.3", "--train-max", "48", "--search-max", "16", "--dev-max", "16",
                 "--max-length", "96", "--doc-stride", "32", "--max-answer-len", "20", "--epochs", "1",
                 "--batch-size", "16", "--lr", "1e-3", "--no-progress", "--ckpt", str(c / "ft"),
                 "--metrics", str(c / "ft.json"), *common]) == 0
    step = json.loads((c / "ft" / "axformer_step.json").read_text())["split"]
    assert step["squad_protocol"] == "local" and step["doc_stride"] == 32 and step["max_answer_len"] == 20
    assert main(["approximate", "--parent", str(c / "ft"), "--ckpt", str(c / "ax"), "--metrics", str(c / "ax.json"),
                 "--decisions", str(c / "dec.json"), "--accept-rule", "meanloss", "--groups", "4", "--topk", "8",
                 "--search-max", "12", "--no-progress", *common]) == 0
    dec = json.loads((c / "dec.json").read_text())
    assert dec["task"] == "squad" and dec["n_search"] == 12 and dec["candidates"]
    assert dec["candidates"][0]["loss"] > 0
    for variant, ckpt, q in (("finetune", "ft", []), ("finetune+axformer", "ax", []),
                             ("finetune+axformer+int8", "ax", ["--quantize", "int8"])):
        out = r / variant / "seed0" / "metrics.json"
        assert main(["measure", "--task", "squad", "--variant-name", variant, "--baseline", str(c / "ft"),
                     "--variant", str(c / ckpt), *q, "--step-json", str(c / "ft.json"),
                     *([str(c / "ax.json")] if ckpt == "ax" else []), "--metrics", str(out), "--batch-sizes", "1",
                     "--seq-len", "64", "--warmup", "1", "--min-iters", "3", "--min-seconds", "0", "--passes", "1",
                     # no repeat of a pass the host's load marks noisy: the checks below count one pass's rounds
                     "--pass-retries", "0", "--pass-process", "inline", *common]) == 0
        rec = json.loads(out.read_text())
        assert rec["metric"]["name"] == "f1" and set(rec["metric"]["secondary"]) == {"exact_match"}
        assert rec["metric"]["n_dev"] == 16 and rec["latency"][0]["seq_len"] == 64
        assert rec["data"]["protocol"] == "local" and rec["data"]["local_fractions"] == [0.6, 0.1, 0.3]
        assert rec["data"]["doc_stride"] == 32 and rec["data"]["max_answer_len"] == 20
        # predictions.npz: per-question F1 / EM under the SQuAD question ids, their means the reported metrics
        pred = stats.read_predictions(out.with_name("predictions.npz"))
        assert len(pred.ids) == 16 == len(set(pred.ids.tolist())) and pred.ids.dtype.kind == "U"
        assert pred.scores["f1"].mean() == pytest.approx(rec["metric"]["dev"])
        assert pred.scores["exact_match"].mean() == pytest.approx(rec["metric"]["secondary"]["exact_match"])
        assert len(pred.iter_ms[1][0]) == rec["latency"][0]["n_iters"]
    assert rec["quantize"]["dtype"] == "int8"
    # distillation and a peer baseline on the QA checkpoint, through the CLI as the workflow calls them
    assert main(["distill", "--parent", str(c / "ft"), "--ckpt", str(c / "di"), "--metrics", str(c / "di.json"),
                 "--layers", "1", "--epochs", "1", "--batch-size", "16", "--no-progress", *common]) == 0
    rec = json.loads((c / "di.json").read_text())
    assert rec["distill"]["n_layers"] == 1 and rec["metric"]["name"] == "f1" and rec["metric"]["n_dev"] == 16
    assert main(["baseline", "--method", "headprune", "--parent", str(c / "ft"), "--ckpt", str(c / "hp"),
                 "--metrics", str(c / "hp.json"), "--n-heads", "2", "--no-progress", *common]) == 0
    rec = json.loads((c / "hp.json").read_text())
    assert rec["baseline"]["info"]["n_removed"] == 2 and rec["baseline"]["info"]["heads_after"] == 6
    # report: squad rows with F1 and EM
    written = report.render(tmp_path / "results", tmp_path / "figures", tmp_path / "results" / "summary.csv")
    assert written
    md = (tmp_path / "figures" / "tables" / "squad.md").read_text()
    assert "Dev f1" in md and "Dev exact_match" in md and "finetune+axformer+int8" in md
    verdicts = pd.read_csv(tmp_path / "results" / "verdicts.csv", keep_default_na=False, na_values=[""])
    assert len(verdicts) == 3 and verdicts["ci_low"].notna().all() and "n/a" not in set(verdicts["verdict_accuracy"])
    # no constant-predictor row for QA, and the standard protocol offline says what to do
    assert main(["majority", "--task", "squad", "--metrics", str(tmp_path / "maj.json"), *common[:2]]) == 2
    assert main(["finetune", "--task", "squad", "--model", models.TINY, "--ckpt", str(c / "std"),
                 "--metrics", str(c / "std.json"), *common]) == 2
    assert not (c / "std").exists()
