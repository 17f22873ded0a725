"""Task registry: the GLUE tasks (and SQuAD) the suite knows, with files, columns, labels and metric.

One entry per task; adding a GLUE-style TSV task is one more `Task(...)` here. SQuAD v1.1 is the one task of
kind "qa" (extractive span question answering, axformer/squad.py); its QA settings (``doc_stride``,
``max_answer_len``, ``n_best``) are part of the Task because they decide how it is read and scored: the CLI
replaces them from its options with :func:`with_qa_settings`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from axformer.utils import ConfigError


@dataclass(frozen=True)
class Task:
    """How to read one task and how to score it."""

    name: str  # short name used in configs and result paths (sst2, mrpc, ...)
    glue_dir: str  # folder under <data>/glue/
    has_header: bool
    n_columns: int  # fields per data row; a row with another count is malformed
    text_a: int | str  # column (header name, or index for header-less files)
    text_b: int | str | None  # None: single-sentence task
    label: int | str
    label_map: dict[str, int] | None  # raw label string -> class id; None for regression
    metric: str  # headline metric (the one used for "within 1 point")
    secondary: tuple[str, ...] = ()
    splits: tuple[str, ...] = ("train", "dev")  # splits shipped offline in the data folder
    hub_name: str = ""  # `datasets` hub config name (glue/<hub_name>) for the online path
    missing_note: dict[str, str] = field(default_factory=dict)
    kind: str = "glue"  # "glue" (TSV, one label per row) | "qa" (SQuAD JSON, answer spans)
    max_length: int = 128  # default tokenizer length (--max-length); QA windows are longer
    # train holds phrases cut from its own sentences (SST-2): the search split is drawn from whole sentences only
    # and every train' phrase of a search sentence is dropped (data.make_splits, DESIGN §2)
    phrase_corpus: bool = False
    # QA only (see axformer/squad.py): context tokens shared by consecutive windows (the tokenizer's
    # `stride`), longest answer in tokens and candidates per window end kept by the post-processing.
    doc_stride: int = 128
    max_answer_len: int = 30
    n_best: int = 20
    label_range: tuple[float, float] | None = None  # regression: the closed range every label must lie in

    @property
    def is_qa(self) -> bool:
        return self.kind == "qa"

    @property
    def is_regression(self) -> bool:
        return self.label_map is None and not self.is_qa

    @property
    def num_labels(self) -> int:
        if self.is_qa:
            return 2  # start and end logit per token
        return 1 if self.label_map is None else len(set(self.label_map.values()))

    @property
    def is_pair(self) -> bool:
        return self.text_b is not None


_BIN = {"0": 0, "1": 1}
_NLI = {"not_entailment": 0, "entailment": 1}

TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task("sst2", "SST-2", True, 2, "sentence", None, "label", _BIN, "accuracy", hub_name="sst2",
             phrase_corpus=True),
        Task("mrpc", "MRPC", True, 5, "#1 String", "#2 String", "Quality", _BIN, "f1", ("accuracy",), hub_name="mrpc"),
        # CoLA ships without a header: source, label, original annotation, sentence.
        Task("cola", "CoLA", False, 4, 3, None, 1, _BIN, "mcc", ("accuracy",), hub_name="cola"),
        Task("rte", "RTE", True, 4, "sentence1", "sentence2", "label", _NLI, "accuracy", hub_name="rte"),
        Task("stsb", "STS-B", True, 10, "sentence1", "sentence2", "score", None, "pearson", ("spearman",), hub_name="stsb",
             label_range=(0.0, 5.0)),
        Task(
            "qnli", "QNLI", True, 4, "question", "sentence", "label", _NLI, "accuracy",
            splits=("dev",), hub_name="qnli",
            missing_note={
                "train": "QNLI train.tsv (104,743 rows, 25.7 MB) is not in the offline data folder "
                "(see shared/data/README.md: 'What is missing'). Place the GLUE file at <data>/glue/QNLI/train.tsv, "
                "or run where the Hugging Face hub is reachable (datasets: glue/qnli)."
            },
        ),
        # SQuAD v1.1: the JSON columns are fixed (squad.py reads them); text_a/text_b name the pair the model sees.
        Task(
            "squad", "", True, 0, "question", "context", "answers", None, "f1", ("exact_match",),
            splits=("dev",), hub_name="rajpurkar/squad", kind="qa", max_length=384,
            missing_note={
                "train": "SQuAD v1.1 train-v1.1.json (87,599 questions, 30.3 MB) is not in the offline data folder "
                "(see shared/data/README.md: 'What is missing'). Place it at <data>/squad/train-v1.1.json, run where "
                "the Hugging Face hub is reachable (--allow-hub / allow_hub: true), or use the local protocol "
                "(--squad-protocol local, split key squad_protocol: local), which splits dev-v1.1.json by article."
            },
        ),
    ]
}


def get_task(name: str) -> Task:
    """Look up a task by name; unknown names fail with the list of valid ones."""
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise ConfigError(f"unknown task {name!r}: choose one of {', '.join(sorted(TASKS))} (config key 'tasks').")
    return TASKS[key]


def with_qa_settings(task: Task, doc_stride: int | None = None, max_answer_len: int | None = None,
                     n_best: int | None = None) -> Task:
    """``task`` with the QA settings that are given replaced (a GLUE task comes back unchanged)."""
    if not task.is_qa:
        return task
    changes = {k: v for k, v in (("doc_stride", doc_stride), ("max_answer_len", max_answer_len), ("n_best", n_best))
               if v is not None}
    for key, v in changes.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if key == "doc_stride" else 1):
            flag = "--" + key.replace("_", "-")
            raise ConfigError(f"{flag} (split key {key}) must be an integer >= {0 if key == 'doc_stride' else 1} "
                              f"(got {v!r}).")
    return replace(task, **changes)
