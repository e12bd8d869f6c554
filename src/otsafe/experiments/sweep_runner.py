"""Run a sweep (:mod:`otsafe.experiments.sweep`) on a local process pool or on Ray.

Local backend
    One process per run (``--workers`` at a time), so that a worker that dies (SIGKILL, out of
    memory) is known by its exit status: the death is reported and the run retried from its
    checkpoints, up to ``retries`` times. A run that raises an error is marked ``failed`` with
    the error and not retried in this invocation (running the sweep again retries it).
Ray backend (``pip install otsafe[ray]``)
    The same runs as Ray tasks (one CPU each), on a local Ray instance started with
    ``--workers`` CPUs or on an existing cluster given by ``address``. Worker deaths
    (``WorkerCrashedError``) are retried and reported the same way. On a cluster, the sweep
    directory must be on a filesystem every node sees, and otsafe installed on every node.

Both stop cleanly on SIGINT/SIGTERM: no new runs start, running ones checkpoint and stop, the
index records them as ``interrupted``, and :class:`KeyboardInterrupt` is raised.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from otsafe.errors import SweepError
from otsafe.experiments.dsrl_config import DSRLConfig
from otsafe.experiments.execution import default_workers, start_method
from otsafe.experiments.sweep import (
    SweepRun,
    SweepSpec,
    expand_sweep,
    headline,
    prepare_sweep_dir,
    run_status,
    run_sweep_run,
    write_index,
)

__all__ = ["SweepOutcome", "run_sweep"]

Backend = Literal["local", "ray"]
#: Seconds between rewrites of ``index.csv`` while a sweep runs.
INDEX_INTERVAL = 1.0
#: ``report(run, status, **fields)`` updates the index row of ``run``.
Report = Callable[..., None]


@dataclass
class SweepOutcome:
    """What a sweep invocation did."""

    sweep_dir: Path
    rows: list[dict[str, Any]]
    ran: int = 0
    skipped: int = 0
    retried: int = 0
    wall_seconds: float = 0.0
    failed: list[str] = field(default_factory=list)


def run_sweep(
    spec: SweepSpec,
    out: str | Path,
    *,
    backend: Backend = "local",
    workers: int = 0,
    address: str | None = None,
    retries: int = 1,
    progress: bool = True,
) -> SweepOutcome:
    """Run every unfinished run of ``spec`` into the sweep directory ``out``.

    Parameters
    ----------
    spec
        The sweep (:func:`~otsafe.experiments.sweep.load_sweep`).
    out
        The sweep directory; created, or continued if it holds the same sweep.
    backend
        ``"local"`` (process pool) or ``"ray"``.
    workers
        Runs at a time (local) or CPUs of a local Ray instance; 0 = one per CPU core.
    address
        Ray only: the address of an existing cluster (``host:port``, ``ray://host:port`` or
        ``auto``); ``None`` starts a local instance.
    retries
        How many times a run whose worker died is retried.

    Raises
    ------
    SweepError
        Invalid sweep, directory of another sweep, Ray missing or its address unreachable.
    KeyboardInterrupt
        After a clean stop on SIGINT/SIGTERM.
    """
    from tqdm.auto import tqdm

    if backend not in ("local", "ray"):
        raise SweepError(f"unknown backend {backend!r}; choose local or ray")
    if retries < 0:
        raise SweepError(f"--retries must be non-negative, got {retries}")
    if workers < 0:
        raise SweepError(f"--workers must be non-negative (0 = one per core), got {workers}")
    if address is not None and backend != "ray":
        raise SweepError("a cluster address needs --backend ray")
    runs = expand_sweep(spec)  # every run validated before anything is created
    if backend == "ray":
        _import_ray()
        if address is not None:
            check_ray_address(address)
    sweep_dir = prepare_sweep_dir(out, spec)
    workers = workers or default_workers()
    rows: dict[str, dict[str, Any]] = {}
    for run in runs:
        status = run_status(run, sweep_dir)
        rows[run.run_id] = {
            "run": run.run_id,
            "status": status,
            "attempts": 0,
            "label": run.label,
            "method": run.method,
            "seed": run.seed,
            "dir": str(run.directory(sweep_dir).relative_to(sweep_dir)),
            "overrides": run.overrides,
            "summary": _read_headline(run, sweep_dir) if status == "done" else {},
            "config": run.config.model_dump(mode="json"),
        }
    todo = [run for run in runs if rows[run.run_id]["status"] != "done"]
    outcome = SweepOutcome(sweep_dir, list(rows.values()), skipped=len(runs) - len(todo))
    write_index(sweep_dir, outcome.rows)
    if not todo:
        return outcome
    started = time.perf_counter()
    bar = tqdm(
        total=len(runs),
        initial=outcome.skipped,
        desc=spec.name or "sweep",
        unit="run",
        disable=not progress,
        dynamic_ncols=True,
    )

    last_write = 0.0

    def report(run: SweepRun, status: str, **fields: Any) -> None:
        nonlocal last_write
        row = rows[run.run_id]
        row.update(status=status, **fields)
        if status == "done":
            row["summary"] = _read_headline(run, sweep_dir)
            row["error"] = ""
            outcome.ran += 1
            bar.update(1)
        elif status == "failed":
            outcome.failed.append(run.run_id)
            bar.update(1)
            error = row.get("error", "")
            bar.write(f"otsafe sweep: {run.run_id} failed: {error}", file=sys.stderr)
        elif status == "retrying":
            outcome.retried += 1
            error = row.get("error", "")
            bar.write(f"otsafe sweep: {run.run_id}: {error}; retrying", file=sys.stderr)
        # The index holds every run's config: rewriting it on every event is quadratic in the
        # number of runs, so write at most every INDEX_INTERVAL seconds (and once at the end).
        if time.monotonic() - last_write >= INDEX_INTERVAL:
            write_index(sweep_dir, list(rows.values()))
            last_write = time.monotonic()

    try:
        if backend == "ray":
            _run_ray(todo, sweep_dir, spec.figures, workers, address, retries, report)
        else:
            _run_local(todo, sweep_dir, spec.figures, workers, retries, report)
    finally:
        bar.close()
        outcome.rows = list(rows.values())
        outcome.wall_seconds = time.perf_counter() - started
        write_index(sweep_dir, outcome.rows)
    return outcome


def _read_headline(run: SweepRun, sweep_dir: Path) -> dict[str, Any]:
    import json

    try:
        return headline(json.loads((run.directory(sweep_dir) / "summary.json").read_text()))
    except (OSError, ValueError):
        return {}


@contextmanager
def _stop_requests() -> Iterator[threading.Event]:
    """An event set by SIGINT/SIGTERM while inside (main thread only)."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def handler(signum: int, frame: Any) -> None:
        event.set()

    old_int = signal.signal(signal.SIGINT, handler)
    old_term = signal.signal(signal.SIGTERM, handler)
    try:
        yield event
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


# ---------------------------------------------------------------------------------- local
_EXIT_INTERRUPTED = 130


def _error_file(run: SweepRun, sweep_dir: Path) -> Path:
    return sweep_dir / "runs" / f".{run.run_id}.error"


def _child(run: SweepRun, sweep_dir: Path, figures: bool) -> None:
    """Body of a local worker process: one run; the exit status says how it ended."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    error_file = _error_file(run, sweep_dir)
    error_file.unlink(missing_ok=True)
    _one_thread_per_run(run)
    try:
        run_sweep_run(run, sweep_dir, figures)
    except KeyboardInterrupt:
        sys.exit(_EXIT_INTERRUPTED)
    except BaseException as exc:
        error_file.write_text(f"{type(exc).__name__}: {exc}")
        sys.exit(1)
    sys.exit(0)


def _one_thread_per_run(run: SweepRun) -> None:
    """Runs run side by side, one per core: torch (DSRL, the Sinkhorn solver) gets one thread.

    Tabular runs with exact OT never import torch, and this does not make them.
    """
    config = run.config
    uses_torch = isinstance(config, DSRLConfig) or config.agent.ot_method in ("sinkhorn", "auto")
    if uses_torch:
        import torch

        torch.set_num_threads(1)


def _run_local(
    todo: list[SweepRun],
    sweep_dir: Path,
    figures: bool,
    workers: int,
    retries: int,
    report: Report,
) -> None:
    # spawn when a run uses CUDA: validating its config already touched CUDA in this process
    spawn = start_method(r.config.experiment.device for r in todo) == "spawn"
    mp = multiprocessing.get_context("spawn") if spawn else multiprocessing.get_context()
    queue: deque[tuple[SweepRun, int]] = deque((run, 1) for run in todo)
    running: dict[Any, tuple[Any, SweepRun, int, float]] = {}
    signalled: set[int] = set()
    with _stop_requests() as stop:
        while (queue and not stop.is_set()) or running:
            while queue and not stop.is_set() and len(running) < workers:
                run, attempt = queue.popleft()
                proc = mp.Process(target=_child, args=(run, sweep_dir, figures))
                proc.start()
                running[proc.sentinel] = (proc, run, attempt, time.perf_counter())
                report(run, "running", attempts=attempt)
            if stop.is_set():
                for proc, *_ in running.values():
                    if proc.pid not in signalled:
                        signalled.add(proc.pid)
                        os.kill(proc.pid, signal.SIGTERM)  # the run checkpoints and stops
            for sentinel in multiprocessing.connection.wait(list(running), timeout=0.5):
                proc, run, attempt, t0 = running.pop(sentinel)
                proc.join()
                seconds = round(time.perf_counter() - t0, 3)
                code = proc.exitcode
                if code == 0:
                    report(run, "done", seconds=seconds)
                elif proc.pid in signalled or code == _EXIT_INTERRUPTED:
                    report(run, "interrupted", seconds=seconds)
                elif code is not None and code < 0:
                    error = f"worker died ({signal.Signals(-code).name})"
                    if attempt <= retries:
                        report(run, "retrying", error=error)
                        queue.append((run, attempt + 1))
                    else:
                        report(run, "failed", error=error, seconds=seconds)
                else:
                    report(run, "failed", error=_read_error(run, sweep_dir), seconds=seconds)
        if stop.is_set():
            for run, _ in queue:
                report(run, "interrupted")
            raise KeyboardInterrupt


def _read_error(run: SweepRun, sweep_dir: Path) -> str:
    path = _error_file(run, sweep_dir)
    try:
        text = path.read_text().strip()
    except OSError:
        return "worker exited with an error"
    path.unlink(missing_ok=True)
    return text.splitlines()[0] if text else "worker exited with an error"


# ------------------------------------------------------------------------------------ ray
def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise SweepError(
            "the ray backend needs Ray: pip install 'otsafe[ray]' (or use --backend local)"
        ) from None
    return ray


def check_ray_address(address: str, timeout: float = 5.0) -> None:
    """Raise :class:`SweepError` unless ``host:port`` (or ``ray://host:port``) accepts a TCP
    connection within ``timeout`` seconds (``auto`` is left to Ray)."""
    if address == "auto":
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise SweepError(f"Ray address {address!r} must look like host:port or ray://host:port")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise SweepError(f"cannot reach the Ray cluster at {address!r}: {exc}") from None


def _ray_task(run: SweepRun, sweep_dir: str, figures: bool) -> dict[str, Any]:
    """A sweep run inside a Ray worker; returns how it ended."""
    t0 = time.perf_counter()
    _one_thread_per_run(run)
    try:
        run_sweep_run(run, Path(sweep_dir), figures)
    except KeyboardInterrupt:
        return {"status": "interrupted", "seconds": time.perf_counter() - t0}
    except Exception as exc:
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    return {"status": "done", "seconds": round(time.perf_counter() - t0, 3)}


def _run_ray(
    todo: list[SweepRun],
    sweep_dir: Path,
    figures: bool,
    workers: int,
    address: str | None,
    retries: int,
    report: Report,
) -> None:
    ray = _import_ray()
    with ray_session(workers, address):
        _run_ray_tasks(ray, todo, sweep_dir, figures, retries, report)


@contextmanager
def ray_session(workers: int, address: str | None) -> Iterator[None]:
    """Start a local Ray instance (``workers`` CPUs) or join ``address``, unless Ray is already
    initialised (then reuse it: ``otsafe reproduce`` runs all its sweeps in one session)."""
    ray = _import_ray()
    if ray.is_initialized():
        yield
        return
    if address is not None:
        check_ray_address(address)
    try:
        if address is None:
            ray.init(
                num_cpus=workers or default_workers(), include_dashboard=False, log_to_driver=False
            )
        else:
            ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "a local Ray instance"
        raise SweepError(f"cannot start or join {where}: {exc}") from None
    try:
        yield
    finally:
        ray.shutdown()


def _run_ray_tasks(
    ray: Any,
    todo: list[SweepRun],
    sweep_dir: Path,
    figures: bool,
    retries: int,
    report: Report,
) -> None:
    task = ray.remote(num_cpus=1, max_retries=0)(_ray_task)
    refs: dict[Any, tuple[SweepRun, int]] = {}

    def submit(run: SweepRun, attempt: int) -> None:
        refs[task.remote(run, str(sweep_dir), figures)] = (run, attempt)
        report(run, "running", attempts=attempt)

    with _stop_requests() as stop:
        for run in todo:
            submit(run, 1)
        cancelled = False
        while refs:
            if stop.is_set() and not cancelled:
                cancelled = True
                for ref in refs:
                    ray.cancel(ref)  # SIGINT in the task: it checkpoints and stops
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=0.5)
            for ref in ready:
                run, attempt = refs.pop(ref)
                try:
                    res = ray.get(ref)
                except ray.exceptions.TaskCancelledError:
                    report(run, "interrupted")
                    continue
                except ray.exceptions.RayError as exc:
                    error = f"worker died ({type(exc).__name__})"
                    if attempt <= retries and not stop.is_set():
                        report(run, "retrying", error=error)
                        submit(run, attempt + 1)
                    else:
                        report(run, "failed", error=error)
                    continue
                report(run, res.pop("status"), **res)
        if stop.is_set():
            raise KeyboardInterrupt
