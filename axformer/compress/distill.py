"""Knowledge distillation: a smaller student trained on train' against the fine-tuned teacher's logits.

The student is the comparison point the paper's results invite ("is it better to search, or to distil?") and,
with the AxFormer search run on top of it, the variant ``finetune+distill+axformer``.

Student construction (DistilBERT-style, Sanh et al. 2019, §3 "Student initialization": the student takes one
layer out of two from the teacher). The teacher's embeddings, pooler and task head are copied unchanged; the
student's layer ``i`` is a copy of teacher layer ``teacher_layers[i]``, chosen by ``strategy``:

* ``"every_other"`` (default): ``teacher_layers[i] = floor(i * L / n)`` for a teacher with ``L`` layers and a
  student with ``n``. For ``n = L / 2`` this is exactly DistilBERT's 0, 2, 4, ...; for other ``n`` it is the
  same rule with stride ``L / n`` (evenly spaced, always starting at layer 0; e.g. L=6, n=4 -> 0, 1, 3, 4).
* ``"evenly"``: ``round(linspace(0, L - 1, n))`` — evenly spaced and always including the last layer
  (the "skip" initialisation of BERT-PKD, Sun et al. 2019); L=12, n=6 -> 0, 2, 4, 7, 9, 11.
* ``"first"``: the bottom ``n`` layers 0 .. n-1.

The chosen layers are recorded as plain JSON in ``student.config.axformer_distill`` so that the checkpoint says
where it came from; the student is an ordinary (unedited) model of the teacher's family with
``num_hidden_layers = n``, so ``models.save_checkpoint`` / ``models.load_checkpoint`` and the AxFormer search
work on it unchanged.

Cross-family students (``init='pretrained'``, e.g. an MPNet-base teacher and the pretrained MiniLM student, the
paper's "AxFormer + distillation" on a base model): when the student's vocabulary differs from the teacher's,
each model reads the same rows through its own tokenizer. The teacher's logits are computed once per train' row
from the teacher's tokens (:func:`teacher_table`; eval mode, so identical to computing them per batch) and looked
up during training by the student's token ids of that row; KD is on the task logits only. Span QA cannot be
distilled across tokenizers (the positions differ) and is refused.

Loss (:func:`kd_loss`): Hinton et al. 2015 soft targets at temperature ``T`` mixed with the hard-label task loss.
Training reuses :func:`axformer.training.train.train` with a ``loss_fn`` that runs the (frozen, eval-mode) teacher on the
same batch.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from axformer.surgery import families
from axformer.training.batches import model_inputs
from axformer.taskdata.losses import output_logits, per_sample_loss
from axformer.taskdata.tasks import Task
from axformer.training.train import train
from axformer.training.train_config import TrainConfig
from axformer.compress.distill_config import STRATEGIES, DistillConfig
from axformer.utils import ConfigError



# ----------------------------------------------------------------------------------------------- config


# ----------------------------------------------------------------------------------------------- student


def check_unedited(model: nn.Module) -> None:
    """ConfigError unless ``model`` carries no AxFormer edit (no removed element, no hard attention)."""
    from axformer.surgery import elements, hard_attention

    layers = families.layers(model)
    fam = families.of(model)
    ax = getattr(model.config, "axformer", None) or {}
    problems = []
    arch = ax.get("arch") if isinstance(ax, dict) else None
    if arch:
        full = {"heads": list(range(fam.n_heads(model.config))),
                "neurons": list(range(fam.n_neurons(model.config))), "attn_skipped": False, "ffn_skipped": False}
        if any(rec != full for rec in arch.get("layers", [])):
            problems.append("elements were removed")
    ha = ax.get("hard_attention") if isinstance(ax, dict) else None
    if ha and ha.get("layers"):
        problems.append(f"hard attention is on in layers {ha['layers']}")
    if hard_attention.enabled_layers(model) or any(
            getattr(fam.self_attention(layer), "axformer_topk", None) is not None for layer in layers):
        problems.append("hard attention is installed")
    if not problems and not elements.is_unedited(model):
        problems.append("module sizes differ from the config")
    if problems:
        raise ConfigError(
            f"the teacher must be an unedited fine-tuned model, but {'; '.join(problems)}: distil from the finetune "
            "checkpoint and run the AxFormer search on the student afterwards."
        )


def select_layers(n_teacher: int, n_layers: int, strategy: str = "every_other") -> list[int]:
    """Teacher layer ids copied into a student of ``n_layers`` layers (see the module docstring)."""
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or not 1 <= n_layers <= n_teacher:
        raise ConfigError(f"student layers must be an int in [1, {n_teacher}] (the teacher's depth); got {n_layers!r}.")
    if strategy == "every_other":
        return [(i * n_teacher) // n_layers for i in range(n_layers)]
    if strategy == "evenly":
        if n_layers == 1:
            return [n_teacher - 1]
        return [int(math.floor(i * (n_teacher - 1) / (n_layers - 1) + 0.5)) for i in range(n_layers)]
    if strategy == "first":
        return list(range(n_layers))
    raise ConfigError(f"layer selection strategy must be one of {', '.join(STRATEGIES)} (got {strategy!r}).")


def make_student(teacher: nn.Module, n_layers: int | None = None, strategy: str = "every_other") -> nn.Module:
    """A model of the teacher's family with ``n_layers`` layers whose weights are the teacher's embeddings, chosen layers, pooler and head.

    ``n_layers=None`` = half the teacher's depth (at least 1). The teacher is not modified. The student is built
    as ``type(teacher)(config)`` and filled with ``load_state_dict(..., strict=True)``; it is returned in eval mode.
    """
    check_unedited(teacher)
    n_teacher = len(families.layers(teacher))
    if n_layers is None:
        n_layers = max(1, n_teacher // 2)
    chosen = select_layers(n_teacher, n_layers, strategy)

    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = n_layers
    if hasattr(config, "axformer"):
        del config.axformer  # an (unedited) edit record sized for the teacher's depth: the student starts clean
    config.axformer_distill = {"teacher_layers": chosen, "teacher_num_layers": n_teacher, "strategy": strategy}
    student = type(teacher)(config)


    prefix = f"{teacher.base_model_prefix}.{families.of(teacher).encoder}.layer."
    src = teacher.state_dict()
    state: dict[str, torch.Tensor] = {}
    for key, value in src.items():
        if key.startswith(prefix):
            t_layer, rest = key[len(prefix):].split(".", 1)
            t_layer = int(t_layer)
            if t_layer in chosen:
                for s_layer, c in enumerate(chosen):
                    if c == t_layer:
                        state[f"{prefix}{s_layer}.{rest}"] = value.detach().clone()
        else:
            state[key] = value.detach().clone()
    student.load_state_dict(state, strict=True)
    dev = next(teacher.parameters())
    return student.to(device=dev.device, dtype=dev.dtype).eval()


def pretrained_student(spec: str, task: Task, teacher_tokenizer, seed: int = 0):
    """A student started from the pretrained checkpoint ``spec`` (config ``init='pretrained'``), and its own
    tokenizer when its vocabulary differs from the teacher's (else None: both read the same token ids).

    Any supported encoder family (:mod:`axformer.surgery.families`) is accepted, so the AxFormer search can run on the
    student afterwards. A student with another vocabulary is distilled cross-tokenizer (module docstring); span QA
    is refused there.
    """
    from transformers import AutoConfig

    from axformer.encoders import models

    path = models.resolve_model_spec(spec)
    if path != models.TINY:
        try:
            model_type = AutoConfig.from_pretrained(path).model_type
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the config of pretrained student {spec!r}: {exc}") from exc
        if not families.supported(model_type):
            raise ConfigError(
                f"pretrained student {spec!r} is a {model_type!r} model: AxFormer's element surgery (and so the "
                f"search on the student) supports the encoder families {', '.join(families.FAMILIES)}. Use "
                "init='teacher' or a checkpoint of one of them."
            )
    student, tok = models.load_pretrained(spec, task, seed=seed)
    own = tok.get_vocab() != teacher_tokenizer.get_vocab()
    if own and task.is_qa:
        raise ConfigError(f"pretrained student {spec!r} has another vocabulary than the teacher: span QA cannot be "
                          "distilled across tokenizers (token positions differ); use a student with the teacher's "
                          "tokenizer or init='teacher'.")
    student.config.axformer_distill = {"teacher_layers": None, "pretrained": spec, "own_tokenizer": own}
    return student, (tok if own else None)


def _row_key(ids) -> bytes:
    return np.asarray(ids, dtype=np.int64).tobytes()


@torch.no_grad()
def teacher_table(teacher: nn.Module, teacher_ds, teacher_tokenizer, student_ds,
                  batch_size: int = 64) -> dict[bytes, torch.Tensor]:
    """The teacher's logits of every row, computed from the teacher's own tokens (``teacher_ds``), keyed by the
    student's token ids of the same row (``student_ds``, same rows in the same order). Rows whose student tokens
    coincide get the mean of their teachers' logits (such rows are the same text up to the student's tokenizer).
    """
    from axformer.training.batches import make_loader

    if len(teacher_ds) != len(student_ds):
        raise ValueError(f"teacher and student train rows differ ({len(teacher_ds)} vs {len(student_ds)}).")
    device = next(teacher.parameters()).device
    teacher.eval()
    out = []
    for batch in make_loader(teacher_ds, teacher_tokenizer, batch_size, shuffle=False):
        inputs = model_inputs(batch, device)
        out.append(output_logits(teacher(**inputs), inputs).float().cpu())
    logits = torch.cat(out)
    sums: dict[bytes, torch.Tensor] = {}
    counts: dict[bytes, int] = {}
    for ids, lg in zip(student_ds["input_ids"], logits):
        k = _row_key(ids)
        sums[k] = sums[k] + lg if k in sums else lg.clone()
        counts[k] = counts.get(k, 0) + 1
    return {k: v / counts[k] for k, v in sums.items()}


def _lookup(table: dict[bytes, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The table's teacher logits for each row of a (padded) student batch: real tokens = attention mask."""
    ids, mask = batch["input_ids"].cpu(), batch["attention_mask"].cpu().bool()
    try:
        return torch.stack([table[_row_key(ids[b][mask[b]].numpy())] for b in range(ids.shape[0])])
    except KeyError:  # pragma: no cover - the table is built from the very rows the loader batches
        raise RuntimeError("a student batch row is missing from the teacher table: train rows differ.") from None


# ----------------------------------------------------------------------------------------------- loss


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, is_regression: bool,
            temperature: float = 2.0, alpha: float = 0.5) -> torch.Tensor:
    """Knowledge-distillation loss (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network").

    Classification, with ``s`` / ``t`` the student / teacher logits, ``T`` the temperature and ``B`` the batch::

        L = alpha * T^2 * KL( softmax(t / T) || softmax(s / T) ) + (1 - alpha) * CE(s, labels)

    where ``KL(p || q) = (1/B) sum_b sum_c p_bc (log p_bc - log q_bc)`` ("batchmean") and CE is the mean
    cross-entropy. The ``T^2`` factor keeps the soft-target gradients on the scale of the hard-target ones.

    Regression (STS-B, one output)::

        L = alpha * MSE(s, t) + (1 - alpha) * MSE(s, labels)

    Span QA (logits (B, T, 2), labels (B, 2) start / end tokens): the same soft + hard mix applied to the start
    distribution over positions and to the end distribution, summed (as the hard span loss sums start CE and
    end CE)::

        L = sum over {start, end} of [ alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y) ]

    Padding positions carry ``losses.NEG`` in both models' logits, so they get probability 0 on both sides.
    The teacher logits are treated as constants (detached).
    """
    s = student_logits.float()
    t = teacher_logits.detach().float().to(s.device)
    y = labels.to(s.device)
    if s.dim() == 3:
        b, n, _ = s.shape
        flat = lambda x: x.transpose(1, 2).reshape(b * 2, n)  # noqa: E731 — rows: start and end of each window
        soft = F.kl_div(F.log_softmax(flat(s) / temperature, -1), F.log_softmax(flat(t) / temperature, -1),
                        reduction="sum", log_target=True) / b
        hard = per_sample_loss(s, y, False).mean()
        return alpha * temperature ** 2 * soft + (1.0 - alpha) * hard
    if is_regression:
        s, t = s.view(-1), t.view(-1)
        return alpha * F.mse_loss(s, t) + (1.0 - alpha) * F.mse_loss(s, y.view(-1).float())
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    log_p_t = F.log_softmax(t / temperature, dim=-1)
    soft = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    hard = F.cross_entropy(s, y.view(-1).long())
    return alpha * temperature ** 2 * soft + (1.0 - alpha) * hard


# ----------------------------------------------------------------------------------------------- training


def distill(teacher: nn.Module, student: nn.Module, train_ds, tokenizer, task: Task, cfg: TrainConfig,
            temperature: float = 2.0, alpha: float = 0.5, teacher_data: tuple | None = None) -> dict[str, Any]:
    """Train ``student`` in place on ``train_ds`` with :func:`kd_loss` against the frozen ``teacher``.

    Runs :func:`axformer.training.train.train`; its ``loss_fn`` recomputes the teacher's logits (eval mode, no grad) from
    the same batch the student just saw. ``teacher_data = (teacher_train_ds, teacher_tokenizer)``: the teacher
    reads other tokens (cross-family student): its logits come from :func:`teacher_table` instead. Returns
    train's log dict (loss curve, steps, wall_s, ...) plus the temperature and alpha.
    """
    DistillConfig(temperature=temperature, alpha=alpha).validate()
    device = next(student.parameters()).device
    teacher.to(device).eval()
    table = None if teacher_data is None else teacher_table(teacher, teacher_data[0], teacher_data[1], train_ds)

    def loss_fn(student_logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if table is not None:
            return kd_loss(student_logits, _lookup(table, batch), batch["labels"], task.is_regression, temperature,
                           alpha)
        if teacher.training:  # something switched it back: the teacher must stay deterministic
            teacher.eval()
        with torch.no_grad():
            inputs = model_inputs(batch, device)
            teacher_logits = output_logits(teacher(**inputs), inputs)
        return kd_loss(student_logits, teacher_logits, batch["labels"], task.is_regression, temperature, alpha)

    log = train(student, train_ds, tokenizer, task, cfg, loss_fn=loss_fn)
    log.update(temperature=temperature, alpha=alpha)
    return log
