"""Tests of the continuous-control environments and disturbance models (DESIGN §2).

``otsafe/DubinsCar-v0`` (first order, look-ahead CBF) and ``otsafe/Quadrotor-v0`` (second order,
HOCBF): Gymnasium API, dynamics against an independent integration of the torch model, barrier
structure, the safety filter in the loop, seeding, disturbance models and bad input.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from otsafe.envs.dubins import DEFAULT_OBSTACLES as CAR_OBSTACLES
from otsafe.envs.dubins import DubinsCar, DubinsModel, LookAheadPoint
from otsafe.envs.quadrotor import Quadrotor
from otsafe.envs.uncertainty import (
    Disturbance,
    Gaussian,
    MeanShift,
    StudentT,
    disturbance_from_config,
)
from otsafe.errors import ConfigError, DistributionError
from otsafe.safety import (
    CircleBarrier,
    ControlAffineModel,
    DoubleIntegrator,
    SafetyFilterWrapper,
    cbf_rows,
)

ENTRY_POINTS = {
    "otsafe/DubinsCar-v0": "otsafe.envs.dubins:DubinsCar",
    "otsafe/Quadrotor-v0": "otsafe.envs.quadrotor:Quadrotor",
}
for _id, _entry in ENTRY_POINTS.items():  # until otsafe.envs registers them
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_entry)

# check_env's advisory warnings that these environments trigger by design: positions are
# unbounded and actions are in physical units (the safety filter's bounds).
ADVISORY = (
    r".*Box observation space (minimum|maximum) value is -?infinity.*",
    r".*symmetric and normalized space.*",
)

NO_DISTURBANCE = Gaussian(0.0, 0.0)
F64 = torch.float64


def make_env(env_id: str, **kwargs: Any) -> DubinsCar | Quadrotor:
    env = gym.make(env_id, **kwargs).unwrapped
    assert isinstance(env, (DubinsCar, Quadrotor))
    return env


# --------------------------------------------------------------------------- Gymnasium API
@pytest.mark.parametrize("env_id", sorted(ENTRY_POINTS))
def test_check_env_passes(env_id: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for pattern in ADVISORY:
            warnings.filterwarnings("ignore", message=pattern)
        check_env(gym.make(env_id).unwrapped)
        check_env(gym.make(env_id, render_mode="rgb_array").unwrapped)


@pytest.mark.parametrize("env_id", sorted(ENTRY_POINTS))
def test_gym_make_with_overrides_and_truncation(env_id: str) -> None:
    env = gym.make(env_id, dt=0.05, max_steps=7, goal_radius=0.3, disturbance=NO_DISTURBANCE)
    base = env.unwrapped
    assert isinstance(base, (DubinsCar, Quadrotor))
    assert (base.dt, base.max_steps, base.goal_radius) == (0.05, 7, 0.3)
    obs, info = env.reset(seed=1)
    assert obs.shape == (base.obs_dim,) == env.observation_space.shape
    assert info["violation"] is False
    assert not info["goal_reached"]
    zero = np.zeros(base.action_dim)
    for k in range(7):
        obs, _, terminated, truncated, info = env.step(zero)
        assert not terminated
        assert truncated == (k == 6)
    assert base.steps == 7
    env.close()


def test_spaces_and_numbers_for_an_agent() -> None:
    car = DubinsCar(v_min=-0.5, v_max=2.0, turn_rate_max=1.5)
    assert (car.obs_dim, car.action_dim) == (9, 2)
    np.testing.assert_array_equal(car.action_low, [-0.5, -1.5])
    np.testing.assert_array_equal(car.action_high, [2.0, 1.5])
    assert len(car.observation_names) == car.obs_dim
    aimed = DubinsCar(start=(0.0, 1.0), goal=(10.0, 0.0))  # a position starts aimed at the goal
    assert aimed.start_state[2] == pytest.approx(math.atan2(-1.0, 10.0))
    quad = Quadrotor(max_acceleration=[1.0, 2.0, 3.0])
    assert (quad.obs_dim, quad.action_dim) == (10, 3)
    np.testing.assert_array_equal(quad.action_high, [1.0, 2.0, 3.0])
    assert len(quad.observation_names) == quad.obs_dim


def test_car_observation_layout() -> None:
    car = DubinsCar(goal=(10.0, 0.0))
    obs, _ = car.reset(options={"state": [1.0, 2.0, math.pi / 2]})
    dx, dy = 9.0, -2.0
    expected = [1.0, 2.0, 0.0, 1.0, dx, dy, dy, -dx, math.hypot(dx, dy)]
    np.testing.assert_allclose(obs, expected, atol=1e-12)
    assert dict(zip(car.observation_names, obs, strict=True))["goal_left"] == pytest.approx(-dx)


def test_quadrotor_observation_layout() -> None:
    quad = Quadrotor(goal=(8.0, 0.0, 1.0))
    x = np.array([1.0, 2.0, 3.0, 0.1, -0.2, 0.3])
    obs, _ = quad.reset(options={"state": x})
    delta = np.array([7.0, -2.0, -2.0])
    np.testing.assert_allclose(obs, [*x, *delta, np.linalg.norm(delta)])


def test_reward_formula_and_info() -> None:
    car = DubinsCar(disturbance=NO_DISTURBANCE, progress_weight=2.0, control_cost=[0.5, 0.25])
    car.reset(seed=0)
    u = np.array([0.8, -0.4])
    d0 = car.goal_distance()
    _, reward, _, _, info = car.step(u)
    d1 = car.goal_distance()
    expected = 2.0 * (d0 - d1) - car.dt * (0.5 * 0.8**2 + 0.25 * 0.4**2)
    assert reward == pytest.approx(expected, abs=1e-12)
    assert set(info) >= {"violation", "min_barrier", "barriers", "goal_reached", "disturbance"}
    assert info["barriers"].shape == (len(CAR_OBSTACLES),)
    assert info["min_barrier"] == pytest.approx(float(info["barriers"].min()))
    np.testing.assert_array_equal(info["action"], u)


def test_actions_are_clipped_and_checked() -> None:
    car = DubinsCar(disturbance=NO_DISTURBANCE)
    car.reset(seed=0)
    _, _, _, _, info = car.step(np.array([5.0, -9.0]))
    np.testing.assert_array_equal(info["action"], [1.0, -1.0])
    with pytest.raises(ValueError, match="shape"):
        car.step(np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        car.step(np.array([np.nan, 0.0]))


def test_goal_bonus_and_termination() -> None:
    car = DubinsCar(obstacles=[], disturbance=NO_DISTURBANCE, goal=(1.0, 0.0), goal_radius=0.5)
    car.reset(seed=0)
    for _ in range(10):
        _, reward, terminated, _, info = car.step(np.array([1.0, 0.0]))
        if terminated:
            break
    assert terminated
    assert info["goal_reached"]
    assert float(reward) > car.goal_bonus
    assert info["min_barrier"] == math.inf
    assert not info["violation"]


@pytest.mark.parametrize("terminate", [False, True])
def test_violations_are_recorded_and_optionally_terminate(terminate: bool) -> None:
    car = DubinsCar(disturbance=NO_DISTURBANCE, terminate_on_violation=terminate)
    car.reset(seed=0)
    steps = []
    for _ in range(60):  # straight into the first obstacle
        _, _, terminated, truncated, info = car.step(np.array([1.0, 0.0]))
        steps.append((info["violation"], terminated))
        if terminated or truncated:
            break
    first = next(k for k, (v, _) in enumerate(steps) if v)
    assert info["min_barrier"] < 0 or not terminate
    if terminate:
        assert len(steps) == first + 1
        assert steps[-1] == (True, True)
    else:
        assert len(steps) == 60
        assert not any(t for _, t in steps)


def test_render_rgb_array() -> None:
    for env in (DubinsCar(render_mode="rgb_array"), Quadrotor(render_mode="rgb_array")):
        env.reset(seed=0)
        img = env.render()
        assert img is not None
        assert img.dtype == np.uint8
        assert img.ndim == 3
        assert img.shape[2] == 3
        assert max(img.shape[:2]) == env.render_px
        assert len(np.unique(img.reshape(-1, 3), axis=0)) >= 4  # obstacles, goal, agent, free
    assert DubinsCar().render() is None


# --------------------------------------------------------------------------------- dynamics
def rk4(
    model: ControlAffineModel,
    x: torch.Tensor,
    u: torch.Tensor,
    w: torch.Tensor,
    dt: float,
    n: int = 200,
) -> torch.Tensor:
    """Fine RK4 of x' = f + g u + D w with u and w held constant."""

    def rhs(z: torch.Tensor) -> torch.Tensor:
        return (
            model.f(z)
            + (model.g(z) @ u.unsqueeze(-1)).squeeze(-1)
            + (model.D(z) @ w.unsqueeze(-1)).squeeze(-1)
        )

    h = dt / n
    for _ in range(n):
        k1 = rhs(x)
        k2 = rhs(x + 0.5 * h * k1)
        k3 = rhs(x + 0.5 * h * k2)
        k4 = rhs(x + h * k3)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def random_cases(
    env: DubinsCar | Quadrotor, rng: np.random.Generator, n: int
) -> list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]]:
    cases = []
    for _ in range(n):
        x = rng.uniform(-5, 5, env.state_dim)
        u = rng.uniform(env.action_low, env.action_high)
        w = rng.normal(0.0, 0.5, env.disturbance_dim)
        cases.append((x, u, w))
    return cases


@pytest.mark.parametrize("cls", [DubinsCar, Quadrotor])
def test_env_step_matches_fine_rk4_of_the_torch_model(cls: type[DubinsCar | Quadrotor]) -> None:
    env = cls(dt=0.2)
    model = env.control_affine_model
    rng = np.random.default_rng(0)
    for x, u, w in random_cases(env, rng, 12):
        if cls is DubinsCar:
            x[2] = (x[2] + math.pi) % (2 * math.pi) - math.pi
        env.set_disturbance(Gaussian(mean=w, std=0.0))  # omega = w exactly
        env.reset(options={"state": x})
        _, _, _, _, info = env.step(u)
        np.testing.assert_array_equal(info["disturbance"], w)
        got = env.safety_state()
        xt, ut, wt = (torch.as_tensor(a, dtype=F64).unsqueeze(0) for a in (x, u, w))
        ref = rk4(model, xt, ut, wt, env.dt)[0].numpy()
        if cls is DubinsCar:  # compare headings modulo 2 pi
            diff = (got[2] - ref[2] + math.pi) % (2 * math.pi) - math.pi
            assert abs(diff) < 1e-9
            got, ref = got[:2], ref[:2]
        np.testing.assert_allclose(got, ref, atol=1e-9, rtol=0)


def test_car_torch_step_is_the_env_step_batched() -> None:
    env = DubinsCar(dt=0.1)
    rng = np.random.default_rng(1)
    cases = random_cases(env, rng, 16)
    cases.append((np.array([0.0, 0.0, 3.0]), np.array([1.0, 0.0]), np.zeros(2)))  # r = 0
    xs, us, ws = (torch.as_tensor(np.stack(c), dtype=F64) for c in zip(*cases, strict=True))
    batch = DubinsModel().step(xs, us, env.dt, ws)
    for k, (x, u, w) in enumerate(cases):
        env.set_disturbance(Gaussian(mean=w, std=0.0))
        env.reset(options={"state": x})
        env.step(u)
        np.testing.assert_allclose(env.safety_state(), batch[k].numpy(), atol=1e-12)


def test_models_follow_the_protocol_in_both_dtypes() -> None:
    for model, nx, nu, nw in (
        (DubinsModel(), 3, 2, 2),
        (Quadrotor().control_affine_model, 6, 3, 3),
    ):
        assert isinstance(model, ControlAffineModel)
        assert (model.state_dim, model.control_dim, model.disturbance_dim) == (nx, nu, nw)
        for dtype in (torch.float32, torch.float64):
            x = torch.randn(5, nx, dtype=dtype)
            assert model.f(x).shape == (5, nx)
            assert model.f(x).dtype == dtype
            assert model.g(x).shape == (5, nx, nu)
            assert model.g(x).dtype == dtype
            assert model.D(x).shape == (5, nx, nw)
            assert model.D(x).dtype == dtype
    assert isinstance(Quadrotor().control_affine_model, DoubleIntegrator)


# --------------------------------------------------------------------------------- barriers
def test_car_lookahead_barrier_keeps_control_when_heading_is_tangent() -> None:
    car = DubinsCar(obstacles=[((0.0, 0.0), 1.0)], start=(-5.0, -3.0, 0.0), goal=(5.0, -3.0))
    model = car.control_affine_model
    x = torch.tensor([[0.0, -2.0, 0.0]], dtype=F64)  # heading east, tangent to the circle
    plain = CircleBarrier([0.0, 0.0], 1.0, position=(0, 1))
    g_plain, _ = cbf_rows(model, [plain], x)
    assert torch.count_nonzero(g_plain) == 0  # the position barrier loses its control term
    (barrier,) = car.barriers()
    assert barrier.radius == pytest.approx(1.0 + car.lookahead)
    g_look, _ = cbf_rows(model, [barrier], x)
    assert abs(float(g_look[0, 0, 1])) > 0.1  # the turn rate enters the look-ahead row
    # relative degree 1: the HOCBF is refused
    with pytest.raises(ConfigError, match="relative_degree"):
        cbf_rows(model, [barrier], x, relative_degree=2)


def test_lookahead_jacobian_matches_autograd() -> None:
    point = LookAheadPoint(0.4)
    x = torch.as_tensor(np.random.default_rng(5).normal(size=(32, 3)), dtype=F64)
    auto = torch.autograd.functional.jacobian(lambda s: point(s).sum(0), x).permute(1, 0, 2)
    torch.testing.assert_close(point.jacobian(x), auto, rtol=0, atol=1e-14)


def test_lookahead_barrier_implies_car_safety() -> None:
    car = DubinsCar()
    barriers = car.barriers(lookahead=0.4, margin=0.1)
    rng = np.random.default_rng(2)
    x = torch.as_tensor(rng.uniform([-2, -4, -math.pi], [12, 4, math.pi], (4000, 3)), dtype=F64)
    q = LookAheadPoint(0.4)(x)
    np.testing.assert_allclose(q[:, 0] - x[:, 0], 0.4 * torch.cos(x[:, 2]))
    safe = torch.stack([b.h(x) for b in barriers], 1).min(1).values >= 0
    clear = np.array([car.clearances(xi).min() for xi in x[safe].numpy()])
    assert safe.sum() > 1000
    assert np.all(clear >= 0.1 - 1e-12)


def test_quadrotor_barriers_have_relative_degree_two() -> None:
    quad = Quadrotor()
    model, barriers = quad.control_affine_model, quad.barriers()
    assert len(barriers) == 3
    x = torch.as_tensor(np.random.default_rng(3).normal(size=(6, 6)), dtype=F64)
    g1, _ = cbf_rows(model, barriers, x, relative_degree=1)
    assert torch.count_nonzero(g1) == 0  # L_g h = 0
    g2, h2 = cbf_rows(model, barriers, x, relative_degree=2, alpha=1.0)
    assert g2.shape == (6, 3, 3)
    assert bool(torch.isfinite(h2).all())
    assert bool((g2.abs().sum(-1) > 0).all())
    h = torch.stack([b.h(torch.as_tensor(quad.start_state).unsqueeze(0)) for b in barriers])
    assert bool((h > 0).all())


# ---------------------------------------------------------------------- filter in the loop
def car_controller(env: gym.Env[Any, Any]) -> np.ndarray[Any, Any]:
    base: Any = env.unwrapped
    x, goal = base.safety_state(), base.goal
    err = math.atan2(goal[1] - x[1], goal[0] - x[0]) - x[2]
    err = (err + math.pi) % (2 * math.pi) - math.pi
    return np.array([base.v_max, np.clip(2.0 * err, -base.turn_rate_max, base.turn_rate_max)])


def quad_controller(env: gym.Env[Any, Any]) -> np.ndarray[Any, Any]:
    base: Any = env.unwrapped
    x = base.safety_state()
    a: np.ndarray[Any, Any] = np.clip(1.0 * (base.goal - x[:3]) - 1.5 * x[3:], -2.0, 2.0)
    return a


def run_episode(
    env: gym.Env[Any, Any], controller: Callable[[gym.Env[Any, Any]], np.ndarray[Any, Any]]
) -> tuple[list[float], bool]:
    env.reset(seed=0)
    mins = []
    while True:
        _, _, terminated, truncated, info = env.step(controller(env))
        mins.append(info["min_barrier"])
        if terminated or truncated:
            return mins, bool(info["goal_reached"])


def test_filtered_car_never_violates_and_unfiltered_does() -> None:
    env = DubinsCar(disturbance=NO_DISTURBANCE)
    mins, _ = run_episode(env, car_controller)
    assert min(mins) < 0  # the naive controller drives into an obstacle
    # a heavier weight on speed changes makes the QP steer instead of braking (no deadlock)
    weight = torch.tensor([10.0, 1.0], dtype=F64)
    wrapped = SafetyFilterWrapper(env, env.barriers(), alpha=1.0, weight=weight)
    mins, reached = run_episode(wrapped, car_controller)
    assert min(mins) >= 0
    assert reached
    assert wrapped.stats["interventions"] > 0
    assert wrapped.stats["slack_used"] == 0
    # with the plain objective the filtered car may stall, but it stays safe
    plain = SafetyFilterWrapper(
        DubinsCar(disturbance=NO_DISTURBANCE, max_steps=150), DubinsCar().barriers(), alpha=1.0
    )
    mins, _ = run_episode(plain, car_controller)
    assert min(mins) >= 0


def test_filtered_quadrotor_never_violates_and_unfiltered_does() -> None:
    env = Quadrotor(disturbance=NO_DISTURBANCE)
    mins, _ = run_episode(env, quad_controller)
    assert min(mins) < 0
    wrapped = SafetyFilterWrapper(env, env.barriers(), alpha=1.0, relative_degree=2)
    mins, reached = run_episode(wrapped, quad_controller)
    assert min(mins) >= 0
    assert reached
    assert wrapped.stats["slack_used"] == 0


# ------------------------------------------------------------------------------- seeding
@pytest.mark.parametrize("cls", [DubinsCar, Quadrotor])
def test_same_seed_and_actions_give_identical_trajectories(
    cls: type[DubinsCar | Quadrotor],
) -> None:
    actions = np.random.default_rng(5).uniform(-1, 1, (40, cls.control_dim))

    def rollout(seed: int) -> list[Any]:
        env = cls(disturbance=Gaussian(0.0, 0.3))
        out: list[Any] = [env.reset(seed=seed)]
        out += [env.step(a) for a in actions]
        return out

    a, b, c = rollout(7), rollout(7), rollout(8)
    assert gym.utils.env_checker.data_equivalence(a, b, exact=True)
    assert not gym.utils.env_checker.data_equivalence(a, c)


def test_set_disturbance_takes_effect_and_checks_the_dimension() -> None:
    car = DubinsCar(disturbance=NO_DISTURBANCE)
    car.reset(seed=0)
    assert np.all(car.step(np.zeros(2))[4]["disturbance"] == 0)
    car.set_disturbance(MeanShift(NO_DISTURBANCE, 0.5, direction=[0.0, 1.0]))
    assert car.disturbance.dim == 2
    np.testing.assert_allclose(car.step(np.zeros(2))[4]["disturbance"], [0.0, 0.5])
    car.disturbance = {"type": "gaussian", "mean": [0.1, 0.0], "std": 0.0}
    np.testing.assert_allclose(car.step(np.zeros(2))[4]["disturbance"], [0.1, 0.0])
    with pytest.raises(ConfigError, match="dimension 3"):
        car.set_disturbance(Gaussian(0.0, 1.0, dim=3))
    with pytest.raises(ConfigError, match="Disturbance"):
        car.set_disturbance("gaussian")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ disturbances
N = 200_000


def test_gaussian_moments_and_per_axis_std() -> None:
    model = Gaussian(mean=[1.0, -2.0, 0.5], std=[0.5, 1.0, 2.0])
    s = model.sample(np.random.default_rng(0), N)
    assert s.shape == (N, 3)
    assert s.dtype == np.float64
    se = model.std / math.sqrt(N)
    assert np.all(np.abs(s.mean(0) - model.mean) < 5 * se)
    np.testing.assert_allclose(s.std(0), model.std, rtol=0.01)
    np.testing.assert_allclose(model.covariance, np.diag([0.25, 1.0, 4.0]))
    iso = Gaussian(0.0, 0.3, dim=2)
    np.testing.assert_allclose(iso.sample(np.random.default_rng(1), N).std(0), 0.3, rtol=0.01)
    assert np.all(Gaussian(0.0, 0.0, dim=2).sample(np.random.default_rng(0), 5) == 0)


def test_mean_shift_moves_the_mean_along_the_direction() -> None:
    base = Gaussian(0.0, 0.2, dim=2)
    shifted = MeanShift(base, delta=0.6, direction=[3.0, 4.0])
    np.testing.assert_allclose(shifted.direction, [0.6, 0.8])
    np.testing.assert_allclose(shifted.mean, [0.36, 0.48])
    s = shifted.sample(np.random.default_rng(0), N)
    assert np.all(np.abs(s.mean(0) - [0.36, 0.48]) < 5 * 0.2 / math.sqrt(N))
    np.testing.assert_allclose(s.std(0), 0.2, rtol=0.01)
    np.testing.assert_allclose(shifted.covariance, base.covariance)
    # the same draws, shifted
    r1, r2 = np.random.default_rng(3), np.random.default_rng(3)
    np.testing.assert_allclose(shifted.sample(r1, 10) - base.sample(r2, 10), [[0.36, 0.48]] * 10)
    worst = MeanShift(base, 0.5, "worst", vector=[0.0, -2.0])
    assert worst.kind == "worst"
    np.testing.assert_allclose(worst.mean, [0.0, -0.5])


def test_random_direction_is_drawn_once_from_the_seed() -> None:
    a = MeanShift(Gaussian(0.0, 0.1, dim=3), 1.0, "random", seed=4)
    b = MeanShift(Gaussian(0.0, 0.1, dim=3), 1.0, "random", seed=4)
    c = MeanShift(Gaussian(0.0, 0.1, dim=3), 1.0, "random", seed=5)
    assert a.kind == "random"
    np.testing.assert_array_equal(a.direction, b.direction)
    assert not np.allclose(a.direction, c.direction)
    assert np.linalg.norm(a.direction) == pytest.approx(1.0)
    first = a.direction
    a.sample(np.random.default_rng(0), 100)
    np.testing.assert_array_equal(a.direction, first)
    # unbound: the direction is drawn when an environment binds the model
    lazy = MeanShift(Gaussian(0.0, 0.0), 0.5, "random", seed=4)
    assert lazy.declared_dim is None
    env = DubinsCar(disturbance=lazy)
    bound = env.disturbance
    assert isinstance(bound, MeanShift)
    assert bound.dim == 2
    assert np.linalg.norm(bound.mean) == pytest.approx(0.5)
    again = DubinsCar(disturbance=lazy).disturbance
    np.testing.assert_array_equal(again.mean, bound.mean)


def test_student_t_has_heavier_tails_than_the_gaussian() -> None:
    rng = np.random.default_rng(0)
    gauss = Gaussian(0.0, 1.0, dim=2).sample(rng, N)
    for joint in (True, False):
        t = StudentT(df=10.0, scale=1.0, dim=2, joint=joint).sample(rng, N)

        def excess_kurtosis(a: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
            z = a - a.mean(0)
            return (z**4).mean(0) / (z**2).mean(0) ** 2 - 3.0  # type: ignore[no-any-return]

        assert np.all(excess_kurtosis(t) > 0.6)  # 1.0 in theory
        assert np.all(np.abs(excess_kurtosis(gauss)) < 0.1)
        np.testing.assert_allclose(t.var(0), 10.0 / 8.0, rtol=0.03)
    heavy = StudentT(df=3.0, scale=0.5, mean=[1.0, 0.0]).sample(rng, N)
    assert np.mean(np.abs(heavy[:, 1]) > 2.0) > 100 * np.mean(np.abs(gauss[:, 1]) > 4.0)
    assert np.all(np.isinf(np.diag(StudentT(df=2.0, dim=2).covariance)))
    assert np.median(heavy[:, 0]) == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize(
    "model",
    [
        Gaussian([0.1, -0.2], 0.3),
        StudentT(df=4.0, scale=[0.1, 0.2], mean=1.0),
        MeanShift(Gaussian(0.0, 0.1, dim=2), 0.5, "random", seed=0),
    ],
    ids=["gaussian", "student_t", "mean_shift"],
)
def test_atoms_shape_dtype_and_reproducibility(model: Disturbance) -> None:
    for dtype in (torch.float32, torch.float64):
        atoms = model.atoms(64, torch.Generator().manual_seed(0), dtype=dtype)
        assert atoms.shape == (64, 2)
        assert atoms.dtype == dtype
        assert atoms.device.type == "cpu"
        again = model.atoms(64, torch.Generator().manual_seed(0), dtype=dtype)
        assert torch.equal(atoms, again)
    big = model.atoms(50_000, torch.Generator().manual_seed(1))
    spread = np.sqrt(np.diag(model.covariance)) / math.sqrt(50_000)
    assert np.all(np.abs(big.mean(0).numpy() - model.mean) < 6 * spread)
    torch.manual_seed(3)
    a = model.atoms(8)
    torch.manual_seed(3)
    assert torch.equal(a, model.atoms(8))


def test_describe_round_trips() -> None:
    models = [
        Gaussian([0.1, -0.2], 0.3),
        Gaussian(0.0, 0.1),
        StudentT(df=4.0, scale=[0.1, 0.2], joint=False),
        MeanShift(StudentT(3.0, 0.1, dim=3), 0.5, "random", seed=9),
        MeanShift(Gaussian(0.0, 0.1, dim=2), 0.5, "worst", vector=[1.0, 1.0]),
    ]
    for model in models:
        desc = model.describe()
        assert desc["type"] in ("gaussian", "student_t", "mean_shift")
        rebuilt = disturbance_from_config(desc)
        assert rebuilt.describe() == desc
        if model.declared_dim is not None:
            np.testing.assert_array_equal(rebuilt.mean, model.mean)
    assert "Gaussian(" in repr(models[0])


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Gaussian(0.0, -0.1), "std must be non-negative"),
        (lambda: Gaussian([0.0, np.nan], 0.1), "mean has NaN"),
        (lambda: Gaussian([0.0, 0.0], [0.1, 0.1, 0.1]), "inconsistent dimensions"),
        (lambda: Gaussian(0.0, 0.1, dim=0), "dim must be a positive integer"),
        (lambda: Gaussian(0.0, [[0.1]]), "std must be a number or a non-empty vector"),
        (lambda: StudentT(df=0.0), "df must be positive"),
        (lambda: StudentT(df=-1.0), "df must be positive"),
        (lambda: StudentT(df=math.inf), "df has NaN or infinite"),
        (lambda: StudentT(df=3.0, scale=-1.0), "scale must be non-negative"),
        (lambda: MeanShift(Gaussian(0.0, 0.1), -0.1, [1.0, 0.0]), "delta must be non-negative"),
        (lambda: MeanShift(Gaussian(0.0, 0.1), 0.1, [0.0, 0.0]), "non-zero"),
        (lambda: MeanShift(Gaussian(0.0, 0.1, dim=3), 0.1, [1.0, 0.0]), "inconsistent"),
        (lambda: MeanShift(Gaussian(0.0, 0.1), 0.1, "worst"), "vector="),
        (lambda: MeanShift(Gaussian(0.0, 0.1), 0.1, "sideways"), "direction must be"),
        (lambda: MeanShift("gaussian", 0.1), "base must be a Disturbance"),  # type: ignore[arg-type]
        (lambda: Gaussian(0.0, 0.1).dim, "has no dimension"),
        (lambda: Gaussian(0.0, 0.1, dim=2).with_dim(3), "dimension 2, expected 3"),
        (lambda: Gaussian(0.0, 0.1, dim=2).atoms(0), "number of atoms"),
        (lambda: Gaussian(0.0, 0.1, dim=2).atoms(4, dtype=torch.int64), "dtype"),
        (lambda: Gaussian(0.0, 0.1, dim=2).sample(0, 3), "numpy.random.Generator"),  # type: ignore[arg-type]
        (lambda: disturbance_from_config({"type": "laplace"}), "unknown disturbance type"),
        (lambda: disturbance_from_config({"type": "gaussian", "sd": 1}), "bad arguments"),
    ],
)
def test_bad_disturbance_parameters_raise(build: Callable[[], object], match: str) -> None:
    with pytest.raises(DistributionError, match=match):
        build()


# ------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (DubinsCar, {"obstacles": [((3.0, 0.0), -1.0)]}, r"obstacles\[0\] radius must be positive"),
        (DubinsCar, {"obstacles": [((3.0, 0.0), 0.0)]}, r"radius must be positive"),
        (DubinsCar, {"obstacles": [((0.5, 0.0), 1.0)]}, "contains the start"),
        (DubinsCar, {"obstacles": [((0.0, 1.2), 1.0)]}, "inflated by lookahead"),
        (DubinsCar, {"obstacles": [((10.0, 0.5), 1.0)]}, "contains the goal"),
        (DubinsCar, {"obstacles": [((3.0, 0.0, 0.0), 1.0)]}, "center must be a vector of length 2"),
        (DubinsCar, {"obstacles": [((3.0, np.nan), 1.0)]}, "NaN or infinite"),
        (DubinsCar, {"obstacles": [(3.0, 0.0, 1.0)]}, r"obstacles\[0\] must be a \(center"),
        (DubinsCar, {"obstacles": "circle"}, "obstacles must be a list"),
        (DubinsCar, {"obstacles": [{"center": (3.0, 0.0)}]}, "'center' and 'radius'"),
        (DubinsCar, {"start": (0.0, 0.0, 0.0, 0.0)}, "start must be a vector of length 2 or 3"),
        (DubinsCar, {"start": (0.0, math.inf)}, "start has NaN"),
        (DubinsCar, {"goal": (1.0, 2.0, 3.0)}, "goal must be a vector of length 2"),
        (DubinsCar, {"goal": (0.2, 0.0)}, "start .* lies in the goal region"),
        (DubinsCar, {"goal_radius": 0.0}, "goal_radius must be positive"),
        (DubinsCar, {"dt": 0.0}, "dt must be positive"),
        (DubinsCar, {"dt": -0.1}, "dt must be positive"),
        (DubinsCar, {"dt": math.nan}, "dt must be finite"),
        (DubinsCar, {"max_steps": 0}, "max_steps must be a positive integer"),
        (DubinsCar, {"max_steps": 2.5}, "max_steps must be a positive integer"),
        (DubinsCar, {"v_min": 1.0, "v_max": 0.5}, "v_min .* must not exceed v_max"),
        (DubinsCar, {"turn_rate_max": 0.0}, "turn_rate_max must be positive"),
        (DubinsCar, {"lookahead": 0.0}, "lookahead must be positive"),
        (DubinsCar, {"control_cost": [0.1, 0.1, 0.1]}, "control_cost must be a vector of length 2"),
        (DubinsCar, {"control_cost": -1.0}, "control_cost must be non-negative"),
        (DubinsCar, {"goal_bonus": -1.0}, "goal_bonus must be non-negative"),
        (DubinsCar, {"progress_weight": math.inf}, "progress_weight must be finite"),
        (DubinsCar, {"terminate_on_violation": "yes"}, "terminate_on_violation must be True"),
        (DubinsCar, {"render_mode": "human"}, "render_mode"),
        (DubinsCar, {"disturbance": Gaussian(0.0, 0.1, dim=3)}, "disturbance has dimension 3"),
        (DubinsCar, {"disturbance": 0.1}, "disturbance must be a Disturbance"),
        (Quadrotor, {"obstacles": [((3.0, 0.0, 1.0), -0.5)]}, "radius must be positive"),
        (Quadrotor, {"obstacles": [((0.0, 0.0, 1.5), 1.0)]}, "contains the start"),
        (Quadrotor, {"obstacles": [((8.0, 0.0, 0.0), 1.5)]}, "contains the goal"),
        (Quadrotor, {"obstacles": [((3.0, 0.0), 1.0)]}, "center must be a vector of length 3"),
        (Quadrotor, {"start": (0.0, 0.0)}, "start must be a vector of length 3 or 6"),
        (Quadrotor, {"goal": (8.0, 0.0)}, "goal must be a vector of length 3"),
        (Quadrotor, {"max_acceleration": 0.0}, "max_acceleration must be positive"),
        (Quadrotor, {"max_acceleration": [1.0, 1.0]}, "max_acceleration must be a vector"),
        (Quadrotor, {"max_acceleration": [1.0, -1.0, 1.0]}, "max_acceleration must be positive"),
        (Quadrotor, {"dt": 0}, "dt must be positive"),
        (Quadrotor, {"max_steps": -3}, "max_steps must be a positive integer"),
        (Quadrotor, {"disturbance": Gaussian([0.0, 0.0], 0.1)}, "disturbance has dimension 2"),
    ],
)
def test_bad_configuration_raises_config_error(
    cls: type[DubinsCar | Quadrotor], kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        cls(**kwargs)


def test_bad_configuration_through_gym_make() -> None:
    with pytest.raises(ConfigError, match="goal_radius"):
        gym.make("otsafe/DubinsCar-v0", goal_radius=-1.0)
    with pytest.raises(ConfigError, match="contains the start"):
        gym.make("otsafe/Quadrotor-v0", obstacles=[((0.0, 0.0, 1.0), 0.5)])


def test_bad_barrier_and_reset_arguments() -> None:
    car = DubinsCar()
    with pytest.raises(ConfigError, match="lookahead must be positive"):
        car.barriers(lookahead=-0.1)
    with pytest.raises(ConfigError, match="start's look-ahead point"):
        car.barriers(lookahead=3.0)
    with pytest.raises(ConfigError, match="margin must be non-negative"):
        Quadrotor().barriers(margin=-1.0)
    with pytest.raises(ConfigError, match="contains the start"):
        Quadrotor().barriers(margin=2.0)
    with pytest.raises(ConfigError, match="state vector of length 3"):
        car.reset(options={"state": [0.0, 0.0]})
    with pytest.raises(ConfigError, match="options may only hold"):
        car.reset(options={"position": [0.0, 0.0]})
