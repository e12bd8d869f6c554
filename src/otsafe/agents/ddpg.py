r"""DDPG behind a differentiable CBF-QP, and distributionally safe RL (DSRL).

Reads top to bottom as the single-level pipeline of *Distributionally Safe RL under Model
Uncertainty* (DSRL seed, Sec. III-B), read with DESIGN §2:

1. the actor proposes :math:`u_{RL} = \mu(s)`, and exploration noise is added **before** the
   safety layer;
2. the safety QP rectifies it, :math:`u_r = \arg\min_u \|u - u_{RL}\|^2` s.t. the CBF condition
   averaged over the uncertainty atoms and the input bounds (:func:`otsafe.safety.solve_qp`);
3. for ``dsrl``, the atoms are the per-state **worst case** in the Wasserstein ball
   :math:`\mathcal B(\rho)` around the nominal atoms, found by projected gradient ascent
   (:func:`otsafe.safety.worst_case`). The QP and the ascent alternate (the seed's "two sequential
   modules"): QP with the nominal atoms, ascent at that rectified action, QP with the worst case;
4. the executed action :math:`u_r` is stored in the replay buffer, and the actor loss
   :math:`-Q(s, u_r(\mu(s), \omega^*))` is back-propagated **through the QP**.

The three methods compared in the seed and DESIGN §2 are the same agent with a different safety
layer: ``ddpg`` (none), ``ddpg-cbf`` (QP with the nominal atoms: uncertainty-agnostic) and
``dsrl`` (QP with the worst-case atoms).

Default worst-case loss (DESIGN §2): the negative CBF margin averaged over the atoms, at the
current rectified action held fixed; with several barriers, the smallest (binding) margin.
Option ``worst_case_loss="actor"``: :math:`L = -Q(s, u_r(\omega))` with the gradient through
the QP (the seed's literal wording).

The safety layer computes in float64 (the QP's accuracy matters for the certificate); the
networks run in float32.

Checkpoints: :meth:`DDPGAgent.state_dict` / :meth:`DDPGAgent.load_state_dict` save and restore
the networks, the optimisers, the replay buffer and every random generator, so that a resumed run
continues bit for bit (on the same device, with the same number of torch threads).
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from otsafe.agents._state import check_header
from otsafe.errors import ConfigError
from otsafe.safety.ambiguity import WassersteinBall, worst_case
from otsafe.safety.barriers import Barrier
from otsafe.safety.cbf import cbf_margin, cbf_rows
from otsafe.safety.models import ControlAffineModel
from otsafe.safety.qp import solve_qp

__all__ = [
    "DDPGAgent",
    "DDPGConfig",
    "ReplayBuffer",
    "SafetyConfig",
    "SafetyLayer",
]

SafetyMode = Literal["none", "nominal", "worst"]
WorstCaseLoss = Literal["margin", "actor"]

# Checkpoints (DDPGAgent.state_dict): the format's name and version.
STATE_KIND = "otsafe.agents.DDPGAgent"
STATE_VERSION = 1
_STATE_KEYS = (
    "spec",
    "settings",
    "actor",
    "critic",
    "actor_target",
    "critic_target",
    "actor_opt",
    "critic_opt",
    "steps",
    "rng",
    "buffer",
    "torch_rng_state",
    "cuda_rng_state",
)


# ----------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class DDPGConfig:
    """DDPG hyperparameters (Lillicrap et al. 2016), CleanRL-style defaults."""

    hidden: tuple[int, ...] = (128, 128)
    actor_lr: float = 1e-3
    critic_lr: float = 1e-3
    gamma: float = 0.99
    tau: float = 0.005
    batch_size: int = 128
    buffer_size: int = 100_000
    learning_starts: int = 1_000
    exploration_noise: float = 0.1  # std, as a fraction of half the action range
    updates_per_step: int = 1

    def __post_init__(self) -> None:
        for name in ("actor_lr", "critic_lr", "tau", "exploration_noise"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"agent.{name} must be finite and >= 0, got {value!r}")
        if not 0 <= self.gamma <= 1:
            raise ConfigError(f"agent.gamma must lie in [0, 1], got {self.gamma!r}")
        if not 0 < self.tau <= 1:
            raise ConfigError(f"agent.tau must lie in (0, 1], got {self.tau!r}")
        for name in ("batch_size", "buffer_size", "updates_per_step"):
            if getattr(self, name) < 1:
                raise ConfigError(f"agent.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.learning_starts < 0:
            raise ConfigError(f"agent.learning_starts must be >= 0, got {self.learning_starts}")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ConfigError(f"agent.hidden must be positive layer sizes, got {self.hidden}")


@dataclass(frozen=True)
class SafetyConfig:
    """The safety layer: CBF rows, the QP, the atoms and the worst-case search."""

    mode: SafetyMode = "worst"
    alpha: float = 1.0
    alpha2: float | None = None  # HOCBF: alpha_2 (relative degree 2); None uses alpha
    relative_degree: int = 1
    n_atoms: int = 16
    radius: float = 0.2  # rho of the Wasserstein ball
    order: Literal[1, 2] = 1
    ascent_steps: int = 3
    ascent_step_size: float = 1.0
    worst_case_loss: WorstCaseLoss = "margin"
    alternations: int = 1
    slack_penalty: float | None = None  # None: hard rows; elastic fallback only if infeasible
    weight: tuple[float, ...] | None = None  # diagonal W of ||u - u_RL||_W^2 (None: identity)
    backend: Literal["native", "cvxpylayers"] = "native"  # QP solver (cvxpylayers: reference)

    def __post_init__(self) -> None:
        if self.mode not in ("none", "nominal", "worst"):
            raise ConfigError(f"safety.mode must be none, nominal or worst, got {self.mode!r}")
        if self.relative_degree not in (1, 2):
            raise ConfigError(f"safety.relative_degree must be 1 or 2, got {self.relative_degree}")
        if not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise ConfigError(f"safety.alpha must be positive, got {self.alpha!r}")
        if self.n_atoms < 1:
            raise ConfigError(f"safety.n_atoms must be >= 1, got {self.n_atoms}")
        if not (self.radius >= 0 and math.isfinite(self.radius)):
            raise ConfigError(f"safety.radius must be finite and >= 0, got {self.radius!r}")
        if self.worst_case_loss not in ("margin", "actor"):
            raise ConfigError(
                f"safety.worst_case_loss must be margin or actor, got {self.worst_case_loss!r}"
            )
        if self.ascent_steps < 0 or self.alternations < 1:
            raise ConfigError("safety.ascent_steps must be >= 0 and safety.alternations >= 1")


# ------------------------------------------------------------------------------ safety layer
@dataclass
class SafetyOutput:
    """The rectified action and what the layer did, per batch row."""

    action: Tensor  # (B, n_u)
    changed: Tensor  # (B,) bool: |u_r - u_ref| above tolerance
    slack: Tensor  # (B,) slack of the QP (0 without)
    atoms: Tensor | None  # (B, N, n_w) atoms used in the final QP


class SafetyLayer:
    """The CBF-QP filter with nominal or worst-case atoms (see the module docstring).

    Parameters
    ----------
    model : ControlAffineModel
        Batched dynamics :math:`f, g, D`.
    barriers : sequence of Barrier
        Safe set :math:`\\{h_j \\ge 0\\}`.
    low, high : array-like
        Action bounds (also QP bounds).
    config : SafetyConfig
    nominal_atoms : Tensor, shape (N, n_w)
        Samples of the nominal uncertainty :math:`p_0`.
    """

    def __init__(
        self,
        model: ControlAffineModel,
        barriers: Sequence[Barrier],
        low: NDArray[np.float64],
        high: NDArray[np.float64],
        config: SafetyConfig,
        nominal_atoms: Tensor,
    ) -> None:
        self.model = model
        self.barriers = list(barriers)
        self.config = config
        self.dtype = nominal_atoms.dtype
        self.device = nominal_atoms.device
        self.low = torch.as_tensor(low, dtype=self.dtype, device=self.device)
        self.high = torch.as_tensor(high, dtype=self.dtype, device=self.device)
        self.nominal_atoms = nominal_atoms
        self.weight = (
            None
            if config.weight is None
            else torch.as_tensor(config.weight, dtype=self.dtype, device=self.device)
        )
        alpha2 = config.alpha2 if config.alpha2 is not None else config.alpha
        self.rates: dict[str, Any] = {
            "alpha": config.alpha,
            "relative_degree": config.relative_degree,
            "alpha2": alpha2 if config.relative_degree == 2 else None,
        }

    def _atoms(self, batch: int) -> Tensor:
        return self.nominal_atoms.unsqueeze(0).expand(batch, -1, -1)

    def rows(self, x: Tensor) -> CBFRows:
        """The CBF rows of states ``x``, reusable for any atoms and actions."""
        return CBFRows(self.model, self.barriers, x, self.rates)

    def qp(self, rows: CBFRows, u_ref: Tensor, atoms: Tensor) -> tuple[Tensor, Tensor]:
        """Rectified action for rows averaged over ``atoms`` (differentiable), and the slack."""
        G, h = rows.averaged(atoms)
        if self.config.backend == "cvxpylayers":  # the reference pipeline of the benchmarks
            u_ref_layer = solve_qp(
                u_ref,
                G,
                h,
                self.low,
                self.high,
                slack_penalty=self.config.slack_penalty,
                backend="cvxpylayers",
            )
            assert isinstance(u_ref_layer, Tensor)
            return u_ref_layer, torch.zeros_like(u_ref_layer[:, 0])
        u, info = solve_qp(
            u_ref,
            G,
            h,
            self.low,
            self.high,
            slack_penalty=self.config.slack_penalty,
            weight=self.weight,
            return_info=True,
        )
        return u, info.slack

    def margin_loss(self, rows: CBFRows, u_fixed: Tensor) -> Callable[[Tensor], Tensor]:
        """DESIGN §2 default loss: minus the smallest atom-averaged CBF margin at ``u_fixed``."""

        def loss(atoms: Tensor) -> Tensor:
            return -rows.margins(u_fixed, atoms).mean(dim=1).amin(dim=-1)

        return loss

    def margin_loss_grad(self, rows: CBFRows, u_fixed: Tensor) -> Callable[[Tensor], Tensor] | None:
        r"""Closed-form gradient of :meth:`margin_loss` with respect to the atoms, when the rows
        are affine in the atom (else None: autograd).

        With :math:`\bar m_j = c_j + \ell_j^\top\bar\omega` the atom-averaged margin of
        barrier :math:`j` (:math:`\ell_j` its row of ``rows.ld``), the loss
        :math:`-\min_j \bar m_j` has gradient :math:`-\frac1N\sum_j w_j \ell_j` for every atom,
        :math:`w` splitting the weight equally between the binding barriers (as autograd's
        ``amin`` does).
        """
        if not rows.affine:
            return None
        base = rows.h0 - (rows.G @ u_fixed.unsqueeze(-1)).squeeze(-1)  # (B, J)

        def grad(atoms: Tensor) -> Tensor:
            mean = base + (atoms.mean(1).unsqueeze(1) @ rows.ld.transpose(1, 2)).squeeze(1)
            binding = (mean == mean.amin(-1, keepdim=True)).to(mean.dtype)  # (B, J)
            weights = binding / binding.sum(-1, keepdim=True)
            per_atom = -(weights.unsqueeze(1) @ rows.ld) / atoms.shape[1]  # (B, 1, n_w)
            return per_atom.expand_as(atoms)

        return grad

    def actor_loss(
        self, rows: CBFRows, u_ref: Tensor, q_fn: Callable[[Tensor], Tensor]
    ) -> Callable[[Tensor], Tensor]:
        """Option ``actor``: minus the critic at the rectified action, through the QP."""

        def loss(atoms: Tensor) -> Tensor:
            u, _ = self.qp(rows, u_ref, atoms)
            return -q_fn(u)

        return loss

    def prepare(
        self, x: Tensor, u_ref: Tensor, q_fn: Callable[[Tensor], Tensor] | None = None
    ) -> tuple[CBFRows, Tensor]:
        """Rows of the states and the atoms of the final QP (nominal, or the worst case found
        by alternating QP and ascent); no gradients."""
        cfg = self.config
        rows = self.rows(x)
        atoms = self._atoms(x.shape[0])
        if cfg.mode != "worst" or cfg.radius == 0:
            return rows, atoms
        with torch.no_grad():
            u_fixed, _ = self.qp(rows, u_ref.detach(), atoms)
        ball = WassersteinBall(atoms, cfg.radius, order=cfg.order)
        for k in range(cfg.alternations):  # ascent at u_r, then the QP with the worst case
            grad_fn = None
            if cfg.worst_case_loss == "actor" and q_fn is not None:
                loss = self.actor_loss(rows, u_ref.detach(), q_fn)
            else:
                loss = self.margin_loss(rows, u_fixed)
                grad_fn = self.margin_loss_grad(rows, u_fixed)
            atoms = worst_case(
                loss,
                ball,
                steps=cfg.ascent_steps,
                step_size=cfg.ascent_step_size,
                init=atoms,
                grad_fn=grad_fn,
            )
            if k + 1 < cfg.alternations:
                with torch.no_grad():
                    u_fixed, _ = self.qp(rows, u_ref.detach(), atoms)
        return rows, atoms

    def solve(
        self, rows: CBFRows, u_ref: Tensor, atoms: Tensor, differentiable: bool = False
    ) -> SafetyOutput:
        """The final QP with the prepared rows and atoms."""
        if differentiable:
            u, slack = self.qp(rows, u_ref, atoms)
        else:
            with torch.no_grad():
                u, slack = self.qp(rows, u_ref, atoms)
        scale = 1.0 + u_ref.detach().abs().amax(-1)
        changed = (u.detach() - u_ref.detach()).abs().amax(-1) > 1e-6 * scale
        return SafetyOutput(u, changed, slack.detach(), atoms)

    def clip(self, u_ref: Tensor) -> SafetyOutput:
        """No safety layer (``ddpg``): the action clipped to its bounds."""
        batch = u_ref.shape[0]
        u = torch.minimum(torch.maximum(u_ref, self.low), self.high)
        zeros = torch.zeros(batch, dtype=torch.bool, device=u_ref.device)
        return SafetyOutput(
            u, zeros, torch.zeros(batch, dtype=u_ref.dtype, device=u_ref.device), None
        )

    def __call__(
        self,
        x: Tensor,
        u_ref: Tensor,
        q_fn: Callable[[Tensor], Tensor] | None = None,
        differentiable: bool = False,
    ) -> SafetyOutput:
        """Rectify ``u_ref`` at states ``x`` (float64 tensors (B, n_x), (B, n_u)).

        With ``differentiable`` the result carries gradients to ``u_ref`` (through the QP).
        """
        if self.config.mode == "none":
            return self.clip(u_ref)
        rows, atoms = self.prepare(x, u_ref, q_fn)
        return self.solve(rows, u_ref, atoms, differentiable)


class CBFRows:
    r"""The CBF conditions of a batch of states, evaluated once and reused across atoms.

    When the per-atom margin is affine in the atom,
    :math:`m_{ij} = h^0_j - (G u)_j + L_D h_j\,\omega_i` with :math:`G` independent of the atom,
    the rows are evaluated once at a few probe atoms, and every later average or margin is a
    small tensor product, so the worst-case ascent costs no more Lie derivatives. This holds for
    every first-order CBF (:math:`m = L_f h + L_g h\,u + L_D h\,\omega + \alpha h`), and for a
    HOCBF whenever :math:`\nabla^2 h\, D = 0` and :math:`D` is constant (e.g. the quadrotor:
    position barriers, gusts on the acceleration). Affinity is not assumed but checked exactly on
    the probes :math:`0, e_k, 2e_k` and one generic point. Otherwise (a HOCBF quadratic in the
    atom) the rows fall back to :func:`cbf_rows` and :func:`cbf_margin`.
    """

    def __init__(
        self,
        model: ControlAffineModel,
        barriers: list[Barrier],
        x: Tensor,
        rates: dict[str, Any],
    ) -> None:
        self.model, self.barriers, self.x, self.rates = model, barriers, x, rates
        nw = model.disturbance_dim
        eye = torch.eye(nw, dtype=x.dtype, device=x.device)
        generic = torch.linspace(0.3, 1.1, nw, dtype=x.dtype, device=x.device)
        probe = torch.cat(
            [torch.zeros(1, nw, dtype=x.dtype, device=x.device), eye, 2 * eye, generic[None]]
        )
        g_all, h_all = cbf_rows(model, barriers, x, probe, reduce="none", **rates)
        self.G = g_all[:, 0]  # (B, J, n_u)
        self.h0 = h_all[:, 0]  # (B, J)
        self.ld = (h_all[:, 1 : 1 + nw] - h_all[:, :1]).transpose(1, 2)  # (B, J, n_w)
        predicted = self.h0.unsqueeze(1) + (probe[1:] @ self.ld.transpose(1, 2))  # (B, P-1, J)
        scale = 1.0 + h_all.abs().amax() + self.ld.abs().amax()
        tol = 1e-9 * float(scale.detach())
        self.affine = bool(
            ((g_all - self.G.unsqueeze(1)).abs().amax() <= tol)
            and ((h_all[:, 1:] - predicted).abs().amax() <= tol)
        )

    def split(self, k: int) -> tuple[CBFRows, CBFRows]:
        """The rows of the first ``k`` states and of the rest."""
        parts = []
        for sl in (slice(0, k), slice(k, None)):
            part = copy.copy(self)
            part.x = self.x[sl]
            part.G, part.h0, part.ld = self.G[sl], self.h0[sl], self.ld[sl]
            parts.append(part)
        return parts[0], parts[1]

    def averaged(self, atoms: Tensor) -> tuple[Tensor, Tensor]:
        """Rows ``(G, h)`` averaged over ``atoms`` (B, N, n_w)."""
        if self.affine:
            mean = atoms.mean(1).unsqueeze(-1)  # (B, n_w, 1)
            return self.G, self.h0 + (self.ld @ mean).squeeze(-1)
        return cbf_rows(self.model, self.barriers, self.x, atoms, **self.rates)

    def margins(self, u: Tensor, atoms: Tensor) -> Tensor:
        """Per-atom margins ``h - G u`` at the action ``u``, shape (B, N, J)."""
        if self.affine:
            base = self.h0 - (self.G @ u.unsqueeze(-1)).squeeze(-1)  # (B, J)
            return base.unsqueeze(1) + atoms @ self.ld.transpose(1, 2)
        return cbf_margin(self.model, self.barriers, self.x, u, atoms, **self.rates)


# --------------------------------------------------------------------------------- networks
def _mlp(sizes: Sequence[int], out_act: nn.Module | None = None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    if out_act is not None:
        layers.append(out_act)
    return nn.Sequential(*layers)


class Actor(nn.Module):
    """Deterministic policy :math:`\\mu(s)` squashed into the action box."""

    def __init__(
        self,
        obs_dim: int,
        low: NDArray[np.float64],
        high: NDArray[np.float64],
        hidden: Sequence[int],
    ) -> None:
        super().__init__()
        self.net = _mlp([obs_dim, *hidden, len(low)], nn.Tanh())
        self.register_buffer("mid", torch.as_tensor((high + low) / 2, dtype=torch.float32))
        self.register_buffer("radius", torch.as_tensor((high - low) / 2, dtype=torch.float32))

    def forward(self, obs: Tensor) -> Tensor:
        out: Tensor = self.mid + self.radius * self.net(obs)
        return out


class Critic(nn.Module):
    """:math:`Q(s, a)`."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.net = _mlp([obs_dim + act_dim, *hidden, 1])

    def forward(self, obs: Tensor, act: Tensor) -> Tensor:
        out: Tensor = self.net(torch.cat([obs, act], dim=-1)).squeeze(-1)
        return out


# ----------------------------------------------------------------------------------- replay
@dataclass
class ReplayBuffer:
    """Transitions (observation, state for the safety layer, executed action, reward, next)."""

    obs_dim: int
    state_dim: int
    act_dim: int
    capacity: int
    rng: np.random.Generator
    size: int = 0
    pos: int = 0
    data: dict[str, NDArray[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        c = self.capacity
        self.data = {
            "obs": np.zeros((c, self.obs_dim), np.float32),
            "state": np.zeros((c, self.state_dim), np.float64),
            "action": np.zeros((c, self.act_dim), np.float64),
            "reward": np.zeros(c, np.float32),
            "next_obs": np.zeros((c, self.obs_dim), np.float32),
            "next_state": np.zeros((c, self.state_dim), np.float64),
            "done": np.zeros(c, np.float32),
        }

    def add(self, **transition: Any) -> None:
        for key, value in transition.items():
            self.data[key][self.pos] = value
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch: int) -> dict[str, NDArray[Any]]:
        idx = self.rng.integers(0, self.size, size=batch)
        return {key: value[idx] for key, value in self.data.items()}

    def state_dict(self) -> dict[str, Any]:
        """A snapshot: the filled rows of the arrays, ``pos``, ``size`` and the sampler's state.

        Returns
        -------
        dict
            ``"capacity"``, ``"size"``, ``"pos"``, ``"rng"`` (the ``bit_generator.state`` of the
            sampling generator) and ``"data"``: per field, a copy of its first ``size`` rows
            (the rows written so far; all of them once the buffer has wrapped around).
        """
        return {
            "capacity": int(self.capacity),
            "size": int(self.size),
            "pos": int(self.pos),
            "rng": copy.deepcopy(self.rng.bit_generator.state),
            "data": {key: value[: self.size].copy() for key, value in self.data.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a snapshot of :meth:`state_dict` into this (empty or used) buffer.

        Parameters
        ----------
        state : mapping
            What :meth:`state_dict` returned; it is copied, not referenced.

        Raises
        ------
        ConfigError
            If the capacity, the fields or their row shapes and dtypes differ from this buffer's,
            or the generator state does not fit. The buffer is unchanged then.
        """
        self.apply_state(self.checked_state(state))

    def checked_state(self, state: Any) -> _BufferState:
        """Check a snapshot of :meth:`state_dict` against this buffer (nothing is changed).

        Raises
        ------
        ConfigError
            See :meth:`load_state_dict`.
        """
        try:
            capacity, size, pos = int(state["capacity"]), int(state["size"]), int(state["pos"])
            data = state["data"]
            rng_state = state["rng"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"cannot load the replay buffer: malformed state ({exc!r})") from None
        if capacity != self.capacity:
            raise ConfigError(
                f"cannot load the replay buffer: capacity {capacity}, this agent's is "
                f"{self.capacity} (agent.buffer_size)"
            )
        if not (0 <= size <= capacity and 0 <= pos < capacity) or (size < capacity and pos != size):
            raise ConfigError(
                f"cannot load the replay buffer: inconsistent size={size}, pos={pos} for "
                f"capacity {capacity}"
            )
        if not isinstance(data, Mapping) or set(data) != set(self.data):
            got = sorted(data) if isinstance(data, Mapping) else type(data).__name__
            raise ConfigError(
                f"cannot load the replay buffer: fields {got}, expected {sorted(self.data)}"
            )
        rows: dict[str, NDArray[Any]] = {}
        for key, mine in self.data.items():
            value = np.asarray(data[key])
            expected = (size, *mine.shape[1:])
            if value.shape != expected or value.dtype != mine.dtype:
                raise ConfigError(
                    f"cannot load the replay buffer: {key!r} is {value.dtype}{list(value.shape)}, "
                    f"this agent needs {mine.dtype}{list(expected)}"
                )
            rows[key] = value
        rng = copy.deepcopy(self.rng)
        try:
            rng.bit_generator.state = copy.deepcopy(dict(rng_state))
        except (TypeError, ValueError, KeyError) as exc:
            raise ConfigError(
                f"cannot load the replay buffer: bad generator state ({exc})"
            ) from None
        return _BufferState(size=size, pos=pos, rows=rows, rng=rng)

    def apply_state(self, checked: _BufferState) -> None:
        """Restore a snapshot checked by :meth:`checked_state` (copies its rows)."""
        for key, value in checked.rows.items():
            self.data[key][: checked.size] = value
            self.data[key][checked.size :] = 0
        self.size, self.pos, self.rng = checked.size, checked.pos, copy.deepcopy(checked.rng)


@dataclass(frozen=True)
class _BufferState:
    """A replay-buffer snapshot that :meth:`ReplayBuffer.checked_state` found to fit."""

    size: int
    pos: int
    rows: dict[str, NDArray[Any]]
    rng: np.random.Generator


# ------------------------------------------------------------------------------------ agent
class DDPGAgent:
    """DDPG whose actions pass through a :class:`SafetyLayer` (``ddpg``/``ddpg-cbf``/``dsrl``).

    Parameters
    ----------
    obs_dim : int
    low, high : array-like
        Action bounds.
    safety : SafetyLayer
        ``mode="none"`` gives plain DDPG.
    config : DDPGConfig
    seed : int
        Seeds the networks, the replay sampling and the exploration noise.
    """

    def __init__(
        self,
        obs_dim: int,
        low: NDArray[np.float64],
        high: NDArray[np.float64],
        safety: SafetyLayer,
        config: DDPGConfig,
        seed: int = 0,
    ) -> None:
        self.config = config
        self.safety = safety
        self.low = np.asarray(low, dtype=np.float64)
        self.high = np.asarray(high, dtype=np.float64)
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
        self.device = safety.device  # networks live where the safety layer does
        self.actor = Actor(obs_dim, self.low, self.high, config.hidden).to(self.device)
        self.critic = Critic(obs_dim, len(self.low), config.hidden).to(self.device)
        self.actor_target = copy.deepcopy(self.actor)
        self.critic_target = copy.deepcopy(self.critic)
        # The fused Adam kernel (CPU and CUDA): the same update in one kernel per step.
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr, fused=True)
        self.critic_opt = torch.optim.Adam(
            self.critic.parameters(), lr=config.critic_lr, fused=True
        )
        self.buffer = ReplayBuffer(
            obs_dim,
            safety.model.state_dim,
            len(self.low),
            config.buffer_size,
            np.random.default_rng(np.random.SeedSequence([seed, 2])),
        )
        self.steps = 0

    # ------------------------------------------------------------------------------ acting
    def act(
        self, obs: NDArray[Any], state: NDArray[Any], explore: bool = True
    ) -> tuple[NDArray[np.float64], SafetyOutput]:
        """Executed action for one observation: policy (+ noise) -> safety layer."""
        half = (self.high - self.low) / 2
        if explore and self.steps < self.config.learning_starts:
            u_ref = self.rng.uniform(self.low, self.high)
        else:
            with torch.no_grad():
                obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device)[None]
                u_ref = self.actor(obs_t)[0].cpu().numpy()
            u_ref = u_ref.astype(np.float64)
            if explore:  # noise before the safety layer
                u_ref = u_ref + self.rng.normal(0.0, self.config.exploration_noise * half)
        u_ref = np.clip(u_ref, self.low, self.high)
        x = torch.as_tensor(state, dtype=self.safety.dtype, device=self.device)[None]
        q_fn = self._q_fn(obs[None]) if self.safety.config.worst_case_loss == "actor" else None
        u_t = torch.as_tensor(u_ref, dtype=self.safety.dtype, device=self.device)[None]
        out = self.safety(x, u_t, q_fn)
        return out.action[0].detach().cpu().numpy(), out

    def _q_fn(self, obs: NDArray[Any]) -> Callable[[Tensor], Tensor]:
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device)

        def q(u: Tensor) -> Tensor:
            value: Tensor = self.critic(obs_t, u.to(torch.float32)).to(u.dtype)
            return value

        return q

    def observe(self, **transition: Any) -> None:
        """Store a transition (keys: obs, state, action, reward, next_obs, next_state, done)."""
        self.buffer.add(**transition)
        self.steps += 1

    # ----------------------------------------------------------------------------- learning
    def update(self) -> dict[str, float]:
        """One DDPG update; the target and the actor loss both go through the safety layer."""
        cfg = self.config
        if self.buffer.size < max(cfg.batch_size, cfg.learning_starts):
            return {}
        b = self.buffer.sample(cfg.batch_size)
        dev = self.device
        obs = torch.as_tensor(b["obs"], device=dev)
        next_obs = torch.as_tensor(b["next_obs"], device=dev)
        action = torch.as_tensor(b["action"], dtype=torch.float32, device=dev)
        reward = torch.as_tensor(b["reward"], device=dev)
        done = torch.as_tensor(b["done"], device=dev)
        dt = self.safety.dtype
        state = torch.as_tensor(b["state"], dtype=dt, device=dev)
        next_state = torch.as_tensor(b["next_state"], dtype=dt, device=dev)

        # One safety pass for the target states s' and the actor's states s (the worst case
        # for both in one batched ascent; the "actor" worst-case loss needs separate critics).
        with torch.no_grad():
            next_ref = self.actor_target(next_obs).to(dt)
        u_ref = self.actor(obs).to(dt)
        layer = self.safety
        if layer.config.mode == "none":
            next_u = layer.clip(next_ref).action
            rectified = layer.clip(u_ref).action
        elif layer.config.worst_case_loss == "actor" and layer.config.mode == "worst":
            next_u = layer(next_state, next_ref, self._target_q(next_obs)).action
            rectified = layer(state, u_ref, self._q_fn(b["obs"]), differentiable=True).action
        else:
            rows, atoms = layer.prepare(
                torch.cat([next_state, state]), torch.cat([next_ref, u_ref.detach()])
            )
            half = cfg.batch_size
            if layer.config.backend == "native":
                # One final QP for both halves: rows are independent problems, and only the
                # actor's half carries a graph (next_ref has none).
                both = layer.solve(rows, torch.cat([next_ref, u_ref]), atoms, differentiable=True)
                next_u, rectified = both.action[:half].detach(), both.action[half:]
            else:  # cvxpylayers differentiates every row it is given: the targets' half apart
                rows_next, rows_now = rows.split(half)
                next_u = layer.solve(rows_next, next_ref, atoms[:half]).action
                rectified = layer.solve(rows_now, u_ref, atoms[half:], differentiable=True).action

        # Critic: y = r + gamma (1 - done) Q'(s', u_r(mu'(s')))  (the target policy is filtered).
        with torch.no_grad():
            target = reward + cfg.gamma * (1 - done) * self.critic_target(
                next_obs, next_u.to(torch.float32)
            )
        critic_loss = nn.functional.mse_loss(self.critic(obs, action), target)
        self.critic_opt.zero_grad()
        critic_loss.backward()  # type: ignore[no-untyped-call]
        self.critic_opt.step()

        # Actor: -Q(s, u_r(mu(s), omega*)), back-propagated through the QP.
        actor_loss = -self.critic(obs, rectified.to(torch.float32)).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()

        with torch.no_grad():  # Polyak averaging: theta' <- theta' + tau (theta - theta')
            for net, tgt in ((self.actor, self.actor_target), (self.critic, self.critic_target)):
                for p, tp in zip(net.parameters(), tgt.parameters(), strict=True):
                    tp.lerp_(p, cfg.tau)
        return {"critic_loss": critic_loss.item(), "actor_loss": actor_loss.item()}

    def _target_q(self, next_obs: Tensor) -> Callable[[Tensor], Tensor]:
        def q(u: Tensor) -> Tensor:
            value: Tensor = self.critic_target(next_obs, u.to(torch.float32)).to(u.dtype)
            return value

        return q

    # --------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """A snapshot of everything that evolves during training, for checkpoints.

        A fresh agent built with the same arguments that loads it with :meth:`load_state_dict`
        continues exactly (bit for bit, on the same device and number of torch threads) like this
        one. The snapshot shares no tensor or array with the agent (later training does not change
        it), and it survives ``torch.save``/``torch.load(weights_only=False)`` and :mod:`pickle`.

        Returns
        -------
        dict
            ``"version"`` (1) and ``"kind"`` (:data:`STATE_KIND`); ``"spec"`` (dimensions, action
            bounds, layer sizes) and ``"settings"`` (hyperparameters, safety layer, a fingerprint
            of the nominal atoms), both checked on loading; the ``state_dict()`` of ``"actor"``,
            ``"critic"``, ``"actor_target"``, ``"critic_target"``, ``"actor_opt"`` and
            ``"critic_opt"``; ``"steps"``; ``"rng"``, the ``bit_generator.state`` of the
            exploration generator; ``"buffer"`` (:meth:`ReplayBuffer.state_dict`);
            ``"torch_rng_state"`` (:func:`torch.get_rng_state`: the global generator that
            ``__init__`` seeds) and ``"cuda_rng_state"`` (that of the agent's GPU, or None on the
            CPU).

        Notes
        -----
        The safety layer has no state that evolves (its atoms are fixed; the QP's and the worst
        case's caches hold only index tables), so it is checked, not saved.
        """
        cuda_rng = None
        if self.device.type == "cuda":
            cuda_rng = torch.cuda.get_rng_state(self.device)
        return {
            "version": STATE_VERSION,
            "kind": STATE_KIND,
            "spec": self._spec(),
            "settings": self._settings(),
            "actor": _snapshot(self.actor.state_dict()),
            "critic": _snapshot(self.critic.state_dict()),
            "actor_target": _snapshot(self.actor_target.state_dict()),
            "critic_target": _snapshot(self.critic_target.state_dict()),
            "actor_opt": _snapshot(self.actor_opt.state_dict()),
            "critic_opt": _snapshot(self.critic_opt.state_dict()),
            "steps": int(self.steps),
            "rng": copy.deepcopy(self.rng.bit_generator.state),
            "buffer": self.buffer.state_dict(),
            "torch_rng_state": torch.get_rng_state(),
            "cuda_rng_state": cuda_rng,
        }

    def load_state_dict(self, state: Mapping[str, Any], *, strict: bool = True) -> None:
        """Restore a snapshot taken by :meth:`state_dict`; training then continues exactly.

        Also sets torch's global random state (:func:`torch.set_rng_state`, and the CUDA one on a
        GPU) to the saved one, as an uninterrupted run would have it.

        Parameters
        ----------
        state : mapping
            What :meth:`state_dict` returned (possibly through ``torch.save``/``torch.load``;
            tensors saved on another device are moved to the agent's). It is not modified, and
            the agent shares no tensor or array with it afterwards.
        strict : bool
            Also require the hyperparameters and the safety layer recorded in
            ``state["settings"]`` to equal this agent's, which an exact continuation needs. With
            ``False`` only the structure is checked (kind, version, dimensions, action bounds,
            layer sizes, replay capacity).

        Raises
        ------
        ConfigError
            If ``state`` is not a DDPGAgent state of this format version, was taken by an agent
            of other dimensions, bounds or layer sizes (e.g. of another environment), does not fit
            the networks, optimisers or replay buffer, or (``strict``) was taken with other
            settings. The agent is unchanged then.
        """
        check_header(state, STATE_KIND, STATE_VERSION, _STATE_KEYS)
        spec = self._spec()
        saved = state["spec"]
        if not isinstance(saved, Mapping) or dict(saved) != spec:
            raise ConfigError(
                "cannot load the state: it was taken by a different agent ("
                + _describe_diff(saved, spec)
                + "); is it from another environment?"
            )
        if strict:
            mine = self._settings()
            if state["settings"] != mine:
                raise ConfigError(
                    "cannot load the state: it was taken with other settings, so the run would "
                    "not continue exactly (" + _describe_diff(state["settings"], mine) + "); "
                    "build the agent with the saved settings, or pass strict=False"
                )
        # Check everything first (loading into copies), so that a failure leaves the agent as it
        # was; then load into the agent's own networks and optimisers (references to them, e.g.
        # held by a caller, stay valid).
        nets: dict[str, nn.Module] = {
            "actor": self.actor,
            "critic": self.critic,
            "actor_target": self.actor_target,
            "critic_target": self.critic_target,
        }
        trial = {name: copy.deepcopy(net) for name, net in nets.items()}
        for name, net in trial.items():
            try:
                net.load_state_dict(_to_device(state[name], self.device))
            except (RuntimeError, KeyError, TypeError, AttributeError) as exc:
                raise ConfigError(f"cannot load the state: {name} does not fit ({exc})") from None
        opts = {"actor_opt": self.actor_opt, "critic_opt": self.critic_opt}
        for name, net_name in (("actor_opt", "actor"), ("critic_opt", "critic")):
            opt = torch.optim.Adam(trial[net_name].parameters())
            try:
                opt.load_state_dict(_to_device(state[name], self.device))
            except (ValueError, RuntimeError, KeyError, TypeError, AttributeError) as exc:
                raise ConfigError(f"cannot load the state: {name} does not fit ({exc})") from None
        buffer = self.buffer.checked_state(state["buffer"])
        rng = copy.deepcopy(self.rng)
        try:
            rng.bit_generator.state = copy.deepcopy(dict(state["rng"]))
            steps = int(state["steps"])
            torch_rng = torch.as_tensor(state["torch_rng_state"], dtype=torch.uint8).cpu().clone()
            cuda_rng = state["cuda_rng_state"]
            if cuda_rng is not None:
                cuda_rng = torch.as_tensor(cuda_rng, dtype=torch.uint8).cpu().clone()
        except (TypeError, ValueError, KeyError, RuntimeError) as exc:
            raise ConfigError(f"cannot load the state: bad generator state ({exc})") from None
        if steps < 0:
            raise ConfigError(f"cannot load the state: steps={steps} is negative")
        # Everything fits: restore.
        for name, net in nets.items():
            net.load_state_dict(_to_device(state[name], self.device))
        for name, opt in opts.items():
            opt.load_state_dict(_to_device(state[name], self.device))
        self.buffer.apply_state(buffer)
        self.rng, self.steps = rng, steps
        torch.set_rng_state(torch_rng)
        if cuda_rng is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(cuda_rng, self.device)

    def _spec(self) -> dict[str, Any]:
        """What the shapes of the networks and the buffer depend on (plain Python values)."""
        return {
            "obs_dim": int(self.buffer.obs_dim),
            "state_dim": int(self.buffer.state_dim),
            "act_dim": int(self.buffer.act_dim),
            "low": [float(v) for v in self.low],
            "high": [float(v) for v in self.high],
            "hidden": [int(h) for h in self.config.hidden],
            "buffer_size": int(self.config.buffer_size),
        }

    def _settings(self) -> dict[str, Any]:
        """The hyperparameters and the safety layer an exact continuation needs unchanged."""
        atoms = self.safety.nominal_atoms.detach().cpu().contiguous().numpy()
        safety = asdict(self.safety.config)
        if safety["weight"] is not None:
            safety["weight"] = list(safety["weight"])
        agent = asdict(self.config)
        agent["hidden"] = list(agent["hidden"])
        return {
            "agent": agent,
            "safety": safety,
            "model": type(self.safety.model).__name__,
            "barriers": [type(b).__name__ for b in self.safety.barriers],
            "atoms": hashlib.sha256(
                repr((atoms.shape, str(atoms.dtype))).encode() + atoms.tobytes()
            ).hexdigest(),
            "device": str(self.device),
        }


def _snapshot(value: Any) -> Any:
    """A deep copy of a (nested) state dict whose tensors share no storage with the original."""
    return copy.deepcopy(value)


def _to_device(value: Any, device: torch.device) -> Any:
    """A deep copy of a (nested) state dict with its tensors moved to ``device``.

    Optimiser state keeps its ``step`` counters on the CPU (as torch's Adam does).
    """
    if isinstance(value, Tensor):
        return value.detach().to(device=device, copy=True)
    if isinstance(value, Mapping):
        out = OrderedDict(
            (k, v.clone() if k == "step" and isinstance(v, Tensor) else _to_device(v, device))
            for k, v in value.items()
        )
        metadata = getattr(value, "_metadata", None)  # nn.Module.state_dict's version record
        if metadata is not None:
            setattr(out, "_metadata", copy.deepcopy(metadata))  # noqa: B010
        return out
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    if isinstance(value, tuple):
        return tuple(_to_device(v, device) for v in value)
    return copy.deepcopy(value)


def _describe_diff(saved: Any, mine: Mapping[str, Any]) -> str:
    """``key: saved X, here Y`` for each differing entry of two flat-ish dicts."""
    if not isinstance(saved, Mapping):
        return f"malformed record {type(saved).__name__}"
    keys = sorted(set(saved) | set(mine))
    return "; ".join(
        f"{k}: saved {saved.get(k)!r}, here {mine.get(k)!r}"
        for k in keys
        if saved.get(k) != mine.get(k)
    )
