"""Tampered checkpoints and model folders (issue 32 item 4): each is refused in one line naming the folder and
the fix, never a traceback, never a silent random init, never a hint to run a folder's own code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from axformer.encoders import models
from axformer.cli import main
from axformer.taskdata.tasks import get_task
from axformer.utils import ConfigError

SST2 = get_task("sst2")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    model, tok = models.load_pretrained(models.TINY, SST2)
    return models.save_checkpoint(model, tok, tmp_path_factory.mktemp("tiny") / "ck")


@pytest.fixture
def ckpt(tmp_path, tiny_ckpt) -> Path:
    return Path(shutil.copytree(tiny_ckpt, tmp_path / "ck"))


@pytest.fixture
def pretrained(tmp_path, tiny_ckpt) -> Path:
    """A local pretrained folder (a tiny BERT with an encoder, saved as save_pretrained writes it)."""
    return Path(shutil.copytree(tiny_ckpt, tmp_path / "pre"))


def _refused(fn, folder: Path, *words: str) -> str:
    with pytest.raises(ConfigError) as exc:
        fn()
    msg = str(exc.value)
    assert "\n" not in msg and str(folder) in msg, msg
    assert "trust_remote_code" not in msg
    for w in words:
        assert w in msg, msg
    return msg


def _edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


# ------------------------------------------------------------------------------------------ load_checkpoint
def test_shape_mismatch_between_config_and_weights(ckpt):
    _edit_config(ckpt, intermediate_size=96)
    _refused(lambda: models.load_checkpoint(ckpt), ckpt, "do not fit", "re-run")


def test_garbage_tokenizer_json(ckpt):
    (ckpt / "tokenizer.json").write_text("{not json")
    _refused(lambda: models.load_checkpoint(ckpt), ckpt, "tokenizer.json", "not readable JSON")


def test_garbage_config_json(ckpt):
    (ckpt / "config.json").write_bytes(b"\xff\xfe garbage")
    _refused(lambda: models.load_checkpoint(ckpt), ckpt, "config.json")


def test_tokenizer_json_symlinked_outside(ckpt, tmp_path):
    outside = tmp_path / "elsewhere.json"
    outside.write_text((ckpt / "tokenizer.json").read_text())
    (ckpt / "tokenizer.json").unlink()
    (ckpt / "tokenizer.json").symlink_to(outside)
    _refused(lambda: models.load_checkpoint(ckpt), ckpt, "resolves outside")


def test_weights_symlinked_outside(ckpt, tmp_path):
    outside = tmp_path / "other.safetensors"
    shutil.move(ckpt / "model.safetensors", outside)
    (ckpt / "model.safetensors").symlink_to(outside)
    _refused(lambda: models.load_checkpoint(ckpt), ckpt, "model.safetensors", "resolves outside")


@pytest.mark.parametrize("field, value", [("hidden_size", "64"), ("num_hidden_layers", -1),
                                          ("num_attention_heads", 2.5)])
def test_wrong_typed_config_field(ckpt, field, value):
    _edit_config(ckpt, **{field: value})
    _refused(lambda: models.load_checkpoint(ckpt), ckpt, field)


@pytest.mark.parametrize("record", [{"arch": "all"}, {"arch": {"layers": [{"heads": "x"}]}}, "pruned",
                                    {"arch": {"layers": [1, 2]}}])
def test_wrong_typed_axformer_record(ckpt, record):
    _edit_config(ckpt, axformer=record)
    _refused(lambda: models.load_checkpoint(ckpt), ckpt, "axformer")


def test_unknown_model_type_with_auto_map_gets_no_remote_code_hint(ckpt):
    _edit_config(ckpt, model_type="evilbert", auto_map={"AutoConfig": "evil.EvilConfig"})
    (ckpt / "evil.py").write_text("open('PWNED', 'w')\n")
    msg = _refused(lambda: models.load_checkpoint(ckpt), ckpt)
    assert "remote" not in msg.lower() or "never" in msg.lower()
    assert not Path("PWNED").exists()


def test_cli_tampered_parent_one_line(ckpt, tmp_path, capsys):
    _edit_config(ckpt, intermediate_size=96)
    rc = main(["approximate", "--parent", str(ckpt), "--ckpt", str(tmp_path / "o"), "--metrics",
               str(tmp_path / "m.json"), "--decisions", str(tmp_path / "d.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "Traceback" not in err[0], err
    assert not (tmp_path / "o").exists() and not (tmp_path / "m.json").exists()


# ------------------------------------------------------------------------------------------ load_pretrained
def test_pretrained_folder_with_encoder_tensor_deleted_is_refused(pretrained):
    state = load_file(str(pretrained / "model.safetensors"))
    victim = next(k for k in state if ".encoder.layer.0.attention.self.query.weight" in k)
    del state[victim]
    save_file(state, str(pretrained / "model.safetensors"), metadata={"format": "pt"})
    msg = _refused(lambda: models.load_pretrained(str(pretrained), SST2), pretrained, "random values")
    assert "query.weight" in msg


def test_pretrained_folder_intact_loads(pretrained):
    model, _tok = models.load_pretrained(str(pretrained), SST2)  # the classifier is new, nothing else missing
    assert model.config.hidden_size == models.TINY_CONFIG["hidden_size"]


def test_pretrained_folder_shape_mismatch(pretrained):
    _edit_config(pretrained, intermediate_size=96)
    _refused(lambda: models.load_pretrained(str(pretrained), SST2), pretrained)


def test_pretrained_folder_symlink_outside(pretrained, tmp_path):
    outside = tmp_path / "cfg.json"
    shutil.move(pretrained / "config.json", outside)
    (pretrained / "config.json").symlink_to(outside)
    _refused(lambda: models.load_pretrained(str(pretrained), SST2), pretrained, "resolves outside")


def test_pretrained_unknown_model_type_auto_map(pretrained):
    _edit_config(pretrained, model_type="evilbert", auto_map={"AutoConfig": "evil.EvilConfig"})
    _refused(lambda: models.load_pretrained(str(pretrained), SST2), pretrained)


def test_cli_finetune_tampered_model_one_line(pretrained, tmp_path, capsys):
    (pretrained / "tokenizer.json").write_text("[1, 2")
    rc = main(["finetune", "--task", "sst2", "--model", str(pretrained), "--ckpt", str(tmp_path / "o"),
               "--metrics", str(tmp_path / "m.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "tokenizer.json" in err[0], err
