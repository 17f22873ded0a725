#!/usr/bin/env python
"""Derive, once, the authors' released AxFormer train / search split as GLUE train row indices.

The authors (amrnag/Specialized-Transformers, arXiv 2010.03688) released their split for CoLA and RTE as two
files per task: data/<TASK>/train.tsv (the ~85 % they fine-tune on) and data/<TASK>/val.tsv (the ~15 % their
search decides on). This script matches every line of those files to a line of our GLUE train file by content
(the whole TSV line, exactly) and writes a small index file per task, workflow/splits/official_<task>.json:

* ``search_rows``: the 0-based data rows of our GLUE train file that the released code searches on, in the
  order of their val.tsv (the released loss is a mean of per-batch means in that order);
* ``excluded_rows``: rows the released code uses in neither part. Their RTE val.tsv has no header line, but
  the RTE reader skips the first line of every file as a header, so its first row (GLUE RTE index 2) is never
  read: the released RTE search runs on 362 rows and fine-tunes on 2,127;
* sha256 of both source files and of our train file (the loader refuses any other train file).

No data is copied: the index file holds row numbers and hashes only. Run it from the repository root with a
clone of the authors' repository (or a bare git directory of it)::

    git clone https://github.com/amrnag/Specialized-Transformers /tmp/st
    python scripts/derive_official_split.py --released /tmp/st --data-dir "$AXFORMER_DATA"

Every released line must match exactly one unused line of our train file and the two released parts must
cover it, else the script stops with the first line that does not.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

REPOSITORY = "https://github.com/amrnag/Specialized-Transformers"
# task -> (folder in the released repository and in glue/, whether the released reader skips the first line of
# every file as a header: transformers 2.2's glue.py, RteProcessor._create_examples `if i == 0: continue`; the
# CoLA reader reads every line)
TASKS = {"cola": ("CoLA", False), "rte": ("RTE", True)}


def _sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _released_file(released: Path, rel: str) -> bytes:
    """A file of the released repository: from a checkout, else from a (bare) git directory's HEAD."""
    if (released / rel).is_file():
        return (released / rel).read_bytes()
    git_dir = released / ".git" if (released / ".git").exists() else released
    out = subprocess.run(["git", "--git-dir", str(git_dir), "show", f"HEAD:{rel}"], capture_output=True)
    if out.returncode != 0:
        sys.exit(f"error: {rel} not found in {released} (a clone of {REPOSITORY}): {out.stderr.decode().strip()}")
    return out.stdout


def _released_commit(released: Path) -> str | None:
    git_dir = released / ".git" if (released / ".git").exists() else released
    out = subprocess.run(["git", "--git-dir", str(git_dir), "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def _lines(raw: bytes) -> list[str]:
    lines = raw.decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def derive(task: str, released: Path, data_dir: Path) -> dict:
    """The index record of ``task`` (see the module docstring)."""
    from axformer.taskdata.data import load_split
    from axformer.taskdata.splits import SPLIT_INDEX_FORMAT
    from axformer.taskdata.tasks import get_task

    folder, skips_first = TASKS[task]
    spec = get_task(task)
    ours_path = data_dir / spec.files["train"]
    ours_raw = ours_path.read_bytes()
    ours = _lines(ours_raw)
    header = 1 if spec.has_header else 0
    data_rows = ours[header:]
    where: dict[str, list[int]] = {}
    for i, line in enumerate(data_rows):
        where.setdefault(line, []).append(i)
    used: set[int] = set()

    def match(lines: list[str], name: str) -> list[int]:
        rows = []
        for k, line in enumerate(lines):
            free = [i for i in where.get(line, []) if i not in used]
            if not free:
                sys.exit(f"error: {name} line {k + 1} matches no unused row of {ours_path}: {line[:80]!r}")
            used.add(free[0])
            rows.append(free[0])
        return rows

    parts = {}
    raw = {}
    for part in ("val", "train"):
        rel = f"data/{folder}/{part}.tsv"
        raw[part] = _released_file(released, rel)
        lines = _lines(raw[part])
        if lines and header and lines[0] == ours[0]:
            lines = lines[1:]  # their header line (same as ours): not a row
            read_from = 0
        else:
            read_from = 1 if skips_first else 0  # a headerless file whose first row the reader skips
        parts[part] = (match(lines, rel), read_from)
    if len(used) != len(data_rows):
        sys.exit(f"error: the released train.tsv and val.tsv cover {len(used)} of the {len(data_rows)} rows of "
                 f"{ours_path}: not the same train file.")
    (val_rows, val_skip), (train_rows, train_skip) = parts["val"], parts["train"]
    search, excluded = val_rows[val_skip:], val_rows[:val_skip] + train_rows[:train_skip]
    # our reader must give the same rows in the same places (row i of the file = row i of the dataset)
    full = load_split(spec, "train", data_dir)
    if len(full) != len(data_rows):
        sys.exit(f"error: {ours_path}: {len(data_rows)} data lines but the task reader gives {len(full)} rows.")
    text_col = spec.text_a if isinstance(spec.text_a, int) else ours[0].split("\t").index(spec.text_a)
    for i in search[:50] + search[-50:]:
        if full[i]["text_a"] != data_rows[i].split("\t")[text_col].strip():
            sys.exit(f"error: row {i} of {ours_path} reads differently through the task reader.")
    return {
        "format": SPLIT_INDEX_FORMAT,
        "task": task,
        "description": (f"The authors' released AxFormer split of GLUE {folder} train: search_rows are the rows of "
                        f"their data/{folder}/val.tsv the released code reads, in its order; train' is every other "
                        "row but excluded_rows. Row numbers are 0-based data rows of train_file (header not "
                        "counted). Derived by scripts/derive_official_split.py; no data copied."),
        "source": {
            "repository": REPOSITORY, "commit": _released_commit(released),
            "search_file": f"data/{folder}/val.tsv", "search_file_sha256": _sha256(raw["val"]),
            "search_file_rows": len(val_rows),
            "train_file": f"data/{folder}/train.tsv", "train_file_sha256": _sha256(raw["train"]),
            "train_file_rows": len(train_rows),
            "reader_skips_first_line": skips_first,
        },
        "train_file": {"path": str(spec.files["train"]), "sha256": _sha256(ours_raw), "rows": len(data_rows)},
        "n_search": len(search),
        "n_train": len(data_rows) - len(search) - len(excluded),
        "excluded_rows": sorted(excluded),
        "search_rows": search,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--released", required=True, type=Path, help=f"a clone (or bare git dir) of {REPOSITORY}")
    p.add_argument("--data-dir", required=True, type=Path, help="folder with glue/ (our GLUE train files)")
    p.add_argument("--out", type=Path, default=Path("workflow/splits"), help="where official_<task>.json go")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for task in args.tasks:
        rec = derive(task, args.released, args.data_dir)
        path = args.out / f"official_{task}.json"
        text = json.dumps({k: v for k, v in rec.items() if k != "search_rows"}, indent=1)[:-2]
        # one row list per line keeps the file small and its diff readable
        text += ',\n "search_rows": ' + json.dumps(rec["search_rows"]) + "\n}\n"
        json.loads(text)
        path.write_text(text, encoding="utf-8")
        print(f"{task}: {rec['n_search']} search rows, {rec['n_train']} train' rows, "
              f"{len(rec['excluded_rows'])} excluded -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
