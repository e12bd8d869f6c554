r"""Disturbance models for the uncertainty :math:`\omega` of the continuous envs (DESIGN §2).

The dynamics :math:`\dot x = f(x) + g(x)u + D(x)\omega` of :mod:`otsafe.envs.dubins` and
:mod:`otsafe.envs.quadrotor` carry an additive uncertainty :math:`\omega \in \mathbb R^d` (a planar
drift for the car, a gust acceleration for the quadrotor). The environment draws one
:math:`\omega` per step from its disturbance model with its own generator (``env.np_random``);
the safety layer represents the nominal distribution :math:`p_0` by :math:`N` atoms
:math:`\omega^0_1, \dots, \omega^0_N` drawn in torch (:meth:`Disturbance.atoms`).

Models
------
:class:`Gaussian`
    :math:`\mathcal N(\mu, \operatorname{diag}(\sigma^2))`, the nominal :math:`p_0`
    (isotropic for a scalar :math:`\sigma`, per axis for a vector; :math:`\sigma = 0` is the
    deterministic :math:`\omega = \mu`).
:class:`MeanShift`
    :math:`\omega = \omega_{base} + \delta\, e` with a unit direction :math:`e` that is fixed, drawn
    at random once (from ``seed``), or the worst case supplied by the caller.
:class:`StudentT`
    The heavy-tailed multivariate Student-t :math:`\mu + s \odot z / \sqrt{V/\nu}`,
    :math:`z \sim \mathcal N(0, I)`, :math:`V \sim \chi^2_\nu` (one :math:`V` per sample:
    an elliptical distribution), or independent univariate t per axis (``joint=False``).

Dimensions
----------
A model whose parameters are all scalars and that is given no ``dim`` is *unbound*: it has the
same form in every dimension, and :meth:`Disturbance.with_dim` returns a copy bound to a
dimension (the environments bind their disturbance model to their :math:`n_w`). A vector
parameter or ``dim=`` binds the model at construction.

Errors
------
Bad parameters (negative or non-finite standard deviations or scales, ``df <= 0``, a zero
direction, a negative shift, inconsistent dimensions) raise
:class:`~otsafe.errors.DistributionError` naming the argument.

Examples
--------
>>> import numpy as np
>>> p0 = Gaussian(mean=0.0, std=0.1, dim=2)
>>> p0.sample(np.random.default_rng(0), 3).shape
(3, 2)
>>> shifted = MeanShift(p0, delta=0.2, direction=[1.0, 0.0])
>>> shifted.mean.tolist()
[0.2, 0.0]
>>> Gaussian(0.0, 0.1).with_dim(3).dim
3
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import Tensor

from otsafe.errors import DistributionError

__all__ = [
    "Disturbance",
    "Gaussian",
    "MeanShift",
    "StudentT",
    "disturbance_from_config",
]

FloatArray = NDArray[np.float64]
D = TypeVar("D", bound="Disturbance")

DIRECTION_KINDS = ("fixed", "random", "worst")
"""The kinds of :class:`MeanShift` directions."""


# ---------------------------------------------------------------------------- validation
def _param(name: str, value: ArrayLike, *, nonneg: bool = False, positive: bool = False) -> Any:
    """A finite scalar (0-d) or non-empty vector (1-d) float64 array."""
    if isinstance(value, (bool, np.bool_)):
        raise DistributionError(f"{name} must be a number or a vector, got {value!r}")
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DistributionError(f"{name} must be a number or a vector of numbers") from None
    if arr.ndim > 1 or (arr.ndim == 1 and arr.size == 0):
        raise DistributionError(
            f"{name} must be a number or a non-empty vector, got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise DistributionError(f"{name} has NaN or infinite entries: {arr.tolist()}")
    if positive and not np.all(arr > 0):
        raise DistributionError(f"{name} must be positive, got {arr.tolist()}")
    if nonneg and not np.all(arr >= 0):
        raise DistributionError(f"{name} must be non-negative, got {arr.tolist()}")
    return arr


def _check_dim(name: str, dim: object) -> int:
    if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise DistributionError(f"{name} must be a positive integer, got {dim!r}")
    return int(dim)


def _infer_dim(dim: int | None, **params: Any) -> int | None:
    """The dimension fixed by ``dim`` and the vector parameters (consistent), or None."""
    found: dict[str, int] = {}
    if dim is not None:
        found["dim"] = _check_dim("dim", dim)
    for name, arr in params.items():
        if arr is not None and np.ndim(arr) == 1:
            found[name] = int(np.size(arr))
    if len(set(found.values())) > 1:
        detail = ", ".join(f"{k}: {v}" for k, v in found.items())
        raise DistributionError(f"inconsistent dimensions ({detail})")
    return next(iter(found.values()), None)


def _full(arr: FloatArray, dim: int) -> FloatArray:
    return np.broadcast_to(arr, (dim,)).astype(np.float64, copy=True)


def _jsonable(arr: FloatArray) -> float | list[float]:
    return float(arr) if arr.ndim == 0 else [float(v) for v in arr]


def _check_rng(rng: object) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise DistributionError(
            f"rng must be a numpy.random.Generator (e.g. env.np_random), got {type(rng).__name__}"
        )
    return rng


def _check_size(size: object) -> int:
    if isinstance(size, (bool, np.bool_)) or not isinstance(size, (int, np.integer)) or size < 0:
        raise DistributionError(f"size must be a non-negative integer, got {size!r}")
    return int(size)


def _sample_device(generator: torch.Generator | None, device: torch.device | str | None) -> Any:
    """Where to draw: the generator's device if one is given, else ``device`` (default CPU)."""
    if generator is not None:
        return generator.device
    return torch.device("cpu") if device is None else torch.device(device)


def _torch_seed(generator: torch.Generator | None, device: Any) -> int:
    """A 63-bit seed drawn from ``generator`` (torch's global generator if None)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=device).item())


# ---------------------------------------------------------------------------------- models
class Disturbance(ABC):
    r"""A distribution of the additive uncertainty :math:`\omega \in \mathbb R^d`.

    Subclasses implement :meth:`_sample`, :meth:`_atoms`, :attr:`mean`, :attr:`covariance` and
    :meth:`describe`.

    Attributes
    ----------
    dim : int
        :math:`d` (raises :class:`~otsafe.errors.DistributionError` while the model is unbound,
        see :meth:`with_dim`).
    declared_dim : int or None
        :math:`d`, or ``None`` for an unbound model.
    """

    _dim: int | None = None

    @property
    def dim(self) -> int:
        """The dimension :math:`d`."""
        if self._dim is None:
            raise DistributionError(
                f"{type(self).__name__} has no dimension: pass dim=, give a vector parameter, or "
                "bind it with with_dim(d) (environments bind their disturbance model)"
            )
        return self._dim

    @property
    def declared_dim(self) -> int | None:
        """The dimension, or ``None`` if the model is unbound."""
        return self._dim

    def with_dim(self: D, dim: int) -> D:
        """This model in dimension ``dim``: ``self`` if already bound to it, else a bound copy.

        Raises
        ------
        DistributionError
            If the model is bound to another dimension.
        """
        d = _check_dim("dim", dim)
        if self._dim is not None:
            if self._dim != d:
                raise DistributionError(
                    f"{type(self).__name__} has dimension {self._dim}, expected {d}"
                )
            return self
        out = copy.copy(self)
        out._bind(d)
        return out

    def _bind(self, dim: int) -> None:
        self._dim = dim

    @property
    @abstractmethod
    def mean(self) -> FloatArray:
        r"""The location :math:`\mathbb E[\omega]`, shape ``(d,)`` (the centre for Student-t)."""

    @property
    @abstractmethod
    def covariance(self) -> FloatArray:
        r"""The covariance, shape ``(d, d)`` (infinite entries where it does not exist)."""

    def sample(self, rng: np.random.Generator, size: int) -> FloatArray:
        """Draw ``size`` samples with the numpy generator ``rng``; shape ``(size, d)``, float64."""
        return self._sample(_check_rng(rng), _check_size(size))

    @abstractmethod
    def _sample(self, rng: np.random.Generator, size: int) -> FloatArray: ...

    def atoms(
        self,
        n: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> Tensor:
        r"""Draw :math:`N` atoms :math:`\omega_1, \dots, \omega_N` in torch, shape ``(n, d)``.

        Parameters
        ----------
        n : int
            Number of atoms :math:`N \ge 1`.
        generator : torch.Generator, optional
            Source of randomness (torch's global generator if ``None``); the atoms are drawn on
            the generator's device and moved to ``device``.
        dtype : torch.dtype
            ``torch.float32`` or ``torch.float64``.
        device : torch.device or str, optional
            Device of the result (default: the generator's device, else the CPU).
        """
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 1:
            raise DistributionError(
                f"n (the number of atoms) must be a positive integer, got {n!r}"
            )
        if dtype not in (torch.float32, torch.float64):
            raise DistributionError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise DistributionError(
                f"generator must be a torch.Generator or None, got {type(generator).__name__}"
            )
        where = _sample_device(generator, device)
        out = self._atoms(int(n), generator, dtype, where)
        return out if device is None else out.to(device)

    @abstractmethod
    def _atoms(
        self, n: int, generator: torch.Generator | None, dtype: torch.dtype, device: Any
    ) -> Tensor: ...

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """A JSON-friendly description (``type``, the parameters, ``dim``).

        :func:`disturbance_from_config` rebuilds the model from it.
        """

    def __repr__(self) -> str:
        items = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "type")
        return f"{type(self).__name__}({items})"


class Gaussian(Disturbance):
    r"""Gaussian uncertainty :math:`\omega \sim \mathcal N(\mu, \operatorname{diag}(\sigma^2))`.

    The nominal distribution :math:`p_0` of DESIGN §2.

    Parameters
    ----------
    mean : float or array-like, shape (d,)
        :math:`\mu` (a scalar is the same on every axis).
    std : float or array-like, shape (d,)
        :math:`\sigma \ge 0`: a scalar is isotropic, a vector per axis; 0 gives the
        deterministic :math:`\omega = \mu` (the undisturbed model for ``mean=0``).
    dim : int, optional
        :math:`d`; needed only when ``mean`` and ``std`` are both scalars and the model is used
        outside an environment (see the module docstring).
    """

    def __init__(self, mean: ArrayLike = 0.0, std: ArrayLike = 1.0, dim: int | None = None) -> None:
        self._mean = _param("mean", mean)
        self._std = _param("std", std, nonneg=True)
        self._dim = _infer_dim(dim, mean=self._mean, std=self._std)

    @property
    def mean(self) -> FloatArray:
        return _full(self._mean, self.dim)

    @property
    def std(self) -> FloatArray:
        r""":math:`\sigma` per axis, shape ``(d,)``."""
        return _full(self._std, self.dim)

    @property
    def covariance(self) -> FloatArray:
        return np.diag(self.std**2)

    def _sample(self, rng: np.random.Generator, size: int) -> FloatArray:
        d = self.dim
        z = rng.standard_normal((size, d))
        out: FloatArray = self.mean + self.std * z
        return out

    def _atoms(
        self, n: int, generator: torch.Generator | None, dtype: torch.dtype, device: Any
    ) -> Tensor:
        z = torch.randn(n, self.dim, generator=generator, dtype=dtype, device=device)
        mean = torch.as_tensor(self.mean, dtype=dtype, device=device)
        std = torch.as_tensor(self.std, dtype=dtype, device=device)
        return mean + std * z

    def describe(self) -> dict[str, Any]:
        return {
            "type": "gaussian",
            "mean": _jsonable(self._mean),
            "std": _jsonable(self._std),
            "dim": self._dim,
        }


class StudentT(Disturbance):
    r"""Heavy-tailed Student-t uncertainty with :math:`\nu` degrees of freedom.

    With ``joint=True`` (default) the multivariate t,

    .. math:: \omega = \mu + s \odot \frac{z}{\sqrt{V/\nu}}, \quad z \sim \mathcal N(0, I_d),
              \quad V \sim \chi^2_\nu,

    one :math:`V` per sample (an elliptical distribution: large gusts hit every axis at once);
    with ``joint=False`` independent univariate t variables per axis. Each coordinate is a
    univariate t with location :math:`\mu_k` and scale :math:`s_k`: its variance is
    :math:`s_k^2 \nu/(\nu - 2)` for :math:`\nu > 2` (infinite otherwise), its excess kurtosis
    :math:`6/(\nu - 4)` for :math:`\nu > 4`, so it has heavier tails than the Gaussian for every
    :math:`\nu` and tends to :math:`\mathcal N(\mu, \operatorname{diag}(s^2))` as
    :math:`\nu \to \infty`.

    Parameters
    ----------
    df : float
        :math:`\nu > 0`.
    scale : float or array-like, shape (d,)
        :math:`s \ge 0` (scalar: the same on every axis).
    mean : float or array-like, shape (d,)
        The location :math:`\mu` (the mean for :math:`\nu > 1`).
    dim : int, optional
        :math:`d` (see :class:`Gaussian`).
    joint : bool
        One chi-square variable per sample (multivariate t) or one per coordinate.

    Notes
    -----
    :meth:`atoms` draws through a numpy generator seeded from the torch generator, so the atoms
    are reproducible under ``torch.manual_seed`` or a given ``generator``.
    """

    def __init__(
        self,
        df: float,
        scale: ArrayLike = 1.0,
        mean: ArrayLike = 0.0,
        dim: int | None = None,
        joint: bool = True,
    ) -> None:
        df_arr = _param("df", df, positive=True)
        if df_arr.ndim != 0:
            raise DistributionError(f"df must be a single number, got shape {df_arr.shape}")
        self.df = float(df_arr)
        self._scale = _param("scale", scale, nonneg=True)
        self._mean = _param("mean", mean)
        if not isinstance(joint, (bool, np.bool_)):
            raise DistributionError(f"joint must be True or False, got {joint!r}")
        self.joint = bool(joint)
        self._dim = _infer_dim(dim, scale=self._scale, mean=self._mean)

    @property
    def mean(self) -> FloatArray:
        return _full(self._mean, self.dim)

    @property
    def scale(self) -> FloatArray:
        """:math:`s` per axis, shape ``(d,)``."""
        return _full(self._scale, self.dim)

    @property
    def covariance(self) -> FloatArray:
        s2 = self.scale**2
        factor = self.df / (self.df - 2.0) if self.df > 2.0 else math.inf
        # joint: the coordinates are uncorrelated (not independent); the same diagonal either way
        with np.errstate(invalid="ignore"):
            diag = np.where(s2 > 0, s2 * factor, 0.0)
        return np.diag(diag)

    def _sample(self, rng: np.random.Generator, size: int) -> FloatArray:
        d = self.dim
        z = rng.standard_normal((size, d))
        v = rng.chisquare(self.df, (size, 1) if self.joint else (size, d))
        out: FloatArray = self.mean + self.scale * z / np.sqrt(v / self.df)
        return out

    def _atoms(
        self, n: int, generator: torch.Generator | None, dtype: torch.dtype, device: Any
    ) -> Tensor:
        rng = np.random.default_rng(_torch_seed(generator, device))
        return torch.as_tensor(self._sample(rng, n), device=device).to(dtype)

    def describe(self) -> dict[str, Any]:
        return {
            "type": "student_t",
            "df": self.df,
            "scale": _jsonable(self._scale),
            "mean": _jsonable(self._mean),
            "dim": self._dim,
            "joint": self.joint,
        }


class MeanShift(Disturbance):
    r"""A base distribution shifted by :math:`\delta` along a unit direction :math:`e`.

    :math:`\omega = \omega_{base} + \delta\, e`, so the mean moves by :math:`\delta e` and the
    covariance is unchanged (the distribution shifts of the DSRL evaluation, DESIGN §2).

    Parameters
    ----------
    base : Disturbance
        The distribution to shift (usually the nominal :class:`Gaussian`).
    delta : float
        Size of the shift :math:`\delta \ge 0`.
    direction : array-like or {"fixed", "random", "worst"}
        * a vector: a fixed direction (normalised to unit length; it must be non-zero);
        * ``"random"``: a direction drawn uniformly on the unit sphere, once, from
          ``numpy.random.default_rng(seed)`` (a normalised standard-normal vector) -- at
          construction if the dimension is known, else when the model is bound to a dimension
          (:meth:`~Disturbance.with_dim`); the same ``seed`` gives the same direction, and the
          direction never changes afterwards (it is *not* redrawn per sample or per episode);
        * ``"worst"``: the worst-case direction computed by the caller (e.g. the one that most
          decreases the barrier margin, :math:`-\nabla_\omega m / \|\nabla_\omega m\|`), passed
          as ``vector``; the label records it in :meth:`describe`;
        * ``"fixed"``: the direction passed as ``vector``.
    vector : array-like, optional
        The direction for ``"fixed"`` and ``"worst"``; with ``"random"`` a direction drawn
        earlier (as recorded by :meth:`describe`), used as is.
    seed : int or numpy.random.Generator, optional
        Source of the ``"random"`` direction (fresh entropy if ``None``).

    Attributes
    ----------
    kind : str
        ``"fixed"``, ``"random"`` or ``"worst"``.
    direction : ndarray, shape (d,)
        The unit direction :math:`e`.
    """

    def __init__(
        self,
        base: Disturbance,
        delta: float,
        direction: ArrayLike | str = "random",
        *,
        vector: ArrayLike | None = None,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        if not isinstance(base, Disturbance):
            raise DistributionError(f"base must be a Disturbance, got {type(base).__name__}")
        delta_arr = _param("delta", delta, nonneg=True)
        if delta_arr.ndim != 0:
            raise DistributionError(f"delta must be a single number, got shape {delta_arr.shape}")
        self.base = base
        self.delta = float(delta_arr)
        if isinstance(direction, str):
            if direction not in DIRECTION_KINDS:
                raise DistributionError(
                    f"direction must be a vector or one of {DIRECTION_KINDS}, got {direction!r}"
                )
            kind = direction
            if kind in ("fixed", "worst") and vector is None:
                raise DistributionError(f"direction={kind!r} needs the direction as vector=")
        else:
            if vector is not None:
                raise DistributionError("give the direction either as direction= or as vector=")
            kind, vector = "fixed", direction
        if seed is not None and not isinstance(seed, np.random.Generator):
            if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
                raise DistributionError(f"seed must be an int, a Generator or None, got {seed!r}")
            if seed < 0:
                raise DistributionError(f"seed must be non-negative, got {seed!r}")
        self.kind = kind
        self._seed = seed
        self._direction: FloatArray | None = None
        if vector is not None:
            v = _param("vector" if isinstance(direction, str) else "direction", vector)
            if v.ndim != 1:
                raise DistributionError("the direction must be a vector, not a scalar")
            norm = float(np.linalg.norm(v))
            if not norm > 0:
                raise DistributionError("the direction must be non-zero")
            # a unit vector (e.g. from describe()) is kept bit for bit
            self._direction = v if abs(norm - 1.0) <= 1e-12 else v / norm
        self._dim = _infer_dim(None, base=_dim_marker(base), direction=self._direction)
        if self._dim is not None:
            self._bind(self._dim)

    def _bind(self, dim: int) -> None:
        self._dim = dim
        self.base = self.base.with_dim(dim)
        if self._direction is None:
            seed = self._seed
            rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
            z = rng.standard_normal(dim)
            while not np.linalg.norm(z) > 0:  # pragma: no cover - probability zero
                z = rng.standard_normal(dim)
            self._direction = z / np.linalg.norm(z)

    @property
    def direction(self) -> FloatArray:
        """The unit direction :math:`e`, shape ``(d,)``."""
        self.dim  # noqa: B018 - raises for an unbound model
        assert self._direction is not None
        out: FloatArray = self._direction.copy()
        return out

    @property
    def shift(self) -> FloatArray:
        r"""The shift :math:`\delta e`, shape ``(d,)``."""
        return self.delta * self.direction

    @property
    def mean(self) -> FloatArray:
        return self.base.mean + self.shift

    @property
    def covariance(self) -> FloatArray:
        return self.base.covariance

    def _sample(self, rng: np.random.Generator, size: int) -> FloatArray:
        out: FloatArray = self.base.sample(rng, size) + self.shift
        return out

    def _atoms(
        self, n: int, generator: torch.Generator | None, dtype: torch.dtype, device: Any
    ) -> Tensor:
        shift = torch.as_tensor(self.shift, dtype=dtype, device=device)
        return self.base._atoms(n, generator, dtype, device) + shift

    def describe(self) -> dict[str, Any]:
        seed = self._seed if not isinstance(self._seed, np.random.Generator) else None
        return {
            "type": "mean_shift",
            "base": self.base.describe(),
            "delta": self.delta,
            "direction": self.kind,
            "vector": None if self._direction is None else [float(v) for v in self._direction],
            "seed": None if seed is None else int(seed),
            "dim": self._dim,
        }


def _dim_marker(model: Disturbance) -> FloatArray | None:
    """A dummy vector of the model's dimension for :func:`_infer_dim` (None if unbound)."""
    d = model.declared_dim
    return None if d is None else np.zeros(d)


# ----------------------------------------------------------------------------------- config
_TYPES: dict[str, type[Gaussian] | type[StudentT]] = {
    "gaussian": Gaussian,
    "normal": Gaussian,
    "student_t": StudentT,
    "t": StudentT,
}


def disturbance_from_config(config: Mapping[str, Any] | Disturbance) -> Disturbance:
    """Build a disturbance model from a mapping such as :meth:`Disturbance.describe` returns.

    ``type`` is ``"gaussian"`` (alias ``"normal"``), ``"student_t"`` (alias ``"t"``) or
    ``"mean_shift"`` (whose ``base`` is itself a mapping); the other keys are the constructor's
    arguments (``dim`` is also accepted for a mean shift and checked). A
    :class:`Disturbance` is returned as is.

    Examples
    --------
    >>> m = disturbance_from_config({"type": "gaussian", "std": 0.1, "dim": 2})
    >>> disturbance_from_config(m.describe()).describe() == m.describe()
    True
    """
    if isinstance(config, Disturbance):
        return config
    if not isinstance(config, Mapping):
        raise DistributionError(
            f"a disturbance must be a Disturbance or a mapping, got {type(config).__name__}"
        )
    cfg = dict(config)
    kind = cfg.pop("type", None)
    if not isinstance(kind, str):
        raise DistributionError("a disturbance mapping needs a 'type' (gaussian, student_t, ...)")
    kind = kind.lower().replace("-", "_")
    try:
        if kind == "mean_shift":
            dim = cfg.pop("dim", None)
            if "base" not in cfg:
                raise DistributionError("a mean_shift disturbance needs a 'base'")
            cfg["base"] = disturbance_from_config(cfg["base"])
            model: Disturbance = MeanShift(**cfg)
            return model if dim is None else model.with_dim(dim)
        if kind not in _TYPES:
            raise DistributionError(
                f"unknown disturbance type {kind!r}; use gaussian, student_t or mean_shift"
            )
        built: Disturbance = _TYPES[kind](**cfg)
        return built
    except TypeError as exc:
        raise DistributionError(f"bad arguments for a {kind} disturbance: {exc}") from None
