r"""Wasserstein ambiguity sets over uncertainty atoms and the worst case inside them (DESIGN §2).

The nominal uncertainty :math:`p_0` is represented by atoms :math:`\omega^0_1, \dots, \omega^0_N`.
The finite-dimensional form of the Wasserstein ball of radius :math:`\rho` around them (DSRL seed,
Sec. III-B) is

.. math::

    \mathcal B(\rho) = \Big\{ (\omega_1, \dots, \omega_N) :
    \frac1N \sum_{i=1}^N d(\omega_i - \omega^0_i) \le \rho \Big\},
    \qquad d = \|\cdot\|_2 \ (\text{order } 1) \ \text{or} \ \|\cdot\|_2^2 \ (\text{order } 2).

:meth:`WassersteinBall.project` is the exact Euclidean projection onto :math:`\mathcal B(\rho)`
(in the Frobenius norm over all atoms). With displacements :math:`Y_i = y_i - \omega^0_i`:

* order 2: :math:`\sum_i \|\Delta_i\|^2 \le N\rho` is a Frobenius ball, so the projection rescales
  every displacement by :math:`\min(1, \sqrt{N\rho} / \|Y\|_F)`;
* order 1: :math:`\sum_i \|\Delta_i\| \le N\rho` is an :math:`\ell_{2,1}` ball. Its projection
  keeps each displacement's direction and soft-thresholds the lengths,
  :math:`\|\Delta_i\| = \max(\|Y_i\| - \tau, 0)`, with :math:`\tau \ge 0` the threshold of the
  Euclidean projection of the length vector onto the :math:`\ell_1` ball of radius :math:`N\rho`
  (found exactly by sorting; Duchi et al. 2008, *Efficient projections onto the l1-ball*).

:func:`worst_case` maximises the mean of a loss over the ball by projected gradient ascent,
:math:`\omega \leftarrow \mathrm{Proj}_{\mathcal B(\rho)}(\omega + \eta\, \hat g)`, batched over
states and warm-startable. The gradient is taken with autograd, so it reaches :math:`\omega` through
a differentiable QP (:math:`\partial u_r / \partial \omega`) as well as directly.

Closed form (the oracle of the tests): for a loss that is minus a margin *linear* in the atoms,
:math:`m_i = a + c^\top \omega_i`, the worst mean margin over :math:`\mathcal B(\rho)` is
:math:`\bar m_0 - \rho \|c\|_2` for order 1 and :math:`\bar m_0 - \sqrt{\rho}\,\|c\|_2` for order
2, where :math:`\bar m_0` is the nominal mean margin (:func:`linear_worst_case_margin`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from otsafe.errors import DistributionError

__all__ = ["WassersteinBall", "linear_worst_case_margin", "worst_case"]

Order = Literal[1, 2]


class WassersteinBall:
    r"""The ambiguity set :math:`\mathcal B(\rho)` around nominal atoms (see the module docstring).

    Parameters
    ----------
    atoms : Tensor, shape (N, d) or (B, N, d)
        Nominal atoms :math:`\omega^0` (one set shared by the batch, or one per batch row).
    radius : float or Tensor of shape (B,)
        :math:`\rho \ge 0`.
    order : {1, 2}
        Ground cost :math:`d = \|\cdot\|_2` (type 1, default) or :math:`\|\cdot\|_2^2` (type 2).

    Examples
    --------
    >>> import torch
    >>> ball = WassersteinBall(torch.zeros(2, 1, dtype=torch.float64), radius=1.0)
    >>> ball.project(torch.tensor([[[3.0], [1.0]]], dtype=torch.float64)).tolist()
    [[[2.0], [0.0]]]
    """

    def __init__(self, atoms: Tensor, radius: float | Tensor, order: Order = 1) -> None:
        if not isinstance(atoms, Tensor):
            raise DistributionError(f"atoms must be a torch tensor, got {type(atoms).__name__}")
        if atoms.dim() == 2:
            atoms = atoms.unsqueeze(0)
        if atoms.dim() != 3 or atoms.shape[1] == 0 or atoms.shape[2] == 0:
            raise DistributionError(
                f"atoms must have shape (N, d) or (B, N, d) with N, d >= 1, got "
                f"{tuple(atoms.shape)}"
            )
        if not atoms.is_floating_point() or not bool(torch.isfinite(atoms).all()):
            raise DistributionError("atoms must be finite floating-point values")
        if order not in (1, 2):
            raise DistributionError(f"order must be 1 or 2, got {order!r}")
        rad = torch.as_tensor(radius, dtype=atoms.dtype, device=atoms.device)
        if rad.dim() > 1 or not bool(torch.isfinite(rad).all()) or bool((rad < 0).any()):
            raise DistributionError(
                f"radius must be a finite non-negative scalar or (B,) tensor, got {radius!r}"
            )
        self.nominal = atoms.detach()
        self.radius = rad
        self.order: Order = order

    @property
    def n_atoms(self) -> int:
        return int(self.nominal.shape[1])

    def _broadcast(self, atoms: Tensor) -> tuple[Tensor, Tensor]:
        """Atoms as (B, N, d) with the matching nominal atoms and per-row budgets N*rho."""
        if atoms.dim() == 2:
            atoms = atoms.unsqueeze(0)
        if atoms.dim() != 3 or atoms.shape[1:] != self.nominal.shape[1:]:
            raise DistributionError(
                f"atoms have shape {tuple(atoms.shape)}; the ball's atoms are "
                f"(B, {self.nominal.shape[1]}, {self.nominal.shape[2]})"
            )
        nominal = self.nominal.expand(atoms.shape[0], -1, -1)
        return atoms, nominal

    def _budget(self, batch: int) -> Tensor:
        return (
            (self.n_atoms * self.radius).expand(batch)
            if self.radius.dim() == 0
            else (self.n_atoms * self.radius)
        )

    def distance(self, atoms: Tensor) -> Tensor:
        r""":math:`\frac1N\sum_i d(\omega_i - \omega^0_i)` for each batch row, shape (B,)."""
        atoms, nominal = self._broadcast(atoms)
        disp = (atoms - nominal).norm(dim=-1)
        cost: Tensor = disp if self.order == 1 else disp**2
        return cost.mean(dim=-1)

    def contains(self, atoms: Tensor, rtol: float = 1e-9) -> Tensor:
        """Whether each batch row lies in the ball (up to a relative tolerance), shape (B,)."""
        dist = self.distance(atoms)
        budget = self._budget(dist.shape[0]) / self.n_atoms
        return dist <= budget * (1.0 + rtol) + rtol

    def project(self, atoms: Tensor) -> Tensor:
        """Exact Euclidean projection of atoms (B, N, d) or (N, d) onto the ball."""
        atoms, nominal = self._broadcast(atoms)
        disp = atoms - nominal
        budget = self._budget(atoms.shape[0]).to(atoms)
        if self.order == 2:
            norm = disp.flatten(1).norm(dim=1)
            scale = torch.where(
                norm > budget.sqrt(),
                budget.sqrt() / norm.clamp_min(torch.finfo(norm.dtype).tiny),
                torch.ones_like(norm),
            )
            return nominal + disp * scale[:, None, None]
        lengths = disp.norm(dim=-1)  # (B, N)
        new = _project_l1_nonnegative(lengths, budget)
        scale = torch.where(
            lengths > 0,
            new / lengths.clamp_min(torch.finfo(lengths.dtype).tiny),
            torch.zeros_like(lengths),
        )
        return nominal + disp * scale.unsqueeze(-1)


def _project_l1_nonnegative(r: Tensor, budget: Tensor) -> Tensor:
    r"""Project non-negative rows ``r`` (B, N) onto :math:`\{s \ge 0 : \sum s \le z\}` exactly.

    Rows already inside are unchanged; otherwise :math:`s = \max(r - \tau, 0)` with
    :math:`\sum s = z` (sort-based threshold, Duchi et al. 2008).
    """
    inside = r.sum(-1) <= budget
    srt, _ = torch.sort(r, dim=-1, descending=True)
    csum = srt.cumsum(-1)
    k = torch.arange(1, r.shape[-1] + 1, dtype=r.dtype, device=r.device)
    tau_k = (csum - budget.unsqueeze(-1)) / k
    valid = srt > tau_k  # true for a prefix
    count = valid.sum(-1).clamp(min=1)
    tau = tau_k.gather(-1, (count - 1).unsqueeze(-1)).squeeze(-1).clamp(min=0.0)
    projected = (r - tau.unsqueeze(-1)).clamp(min=0.0)
    return torch.where(inside.unsqueeze(-1), r, projected)


def worst_case(
    loss_fn: Callable[[Tensor], Tensor],
    ball: WassersteinBall,
    steps: int = 10,
    step_size: float = 0.5,
    init: Tensor | None = None,
    grad_fn: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    r"""Worst-case atoms: projected gradient ascent on the mean of ``loss_fn`` over the ball.

    Parameters
    ----------
    loss_fn : callable
        Maps atoms (B, N, d) to per-atom losses (B, N) or per-row losses (B,). Rows are
        independent problems; the ascent maximises each row's mean loss.
    ball : WassersteinBall
        The ambiguity set (its nominal atoms are the default start).
    steps : int
        Ascent steps (each followed by the exact projection).
    step_size : float
        :math:`\eta`, relative to the radius: each step moves the atoms of a row by
        :math:`\eta\rho` along the normalised gradient (RMS atom-gradient norm 1) before
        projecting, so the step is independent of the loss's scale. For a loss linear in the
        atoms with order 1, any step of at least the radius lands exactly on the maximiser.
    init : Tensor, optional
        Warm start (B, N, d), e.g. the previous worst case; projected first.
    grad_fn : callable, optional
        The gradient of each row's mean loss with respect to the atoms, (B, N, d) -> (B, N, d),
        in closed form; it replaces autograd through ``loss_fn`` (which is then not called).
        The caller vouches that it is that gradient (the DSRL margin loss has one, tested
        against autograd).

    Returns
    -------
    Tensor, shape (B, N, d)
        Detached worst-case atoms inside the ball.
    """
    if steps < 0:
        raise DistributionError(f"steps must be >= 0, got {steps}")
    if not (step_size > 0 and math.isfinite(step_size)):
        raise DistributionError(f"step_size must be positive and finite, got {step_size!r}")
    batch_nominal = ball.nominal
    start = batch_nominal if init is None else init
    omega = ball.project(start.detach())
    radius = ball.radius if ball.radius.dim() else ball.radius.expand(omega.shape[0])
    eta = (step_size * (radius if ball.order == 1 else radius.sqrt())).to(omega)
    for _ in range(steps):
        if grad_fn is not None:
            grad = grad_fn(omega)
            if not isinstance(grad, Tensor) or grad.shape != omega.shape:
                got = tuple(grad.shape) if isinstance(grad, Tensor) else type(grad).__name__
                raise DistributionError(
                    f"grad_fn must return the atoms' shape {tuple(omega.shape)}, got {got}"
                )
        else:
            grad = _loss_gradient(loss_fn, omega)
        rms = grad.pow(2).sum(-1).mean(-1).sqrt()  # (B,)
        direction = grad / rms.clamp_min(torch.finfo(rms.dtype).tiny)[:, None, None]
        omega = ball.project(omega + eta[:, None, None] * direction)
    return omega.detach()


def _loss_gradient(loss_fn: Callable[[Tensor], Tensor], omega: Tensor) -> Tensor:
    """Gradient of each row's mean loss with respect to the atoms, by autograd."""
    with torch.enable_grad():
        omega_var = omega.detach().requires_grad_(True)
        loss = loss_fn(omega_var)
        if loss.dim() == 2:
            loss = loss.mean(dim=-1)
        if loss.dim() != 1 or loss.shape[0] != omega.shape[0]:
            raise DistributionError(
                f"loss_fn must return (B, N) or (B,) losses, got shape {tuple(loss.shape)}"
            )
        (grad,) = torch.autograd.grad(loss.sum(), omega_var)
    return grad


def linear_worst_case_margin(
    nominal_mean_margin: Tensor, grad: Tensor, radius: float | Tensor, order: Order = 1
) -> Tensor:
    r"""Closed-form worst mean margin for margins linear in the atoms (the tests' oracle).

    With per-atom margins :math:`m_i = a + c^\top\omega_i`, the minimum of :math:`\frac1N\sum_i
    m_i` over :math:`\mathcal B(\rho)` is :math:`\bar m_0 - \rho\|c\|` (order 1) or
    :math:`\bar m_0 - \sqrt\rho\,\|c\|` (order 2).

    Parameters
    ----------
    nominal_mean_margin : Tensor, shape (B,)
    grad : Tensor, shape (B, d)
        :math:`c`, the margin's gradient with respect to an atom.
    radius : float or Tensor
    order : {1, 2}
    """
    rho = torch.as_tensor(radius, dtype=grad.dtype, device=grad.device)
    scale = rho if order == 1 else rho.sqrt()
    worst: Tensor = nominal_mean_margin - scale * grad.norm(dim=-1)
    return worst
