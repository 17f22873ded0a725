"""Task registry: the GLUE tasks (and SQuAD) the suite knows, with files, columns, labels and metric.

One entry per task; adding a GLUE-style TSV task is one more `Task(...)` here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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

    @property
    def is_regression(self) -> bool:
        return self.label_map is None

    @property
    def num_labels(self) -> int:
        return 1 if self.label_map is None else len(set(self.label_map.values()))

    @property
    def is_pair(self) -> bool:
        return self.text_b is not None


_BIN = {"0": 0, "1": 1}
_NLI = {"not_entailment": 0, "entailment": 1}

TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task("sst2", "SST-2", True, 2, "sentence", None, "label", _BIN, "accuracy", hub_name="sst2"),
        Task("mrpc", "MRPC", True, 5, "#1 String", "#2 String", "Quality", _BIN, "f1", ("accuracy",), hub_name="mrpc"),
        # CoLA ships without a header: source, label, original annotation, sentence.
        Task("cola", "CoLA", False, 4, 3, None, 1, _BIN, "mcc", ("accuracy",), hub_name="cola"),
        Task("rte", "RTE", True, 4, "sentence1", "sentence2", "label", _NLI, "accuracy", hub_name="rte"),
        Task("stsb", "STS-B", True, 10, "sentence1", "sentence2", "score", None, "pearson", ("spearman",), hub_name="stsb"),
        Task(
            "qnli", "QNLI", True, 4, "question", "sentence", "label", _NLI, "accuracy",
            splits=("dev",), hub_name="qnli",
            missing_note={
                "train": "QNLI train.tsv (104,743 rows, 25.7 MB) is not in the offline data folder "
                "(see shared/data/README.md: 'What is missing'). Place the GLUE file at <data>/glue/QNLI/train.tsv, "
                "or run where the Hugging Face hub is reachable (datasets: glue/qnli)."
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
