"""The search journal: a killed AxFormer search resumes where it stopped, with the same decisions.

A 12-layer search on 2 CPU cores runs for hours (MPNet-base on RTE, one thread: ~3 h), longer than a batch job's
time limit or a lent machine's session. The search is deterministic given its model, split and config: every
candidate's verdict depends only on the model as the verdicts before it left it. So the search appends each judged
candidate to a JSON-lines file beside its decisions (``decisions.partial.jsonl``) as soon as it is judged; a new
run of the same search replays the journaled verdicts (the same edits, no evaluation) and goes on live from the
first candidate the journal lacks. The finished decisions are the same as an uninterrupted run's, except the
wall time, the pass count and the ``replayed`` count that says how many candidates were replayed.

The first line is a header: the search config, the search split's size, a digest of the fine-tuned model's
per-sample search losses (the model and split, as the search sees them) and a digest of the search's own code.
A journal whose header differs is not replayed: it is set aside as ``*.stale`` and the search starts afresh (one
line says so). A truncated last line (the process killed mid-write) is dropped. The CLI deletes the journal once
decisions.json is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from axformer.utils import ConfigError, json_default

VERSION = 1
# the code whose behaviour decides a candidate's verdict: a change here makes an older journal stale
_CODE_DIRS = ("search", "surgery")


def code_digest() -> str:
    """sha256 over the search and surgery packages' sources (sorted by name)."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    for d in _CODE_DIRS:
        for f in sorted((root / d).glob("*.py")):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def losses_digest(losses: np.ndarray) -> str:
    """sha256 of the per-sample losses as float64 bytes: the same model on the same split gives the same bits."""
    return hashlib.sha256(np.ascontiguousarray(losses, dtype=np.float64).tobytes()).hexdigest()


def header_for(cfg, n: int, base_losses: np.ndarray) -> dict[str, Any]:
    """The header a journal must carry to be replayed into this search."""
    config = asdict(cfg)
    config.pop("progress", None)  # display only
    return {"journal": "axformer search", "version": VERSION, "config": config, "n_search": int(n),
            "base_losses": losses_digest(base_losses), "code": code_digest()}


def _dumps(obj: Any) -> str:
    # key order kept: a replayed candidate must write into decisions.json exactly as a live one
    return json.dumps(obj, default=json_default)


class SearchJournal:
    """Replays the journaled candidates of ``path`` in order, then appends each new one (flushed and synced)."""

    def __init__(self, path: str | os.PathLike, header: dict[str, Any]):
        self.path = Path(path)
        self.header = json.loads(_dumps(header))  # as it reads back from the file
        self.entries: list[dict[str, Any]] = []
        self.pos = 0
        self._open()

    def _open(self) -> None:
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        entries: list[dict[str, Any]] = []
        head = None
        for i, line in enumerate(lines):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                if i == len(lines) - 1:
                    break  # killed mid-write: the last candidate is judged again
                raise ConfigError(f"{self.path}: line {i + 1} is not JSON (not a truncated last line); delete the "
                                  "file to run the search from the start.") from None
            if i == 0:
                head = obj
            else:
                entries.append(obj)
        if lines and head != self.header:
            stale = self.path.with_name(self.path.name + ".stale")
            os.replace(self.path, stale)
            print(f"search journal {self.path} is from another search (config, model, split or code differ): "
                  f"moved to {stale.name}; starting afresh", file=sys.stderr)
            entries = []
        self.entries = entries
        # rewrite the valid prefix (drops a truncated line), atomically, so appends follow whole lines
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text("".join(_dumps(x) + "\n" for x in [self.header, *entries]))
        os.replace(tmp, self.path)
        if entries:
            print(f"search journal {self.path}: replaying {len(entries)} judged candidates", file=sys.stderr)

    @property
    def replayed(self) -> int:
        return min(self.pos, len(self.entries))

    def peek(self) -> dict[str, Any] | None:
        """The next journaled entry, not consumed (None once the journal is spent)."""
        return self.entries[self.pos] if self.pos < len(self.entries) else None

    def take(self, element: str, phase: str) -> dict[str, Any] | None:
        """The next journaled entry if any; it must be for ``element`` in ``phase`` (the search is deterministic,
        so anything else means the journal is not this search's)."""
        e = self.peek()
        if e is None:
            return None
        got = (e["cand"].get("element"), e["cand"].get("phase"))
        if got != (element, phase):
            raise ConfigError(f"{self.path}: entry {self.pos + 1} is {got}, the search is at {(element, phase)}; "
                              "the journal is not this search's: delete it to run the search from the start.")
        self.pos += 1
        return e

    def append(self, cand: dict[str, Any], losses: np.ndarray | None) -> None:
        """Journal a judged candidate; ``losses`` (per sample) for an accepted one: it becomes the best model."""
        entry = {"cand": cand, "losses": None if losses is None else np.asarray(losses, np.float64).tolist()}
        with open(self.path, "a") as f:
            f.write(_dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.entries.append(entry)
        self.pos = len(self.entries)
