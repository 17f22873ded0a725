"""Peer compression methods ("baselines"), one module each, one common signature, registered by name.

Every method is a function

    fn(model, tokenizer, task, splits_tokenized, cfg) -> (model, info)

* ``model``: the parent checkpoint (usually the fine-tuned baseline), loaded with ``models.load_checkpoint``;
  the method may edit it in place or return a new model.
* ``splits_tokenized``: ``{"train": ..., "search": ..., "dev": ...}`` tokenized ``datasets.Dataset``s — the
  parent's own splits (train' for any re-training, search for any data-driven choice; never dev).
* ``cfg``: plain dict of method arguments (from the CLI flags and ``--arg key=value``). Keys every method may
  see: ``seed``, ``progress``; the matching keys ``match`` / ``match_by`` / ``target_params`` (baselines.matching).
* ``info``: JSON-serialisable dict; ``axformer baseline`` writes it into the step record under
  ``baseline.info`` (and ``axformer measure --step-json`` copies it into metrics.json).

Register with ``@register("name")``. A module ``baselines/<name>.py`` that registers ``<name>`` is found by
:func:`get` without editing this file (it is imported on first use). See baselines/README.md.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from typing import Any, Callable

from axformer.utils import ConfigError

BaselineFn = Callable[..., tuple[Any, dict[str, Any]]]

_REGISTRY: dict[str, BaselineFn] = {}
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
BUILTIN = ("headprune", "layerdrop", "fisher", "kprune")

__all__ = ["register", "unregister", "get", "available", "BUILTIN"]


def register(name: str, replace: bool = False) -> Callable[[BaselineFn], BaselineFn]:
    """Decorator: make ``fn`` available as baseline ``name`` (``axformer baseline --method name``)."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"baseline name must match {_NAME_RE.pattern} (got {name!r}); it becomes a variant step name.")

    def deco(fn: BaselineFn) -> BaselineFn:
        if not callable(fn):
            raise TypeError(f"baseline {name!r}: expected a function, got {type(fn).__name__}.")
        old = _REGISTRY.get(name)
        if old is not None and old is not fn and not replace:
            raise ValueError(f"baseline {name!r} is already registered (by {old.__module__}.{old.__qualname__}); "
                             "pick another name or pass replace=True.")
        _REGISTRY[name] = fn
        return fn

    return deco


def unregister(name: str) -> None:
    """Remove ``name`` from the registry (tests, plugins); unknown names are ignored."""
    _REGISTRY.pop(name, None)


def _try_import(name: str) -> None:
    """Import ``baselines.<name>`` if such a module exists (it registers itself)."""
    if not _NAME_RE.match(name):
        return
    modname = f"{__name__}.{name}"
    if importlib.util.find_spec(modname) is not None:
        importlib.import_module(modname)


def available() -> list[str]:
    """Sorted names of the registered baselines (built-ins always included)."""
    for n in BUILTIN:
        _try_import(n)
    return sorted(_REGISTRY)


def get(name: str) -> BaselineFn:
    """The function registered as ``name``; :class:`ConfigError` listing the available names otherwise."""
    if isinstance(name, str) and name not in _REGISTRY:
        _try_import(name)
    fn = _REGISTRY.get(name) if isinstance(name, str) else None
    if fn is None:
        raise ConfigError(f"unknown baseline method {name!r}; available: {', '.join(available())}. "
                          "Add one with @baselines.register (see baselines/README.md).")
    return fn
