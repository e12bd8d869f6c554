r"""The CBF safety filter (DESIGN §2) and a Gymnasium wrapper that puts it in front of any agent.

:class:`SafetyFilter` maps a batch of states and reference actions :math:`u_{ref}` (e.g. from an
RL policy) to the actions of the safety QP

.. math::

    u^* = \arg\min_u \tfrac12 \|u - u_{ref}\|_W^2 \;(+\tfrac12 p s^2)
    \quad\text{s.t.}\quad G(x, \omega_{1:N})\, u \le h(x, \omega_{1:N}) \;(+ s),
    \quad lb \le u \le ub \;(,\ s \ge 0),

whose rows are the CBF conditions of :func:`otsafe.safety.cbf.cbf_rows`, averaged over the
uncertainty atoms. It is solved by :func:`otsafe.safety.qp.solve_qp`, so :math:`u^*` is
differentiable with respect to :math:`u_{ref}`, the atoms and the state.

**Slack.** By default (``slack_penalty=None``) the CBF rows are hard: wherever the QP is feasible
the certificate holds exactly, and a row whose constraints contradict each other (e.g. input bounds
too tight for the CBF) gets the solver's *elastic* solution (the QP with a slack of penalty
``1e6``, see :mod:`otsafe.safety.qp`) and is counted as a lost certificate. With
``slack_penalty=p`` every QP carries the slack of the seed's formulation; a quadratic penalty makes
the slack :math:`s = \lambda / p` positive whenever a CBF row is active, so only slacks above
``slack_tol`` are counted.

:class:`SafetyFilterWrapper` applies a filter to a Gymnasium environment whose unwrapped env
exposes the model and its state (:class:`SafetyAwareEnv`), or to any environment given a
``state_fn``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, SupportsFloat, runtime_checkable

import gymnasium as gym
import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import Tensor

from otsafe.errors import ConfigError, DistributionError
from otsafe.safety.barriers import Barrier
from otsafe.safety.cbf import (
    _as_barriers,
    _cbf_rows,
    _check_atoms,
    _check_barrier_dims,
    _check_rates,
    _check_state,
    cbf_margin,
    cbf_rows,
)
from otsafe.safety.models import ControlAffineModel, _check_model
from otsafe.safety.qp import QPInfo, QPStatus, solve_qp

__all__ = ["FilterInfo", "SafetyAwareEnv", "SafetyFilter", "SafetyFilterWrapper"]

_STAT_KEYS = ("calls", "samples", "interventions", "slack_used", "infeasible", "max_iter")


@dataclass(frozen=True)
class FilterInfo:
    """Per-sample details of one :class:`SafetyFilter` call.

    Attributes
    ----------
    changed : Tensor of bool, shape (B,)
        The filter changed the action: :math:`\\|u - u_{ref}\\|_\\infty > tol (1 +
        \\|u_{ref}\\|_\\infty)`.
    slack_used : Tensor of bool, shape (B,)
        The slack exceeded ``slack_tol`` or the hard QP was infeasible (a lost certificate).
    G, h : Tensor
        The CBF rows, shapes (B, n_barriers, n_u) and (B, n_barriers).
    qp : QPInfo
        The solver's per-row information (``status``, ``slack``, ``active`` ...).
    """

    changed: Tensor
    slack_used: Tensor
    G: Tensor
    h: Tensor
    qp: QPInfo


def _bound(name: str, value: float | Sequence[float] | Tensor | None, nu: int) -> Tensor | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a number or a vector, got {value!r}")
    try:
        t = torch.as_tensor(value, dtype=torch.float64).detach().clone()
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"{name} must be a number or a vector of length {nu}") from None
    if t.dim() == 0:
        t = t.expand(nu).clone()
    if t.shape != (nu,):
        raise ConfigError(f"{name} must be a number or have length {nu} (control_dim)")
    if bool(torch.isnan(t).any()):
        raise ConfigError(f"{name} has NaN entries")
    return t


class SafetyFilter:
    r"""Minimally change actions so that the CBF conditions hold (a batched, differentiable QP).

    Parameters
    ----------
    model : ControlAffineModel
        Dynamics :math:`\dot x = f(x) + g(x)u + D(x)\omega`.
    barriers : Barrier or sequence of Barrier
        Safe set :math:`\{h_j \ge 0\ \forall j\}`; one QP row each.
    alpha : float or sequence of float
        :math:`\alpha` (relative degree 1) or :math:`\alpha_1` (relative degree 2), positive. For a
        fixed step ``dt``, keep :math:`\alpha\,dt \le 1` (discrete-time safety).
    relative_degree : {1, 2}
        First-order CBF or HOCBF (see :func:`~otsafe.safety.cbf.cbf_rows`).
    alpha2 : float or sequence of float, optional
        :math:`\alpha_2` of the HOCBF; defaults to ``alpha``.
    lb, ub : float or array-like of length n_u, optional
        Input bounds (infinite entries allowed; ``lb <= ub``).
    slack_penalty : float, optional
        :math:`p > 0` for the seed's always-on slack; ``None`` (default): hard rows, with the
        solver's elastic fallback only where infeasible (see the module docstring).
    weight : Tensor, optional
        :math:`W` of the objective (diagonal (n_u,) or matrix (n_u, n_u)); default identity.
    tol : float
        Relative tolerance for counting an action as changed.
    slack_tol : float
        A slack above this counts as a lost certificate.

    Attributes
    ----------
    stats : dict
        Counters since construction or :meth:`reset_stats` (see :attr:`stats`).

    Examples
    --------
    >>> import torch
    >>> from otsafe.safety import CircleBarrier, SingleIntegrator
    >>> filt = SafetyFilter(SingleIntegrator(2), [CircleBarrier([0.0, 0.0], 1.0)], alpha=1.0)
    >>> x = torch.tensor([[-2.0, 0.0]], dtype=torch.float64)
    >>> u = filt(x, torch.tensor([[4.0, 0.0]], dtype=torch.float64))  # -4 u_1 <= 3
    >>> u.tolist()
    [[0.75, 0.0]]
    """

    def __init__(
        self,
        model: ControlAffineModel,
        barriers: Barrier | Sequence[Barrier],
        *,
        alpha: float | Sequence[float] | Tensor = 1.0,
        relative_degree: int = 1,
        alpha2: float | Sequence[float] | Tensor | None = None,
        lb: float | Sequence[float] | Tensor | None = None,
        ub: float | Sequence[float] | Tensor | None = None,
        slack_penalty: float | None = None,
        weight: Tensor | None = None,
        tol: float = 1e-6,
        slack_tol: float = 1e-6,
    ) -> None:
        self.model = _check_model(model)
        self.barriers = _as_barriers(barriers)
        if isinstance(relative_degree, bool) or relative_degree not in (1, 2):
            raise ConfigError(f"relative_degree must be 1 or 2, got {relative_degree!r}")
        self.relative_degree = relative_degree
        self.alpha = _check_rates("alpha", alpha, len(self.barriers))
        self.alpha2 = None if alpha2 is None else _check_rates("alpha2", alpha2, len(self.barriers))
        nu = self.model.control_dim
        self.lb = _bound("lb", lb, nu)
        self.ub = _bound("ub", ub, nu)
        if self.lb is not None and bool((self.lb == math.inf).any()):
            raise ConfigError("lb has +inf entries")
        if self.ub is not None and bool((self.ub == -math.inf).any()):
            raise ConfigError("ub has -inf entries")
        if self.lb is not None and self.ub is not None and bool((self.lb > self.ub).any()):
            raise ConfigError("lb > ub for some entries")
        if slack_penalty is not None and (
            isinstance(slack_penalty, bool)
            or not isinstance(slack_penalty, (int, float))
            or not (math.isfinite(slack_penalty) and slack_penalty > 0)
        ):
            raise ConfigError(f"slack_penalty must be positive and finite, got {slack_penalty!r}")
        self.slack_penalty = None if slack_penalty is None else float(slack_penalty)
        if weight is not None and not isinstance(weight, Tensor):
            raise ConfigError(f"weight must be a torch tensor or None, got {type(weight).__name__}")
        self.weight = weight
        for name, value in (("tol", tol), ("slack_tol", slack_tol)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ConfigError(f"{name} must be a non-negative number, got {value!r}")
        self.tol, self.slack_tol = float(tol), float(slack_tol)
        _check_barrier_dims(self.barriers, self.model.state_dim)
        self._counts: dict[str, Any] = {}
        self._max_slack: Tensor | None = None
        self.reset_stats()

    # ---------------------------------------------------------------------------- filtering
    def rows(self, x: Tensor, atoms: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The averaged CBF rows ``(G, h)`` for states ``x`` (see :func:`cbf_rows`)."""
        return cbf_rows(
            self.model,
            self.barriers,
            x,
            atoms,
            alpha=self.alpha,
            relative_degree=self.relative_degree,
            alpha2=self.alpha2,
        )

    def margin(self, x: Tensor, u: Tensor, atoms: Tensor | None = None) -> Tensor:
        """Per-atom CBF margins at ``u``, shape (B, N, n_barriers) (see :func:`cbf_margin`)."""
        return cbf_margin(
            self.model,
            self.barriers,
            x,
            u,
            atoms,
            alpha=self.alpha,
            relative_degree=self.relative_degree,
            alpha2=self.alpha2,
        )

    def __call__(self, x: Tensor, u_ref: Tensor, atoms: Tensor | None = None) -> Tensor:
        """Safe actions for states ``x`` (B, n_x) and reference actions ``u_ref`` (B, n_u).

        1-D ``x`` and ``u_ref`` are a batch of one and give a 1-D action. ``atoms`` has shape
        (N, n_w) (shared) or (B, N, n_w); ``None`` is the nominal model.
        """
        return self.filter(x, u_ref, atoms)[0]

    def filter(
        self, x: Tensor, u_ref: Tensor, atoms: Tensor | None = None
    ) -> tuple[Tensor, FilterInfo]:
        """Like :meth:`__call__`, and also return the :class:`FilterInfo` of the call."""
        x, u_ref, atoms, squeeze = self._validate(x, u_ref, atoms)
        w = _check_atoms(self.model, atoms, x)
        a2 = self.alpha if self.alpha2 is None else self.alpha2
        G, h = _cbf_rows(
            self.model, self.barriers, x, w, self.alpha, a2, self.relative_degree, True
        )
        lb = None if self.lb is None else self.lb.to(u_ref)
        ub = None if self.ub is None else self.ub.to(u_ref)
        weight = None if self.weight is None else self.weight.to(u_ref)
        out = solve_qp(
            u_ref,
            G,
            h,
            lb=lb,
            ub=ub,
            slack_penalty=self.slack_penalty,
            weight=weight,
            return_info=True,
        )
        assert isinstance(out, tuple)
        u, qp = out
        with torch.no_grad():
            change = (u - u_ref).abs().amax(-1)
            changed = change > self.tol * (1.0 + u_ref.abs().amax(-1))
            infeasible = qp.status == int(QPStatus.INFEASIBLE)
            slack_used = (qp.slack > self.slack_tol) | infeasible
            self._update(changed, slack_used, infeasible, qp)
        info = FilterInfo(changed=changed, slack_used=slack_used, G=G, h=h, qp=qp)
        if squeeze:
            u = u.squeeze(0)
        return u, info

    def _validate(
        self, x: object, u_ref: object, atoms: object
    ) -> tuple[Tensor, Tensor, Tensor | None, bool]:
        nx, nu = self.model.state_dim, self.model.control_dim
        if not isinstance(x, Tensor):
            raise ConfigError(f"x must be a torch tensor, got {type(x).__name__}")
        if not isinstance(u_ref, Tensor):
            raise ConfigError(f"u_ref must be a torch tensor, got {type(u_ref).__name__}")
        squeeze = x.dim() == 1 and u_ref.dim() == 1
        if squeeze:
            x, u_ref = x.unsqueeze(0), u_ref.unsqueeze(0)
        x = _check_state(self.model, x)
        if u_ref.dtype != x.dtype:
            raise ConfigError(f"u_ref has dtype {u_ref.dtype}, expected {x.dtype} (that of x)")
        if u_ref.device != x.device:
            raise ConfigError(f"u_ref is on {u_ref.device}, expected {x.device} (that of x)")
        if u_ref.dim() != 2 or tuple(u_ref.shape) != (x.shape[0], nu):
            raise ConfigError(
                f"u_ref must have shape ({x.shape[0]}, {nu}) to match x of shape "
                f"({x.shape[0]}, {nx}) and control_dim {nu}, got {tuple(u_ref.shape)}"
            )
        if not bool(torch.isfinite(u_ref).all()):
            raise ConfigError("u_ref has NaN or infinite entries")
        if atoms is not None and not isinstance(atoms, Tensor):
            raise DistributionError(
                f"atoms must be a torch tensor or None, got {type(atoms).__name__}"
            )
        return x, u_ref, atoms, squeeze  # atoms are checked by cbf_rows

    # -------------------------------------------------------------------------------- stats
    def _update(self, changed: Tensor, slack_used: Tensor, infeasible: Tensor, qp: QPInfo) -> None:
        counts = self._counts
        counts["calls"] += 1
        counts["samples"] += changed.numel()
        # device tensors: no host synchronisation per call
        for key, flags in (
            ("interventions", changed),
            ("slack_used", slack_used),
            ("infeasible", infeasible),
            ("max_iter", qp.status == int(QPStatus.MAX_ITER)),
        ):
            counts[key] = counts[key] + flags.sum()
        slack = qp.slack.detach().amax()
        self._max_slack = (
            slack if self._max_slack is None else torch.maximum(self._max_slack, slack)
        )

    def reset_stats(self) -> None:
        """Reset every counter of :attr:`stats` to zero."""
        self._counts = dict.fromkeys(_STAT_KEYS, 0)
        self._max_slack = None

    @property
    def stats(self) -> dict[str, float]:
        """Counters since construction or the last :meth:`reset_stats`.

        ``calls`` (filter calls), ``samples`` (states filtered), ``interventions`` (actions
        changed), ``slack_used`` (lost certificates), ``infeasible`` (hard QP infeasible, elastic
        solution returned), ``max_iter`` (solver hit its iteration cap), ``max_slack``, and the
        rates ``intervention_rate`` and ``slack_rate`` (per sample).
        """
        out = {key: int(value) for key, value in self._counts.items()}
        samples = max(out["samples"], 1)
        result: dict[str, float] = dict(out)
        result["max_slack"] = 0.0 if self._max_slack is None else float(self._max_slack)
        result["intervention_rate"] = out["interventions"] / samples
        result["slack_rate"] = out["slack_used"] / samples
        return result

    def __repr__(self) -> str:
        return (
            f"SafetyFilter(model={self.model!r}, barriers={len(self.barriers)}, "
            f"relative_degree={self.relative_degree}, slack_penalty={self.slack_penalty})"
        )


# ------------------------------------------------------------------------------- Gymnasium
@runtime_checkable
class SafetyAwareEnv(Protocol):
    """An environment that exposes its control-affine model and its current state.

    ``control_affine_model`` must describe the environment's dynamics with the environment's
    action as the control, and ``safety_state()`` returns the current state ``x`` (shape
    ``(n_x,)``), which need not equal the observation.
    """

    control_affine_model: ControlAffineModel

    def safety_state(self) -> ArrayLike:
        """The current state, shape ``(n_x,)``."""
        ...


AtomsSource = Tensor | ArrayLike | Callable[[gym.Env[Any, Any]], ArrayLike] | None


class SafetyFilterWrapper(gym.ActionWrapper[Any, NDArray[Any], NDArray[Any]]):
    r"""Filter every action of an environment through a :class:`SafetyFilter`.

    Works with any agent (Stable-Baselines3, CleanRL, ...) on any environment whose unwrapped env
    is a :class:`SafetyAwareEnv`, or given ``state_fn`` (and ``model`` or ``safety_filter``).
    Actions are converted to float64 tensors (a batch of one), filtered without gradients, and
    cast back to the action space's dtype. The executed (filtered) action is the one the
    environment sees; ``info["safety_filter"]`` of each step reports it.

    Parameters
    ----------
    env : gymnasium.Env
        Environment with a 1-D ``Box`` action space of size ``n_u``.
    barriers : Barrier or sequence of Barrier, optional
        Barriers for a filter built here (ignored when ``safety_filter`` is given).
    safety_filter : SafetyFilter, optional
        A ready filter; otherwise one is built from ``model`` (default
        ``env.unwrapped.control_affine_model``), ``barriers`` and ``filter_kwargs``; its
        input bounds default to the action space's finite bounds.
    state_fn : callable, optional
        ``env -> x``; default ``env.unwrapped.safety_state()``.
    atoms : Tensor, array-like or callable, optional
        Uncertainty atoms (N, n_w) for the filter, or ``env -> atoms``; ``None``: nominal.
    model : ControlAffineModel, optional
        The model when the env does not expose one.
    **filter_kwargs
        Passed to :class:`SafetyFilter` (``alpha``, ``relative_degree``, ``lb``, ...).

    Attributes
    ----------
    n_actions, n_interventions, n_slack : int
        Actions filtered, actions changed, lost certificates since :meth:`reset_stats`.
    last_intervened, last_slack_used : bool
        For the most recent action.
    """

    def __init__(
        self,
        env: gym.Env[Any, Any],
        barriers: Barrier | Sequence[Barrier] | None = None,
        *,
        safety_filter: SafetyFilter | None = None,
        state_fn: Callable[[gym.Env[Any, Any]], ArrayLike] | None = None,
        atoms: AtomsSource = None,
        model: ControlAffineModel | None = None,
        **filter_kwargs: Any,
    ) -> None:
        super().__init__(env)
        space = env.action_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise ConfigError(f"SafetyFilterWrapper needs a 1-D Box action space, got {space!r}")
        base = env.unwrapped
        if safety_filter is None:
            if model is None:
                model = getattr(base, "control_affine_model", None)
                if model is None:
                    raise ConfigError(
                        "the environment exposes no control_affine_model: pass model= or "
                        "safety_filter="
                    )
            if barriers is None:
                raise ConfigError("pass barriers= (or a ready safety_filter=)")
            low, high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
            filter_kwargs.setdefault("lb", np.where(np.isfinite(low), low, -np.inf))
            filter_kwargs.setdefault("ub", np.where(np.isfinite(high), high, np.inf))
            safety_filter = SafetyFilter(model, barriers, **filter_kwargs)
        elif filter_kwargs or barriers is not None or model is not None:
            raise ConfigError("give either safety_filter= or barriers=/model=/filter options")
        if not isinstance(safety_filter, SafetyFilter):
            raise ConfigError(f"safety_filter must be a SafetyFilter, got {type(safety_filter)}")
        if safety_filter.model.control_dim != space.shape[0]:
            raise ConfigError(
                f"the model's control_dim ({safety_filter.model.control_dim}) differs from the "
                f"action space's size ({space.shape[0]})"
            )
        if state_fn is None:
            if not callable(getattr(base, "safety_state", None)):
                raise ConfigError(
                    "the environment has no safety_state() method: pass state_fn=(env -> state)"
                )
            state_fn = _default_state
        self.safety_filter = safety_filter
        self.state_fn = state_fn
        self.atoms = atoms
        self.reset_stats()

    def reset_stats(self) -> None:
        """Reset the wrapper's counters."""
        self.n_actions = 0
        self.n_interventions = 0
        self.n_slack = 0
        self.last_intervened = False
        self.last_slack_used = False

    @property
    def stats(self) -> dict[str, float]:
        """``actions``, ``interventions``, ``slack_used`` and ``intervention_rate``."""
        return {
            "actions": self.n_actions,
            "interventions": self.n_interventions,
            "slack_used": self.n_slack,
            "intervention_rate": self.n_interventions / max(self.n_actions, 1),
        }

    def _atoms(self) -> Tensor | None:
        source = self.atoms
        if source is None:
            return None
        if callable(source) and not isinstance(source, Tensor):
            source = source(self.env)
        return torch.as_tensor(np.asarray(source, dtype=np.float64))

    def action(self, action: NDArray[Any]) -> NDArray[Any]:
        """The filtered action, in the action space's dtype."""
        space = self.action_space
        assert isinstance(space, gym.spaces.Box)
        nx = self.safety_filter.model.state_dim
        u_ref = torch.as_tensor(np.asarray(action, dtype=np.float64).reshape(1, -1))
        state = np.asarray(self.state_fn(self.env), dtype=np.float64)
        if state.size != nx:
            raise ConfigError(f"state_fn returned {state.size} numbers, expected {nx} (state_dim)")
        x = torch.as_tensor(state.reshape(1, nx))
        with torch.no_grad():
            u, info = self.safety_filter.filter(x, u_ref, self._atoms())
        self.last_intervened = bool(info.changed[0])
        self.last_slack_used = bool(info.slack_used[0])
        self.n_actions += 1
        self.n_interventions += int(self.last_intervened)
        self.n_slack += int(self.last_slack_used)
        return np.asarray(u[0].numpy(), dtype=space.dtype).reshape(space.shape)

    def step(self, action: NDArray[Any]) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step with the filtered action; ``info["safety_filter"]`` reports the intervention."""
        obs, reward, terminated, truncated, info = super().step(action)
        info = dict(info)
        info["safety_filter"] = {
            "intervened": self.last_intervened,
            "slack_used": self.last_slack_used,
        }
        return obs, reward, terminated, truncated, info


def _default_state(env: gym.Env[Any, Any]) -> ArrayLike:
    base: Any = env.unwrapped
    state: ArrayLike = base.safety_state()
    return state
