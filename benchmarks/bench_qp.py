"""Benchmark: the safety QP layer ``otsafe.safety.qp.solve_qp`` vs cvxpylayers and qpth.

Problem (per batch row): minimise ½‖u − u_ref‖² subject to G u ≤ h (and lb ≤ u ≤ ub with
``--box``). Protocol, side by side in one run:

1. Problems: float64, fixed seeds, the same for every method. u_ref ~ N(0, I); the rows of G are
   random unit vectors; h = G x0 + 0.5·|N(0, 1)| for a random x0 ~ N(0, I), so x0 is strictly
   feasible and u_ref violates some row in most problems (the tables give how many, and how many
   constraints are active at the solution). With ``--box``: lb = −1.5, ub = 1.5, x0 clipped to
   [−1.2, 1.2]. With ``--degenerate``: the last row of G duplicates the first, the second is
   twice the first (h too), and u_ref = x0 (already feasible) in a quarter of the rows; the
   reference gradient is then undefined where duplicated rows are active, and such rows are left
   out of the gradient error. With ``--dtype float32`` the same problems are rounded to float32.
2. Methods, each called as ``method(u_ref, G, h, lb, ub) -> u`` on the same tensors:
   ``otsafe native`` (``solve_qp``, backend="native"; skipped with a note if not importable),
   ``qpth`` (``QPFunction`` defaults, Q = I, p = −u_ref, no equalities, a box as extra rows) and
   ``cvxpylayers`` (a ``CvxpyLayer`` built once per shape; its default solver, diffcp + SCS).
   See ``benchmarks/qp_baselines.py``.
3. Timing: one pass = forward + backward of ⟨u, w⟩ for a fixed random cotangent w, into u_ref, G
   and h (fresh leaf tensors each pass, created outside the timer; CUDA synchronised). After
   warm-up passes, the median of up to ``--repeats`` passes (fewer when a pass is slow, at least
   3; see ``--cell-seconds``). A method is skipped at a size where one pass is predicted (linearly
   from its time at the previous batch size) or measured to take longer than ``--budget`` seconds.
   The machine is assumed otherwise idle: the report gives the share of the CPU that other
   processes used during the run (above a few percent, the timings are not to be trusted). With
   ``--device cuda`` cvxpylayers still solves on the CPU (diffcp); its transfers are timed.
4. Accuracy, on up to ``--accuracy-rows`` evenly spaced rows of each batch: the reference is cvxpy
   + Clarabel (tol_gap_abs = tol_gap_rel = tol_feas = 1e-12, max_iter 1000; 1e-11 then 1e-10 for
   rows where that stalls), solved row by row, then polished on its own active set (KKT system
   on a maximal independent subset of the active rows solved exactly; kept only if the
   multipliers are positive, the active rows tight, all rows feasible to 1e-12 and the point
   within 1e-6 of Clarabel's). Reported: max |u − u*| over the subsample, and max |∇ − ∇*| over
   the gradients with respect to u_ref, G and h, ∇* being the gradient of the polished
   closed-form solution, on the rows where that is well defined (independent active rows,
   strict complementarity; the problem table counts them). "non-finite"
   counts rows of the whole batch with a NaN/inf in u or in a gradient.

qpth is fetched, not installed and not vendored. (The issue reports that its sdist does not
build with current setuptools; here ``pip wheel qpth==0.0.18`` did build, but installing it pins
``numpy<2``: pip would downgrade NumPy to 1.26 and cvxpy to 1.7.) The script runs
``pip download --no-deps --no-binary :all: qpth==0.0.18`` into ``~/.cache/otsafe-bench`` (or
``$OTSAFE_BENCH_CACHE``, or ``--cache-dir``; ``--qpth-sdist PATH`` takes an sdist already
downloaded), checks the SHA-256 against PyPI's, extracts the pure-Python package there and
imports it from there. Its dependencies are not installed either: the code used here (batched
PDIPM) needs only torch, and the package imports cvxpy (present); it runs with NumPy 2.

Usage::

    .venv/bin/python benchmarks/bench_qp.py             # full run, CPU, float64 (< 10 min)
    .venv/bin/python benchmarks/bench_qp.py --quick     # smoke run (< 60 s)
    .venv/bin/python benchmarks/bench_qp.py --device cuda --batch-sizes 256 4096 65536
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qp_baselines import (
    ClarabelReference,
    CvxpyLayersQP,
    QpthQP,
    Reference,
    default_cache_dir,
    load_qpth,
    versions,
)

Method = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None],
    torch.Tensor,
]
NATIVE = "otsafe native"
METHODS = (NATIVE, "qpth", "cvxpylayers")
HEADLINE = (256, 4)  # (B, m)


def load_average() -> str:
    """1, 5 and 15 minute load averages (another process on the machine distorts the timings)."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


LOAD_AT_START = load_average()


class CpuShare:
    """CPU time used by *other* processes since creation (Linux /proc/stat), as a machine share.

    Another job on the machine distorts the timings; this says by how much it was busy.
    """

    def __init__(self) -> None:
        self.start = (self._busy(), self._own(), time.perf_counter())

    @staticmethod
    def _busy() -> float | None:
        try:
            fields = [float(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        except (OSError, ValueError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
        return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def other_share(self) -> str:
        busy0, own0, wall0 = self.start
        busy = self._busy()
        if busy is None or busy0 is None:
            return "?"
        other = (busy - busy0) - (self._own() - own0)
        capacity = (time.perf_counter() - wall0) * (os.cpu_count() or 1)
        return f"{100 * max(other, 0.0) / capacity:.0f}%"


@dataclass
class Problem:
    """One batch of QPs in float64 on the CPU (NumPy), plus the cotangent for the backward."""

    u_ref: np.ndarray
    G: np.ndarray
    h: np.ndarray
    lb: np.ndarray | None
    ub: np.ndarray | None
    w: np.ndarray

    def rounded(self, dtype: torch.dtype) -> Problem:
        """The same problems rounded to ``dtype`` (and stored in float64 again)."""
        np_dtype = torch.empty(0, dtype=dtype).numpy().dtype

        def r(a: np.ndarray) -> np.ndarray:
            return a.astype(np_dtype).astype(np.float64)

        lb = None if self.lb is None else r(self.lb)
        ub = None if self.ub is None else r(self.ub)
        return Problem(r(self.u_ref), r(self.G), r(self.h), lb, ub, r(self.w))

    @property
    def infeasible_u_ref(self) -> float:
        """Fraction of rows where u_ref itself violates a constraint (so the filter acts)."""
        viol = np.einsum("bmn,bn->bm", self.G, self.u_ref) > self.h
        if self.lb is not None and self.ub is not None:
            box = (self.u_ref < self.lb) | (self.u_ref > self.ub)
            return float(np.mean(viol.any(1) | box.any(1)))
        return float(np.mean(viol.any(1)))


def make_problem(B: int, n: int, m: int, seed: int, box: bool, degenerate: bool) -> Problem:
    rng = np.random.default_rng([seed, B, n, m, int(box), int(degenerate)])
    u_ref = rng.standard_normal((B, n))
    G = rng.standard_normal((B, m, n))
    G /= np.linalg.norm(G, axis=-1, keepdims=True)
    x0 = rng.standard_normal((B, n))
    lb = ub = None
    if box:
        x0 = np.clip(x0, -1.2, 1.2)
        lb, ub = np.full((B, n), -1.5), np.full((B, n), 1.5)
    h = np.einsum("bmn,bn->bm", G, x0) + 0.5 * np.abs(rng.standard_normal((B, m)))
    if degenerate:
        if m >= 2:  # the last row duplicates the first
            G[:, -1], h[:, -1] = G[:, 0], h[:, 0]
        if m >= 3:  # the second row parallel to the first, scaled, tight where the first is
            G[:, 1], h[:, 1] = 2.0 * G[:, 0], 2.0 * h[:, 0]
        feasible = rng.random(B) < 0.25  # a quarter of the rows: u_ref already feasible
        u_ref[feasible] = x0[feasible]
    w = rng.standard_normal((B, n))
    return Problem(u_ref, G, h, lb, ub, w)


@dataclass
class CellStats:
    """The problems of one size and how their reference solutions came out."""

    m: int
    B: int
    infeasible: float  # fraction of rows where u_ref violates a constraint
    mean_active: float  # mean number of active constraints at the reference solution
    checked: int  # rows solved by the reference
    polished: int  # of which polished on the active set, KKT-verified
    verified: int  # of which with a well-defined, verified gradient (used for gradient errors)
    clarabel_vs_polished: float
    loosest_tol: float
    loose_fraction: float  # rows where Clarabel stalled at 1e-12 and a looser tolerance was used


@dataclass
class Result:
    method: str
    B: int
    m: int
    ms: float | None = None  # median ms per forward+backward pass
    runs: int = 0
    err_u: float | None = None
    err_grad: float | None = None
    non_finite: int | None = None
    note: str = ""
    warnings: set[str] = field(default_factory=set)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Batch:
    """The problems as tensors of the benchmarked dtype, on the benchmarked device."""

    u_ref: torch.Tensor
    G: torch.Tensor
    h: torch.Tensor
    lb: torch.Tensor | None
    ub: torch.Tensor | None
    w: torch.Tensor

    @classmethod
    def of(cls, prob: Problem, dtype: torch.dtype, device: torch.device) -> Batch:
        def t(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(a, dtype=dtype, device=device)

        lb = None if prob.lb is None else t(prob.lb)
        ub = None if prob.ub is None else t(prob.ub)
        return cls(t(prob.u_ref), t(prob.G), t(prob.h), lb, ub, t(prob.w))


class NativeQP:
    """``otsafe.safety.qp.solve_qp`` with its defaults (backend="native")."""

    def __init__(self, solve_qp: Callable[..., Any]) -> None:
        self.solve_qp = solve_qp

    def __call__(
        self,
        u_ref: torch.Tensor,
        G: torch.Tensor,
        h: torch.Tensor,
        lb: torch.Tensor | None,
        ub: torch.Tensor | None,
    ) -> torch.Tensor:
        u: torch.Tensor = self.solve_qp(u_ref, G, h, lb=lb, ub=ub)
        return u


def one_pass(
    fn: Method, batch: Batch, device: torch.device
) -> tuple[float, torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Time forward + backward once; return (seconds, u, (grad u_ref, grad G, grad h))."""
    u_ref, G, h = (x.detach().requires_grad_() for x in (batch.u_ref, batch.G, batch.h))
    sync(device)
    t = time.perf_counter()
    u = fn(u_ref, G, h, batch.lb, batch.ub)
    (u * batch.w).sum().backward()  # type: ignore[no-untyped-call]
    sync(device)
    sec = time.perf_counter() - t

    def grad(x: torch.Tensor) -> torch.Tensor:  # no gradient = zero gradient
        return x.grad if x.grad is not None else torch.zeros_like(x)

    return sec, u.detach(), (grad(u_ref), grad(G), grad(h))


def bench_method(
    fn: Method, batch: Batch, device: torch.device, args: argparse.Namespace
) -> tuple[list[float], torch.Tensor, tuple[torch.Tensor, ...], str]:
    """Warm up, then time up to ``args.repeats`` passes; returns (times, u, grads, note)."""
    first, u, grads = one_pass(fn, batch, device)
    if first > args.budget:
        return [first], u, grads, f"one pass only ({first:.1f} s > {args.budget:g} s budget)"
    for _ in range(args.warmup - 1 if first < 1.0 else 0):
        one_pass(fn, batch, device)
    runs = max(3, min(args.repeats, int(args.cell_seconds / max(first, 1e-9))))
    times = []
    for _ in range(runs):
        sec, u, grads = one_pass(fn, batch, device)
        times.append(sec)
    return times, u, grads, ""


def accuracy(
    u: torch.Tensor, grads: tuple[torch.Tensor, ...], rows: np.ndarray, ref: Reference
) -> tuple[float, float, int]:
    """(max |u − u*|, max |∇ − ∇*| on verified rows, non-finite rows of the whole batch)."""
    finite = torch.isfinite(u).all(1)
    for g in grads:
        finite &= torch.isfinite(g.reshape(g.shape[0], -1)).all(1)
    non_finite = int((~finite).sum())
    u64 = u.detach().to("cpu", torch.float64).numpy()[rows]
    err_u = float(np.max(np.abs(u64 - ref.u)))
    ok = ref.verified
    err_g = 0.0
    for g, g_ref in zip(grads, (ref.grad_u_ref, ref.grad_G, ref.grad_h), strict=True):
        g64 = g.detach().to("cpu", torch.float64).numpy()[rows]
        if ok.any():
            err_g = max(err_g, float(np.max(np.abs(g64[ok] - g_ref[ok]))))
    return err_u, err_g, non_finite


def fmt_err(x: float | None) -> str:
    if x is None:
        return "—"
    if math.isnan(x):
        return "NaN"
    return f"{x:.1e}"


def fmt_ms(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}" if x < 1000 else f"{x:.0f}"


def machine_info(device: torch.device, dtype: torch.dtype, requested: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    v = versions()
    dev = str(device)
    if device.type == "cuda":
        dev += f" ({torch.cuda.get_device_name(device)})"
    if requested != device.type:
        dev += f" ({requested} requested, unavailable)"
    return (
        f"machine: {cpu}, {cores} cores{mem}, {platform.machine()}, Python "
        f"{platform.python_version()}; torch {v['torch']} ({torch.get_num_threads()} threads), "
        f"NumPy {v['numpy']}, cvxpy {v['cvxpy']}, Clarabel {v['clarabel']}, cvxpylayers "
        f"{v['cvxpylayers']}, diffcp {v['diffcp']}, SCS {v['scs']}, qpth 0.0.18 (sdist)\n"
        f"dtype: {str(dtype).removeprefix('torch.')}; device: {dev}; load average at start "
        f"{LOAD_AT_START}"
    )


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    p.add_argument("--n", type=int, default=2, help="control dimension (default 2)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 256, 4096, 65536])
    p.add_argument("--m-values", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--box", action="store_true", help="add bounds lb = -1.5, ub = 1.5")
    p.add_argument(
        "--degenerate",
        action="store_true",
        help="duplicated and parallel rows of G; u_ref feasible in a quarter of the rows",
    )
    p.add_argument("--repeats", type=int, default=50, help="max timed passes per cell")
    p.add_argument("--warmup", type=int, default=3, help="warm-up passes (1 if a pass > 1 s)")
    p.add_argument(
        "--cell-seconds", type=float, default=5.0, help="fewer repeats (>= 3) beyond this"
    )
    p.add_argument("--budget", type=float, default=20.0, help="skip a method if one pass > this")
    p.add_argument("--accuracy-rows", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, default=None, help="for qpth's sdist and source")
    p.add_argument("--qpth-sdist", type=Path, default=None, help="an already downloaded sdist")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run (< 1 min): B in {1, 256}, m = 4, few repeats",
    )
    if p.parse_args().quick:  # new defaults; options given explicitly still win
        p.set_defaults(
            batch_sizes=[1, 256],
            m_values=[4],
            repeats=5,
            warmup=1,
            cell_seconds=1.0,
            budget=5.0,
            accuracy_rows=64,
        )
    return p.parse_args()


def main() -> None:
    args = parse_args()
    t_start = time.perf_counter()
    cpu_share = CpuShare()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            f"note: --device cuda requested but CUDA is not available (torch {torch.__version__},"
            f" CUDA build {torch.version.cuda}); running on the CPU instead.\n",
            file=sys.stderr,
        )
        device = torch.device("cpu")
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    n, box = args.n, args.box
    notes: list[str] = []

    native: NativeQP | None = None
    if NATIVE in args.methods:
        try:
            from otsafe.safety.qp import solve_qp

            native = NativeQP(solve_qp)
        except ImportError as exc:
            notes.append(f"`{NATIVE}` skipped: otsafe.safety.qp is not importable ({exc}).")
    qpth_qp = None
    if "qpth" in args.methods:
        qpth_qp = load_qpth(args.cache_dir or default_cache_dir(), args.qpth_sdist)

    # One untimed pass of each method on a small problem first: library initialisation (and CUDA
    # context creation) should not land in the first cell.
    tiny = Batch.of(make_problem(8, n, 4, args.seed + 1, box, args.degenerate), dtype, device)
    warm: list[Method] = [] if native is None else [native]
    if qpth_qp is not None:
        warm.append(QpthQP(qpth_qp, n, dtype, device))
    for fn_warm in warm:
        try:
            one_pass(fn_warm, tiny, device)
        except Exception as exc:  # reported again, per size, below
            print(f"warm-up failed: {type(exc).__name__}: {exc}", file=sys.stderr)

    results: list[Result] = []
    stats: list[CellStats] = []
    ref_seconds: list[float] = []
    for m in args.m_values:
        reference = ClarabelReference(n, m, box)
        layer = CvxpyLayersQP(n, m, box) if "cvxpylayers" in args.methods else None
        last: dict[str, tuple[int, float]] = {}  # method -> (B, seconds per pass)
        for B in sorted(args.batch_sizes):
            prob = make_problem(B, n, m, args.seed, box, args.degenerate)
            if dtype != torch.float64:  # the reference solves the problems as rounded
                prob = prob.rounded(dtype)
            k = min(B, args.accuracy_rows)
            rows = np.unique(np.linspace(0, B - 1, k).round().astype(int))
            ref = reference.solve(
                prob.u_ref[rows],
                prob.G[rows],
                prob.h[rows],
                None if prob.lb is None else prob.lb[rows],
                None if prob.ub is None else prob.ub[rows],
                prob.w[rows],
            )
            ref_seconds.append(ref.seconds_per_row)
            stats.append(
                CellStats(
                    m=m,
                    B=B,
                    infeasible=prob.infeasible_u_ref,
                    mean_active=float(ref.n_active.mean()),
                    checked=len(rows),
                    polished=int(ref.polished.sum()),
                    verified=int(ref.verified.sum()),
                    clarabel_vs_polished=ref.clarabel_vs_polished,
                    loosest_tol=float(ref.tolerance.max()),
                    loose_fraction=float(np.mean(ref.tolerance > 1e-12)),
                )
            )

            batch = Batch.of(prob, dtype, device)
            for name in args.methods:
                res = Result(name, B, m)
                results.append(res)
                fn: Method | None = None
                if name == NATIVE:
                    if native is None:
                        res.note = "not importable yet"
                        continue
                    fn = native
                elif name == "qpth":
                    assert qpth_qp is not None
                    fn = QpthQP(qpth_qp, n, dtype, device)
                else:
                    fn = layer
                    if device.type != "cpu":
                        res.note = "solver on the CPU (diffcp), transfers timed"
                assert fn is not None
                if name in last:
                    b0, s0 = last[name]
                    est = s0 * B / b0
                    if est > args.budget:
                        res.note = f"skipped (est. {est:.0f} s per pass > {args.budget:g} s)"
                        continue
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    try:
                        times, u, grads, note = bench_method(fn, batch, device, args)
                    except Exception as exc:
                        msg = str(exc).splitlines()[0] if str(exc) else ""
                        res.note = f"failed: {type(exc).__name__}: {msg[:120]}"
                        print(f"[{name}, B={B}, m={m}] {res.note}", file=sys.stderr)
                        continue
                    finally:
                        res.warnings = {
                            f"{w.category.__name__}: {str(w.message)[:110]}" for w in caught
                        }
                res.ms, res.runs = 1e3 * statistics.median(times), len(times)
                res.note = note or res.note
                res.err_u, res.err_grad, res.non_finite = accuracy(u, grads, rows, ref)
                last[name] = (B, statistics.median(times))
                print(
                    f"[m={m:>2} B={B:>6}] {name:<14} {fmt_ms(res.ms):>9} ms  "
                    f"err u {fmt_err(res.err_u)}  err grad {fmt_err(res.err_grad)}",
                    file=sys.stderr,
                )
    notes.append(f"CPU used by other processes during the run: {cpu_share.other_share()}.")
    report(args, results, stats, ref_seconds, notes, device, dtype, time.perf_counter() - t_start)


def report(
    args: argparse.Namespace,
    results: list[Result],
    stats: list[CellStats],
    ref_seconds: list[float],
    notes: list[str],
    device: torch.device,
    dtype: torch.dtype,
    total: float,
) -> None:
    native = {(r.B, r.m): r.ms for r in results if r.method == NATIVE and r.ms is not None}

    def ratio(r: Result) -> str:
        base = native.get((r.B, r.m))
        if r.ms is None or base is None:
            return "—"
        return f"{r.ms / base:.1f}x" if r.ms / base < 100 else f"{r.ms / base:.0f}x"

    def row(r: Result, with_size: bool) -> str:
        ms = fmt_ms(r.ms) if r.ms is not None else "—"
        size = f"{r.m} | {r.B} | " if with_size else ""
        nf = "—" if r.non_finite is None else str(r.non_finite)
        return (
            f"| {size}{r.method} | {ms} | {r.runs or '—'} | {ratio(r)} | {fmt_err(r.err_u)} | "
            f"{fmt_err(r.err_grad)} | {nf} | {r.note} |"
        )

    cols = (
        "method | fwd+bwd ms (median) | passes | time vs native | max abs err u | "
        "max abs err grad | non-finite rows | note |"
    )
    extra = (", box" if args.box else "") + (", degenerate problems" if args.degenerate else "")
    print(f"# Safety QP layer: forward + backward, n = {args.n}{extra}\n")
    print(f"command: `{shlex.join(sys.orig_argv)}`")
    print(machine_info(device, dtype, args.device) + "\n")
    headline = [r for r in results if (r.B, r.m) == HEADLINE]
    if headline:
        print(f"## Headline: B = {HEADLINE[0]}, n = {args.n}, m = {HEADLINE[1]}\n")
        print(f"| {cols}\n|---|---:|---:|---:|---:|---:|---:|---|")
        for r in headline:
            print(row(r, with_size=False))
        print()
    print("## All sizes\n")
    print(f"| m | B | {cols}\n|---:|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        print(row(r, with_size=True))
    print("\n## Problems and reference\n")
    print(
        "| m | B | u_ref infeasible | mean active at u* | rows checked / polished / with grad | "
        "Clarabel vs polished | loosest Clarabel tol | rows not at 1e-12 |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in stats:
        print(
            f"| {c.m} | {c.B} | {100 * c.infeasible:.0f}% | {c.mean_active:.2f} | {c.checked} / "
            f"{c.polished} / {c.verified} | {c.clarabel_vs_polished:.1e} | {c.loosest_tol:.0e} | "
            f"{100 * c.loose_fraction:.0f}% |"
        )
    print()
    print(
        "- One pass: forward, then backward of ⟨u, w⟩ (fixed random w) into u_ref, G and h. "
        "Errors against the Clarabel reference polished on its active set, on up to "
        f"{args.accuracy_rows} rows per size; gradient errors on the KKT-verified rows."
    )
    print(
        "- cvxpylayers: default solver (diffcp + SCS, default tolerances), threads = CPU count; "
        "qpth 0.0.18: QPFunction defaults (eps 1e-12, maxIter 20), verbose=-1."
    )
    print(
        f"- cvxpy + Clarabel reference, one row at a time: median "
        f"{1e3 * statistics.median(ref_seconds):.2f} ms per row (forward only, not in the tables)."
    )
    for note in notes:
        print(f"- {note}")
    seen: dict[str, set[str]] = {}
    for r in results:
        for w in r.warnings:
            seen.setdefault(w, set()).add(r.method)
    for w, methods in sorted(seen.items()):
        print(f"- warning from {', '.join(sorted(methods))}: {w}")
    print(f"- total wall time: {total:.0f} s; load average at the end {load_average()}")


if __name__ == "__main__":
    main()
