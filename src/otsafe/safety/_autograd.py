"""Small autograd helpers for barrier derivatives and Lie derivatives."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["autograd_grad", "autograd_hessian"]


# ------------------------------------------------------------------------ autograd helpers
def _grad_sum(y: Tensor, x: Tensor) -> Tensor:
    """Gradient of ``y.sum()`` w.r.t. ``x`` with a graph; zeros where ``y`` does not depend on x."""
    if not y.requires_grad:
        return torch.zeros_like(x)
    (res,) = torch.autograd.grad(y.sum(), x, create_graph=True, allow_unused=True)
    return torch.zeros_like(x) if res is None else res


def _vjp(y: Tensor, x: Tensor, v: Tensor) -> Tensor:
    r""":math:`J_y(x)^\top v` row by row for ``y (B, k)``, ``x (B, n)``, ``v (B, k)``."""
    if not y.requires_grad:
        return torch.zeros_like(x)
    (res,) = torch.autograd.grad(
        y, x, grad_outputs=v, create_graph=True, retain_graph=True, allow_unused=True
    )
    return torch.zeros_like(x) if res is None else res


def _leaf(x: Tensor) -> Tensor:
    """``x`` itself when it already carries a graph, else a detached copy that requires grad."""
    return x if x.requires_grad else x.detach().requires_grad_(True)


def autograd_grad(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    r"""Batched gradient :math:`\nabla h(x)`, shape ``(B, n_x)``, of ``fn: (B, n_x) -> (B,)``.

    Rows must be independent. The result keeps its graph (``create_graph``) when gradients are
    enabled and ``x`` requires grad; otherwise it is detached.
    """
    keep = torch.is_grad_enabled() and x.requires_grad
    with torch.enable_grad():
        xx = _leaf(x)
        grad = _grad_sum(fn(xx), xx)
    return grad if keep else grad.detach()


def autograd_hessian(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    r"""Batched Hessian :math:`\nabla^2 h(x)`, shape ``(B, n_x, n_x)``, by double backward.

    Keeps its graph like :func:`autograd_grad`.
    """
    keep = torch.is_grad_enabled() and x.requires_grad
    with torch.enable_grad():
        xx = _leaf(x)
        grad = _grad_sum(fn(xx), xx)
        hess = torch.stack([_grad_sum(grad[:, j], xx) for j in range(x.shape[1])], dim=1)
    return hess if keep else hess.detach()
