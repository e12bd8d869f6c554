"""Tests of the DDPG family: ddpg, ddpg-cbf (nominal atoms) and dsrl (worst-case atoms)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from otsafe.agents.ddpg import DDPGAgent, DDPGConfig, SafetyConfig, SafetyLayer
from otsafe.errors import ConfigError
from otsafe.safety import CircleBarrier, SingleIntegrator

F64 = torch.float64
LOW, HIGH = np.array([-1.0, -1.0]), np.array([1.0, 1.0])


def make_layer(
    mode: str, radius: float = 0.3, loss: str = "margin", std: float = 0.1, seed: int = 0
) -> SafetyLayer:
    gen = torch.Generator().manual_seed(seed)
    atoms = torch.randn(8, 2, generator=gen, dtype=F64) * std
    cfg = SafetyConfig(mode=mode, radius=radius, worst_case_loss=loss, alpha=2.0)  # type: ignore[arg-type]
    return SafetyLayer(SingleIntegrator(2), [CircleBarrier([0.0, 0.0], 1.0)], LOW, HIGH, cfg, atoms)


def test_modes_rectify_towards_safety_in_order() -> None:
    x = torch.tensor([[-1.3, 0.0]], dtype=F64)
    u_ref = torch.tensor([[1.0, 0.0]], dtype=F64)  # straight into the obstacle
    u = {m: make_layer(m)(x, u_ref).action for m in ("none", "nominal", "worst")}
    assert torch.equal(u["none"], u_ref)
    assert float(u["nominal"][0, 0]) < 1.0  # the CBF slows the approach
    assert float(u["worst"][0, 0]) < float(u["nominal"][0, 0])  # the worst case slows it more


def test_worst_case_margin_matches_the_closed_form() -> None:
    # Single integrator: margin_i = grad h . (u + w_i) + alpha h, linear in w, so the worst mean
    # margin over B(rho) (order 1) is the nominal mean margin minus rho |grad h|.
    layer = make_layer("worst", radius=0.25)
    x = torch.tensor([[-1.5, 0.4]], dtype=F64)
    u_ref = torch.tensor([[0.5, 0.0]], dtype=F64)
    out = layer(x, u_ref)
    assert out.atoms is not None
    from otsafe.safety import cbf_margin

    u_nom = make_layer("nominal")(x, u_ref).action
    m_nom = cbf_margin(
        layer.model, layer.barriers, x, u_nom, layer.nominal_atoms[None], alpha=2.0
    ).mean(1)[:, 0]
    m_worst = cbf_margin(layer.model, layer.barriers, x, u_nom, out.atoms, alpha=2.0).mean(1)[:, 0]
    grad_h = 2 * x  # h = |x|^2 - 1
    assert float(m_worst) == pytest.approx(float(m_nom - 0.25 * grad_h.norm()), rel=1e-9)


@pytest.mark.parametrize("mode", ["nominal", "worst"])
def test_actor_gets_gradient_through_an_active_constraint(mode: str) -> None:
    layer = make_layer(mode)
    x = torch.tensor([[-1.2, 0.1]], dtype=F64)
    u_ref = torch.tensor([[1.0, 0.2]], dtype=F64, requires_grad=True)
    out = layer(x, u_ref, differentiable=True)
    assert bool(out.changed.all())  # the constraint is active
    out.action[0, 1].backward()
    assert u_ref.grad is not None
    assert float(u_ref.grad.abs().sum()) > 0
    # the gradient is the projection onto the active constraint's tangent space
    assert float(u_ref.grad[0, 1]) == pytest.approx(1.0 - (0.1 / np.hypot(1.2, 0.1)) ** 2, rel=1e-6)


@pytest.mark.parametrize("mode", ["nominal", "worst"])
def test_filtered_rollouts_without_disturbance_never_violate(mode: str) -> None:
    layer = make_layer(mode, std=0.0)
    model = SingleIntegrator(2)
    x = torch.tensor([[-2.0, 0.05], [-2.0, -0.3], [0.0, -2.5]], dtype=F64)
    goal = torch.tensor([2.0, 0.0], dtype=F64)
    for _ in range(400):
        u_ref = (goal - x).clamp(-1.0, 1.0)
        u = layer(x, u_ref).action
        x = model.step(x, u, dt=0.02)
        assert bool(((x**2).sum(-1) - 1.0 >= -1e-9).all())


def run_agent(mode: str, seed: int, steps: int = 60) -> tuple[list[float], list[float]]:
    layer = make_layer(mode, seed=seed)
    cfg = DDPGConfig(hidden=(16, 16), batch_size=8, buffer_size=200, learning_starts=10)
    agent = DDPGAgent(obs_dim=2, low=LOW, high=HIGH, safety=layer, config=cfg, seed=seed)
    model = SingleIntegrator(2)
    x = np.array([-2.0, 0.1])
    actions, losses = [], []
    for _ in range(steps):
        a, _ = agent.act(x.astype(np.float32), x)
        nxt = model.step(torch.tensor(x)[None], torch.tensor(a)[None], dt=0.05)[0].numpy()
        agent.observe(
            obs=x,
            state=x,
            action=a,
            reward=-float(np.linalg.norm(nxt - [2.0, 0.0])),
            next_obs=nxt,
            next_state=nxt,
            done=0.0,
        )
        out = agent.update()
        if out:
            losses.append(out["actor_loss"])
        actions.extend(a.tolist())
        x = nxt
    return actions, losses


@pytest.mark.parametrize("mode", ["none", "nominal", "worst"])
def test_agent_trains_finitely_and_is_deterministic(mode: str) -> None:
    a1, l1 = run_agent(mode, seed=3)
    a2, l2 = run_agent(mode, seed=3)
    assert a1 == a2
    assert l1 == l2
    assert l1
    assert all(np.isfinite(l1))
    a3, _ = run_agent(mode, seed=4)
    assert a3 != a1


def test_actor_loss_option_runs() -> None:
    actions, losses = run_agent_with_actor_loss()
    assert losses
    assert all(np.isfinite(losses))
    assert all(np.isfinite(actions))


def run_agent_with_actor_loss() -> tuple[list[float], list[float]]:
    layer = make_layer("worst", loss="actor")
    cfg = DDPGConfig(hidden=(16, 16), batch_size=8, buffer_size=100, learning_starts=5)
    agent = DDPGAgent(obs_dim=2, low=LOW, high=HIGH, safety=layer, config=cfg, seed=0)
    x = np.array([-1.5, 0.2])
    actions, losses = [], []
    for _ in range(20):
        a, _ = agent.act(x.astype(np.float32), x)
        agent.observe(obs=x, state=x, action=a, reward=0.0, next_obs=x, next_state=x, done=0.0)
        out = agent.update()
        if out:
            losses.append(out["actor_loss"])
        actions.extend(a.tolist())
    return actions, losses


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "robust"}, "safety.mode"),
        ({"radius": -0.1}, "radius"),
        ({"alpha": 0.0}, "alpha"),
        ({"relative_degree": 3}, "relative_degree"),
        ({"worst_case_loss": "q"}, "worst_case_loss"),
        ({"n_atoms": 0}, "n_atoms"),
    ],
)
def test_bad_safety_config(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SafetyConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gamma": 1.5}, "gamma"),
        ({"tau": 0.0}, "tau"),
        ({"batch_size": 0}, "batch_size"),
        ({"hidden": ()}, "hidden"),
        ({"actor_lr": float("nan")}, "actor_lr"),
    ],
)
def test_bad_ddpg_config(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        DDPGConfig(**kwargs)  # type: ignore[arg-type]


def _rows_case(kind: str) -> tuple[object, list[object], torch.Tensor, dict[str, object]]:
    from otsafe.safety import DoubleIntegrator, SphereBarrier

    gen = torch.Generator().manual_seed(0)
    if kind == "single":  # relative degree 1: always affine in the atom
        x = torch.randn(5, 2, generator=gen, dtype=F64) * 2
        return (
            SingleIntegrator(2),
            [CircleBarrier([0.0, 0.0], 0.5)],
            x,
            {"alpha": 1.0, "relative_degree": 1, "alpha2": None},
        )
    x = torch.randn(5, 6, generator=gen, dtype=F64) * 2
    model = DoubleIntegrator(3)
    if kind == "double":  # HOCBF with gusts on the acceleration: affine
        return (
            model,
            [SphereBarrier([0.0, 0.0, 0.0], 0.5, position=[0, 1, 2])],
            x,
            {"alpha": 1.0, "relative_degree": 2, "alpha2": 1.0},
        )

    class DriftOnPosition(DoubleIntegrator):  # omega enters p' too: the HOCBF is quadratic
        def D(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
            d = torch.zeros(x.shape[0], 6, 3, dtype=x.dtype)
            d[:, :3, :] = torch.eye(3, dtype=x.dtype)
            return d

    return (
        DriftOnPosition(3),
        [SphereBarrier([0.0, 0.0, 0.0], 0.5, position=[0, 1, 2])],
        x,
        {"alpha": 1.0, "relative_degree": 2, "alpha2": 1.0},
    )


@pytest.mark.parametrize(
    ("kind", "affine"), [("single", True), ("double", True), ("quadratic", False)]
)
def test_cbf_row_cache_is_exact(kind: str, affine: bool) -> None:
    from otsafe.agents.ddpg import CBFRows
    from otsafe.safety import cbf_margin, cbf_rows

    model, barriers, x, rates = _rows_case(kind)
    rows = CBFRows(model, barriers, x, rates)  # type: ignore[arg-type]
    assert rows.affine is affine
    atoms = torch.randn(5, 7, model.disturbance_dim, dtype=F64)  # type: ignore[attr-defined]
    G, h = rows.averaged(atoms)
    G_ref, h_ref = cbf_rows(model, barriers, x, atoms, **rates)  # type: ignore[arg-type]
    torch.testing.assert_close(G, G_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-10)
    u = torch.randn(5, G.shape[-1], dtype=F64)
    m_ref = cbf_margin(model, barriers, x, u, atoms, **rates)  # type: ignore[arg-type]
    torch.testing.assert_close(rows.margins(u, atoms), m_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["single", "double", "quadratic", "tie"])
def test_margin_loss_gradient_in_closed_form_matches_autograd(kind: str) -> None:
    """The ascent's closed-form gradient is autograd's (ties between barriers split equally)."""
    from otsafe.agents.ddpg import CBFRows
    from otsafe.safety import SphereBarrier

    if kind == "tie":  # two identical barriers bind together: amin splits the gradient
        model, barriers, x, rates = _rows_case("double")
        barriers = [barriers[0], SphereBarrier([0.0, 0.0, 0.0], 0.5, position=[0, 1, 2])]
    else:
        model, barriers, x, rates = _rows_case(kind)
    rows = CBFRows(model, barriers, x, rates)  # type: ignore[arg-type]
    cfg = SafetyConfig(mode="worst", radius=0.3)
    gen = torch.Generator().manual_seed(1)
    nw = model.disturbance_dim  # type: ignore[attr-defined]
    atoms = torch.randn(5, 7, nw, generator=gen, dtype=F64)
    bound = np.ones(model.control_dim)  # type: ignore[attr-defined]
    layer = SafetyLayer(model, barriers, -bound, bound, cfg, atoms[0])  # type: ignore[arg-type]
    u = torch.randn(5, rows.G.shape[-1], generator=gen, dtype=F64)
    grad_fn = layer.margin_loss_grad(rows, u)
    if kind == "quadratic":
        assert grad_fn is None  # not affine in the atom: autograd
        return
    assert grad_fn is not None
    var = atoms.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(layer.margin_loss(rows, u)(var).sum(), var)
    torch.testing.assert_close(grad_fn(atoms), want, rtol=1e-10, atol=1e-12)


def test_worst_case_with_closed_form_gradient_equals_autograd_ascent() -> None:
    """The agent's ascent (closed-form gradient) lands where the autograd ascent does."""
    from otsafe.safety import WassersteinBall, worst_case

    layer = make_layer("worst", radius=0.25)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(64, 2, generator=gen, dtype=F64) * 2
    u = torch.rand(64, 2, generator=gen, dtype=F64) * 2 - 1
    rows = layer.rows(x)
    ball = WassersteinBall(layer._atoms(64), 0.25)
    grad_fn = layer.margin_loss_grad(rows, u)
    assert grad_fn is not None
    loss = layer.margin_loss(rows, u)
    fast = worst_case(loss, ball, steps=3, step_size=1.0, grad_fn=grad_fn)
    slow = worst_case(loss, ball, steps=3, step_size=1.0)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)


def test_update_on_the_cvxpylayers_backend_matches_the_native_one() -> None:
    """The benchmarks' reference pipeline (QP on cvxpylayers, target half apart) takes the same
    update as the native one (one QP for both halves), up to the reference's tolerances."""
    pytest.importorskip("cvxpylayers")
    grads = []
    for backend in ("native", "cvxpylayers"):
        gen = torch.Generator().manual_seed(0)
        atoms = torch.randn(8, 2, generator=gen, dtype=F64) * 0.1
        safety = SafetyConfig(mode="worst", radius=0.3, alpha=2.0, backend=backend)  # type: ignore[arg-type]
        layer = SafetyLayer(
            SingleIntegrator(2), [CircleBarrier([0.0, 0.0], 1.0)], LOW, HIGH, safety, atoms
        )
        cfg = DDPGConfig(hidden=(8,), batch_size=6, buffer_size=50, learning_starts=6)
        agent = DDPGAgent(obs_dim=2, low=LOW, high=HIGH, safety=layer, config=cfg, seed=0)
        rng = np.random.default_rng(1)
        for _ in range(6):  # states left of the disc (constraints active), next states right
            x = rng.uniform([-1.06, -0.1], [-1.02, 0.1])
            agent.observe(
                obs=x, state=x, action=np.array([1.0, 0.0]), reward=1.0,
                next_obs=-x, next_state=-x, done=0.0,
            )  # fmt: skip
        agent.update()
        # the gradients of both losses (Adam's first step moves every weight by +-lr alone)
        nets = (agent.actor, agent.critic)
        grads.append(torch.cat([p.grad.flatten() for net in nets for p in net.parameters()]))  # type: ignore[union-attr]
    assert float(grads[0].abs().max()) > 1e-3
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)
