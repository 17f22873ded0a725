"""Least squares from the normal equations, bit-reproducible on CPU: the weight / scale fits of the peers that
tune (baselines/mask_tuning.py for Fisher, baselines/kprune.py).

LAPACK's pivoted-QR driver (``torch.linalg.lstsq(driver="gelsy")``, used before) returns different last bits for
the same float64 input from one call to the next, even in one thread (measured on MKL: 1e-11 absolute on a 48 x 48
Gram of condition 1.5e7, depending on where the arrays sit in memory); rounded into float32 weights that changed
some weights of K-prune's checkpoints between two runs of one seed. Cholesky and the SVD driver gave identical
bits under shifted allocations (tests/test_lstsq.py), so :func:`solve_normal` uses Cholesky where the system is
positive definite (the damped systems, and any Gram of full rank: the same solution gelsy gave, at half its time)
and the SVD driver ``gelsd`` (the minimum-norm solution, as gelsy's) where it is not.
"""

from __future__ import annotations

import torch


def solve_normal(lhs: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``X`` with ``lhs @ X = rhs`` in the least-squares sense; ``lhs`` symmetric positive semi-definite (a Gram
    matrix, possibly damped), ``rhs`` (k,) or (k, m). Raises RuntimeError where LAPACK fails; the result may be
    non-finite (callers check)."""
    vec = rhs.dim() == 1
    b = rhs[:, None] if vec else rhs
    chol, info = torch.linalg.cholesky_ex(lhs)
    if int(info) == 0:
        x = torch.cholesky_solve(b, chol)
    else:  # singular (or numerically indefinite): the minimum-norm solution from the SVD
        x = torch.linalg.lstsq(lhs, b, driver="gelsd").solution
    return x[:, 0] if vec else x


__all__ = ["solve_normal"]
