"""The typed run record (DESIGN §4): one metrics.json per run, read and written through :class:`Run`.

A run is one (task, model, variant, seed). Its record holds the measured blocks (:class:`Metric`,
:class:`Size`, one :class:`Latency` per batch size, :class:`Memory`, :class:`Env`, :class:`Data`), the lineage
of step records it was built from (:class:`Step`), and the blocks each step command wrote (``train``,
``search``, ``distill``, ``baseline``, ``quantize``: :data:`STEP_BLOCKS`). The on-disk shape is the one
metrics.json has always had: ``Run.from_json(d).to_json() == d`` for every record written so far (keys a
block does not type are kept as they are, in their order), and every write is checked against the one
schema in :mod:`axformer.records.record_schema`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from axformer.records import record_schema

# The block each step command adds to the record, and so the command a block says ran. This is the record's
# contract (cli.py writes these blocks); readers ask a run which commands made it instead of parsing names.
STEP_BLOCKS: dict[str, str] = {
    "train": "finetune",
    "distill": "distill",
    "search": "approximate",
    "baseline": "baseline",
    "quantize": "quantize",
}

# Kinds of variant, one visual family each in the figures (axformer.reporting.figures).
FAMILIES: tuple[str, ...] = ("reference", "axformer", "peer", "compression")


class _Block:
    """A record block: typed fields plus ``extra`` (keys the dataclass does not name), with the source key
    order kept in ``keys`` so that writing a read record gives back the same JSON object."""

    _nested: ClassVar[dict[str, type]] = {}

    def _typed(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if f.name not in ("extra", "keys")]

    @classmethod
    def from_json(cls, d: dict[str, Any]):
        names = [f.name for f in dataclasses.fields(cls) if f.name not in ("extra", "keys")]
        kw = {k: d[k] for k in names if k in d}
        for k, sub in cls._nested.items():
            if isinstance(kw.get(k), dict):
                kw[k] = sub.from_json(kw[k])
        return cls(**kw, extra={k: v for k, v in d.items() if k not in names}, keys=list(d))

    def to_json(self) -> dict[str, Any]:
        typed = {k: getattr(self, k) for k in self._typed()}
        typed = {k: (v.to_json() if isinstance(v, _Block) else v) for k, v in typed.items()}
        if not self.keys:  # built in code: the typed values that are set, then the extra keys
            return {**{k: v for k, v in typed.items() if v is not None}, **self.extra}
        return {k: typed[k] if k in typed else self.extra[k] for k in self.keys if k in typed or k in self.extra}


@dataclass
class Metric(_Block):
    """The task's headline metric on dev (reported) and on the search split (used by the search)."""

    name: str = ""
    dev: float = float("nan")
    n_dev: int = 0
    search: float | None = None
    n_search: int | None = None
    secondary: dict[str, float | None] = field(default_factory=dict)
    dev_loss: float | None = None
    search_loss: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)


@dataclass
class Size(_Block):
    params_total: int | None = None
    params_encoder: int | None = None
    bytes_on_disk: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)


@dataclass
class Latency(_Block):
    """One batch size's timing of the variant, interleaved with the finetune reference (``finetune_*``
    are its ``baseline_*`` keys on disk: the reference the speedup divides by, not a peer method)."""

    batch_size: int = 1
    device: str | None = None
    seq_len: int | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    n_iters: int | None = None
    threads: int | None = None
    baseline_p50_ms: float | None = None
    baseline_p90_ms: float | None = None
    speedup: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)


@dataclass
class Memory(_Block):
    peak_bytes: int | None = None
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)


@dataclass
class Env(_Block):
    torch: str | None = None
    transformers: str | None = None
    cuda: str | None = None
    gpu_name: str | None = None
    cpu: str | None = None
    threads: int | None = None
    device: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)


@dataclass
class Data(_Block):
    """The split the run was evaluated on (rows per split, the split seed)."""

    n_train: int | None = None
    n_search: int | None = None
    n_dev: int | None = None
    split_seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)


@dataclass
class Step:
    """One step of the lineage: the step record a measured run merged (``record``: its step.json path), and,
    where the record says so, the step's name and the CLI command that ran it. Records written so far list
    the step.json paths only (``<variant>/seed<k>/step.json``): the name is the last step of that folder's
    variant, and the command is known where one block could only come from it."""

    record: str | None = None
    name: str | None = None
    command: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    as_path: bool = False  # read as a bare path: written back as one

    @classmethod
    def from_json(cls, d: Any) -> "Step":
        if isinstance(d, str):
            p = Path(d)
            laid_out = p.name == "step.json" and re.fullmatch(r"seed\d+", p.parent.name) is not None
            return cls(record=d, name=p.parent.parent.name.rsplit("+", 1)[-1] if laid_out else None, as_path=True)
        known = ("record", "name", "command")
        return cls(**{k: d.get(k) for k in known}, extra={k: v for k, v in d.items() if k not in known})

    def to_json(self) -> Any:
        if self.as_path:
            return self.record
        out = {k: getattr(self, k) for k in ("name", "command", "record") if getattr(self, k) is not None}
        return {**out, **self.extra}


_ID = ("task", "model", "variant", "seed", "profile", "git_commit", "created")


@dataclass
class Run:
    """One metrics.json. Blocks other than the typed ones (train, search, distill, baseline, quantize, flops,
    measure, checkpoints, note, predictor, ...) are kept in ``blocks`` as written."""

    task: str
    model: str
    variant: str
    seed: int
    profile: str = ""
    git_commit: str | None = None
    created: str = ""
    metric: Metric = field(default_factory=Metric)
    size: Size | None = None
    latency: list[Latency] | None = None
    memory: Memory | None = None
    env: Env = field(default_factory=Env)
    data: Data | None = None
    steps: list[Step] | None = None
    blocks: dict[str, Any] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)

    _TYPED: ClassVar[dict[str, type]] = {"metric": Metric, "size": Size, "memory": Memory, "env": Env, "data": Data}

    # ------------------------------------------------------------------ (de)serialising
    @classmethod
    def from_json(cls, d: dict[str, Any], source: str | Path = "metrics.json") -> "Run":
        """Check ``d`` against the metrics schema (ConfigError naming ``source`` and the key) and type it."""
        record_schema.check(d, "metrics", source)
        kw: dict[str, Any] = {k: d[k] for k in _ID if k in d}
        for k, typ in cls._TYPED.items():
            if isinstance(d.get(k), dict):
                kw[k] = typ.from_json(d[k])
        if isinstance(d.get("latency"), list):
            kw["latency"] = [Latency.from_json(e) for e in d["latency"]]
        if isinstance(d.get("steps"), list):
            kw["steps"] = [Step.from_json(s) for s in d["steps"]]
        typed = {*_ID, *cls._TYPED, "latency", "steps"}
        run = cls(**kw, blocks={k: v for k, v in d.items() if k not in typed}, keys=list(d))
        run._fill_commands()
        return run

    def to_json(self) -> dict[str, Any]:
        """The metrics.json object (same keys, order and values as the record read)."""
        typed: dict[str, Any] = {k: getattr(self, k) for k in _ID}
        for k in self._TYPED:
            v = getattr(self, k)
            typed[k] = v.to_json() if v is not None else None
        typed["latency"] = None if self.latency is None else [e.to_json() for e in self.latency]
        typed["steps"] = None if self.steps is None else [s.to_json() for s in self.steps]
        required = record_schema.METRICS_SCHEMA["required"]
        out = {k: typed[k] if k in typed else self.blocks[k] for k in self.keys if k in typed or k in self.blocks}
        # built or extended in code: every required key (null when unmeasured), then the set ones
        out.update({k: v for k, v in typed.items() if k not in out and (v is not None or k in required)})
        out.update({k: v for k, v in self.blocks.items() if k not in out})
        return out

    # ------------------------------------------------------------------ what made it
    def block(self, name: str) -> dict[str, Any] | None:
        """A step block (``train``, ``search``, ``distill``, ``baseline``, ``quantize``, ...) or None."""
        v = self.blocks.get(name)
        return v if isinstance(v, dict) else None

    def commands(self) -> list[str]:
        """The step commands that made this run, from the blocks they wrote (finetune first, quantize last)."""
        return [cmd for blk, cmd in STEP_BLOCKS.items() if self.block(blk) is not None]

    def family(self) -> str:
        """The kind of variant (:data:`FAMILIES`): ``axformer`` (an AxFormer-like search is in the chain),
        ``peer`` (a peer compression method, baselines/), ``compression`` (distillation and / or int8 only),
        else ``reference`` (finetune itself, the constant predictor)."""
        cmds = set(self.commands())
        if "approximate" in cmds:
            return "axformer"
        if "baseline" in cmds:
            return "peer"
        if cmds & {"distill", "quantize"}:
            return "compression"
        return "reference"

    def peer_method(self) -> str | None:
        """The peer method's name (``baseline.method``), or None."""
        b = self.block("baseline")
        return None if b is None else b.get("method")

    def latency_at(self, batch_size: int) -> Latency | None:
        """The first latency entry (the primary device's) at ``batch_size``."""
        for e in self.latency or []:
            if e.batch_size == batch_size:
                return e
        return None

    def _fill_commands(self) -> None:
        """Name the command of legacy path-only steps where the record leaves one choice: the root is the
        finetune step (it wrote ``train``); a single later step wrote the one other step block present."""
        if not self.steps or any(s.command for s in self.steps):
            return
        cmds = [c for c in self.commands() if c != "quantize"]  # quantize runs at measure, not a step record
        if cmds and cmds[0] == "finetune":
            self.steps[0].command = "finetune"
            if len(self.steps) == 2 and len(cmds) == 2:
                self.steps[1].command = cmds[1]


def step_entry(path: str | Path, step_record: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """A lineage entry ``{name, command, record}`` for metrics.json ``steps``: the command is the one whose
    block the step record holds (a later step's own block wins over the ``train`` block a finetune record
    carries; a finetune record holds no other step block)."""
    own = [cmd for blk, cmd in STEP_BLOCKS.items() if blk not in ("train", "quantize") and blk in step_record]
    command = own[0] if len(own) == 1 else ("finetune" if not own and "train" in step_record else None)
    return {k: v for k, v in (("name", name), ("command", command), ("record", str(path))) if v is not None}


def load(path: str | Path) -> Run:
    """Read and check one metrics.json (ConfigError naming the file on any problem)."""
    return Run.from_json(record_schema.load(path, "metrics"), path)
