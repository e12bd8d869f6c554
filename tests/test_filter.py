"""Tests of otsafe.safety.filter: the CBF safety filter and its Gymnasium wrapper."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from numpy.typing import NDArray
from torch import Tensor

from otsafe.errors import ConfigError, DistributionError, OtsafeError
from otsafe.safety import (
    CircleBarrier,
    DoubleIntegrator,
    HalfSpaceBarrier,
    SingleIntegrator,
)
from otsafe.safety.filter import SafetyAwareEnv, SafetyFilter, SafetyFilterWrapper
from otsafe.safety.qp import QPStatus

F64 = torch.float64
GOAL = torch.tensor([3.0, 0.0], dtype=F64)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(7)


# ------------------------------------------------------------------------------- closed form
def test_single_integrator_projection_closed_form(gen: torch.Generator) -> None:
    """One circle, single integrator: the QP is the projection onto -grad(h).u <= alpha h."""
    c, r, alpha = torch.tensor([0.5, -0.5], dtype=F64), 1.0, 1.5
    filt = SafetyFilter(SingleIntegrator(2), [CircleBarrier(c, r)], alpha=alpha)
    angle = torch.rand(200, generator=gen, dtype=F64) * 2 * torch.pi
    radius = r + 2 * torch.rand(200, generator=gen, dtype=F64)  # outside the obstacle
    x = c + radius[:, None] * torch.stack([angle.cos(), angle.sin()], -1)
    u_ref = 3 * torch.randn(200, 2, generator=gen, dtype=F64)
    u, info = filt.filter(x, u_ref)

    a = -2 * (x - c)  # row a.u <= b
    b = alpha * ((x - c).square().sum(-1) - r * r)
    viol = (a * u_ref).sum(-1) - b
    active = viol > 0
    expected = torch.where(active[:, None], u_ref - (viol / a.square().sum(-1))[:, None] * a, u_ref)
    torch.testing.assert_close(u, expected, rtol=0, atol=1e-9)
    assert 20 < int(active.sum()) < 180  # both cases are exercised
    assert torch.equal(info.changed, active)
    assert filt.stats["interventions"] == int(active.sum())
    assert filt.stats["samples"] == 200
    assert filt.stats["slack_used"] == 0


def test_slack_penalty_closed_form(gen: torch.Generator) -> None:
    """With the seed's slack (p s^2 / 2), one active row: lambda = viol / (|a|^2 + 1/p)."""
    p = 50.0
    filt = SafetyFilter(SingleIntegrator(2), CircleBarrier([0.0, 0.0], 1.0), slack_penalty=p)
    x = torch.tensor([[-2.0, 0.3], [2.0, 1.0]], dtype=F64)
    u_ref = torch.tensor([[4.0, 0.0], [1.0, 0.0]], dtype=F64)  # first active, second inactive
    u, info = filt.filter(x, u_ref)
    a = -2 * x[0]
    viol = a @ u_ref[0] - ((x[0] ** 2).sum() - 1.0)
    lam = viol / (a @ a + 1 / p)
    torch.testing.assert_close(u[0], u_ref[0] - lam * a, rtol=0, atol=1e-10)
    torch.testing.assert_close(u[1], u_ref[1], rtol=0, atol=1e-12)
    torch.testing.assert_close(info.qp.slack[0], lam / p, rtol=1e-9, atol=1e-12)
    assert info.slack_used.tolist() == [True, False]


# ------------------------------------------------------------------------------ rollouts
def start_states(batch: int) -> Tensor:
    """Starts left of the obstacle, heading for a goal straight behind it (one exactly head-on)."""
    y = torch.linspace(-0.6, 0.6, batch, dtype=F64)
    return torch.stack([torch.full_like(y, -3.0), y], dim=-1)


def rollout(
    step: Callable[[Tensor, Tensor], Tensor],
    policy: Callable[[Tensor], Tensor],
    x0: Tensor,
    h: Callable[[Tensor], Tensor],
    steps: int,
) -> tuple[Tensor, Tensor]:
    """Barrier values along a rollout, shape (steps + 1, B), and the final state."""
    x, values = x0, [h(x0)]
    for _ in range(steps):
        x = step(x, policy(x))
        values.append(h(x))
    return torch.stack(values), x


def test_single_integrator_rollouts_stay_safe() -> None:
    """2000 steps of dt = 0.01 with alpha = 1 (alpha dt = 0.01 <= 1).

    With h = |p - c|^2 - r^2 (convex), h(p + dt u) = h + dt grad(h).u + dt^2 |u|^2 >=
    (1 - alpha dt) h whenever the CBF row holds: the filter is safe in discrete time, so h >= 0
    is asserted exactly.
    """
    model, dt = SingleIntegrator(2), 0.01
    barrier = CircleBarrier([0.0, 0.0], 1.0)
    filt = SafetyFilter(model, [barrier], alpha=1.0)

    def reference(x: Tensor) -> Tensor:  # straight to the goal, speed <= 1
        e = GOAL - x
        return e / e.norm(dim=-1, keepdim=True).clamp(min=1.0)

    x0 = start_states(9)
    with torch.no_grad():
        h_safe, x_end = rollout(
            lambda x, u: model.step(x, u, dt), lambda x: filt(x, reference(x)), x0, barrier.h, 2000
        )
        h_free, _ = rollout(lambda x, u: model.step(x, u, dt), reference, x0, barrier.h, 2000)
    assert (h_safe >= 0).all(), float(h_safe.min())
    assert (h_free.amin(0) < -0.5).all()  # without the filter every start enters the obstacle
    off_axis = x0[:, 1] != 0
    assert ((x_end[off_axis] - GOAL).norm(dim=-1) < 1e-3).all()  # ... and still gets around it
    assert filt.stats["interventions"] > 0
    assert filt.stats["slack_used"] == 0


def test_double_integrator_hocbf_rollouts_stay_safe() -> None:
    """HOCBF, alpha1 = alpha2 = 1, dt = 0.01, 2000 exact (zero-order-hold) steps.

    For small alpha dt the discrete HOCBF keeps h >= 0 (linearising the head-on case:
    psi1' = psi1 (1 - a2 dt (1 + a1 dt / 2)) - a1^2 dt^2 e'/2 >= 0 and
    e' = e (1 - a1 dt + a1^2 dt^2 / 2) + psi1 (dt - dt^2 (a1 + a2) / 2) >= 0); the rollouts
    check it on the nonlinear barrier, whose values stay well above rounding (>= 1e-7).
    """
    model, dt = DoubleIntegrator(2), 0.01
    barrier = CircleBarrier([0.0, 0.0], 1.0, position=model.position_indices)
    filt = SafetyFilter(model, [barrier], alpha=1.0, alpha2=1.0, relative_degree=2)

    def reference(x: Tensor) -> Tensor:  # PD towards the goal, |u| <= 2
        u = 2.0 * (GOAL - x[:, :2]) - 2.0 * x[:, 2:]
        return u / (u.norm(dim=-1, keepdim=True) / 2.0).clamp(min=1.0)

    x0 = torch.cat([start_states(9), torch.zeros(9, 2, dtype=F64)], dim=1)
    with torch.no_grad():
        h_safe, x_end = rollout(
            lambda x, u: model.step(x, u, dt), lambda x: filt(x, reference(x)), x0, barrier.h, 2000
        )
        h_free, _ = rollout(lambda x, u: model.step(x, u, dt), reference, x0, barrier.h, 2000)
    assert (h_safe >= 0).all(), float(h_safe.min())
    assert (h_free.amin(0) < -0.5).all()
    off_axis = x0[:, 1] != 0
    assert ((x_end[off_axis, :2] - GOAL).norm(dim=-1) < 1e-2).all()
    assert filt.stats["interventions"] > 0
    assert filt.stats["slack_used"] == 0


# ---------------------------------------------------------------------------- infeasibility
@pytest.mark.parametrize("slack_penalty", [None, 100.0])
def test_infeasible_rows_never_nan(slack_penalty: float | None) -> None:
    """Bounds too tight for the CBF (inside the obstacle; a fast approach of the double
    integrator), mixed with feasible rows: finite outputs and gradients, counted as slack."""
    si = SafetyFilter(
        SingleIntegrator(2),
        CircleBarrier([0.0, 0.0], 1.0),
        lb=-0.1,
        ub=0.1,
        slack_penalty=slack_penalty,
    )
    x = torch.tensor([[0.5, 0.0], [-3.0, 0.0]], dtype=F64)  # inside (h < 0) | far outside
    u_ref = torch.tensor([[-1.0, 0.0], [0.05, 0.05]], dtype=F64, requires_grad=True)
    u, info = si.filter(x, u_ref)
    assert torch.isfinite(u).all()
    (grad,) = torch.autograd.grad(u.sum(), u_ref)
    assert torch.isfinite(grad).all()
    assert info.slack_used.tolist() == [True, False]
    assert bool((u[0].abs() <= 0.1 + 1e-9).all())  # the bounds stay hard (to rounding)
    torch.testing.assert_close(u[1], u_ref[1].detach())  # the feasible row is untouched
    if slack_penalty is None:
        assert info.qp.status.tolist() == [int(QPStatus.INFEASIBLE), int(QPStatus.OPTIMAL)]
        assert si.stats["infeasible"] == 1
    assert si.stats["slack_used"] == 1
    assert si.stats["max_slack"] > 0

    model = DoubleIntegrator(2)
    di = SafetyFilter(
        model,
        CircleBarrier([0.0, 0.0], 1.0, position=model.position_indices),
        relative_degree=2,
        lb=-0.5,
        ub=0.5,
        slack_penalty=slack_penalty,
    )
    # approaching at speed 1.2 from 0.2 outside: needs u_x <= -1.02, but u_x >= -0.5
    x = torch.tensor([[-1.2, 0.0, 1.2, 0.0], [-3.0, 0.0, 0.0, 0.0]], dtype=F64)
    atoms = torch.tensor([[0.1, 0.0], [-0.1, 0.0], [0.0, 0.2], [0.0, -0.2]], dtype=F64)
    atoms.requires_grad_(True)  # zero mean: the same infeasible row as the nominal model
    u_ref = torch.zeros(2, 2, dtype=F64, requires_grad=True)
    u, info = di.filter(x, u_ref, atoms)
    assert torch.isfinite(u).all()
    assert info.slack_used.tolist() == [True, False]
    grads = torch.autograd.grad(u.sum(), (u_ref, atoms))
    assert all(torch.isfinite(g).all() for g in grads)
    torch.testing.assert_close(u[0], torch.tensor([-0.5, 0.0], dtype=F64), rtol=0, atol=1e-9)


# ------------------------------------------------------------------------------- gradients
def test_gradcheck_single_integrator_with_atoms() -> None:
    """d u* / d u_ref and d u* / d atoms at an active constraint (first order)."""
    filt = SafetyFilter(SingleIntegrator(2), [CircleBarrier([0.0, 0.0], 1.0)], alpha=1.0)
    x = torch.tensor([[-2.0, 0.3], [0.2, 1.5]], dtype=F64)
    u_ref = torch.tensor([[3.0, 0.0], [0.1, -2.0]], dtype=F64, requires_grad=True)
    atoms = torch.tensor([[0.2, -0.1], [0.4, 0.3], [-0.1, 0.2]], dtype=F64, requires_grad=True)
    _, info = filt.filter(x, u_ref.detach(), atoms.detach())
    assert info.qp.active.all()  # the point is on the active piece
    assert torch.autograd.gradcheck(lambda ur, w: filt(x, ur, w), (u_ref, atoms))
    # the atoms only shift the offset: d u / d w = -a a^T / |a|^2 / N (projection)
    # row -2x.u <= 2x.mean(w) + alpha h: d u / d w_i = -x x^T / (|x|^2 N), away from the obstacle
    p = x[0]
    J = torch.autograd.functional.jacobian(lambda w: filt(x[:1], u_ref[:1].detach(), w), atoms)
    expected = -torch.outer(p, p) / (p @ p) / 3
    torch.testing.assert_close(J[0], expected.unsqueeze(1).expand(2, 3, 2))


def test_gradcheck_double_integrator_hocbf() -> None:
    model = DoubleIntegrator(2)
    filt = SafetyFilter(
        model,
        [
            CircleBarrier([0.0, 0.0], 1.0, position=model.position_indices),
            HalfSpaceBarrier([0.0, 1.0], 2.0, position=model.position_indices),
        ],
        alpha=1.0,
        alpha2=2.0,
        relative_degree=2,
        lb=-5.0,
        ub=5.0,
    )
    x = torch.tensor([[-1.5, 0.2, 1.0, 0.1], [0.3, 1.6, -0.4, 0.8]], dtype=F64)
    u_ref = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64, requires_grad=True)
    atoms = torch.tensor([[[0.1, 0.0], [0.0, 0.2]], [[0.3, -0.2], [0.1, 0.1]]], dtype=F64)
    atoms.requires_grad_(True)
    _, info = filt.filter(x, u_ref.detach(), atoms.detach())
    assert info.changed.all()
    assert torch.autograd.gradcheck(lambda ur, w: filt(x, ur, w), (u_ref, atoms))
    xs = x.clone().requires_grad_(True)  # and with respect to the state
    assert torch.autograd.gradcheck(lambda s: filt(s, u_ref.detach(), atoms.detach()), (xs,))


# ----------------------------------------------------------------------- dtypes, shapes, stats
def test_float32_single_sample_and_stats(gen: torch.Generator) -> None:
    filt = SafetyFilter(SingleIntegrator(2), [CircleBarrier([0.0, 0.0], 1.0)], alpha=2.0)
    x = torch.tensor([[-2.0, 0.3], [3.0, 0.0], [0.0, -1.5]], dtype=F64)
    u_ref = torch.tensor([[3.0, 0.0], [1.0, 1.0], [0.0, 3.0]], dtype=F64)
    u64 = filt(x, u_ref)
    u32 = filt(x.float(), u_ref.float())
    assert u32.dtype == torch.float32
    torch.testing.assert_close(u32.double(), u64, rtol=1e-5, atol=1e-5)
    one = filt(x[0], u_ref[0])  # 1-D in, 1-D out
    assert one.shape == (2,)
    torch.testing.assert_close(one, u64[0])
    assert not u64.requires_grad  # nothing required grad
    stats = filt.stats
    assert stats["calls"] == 3
    assert stats["samples"] == 7
    assert stats["interventions"] == 5
    assert stats["intervention_rate"] == pytest.approx(5 / 7)
    filt.reset_stats()
    assert filt.stats["calls"] == 0
    assert filt.stats["interventions"] == 0


def test_filter_bad_input_raises_named_errors() -> None:
    model, barrier = SingleIntegrator(2), CircleBarrier([0.0, 0.0], 1.0)
    filt = SafetyFilter(model, barrier)
    x, u = torch.full((3, 2), 2.0, dtype=F64), torch.zeros(3, 2, dtype=F64)
    cases: list[tuple[type[OtsafeError], str, Callable[[], object]]] = [
        (ConfigError, "u_ref has dtype", lambda: filt(x, u.float())),
        (
            ConfigError,
            r"u_ref must have shape \(3, 2\)",
            lambda: filt(x, torch.zeros(2, 2, dtype=F64)),
        ),
        (ConfigError, r"x must have shape \(B, 2\)", lambda: filt(torch.zeros(3, 5, dtype=F64), u)),
        (
            ConfigError,
            "u_ref has NaN",
            lambda: filt(x, torch.full((3, 2), float("nan"), dtype=F64)),
        ),
        (ConfigError, "x has NaN", lambda: filt(torch.full((3, 2), float("inf"), dtype=F64), u)),
        (ConfigError, "u_ref must be a torch", lambda: filt(x, np.zeros((3, 2)))),  # type: ignore[arg-type]
        (
            DistributionError,
            "atoms must have shape",
            lambda: filt(x, u, torch.zeros(4, 3, dtype=F64)),
        ),
        (DistributionError, "atoms must be a torch", lambda: filt(x, u, np.zeros((4, 2)))),  # type: ignore[arg-type]
        (ConfigError, "alpha must be positive", lambda: SafetyFilter(model, barrier, alpha=-1.0)),
        (ConfigError, "alpha2 must be positive", lambda: SafetyFilter(model, barrier, alpha2=-2.0)),
        (ConfigError, "barriers is empty", lambda: SafetyFilter(model, [])),
        (
            ConfigError,
            "relative_degree must be 1 or 2",
            lambda: SafetyFilter(model, barrier, relative_degree=0),
        ),
        (ConfigError, "lb > ub", lambda: SafetyFilter(model, barrier, lb=1.0, ub=[2.0, 0.0])),
        (
            ConfigError,
            "lb must be a number or have length 2",
            lambda: SafetyFilter(model, barrier, lb=[0.0] * 3),
        ),
        (
            ConfigError,
            "slack_penalty must be positive",
            lambda: SafetyFilter(model, barrier, slack_penalty=-1.0),
        ),
        (
            ConfigError,
            "needs a 3-D position",
            lambda: SafetyFilter(model, CircleBarrier([0.0] * 3, 1.0)),
        ),
        (ConfigError, "model must provide", lambda: SafetyFilter(object(), barrier)),  # type: ignore[arg-type]
        (
            ConfigError,
            "needs L_g h = 0",
            lambda: SafetyFilter(model, barrier, relative_degree=2)(x, u),
        ),
    ]
    for error, message, call in cases:
        with pytest.raises(error, match=message):
            call()


# ------------------------------------------------------------------------------- Gymnasium
class PointEnv(gym.Env[NDArray[np.float64], NDArray[np.float32]]):
    """A 2-D single integrator (p' = a, |a_i| <= 1) that should pass around a unit disc."""

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(self, dt: float = 0.05, max_steps: int = 300) -> None:
        self.observation_space = gym.spaces.Box(-10.0, 10.0, shape=(2,), dtype=np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.control_affine_model = SingleIntegrator(2)
        self.obstacle = CircleBarrier([0.0, 0.0], 1.0)
        self.dt, self.max_steps = dt, max_steps
        self._p = np.zeros(2)
        self._t = 0

    def safety_state(self) -> NDArray[np.float64]:
        return self._p.copy()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[NDArray[np.float64], dict[str, Any]]:
        super().reset(seed=seed)
        self._p = np.array([-3.0, self.np_random.uniform(-0.5, 0.5)])
        self._t = 0
        return self._p.copy(), {}

    def step(
        self, action: NDArray[np.float32]
    ) -> tuple[NDArray[np.float64], float, bool, bool, dict[str, Any]]:
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self._p = np.clip(self._p + self.dt * a, -10.0, 10.0)
        self._t += 1
        dist = float(np.linalg.norm(self._p - np.array([3.0, 0.0])))
        return self._p.copy(), -dist, dist < 0.05, self._t >= self.max_steps, {}


def barrier_value(env: gym.Env[Any, Any]) -> float:
    base: Any = env.unwrapped
    p = torch.as_tensor(base.safety_state()).reshape(1, 2)
    return float(base.obstacle.h(p)[0])


def greedy(obs: NDArray[np.float64]) -> NDArray[np.float32]:
    return np.clip(3.0 * (np.array([3.0, 0.0]) - obs), -1.0, 1.0).astype(np.float32)


def test_wrapper_passes_check_env_and_keeps_the_env_safe() -> None:
    env = SafetyFilterWrapper(PointEnv(), [CircleBarrier([0.0, 0.0], 1.0)], alpha=2.0)
    assert isinstance(env.unwrapped, SafetyAwareEnv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)
    unexpected = [w for w in caught if "different from the unwrapped" not in str(w.message)]
    assert not unexpected, [str(w.message) for w in unexpected]

    env.reset_stats()
    min_h, interventions = np.inf, 0
    for seed in range(4):
        obs, _ = env.reset(seed=seed)
        done = False
        while not done:
            obs, _, terminated, truncated, info = env.step(greedy(obs))
            min_h = min(min_h, barrier_value(env))
            interventions += int(info["safety_filter"]["intervened"])
            done = terminated or truncated
    assert min_h >= 0.0
    assert env.stats["interventions"] == interventions > 0
    assert env.n_slack == 0
    assert env.n_actions >= 4 * 50

    raw = PointEnv()  # the same policy without the filter enters the obstacle
    obs, _ = raw.reset(seed=0)
    free_min = np.inf
    for _ in range(300):
        obs, *_ = raw.step(greedy(obs))
        free_min = min(free_min, barrier_value(raw))
    assert free_min < 0


def test_wrapper_filtered_actions_are_in_the_action_space() -> None:
    env = SafetyFilterWrapper(PointEnv(), CircleBarrier([0.0, 0.0], 1.0))
    env.reset(seed=3)
    env.unwrapped._p = np.array([-1.05, 0.0])  # type: ignore[attr-defined]
    action = env.action(np.array([1.0, 1.0], dtype=np.float32))
    assert action.dtype == np.float32
    assert env.action_space.contains(action)
    assert env.last_intervened
    assert action[0] < 1.0


def test_wrapper_with_state_fn_and_atoms() -> None:
    """An env that exposes nothing: pass the model, a state function and fixed atoms."""

    class Plain(PointEnv):
        safety_state = None  # type: ignore[assignment]

        def __init__(self) -> None:
            super().__init__()
            del self.control_affine_model

    def state(env: gym.Env[Any, Any]) -> NDArray[np.float64]:
        base: Any = env.unwrapped
        return np.asarray(base._p)

    filt = SafetyFilter(SingleIntegrator(2), CircleBarrier([0.0, 0.0], 1.0), lb=-1.0, ub=1.0)
    env = SafetyFilterWrapper(Plain(), safety_filter=filt, state_fn=state, atoms=[[0.3, 0.0]])
    env.reset(seed=0)
    env.unwrapped._p = np.array([-2.0, 0.0])  # type: ignore[attr-defined]
    a = env.action(np.array([1.0, 0.0], dtype=np.float32))
    # row: 4 u_x <= -4 w_x + 3 with mean atom w_x = 0.3  ->  u_x = 0.45
    assert a[0] == pytest.approx(0.45, abs=1e-6)
    assert filt.stats["interventions"] == 1

    with pytest.raises(ConfigError, match="control_affine_model"):
        SafetyFilterWrapper(Plain(), CircleBarrier([0.0, 0.0], 1.0), state_fn=state)
    with pytest.raises(ConfigError, match="safety_state"):
        SafetyFilterWrapper(
            gym.wrappers.TimeLimit(Plain(), 10), safety_filter=filt
        )  # no state function
    with pytest.raises(ConfigError, match="pass barriers"):
        SafetyFilterWrapper(PointEnv())
    with pytest.raises(ConfigError, match="1-D Box"):
        SafetyFilterWrapper(gym.make("CartPole-v1"), safety_filter=filt, state_fn=state)
