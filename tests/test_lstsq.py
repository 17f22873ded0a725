"""baselines/lstsq.py: the peers' least-squares fits give the same bits wherever their inputs sit in memory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from baselines.lstsq import solve_normal

ROOT = Path(__file__).resolve().parents[1]


def _gram(n: int, rank: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An ill-conditioned (or singular, rank < n) Gram matrix and a right-hand side in its range."""
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(3 * n, rank, generator=g, dtype=torch.float64) @ torch.randn(rank, n, generator=g,
                                                                                dtype=torch.float64)
    f[:, 0] *= 1e-3  # a weak column: condition ~1e7 and more, as real hidden states give
    return f.T @ f, f.T @ torch.randn(3 * n, 5, generator=g, dtype=torch.float64)


def _shifted(t: torch.Tensor, pad: int) -> torch.Tensor:
    """A copy of ``t`` that starts ``pad`` float64s into a fresh buffer (another alignment)."""
    buf = torch.zeros(t.numel() + pad, dtype=t.dtype)
    out = buf[pad:].view(t.shape)
    out.copy_(t)
    return out


@pytest.mark.parametrize("rank", [48, 30])
def test_same_bits_under_shifted_allocations(rank):
    lhs, rhs = _gram(48, rank, seed=rank)
    first = solve_normal(lhs, rhs)
    assert torch.isfinite(first).all()
    for pad in range(1, 9):
        again = solve_normal(_shifted(lhs, pad), _shifted(rhs, 3 * pad))
        assert torch.equal(again, first), f"solve_normal changed bits at offset {pad}"


def test_solves_the_normal_equations():
    lhs, rhs = _gram(20, 20, seed=1)
    x = solve_normal(lhs, rhs)
    torch.testing.assert_close(lhs @ x, rhs, rtol=1e-6, atol=1e-8)
    v = solve_normal(lhs, rhs[:, 0])  # a vector right-hand side keeps its shape
    assert v.shape == (20,)
    torch.testing.assert_close(v, x[:, 0])


def test_singular_gram_gives_the_minimum_norm_solution():
    lhs, rhs = _gram(12, 5, seed=2)
    x = solve_normal(lhs, rhs)
    ref = torch.linalg.pinv(lhs, hermitian=True) @ rhs
    torch.testing.assert_close(x, ref, rtol=1e-5, atol=1e-7)


_KPRUNE_TWICE = """
import hashlib, sys
sys.path[:0] = [{root!r}, {tests!r}]
import torch
torch.set_num_threads(1)
import baselines
from axformer.taskdata import data
from axformer.taskdata.tasks import get_task
from axformer.encoders import models
from tiny_models import same_splits, tiny_pretrained
task = get_task("sst2")
_, tok = models.load_pretrained(models.TINY, task, seed=0)
rows = data.tokenize(data.load_split(task, "train", {data!r}).select(range(24)), tok, task, max_length=32)
pruned, _ = baselines.get("kprune")(tiny_pretrained(task), tok, task, same_splits(rows),
                                    {{"flops_frac": 0.3, "batch_size": 8, "seed": 3}})
h = hashlib.sha256()
for k, v in sorted(pruned.state_dict().items()):
    h.update(k.encode()); h.update(v.detach().contiguous().numpy().tobytes())
print(h.hexdigest())
"""


@pytest.mark.slow
def test_kprune_with_weight_tuning_is_bit_reproducible_across_processes(data_dir):
    """Two processes, one seed: identical pruned and tuned weights (gelsy differed here in some weights)."""
    code = _KPRUNE_TWICE.format(root=str(ROOT), tests=str(ROOT / "tests"), data=str(data_dir))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
           for _ in range(2)]
    for p in out:
        assert p.returncode == 0, p.stderr[-2000:]
    digests = [p.stdout.strip().splitlines()[-1] for p in out]
    assert digests[0] == digests[1]
