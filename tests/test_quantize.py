"""Tests for axformer.compress.quantize on CPU with a tiny random BERT (no hub access)."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch
from torch import nn
from transformers import BertForSequenceClassification

from axformer.compress.quantize import bitsandbytes_unavailable_reason, bnb_config, count_int8_linears, int8_weight, is_quantized_linear, quantize
from axformer.compress.quantize_config import DEFAULT_SKIP, QuantizeConfig
from axformer.utils import ConfigError
from tiny_models import tiny_bert

VOCAB = 100
N_INPUTS = 200
SEQ = 16


def tiny_model(seed: int = 0) -> BertForSequenceClassification:
    return tiny_bert(seed, vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                     max_position_embeddings=64, num_labels=2)


@pytest.fixture(scope="module")
def inputs() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(1, VOCAB, (N_INPUTS, SEQ), generator=g)


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=x, attention_mask=torch.ones_like(x)).logits.float()


def balanced_model(x: torch.Tensor) -> BertForSequenceClassification:
    """Random-weight model whose classifier bias is shifted so the fp32 argmax splits the inputs ~50/50.

    Without the shift a random head can put every input in one class, and "agreement" would be trivial.
    """
    model = tiny_model()
    margin = logits(model, x)
    model.classifier.bias.data[0] -= (margin[:, 0] - margin[:, 1]).median()
    return model


def _bnb_reason() -> str | None:
    return bitsandbytes_unavailable_reason("cpu")


BACKENDS = [
    "torch_dynamic",
    pytest.param(
        "bitsandbytes",
        marks=pytest.mark.skipif(_bnb_reason() is not None, reason=f"bitsandbytes on CPU: {_bnb_reason()}"),
    ),
    pytest.param(
        "torchao",
        marks=pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao is not installed"),
    ),
]


def assert_int8(module: nn.Module, backend: str) -> None:
    assert is_quantized_linear(module)
    if backend == "torch_dynamic":
        assert module.weight().dtype == torch.qint8  # packed quantized weight
    elif backend == "bitsandbytes":
        assert module.weight.dtype == torch.int8
    else:
        assert module.weight.qdata.dtype == torch.int8  # torchao Int8Tensor's integer data
    assert int8_weight(module).dtype == torch.int8


@pytest.mark.parametrize("backend", BACKENDS)
def test_agreement_and_int8_weights(backend, inputs):
    model = balanced_model(inputs)
    ref = logits(model, inputs).argmax(-1)
    assert 0.3 < ref.float().mean() < 0.7  # both classes present

    qmodel, info = quantize(model, QuantizeConfig(backend=backend, device="cpu"))

    agree = (logits(qmodel, inputs).argmax(-1) == ref).float().mean().item()
    assert agree >= 0.95, f"{backend}: only {agree:.1%} of argmax predictions agree with fp32"

    assert info["backend"] == backend and info["requested_backend"] == backend
    assert info["device"] == "cpu" and info["dtype"] == "int8"
    # 2 layers x (Q, K, V, attn out, intermediate, output) = 12; pooler.dense and classifier stay fp32.
    assert info["n_linear_quantized"] == count_int8_linears(qmodel) == 12
    assert info["n_linear_total"] == 14
    assert sorted(info["skipped_modules"]) == ["bert.pooler.dense", "classifier"]
    for name in info["skipped_modules"]:
        kept = qmodel.get_submodule(name)
        assert type(kept) is nn.Linear and kept.weight.dtype == torch.float32
    for layer in qmodel.bert.encoder.layer:
        for mod in (layer.attention.self.query, layer.attention.output.dense, layer.intermediate.dense):
            assert_int8(mod, backend)
    # the fp32 model is untouched (a deep copy was quantized)
    assert count_int8_linears(model) == 0
    assert not qmodel.training


def test_auto_on_cpu_records_backend_and_deprecation_warnings():
    model = tiny_model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qmodel, info = quantize(model, QuantizeConfig(device="cpu"))
    assert info["requested_backend"] == "auto"
    assert info["backend"] == "torch_dynamic"
    assert info["engine"] == torch.backends.quantized.engine
    # whatever torch warned while quantizing is listed in info and still reaches the caller
    seen = {f"{w.category.__name__}: {str(w.message).strip().splitlines()[0]}" for w in caught}
    assert set(info["warnings"]) == seen
    assert count_int8_linears(qmodel) == 12
    w = qmodel.bert.encoder.layer[0].attention.self.query.weight()
    assert w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
    assert w.q_per_channel_scales().numel() == 64 and not w.q_per_channel_zero_points().any()  # symmetric


def test_torch_dynamic_per_tensor_option():
    qmodel, info = quantize(tiny_model(), QuantizeConfig(backend="torch_dynamic", device="cpu", per_channel=False))
    assert "per tensor" in info["scheme"]
    assert qmodel.bert.encoder.layer[0].output.dense.weight().qscheme() == torch.per_tensor_affine


def shrink(model: BertForSequenceClassification) -> BertForSequenceClassification:
    """Hand-made structural pruning: 2 of 4 heads kept (Q/K/V 64->32), FFN 128->40 in every layer."""
    for layer in model.bert.encoder.layer:
        attn = layer.attention
        attn.self.query, attn.self.key, attn.self.value = (nn.Linear(64, 32) for _ in range(3))
        attn.self.num_attention_heads = 2
        attn.self.all_head_size = 32
        attn.output.dense = nn.Linear(32, 64)
        layer.intermediate.dense = nn.Linear(64, 40)
        layer.output.dense = nn.Linear(40, 64)
    return model.eval()


class LayerNormOnly(nn.Module):
    """Stands in for a skipped FFN: BertOutput(hidden, residual) -> LayerNorm(residual)."""

    def __init__(self, ln: nn.LayerNorm):
        super().__init__()
        self.LayerNorm = ln

    def forward(self, hidden_states, input_tensor):
        return self.LayerNorm(input_tensor)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pruned_shapes_and_replaced_block(backend, inputs):
    model = shrink(tiny_model())
    layer1 = model.bert.encoder.layer[1]
    layer1.intermediate = nn.Identity()
    layer1.output = LayerNormOnly(layer1.output.LayerNorm)
    x = inputs[:8]
    ref = logits(model, x)

    qmodel, info = quantize(model, QuantizeConfig(backend=backend, device="cpu"))
    out = logits(qmodel, x)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert info["n_linear_quantized"] == 6 + 4  # layer 0: 6 Linears, layer 1: FFN skipped

    l0, l1 = qmodel.bert.encoder.layer
    shapes = {
        l0.attention.self.query: (32, 64),
        l0.attention.self.value: (32, 64),
        l0.attention.output.dense: (64, 32),
        l0.intermediate.dense: (40, 64),
        l0.output.dense: (64, 40),
        l1.attention.self.key: (32, 64),
    }
    for mod, shape in shapes.items():
        assert_int8(mod, backend)
        assert tuple(int8_weight(mod).shape) == shape
    assert isinstance(l1.output, LayerNormOnly) and isinstance(l1.intermediate, nn.Identity)


def test_custom_attention_function_is_kept(inputs):
    from transformers import AttentionInterface
    from transformers.models.bert.modeling_bert import eager_attention_forward

    calls = []

    def counting_attention(module, query, key, value, attention_mask, **kwargs):
        calls.append(query.shape)
        return eager_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("axformer_test_counting", counting_attention)
    model = tiny_model()
    model.set_attn_implementation("axformer_test_counting")
    qmodel, _ = quantize(model, QuantizeConfig(backend="torch_dynamic", device="cpu"))
    assert qmodel.config._attn_implementation == "axformer_test_counting"
    logits(qmodel, inputs[:4])
    assert len(calls) == 2  # one per layer


def test_skip_modules_empty_quantizes_head_too():
    qmodel, info = quantize(tiny_model(), QuantizeConfig(device="cpu", skip_modules=()))
    assert info["skipped_modules"] == [] and info["n_linear_quantized"] == 14
    assert is_quantized_linear(qmodel.classifier)


def test_bad_configs_raise_config_error():
    with pytest.raises(ConfigError, match="backend"):
        QuantizeConfig(backend="int4")
    with pytest.raises(ConfigError):
        quantize(tiny_model(), QuantizeConfig(backend="torch_dynamic", device="cuda"))
    with pytest.raises(ConfigError, match="compute_dtype"):
        quantize(tiny_model(), QuantizeConfig(backend="torch_dynamic", device="cpu", compute_dtype="float16"))
    qmodel, _ = quantize(tiny_model(), QuantizeConfig(device="cpu"))
    with pytest.raises(ConfigError, match="already int8"):
        quantize(qmodel, QuantizeConfig(device="cpu"))


@pytest.mark.skipif(importlib.util.find_spec("torchao") is not None, reason="torchao is installed")
def test_torchao_missing_says_how_to_fix():
    with pytest.raises(ConfigError, match="pip install torchao"):
        quantize(tiny_model(), QuantizeConfig(backend="torchao", device="cpu"))


@pytest.mark.skipif(_bnb_reason() is not None, reason=f"bitsandbytes on CPU: {_bnb_reason()}")
def test_bitsandbytes_fp16_compute(inputs):
    model = balanced_model(inputs)
    x = inputs[:64]
    ref = logits(model, x).argmax(-1)
    qmodel, info = quantize(model, QuantizeConfig(backend="bitsandbytes", device="cpu", compute_dtype="float16"))
    assert info["compute_dtype"] == "float16"
    assert qmodel.bert.embeddings.word_embeddings.weight.dtype == torch.float16
    assert qmodel.bert.encoder.layer[0].intermediate.dense.weight.dtype == torch.int8
    # issue 35 E: the head that skipped_modules lists stays fp32, and the logits with it
    assert info["skipped_modules"] and all(qmodel.get_submodule(n).weight.dtype == torch.float32
                                           for n in info["skipped_modules"])
    with torch.inference_mode():
        assert qmodel(input_ids=x).logits.dtype == torch.float32
    agree = (logits(qmodel, x).argmax(-1) == ref).float().mean().item()
    assert agree >= 0.95


def test_bnb_config_always_skips_the_head():
    cfg = bnb_config()
    assert cfg.load_in_8bit
    assert set(DEFAULT_SKIP) <= set(cfg.llm_int8_skip_modules)
    cfg = bnb_config(skip_modules=["bert.pooler"])  # a custom list still keeps the new head fp32
    assert {"bert.pooler", "classifier", "qa_outputs"} <= set(cfg.llm_int8_skip_modules)


def test_bnb_config_loads_unedited_checkpoint(tmp_path):
    # An encoder-only checkpoint loaded into ...ForSequenceClassification: the head is newly initialised.
    tiny_model().bert.save_pretrained(tmp_path)
    try:
        model = BertForSequenceClassification.from_pretrained(tmp_path, quantization_config=bnb_config())
    except ImportError as exc:  # e.g. accelerate not installed
        pytest.skip(f"from_pretrained with bitsandbytes: {type(exc).__name__}: {exc}")
    except Exception as exc:  # noqa: BLE001
        if torch.cuda.is_available():
            raise
        pytest.skip(f"from_pretrained with bitsandbytes on CPU: {type(exc).__name__}: {exc}")
    assert type(model.classifier) is nn.Linear  # head kept fp32
    assert count_int8_linears(model) == 12
    x = torch.randint(1, VOCAB, (2, SEQ)).to(model.device)  # from_pretrained put the int8 model on the GPU
    with torch.inference_mode():
        out = model(input_ids=x).logits
    assert out.shape == (2, 2) and torch.isfinite(out).all()
