"""Running the jobs of a run: in this process or in a process pool, stopping cleanly on signals.

A stop request (SIGINT, i.e. Ctrl-C, or SIGTERM, as cluster schedulers send) does not kill the
jobs: it sets an event that every job checks after each episode; a job then writes its
checkpoint and raises :class:`~otsafe.experiments.checkpoint.StopRequested`. A second SIGINT
interrupts this process at once: a job running in it loses what it did since its last checkpoint,
while pool workers still finish their episode and checkpoint. Pool workers ignore SIGINT, so that
Ctrl-C in a terminal (which signals the whole process group) reaches them only through the
event.

When a job fails, the others are asked to stop the same way, and the first error is re-raised
once they have checkpointed.

Runs on a GPU start their workers with ``spawn`` (:func:`start_method`): checking the device in
the parent (``torch.cuda.is_available()``, which the config validation does) already makes CUDA
unusable in a forked child ("Cannot re-initialize CUDA in forked subprocess"; PyTorch's notes on
multiprocessing). CPU runs keep the platform's default (``fork`` on Linux), which starts faster.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, TypeVar

from otsafe.experiments.checkpoint import CheckpointStore, JobContext, StopRequested

__all__ = ["default_workers", "run_jobs", "start_method", "stop_on_signals"]

J = TypeVar("J")
R = TypeVar("R")

_PROGRESS_EVERY = 10  # episodes between progress messages from a worker process


def default_workers() -> int:
    """The number of CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def stop_on_signals(event: Any) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM set ``event``; a second SIGINT raises at once.

    Does nothing outside the main thread (signal handlers can only be set there).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    count = 0

    def handler(signum: int, frame: Any) -> None:
        nonlocal count
        count += 1
        if count > 1 and signum == signal.SIGINT:
            raise KeyboardInterrupt
        event.set()

    old_int = signal.signal(signal.SIGINT, handler)
    old_term = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


# Set in each pool worker by _init_worker.
_WORKER: dict[str, Any] = {}


def _init_worker(stop: Any, ticks: Any, torch_threads: int | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    _WORKER.update(stop=stop, ticks=ticks)
    if torch_threads is not None:
        import torch

        # One process per core already: more threads per process only oversubscribe the CPU.
        torch.set_num_threads(torch_threads)


def _call_in_worker(
    fn: Callable[[J, JobContext], R],
    job: J,
    store_dir: Path | None,
    every: int,
    log_dir: Path | None,
) -> R:
    ticks = _WORKER["ticks"]
    done = 0

    def report(n: int) -> None:
        nonlocal done
        done += n
        if done >= _PROGRESS_EVERY:
            ticks.put(done)
            done = 0

    store = None if store_dir is None else CheckpointStore(store_dir)
    try:
        ctx = JobContext(
            store=store, every=every, stop=_WORKER["stop"], progress=report, log_dir=log_dir
        )
        return fn(job, ctx)
    finally:
        if done:
            ticks.put(done)


def start_method(devices: Iterable[str]) -> str | None:
    """The start method for worker processes that will use ``devices``: ``"spawn"`` if any is a
    CUDA device, else ``None`` (the platform's default)."""
    return "spawn" if any(str(d).startswith("cuda") for d in devices) else None


def run_jobs(
    fn: Callable[[J, JobContext], R],
    jobs: Sequence[J],
    *,
    workers: int,
    store: CheckpointStore | None = None,
    every: int = 0,
    progress: Callable[[int], object] | None = None,
    torch_threads: int | None = None,
    log_dir: Path | None = None,
    method: str | None = None,
) -> list[R]:
    """Run ``fn(job, context)`` for every job; results in job order.

    ``workers <= 1`` runs the jobs one after the other in this process; otherwise in a pool of
    ``min(workers, len(jobs))`` processes, each limited to ``torch_threads`` torch threads
    (``None``: leave torch's default), started with the multiprocessing start ``method``
    (``None``: the platform's default; see :func:`start_method`).
    """
    mp = multiprocessing.get_context(method)
    stop = mp.Event()
    with stop_on_signals(stop):
        if workers <= 1 or len(jobs) <= 1:
            ctx = JobContext(
                store=store, every=every, stop=stop, progress=progress, log_dir=log_dir
            )
            return [fn(job, ctx) for job in jobs]
        return _run_pool(
            fn, jobs, workers, store, every, progress, torch_threads, mp, stop, log_dir
        )


def _run_pool(
    fn: Callable[[J, JobContext], R],
    jobs: Sequence[J],
    workers: int,
    store: CheckpointStore | None,
    every: int,
    progress: Callable[[int], object] | None,
    torch_threads: int | None,
    mp: Any,
    stop: Any,
    log_dir: Path | None,
) -> list[R]:
    ticks = mp.Queue()
    results: dict[int, R] = {}
    first_error: BaseException | None = None
    store_dir = None if store is None else store.directory
    with ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)),
        mp_context=mp,
        initializer=_init_worker,
        initargs=(stop, ticks, torch_threads),
    ) as pool:
        pending: dict[Future[R], int] = {
            pool.submit(_call_in_worker, fn, job, store_dir, every, log_dir): k
            for k, job in enumerate(jobs)
        }
        while pending:
            done, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for fut in done:
                k = pending.pop(fut)
                try:
                    results[k] = fut.result()
                except BaseException as exc:
                    stop.set()  # the others checkpoint and stop too
                    if first_error is None or isinstance(first_error, StopRequested):
                        first_error = exc
            _drain(ticks, progress)
        _drain(ticks, progress)
    if first_error is not None:
        raise first_error
    return [results[k] for k in range(len(jobs))]


def _drain(ticks: Any, progress: Callable[[int], object] | None) -> None:
    while True:
        try:
            n = ticks.get_nowait()
        except queue.Empty:
            return
        if progress is not None:
            progress(n)


def execute_run(
    *,
    name: str,
    config: dict[str, Any],
    out: str | Path,
    jobs: Sequence[J],
    job_fn: Callable[[J, JobContext], R],
    episodes_per_job: int,
    workers: int,
    checkpoint_every: int,
    write_outputs: Callable[[Path, list[R], dict[str, Any]], dict[str, Any]],
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    torch_threads: int | None = None,
) -> dict[str, Any]:
    """The life of one run: stage, run the jobs with checkpoints, write outputs, move into place.

    The workers start with :func:`start_method` of ``config["experiment"]["device"]``.

    ``write_outputs(staging, results, run_info)`` writes the run's files into the staging
    directory and returns its summary; ``run_info`` (jobs, workers, wall seconds, machine,
    whether it was resumed) is added to the summary as ``summary["run"]``, and ``summary.json``
    is written last. With ``resume`` and an already finished run, returns its summary.
    ``torch_threads`` is passed to :func:`run_jobs` (pool workers only).
    """
    import json
    import platform
    import time

    from tqdm.auto import tqdm

    import otsafe
    from otsafe.experiments.rundir import SUMMARY, open_run_dir

    run_dir = open_run_dir(out, config, overwrite=overwrite, resume=resume)
    if run_dir is None:  # resumed a finished run
        summary: dict[str, Any] = json.loads((Path(out) / SUMMARY).read_text())
        return summary
    try:
        workers = max(1, min(workers or default_workers(), len(jobs)))
        started = time.perf_counter()
        with tqdm(
            total=len(jobs) * episodes_per_job,
            desc=name,
            unit="ep",
            disable=not progress,
            dynamic_ncols=True,
        ) as bar:
            results = run_jobs(
                job_fn,
                jobs,
                workers=workers,
                store=CheckpointStore(run_dir.checkpoints),
                every=checkpoint_every,
                progress=bar.update,
                log_dir=run_dir.staging / "tensorboard",
                torch_threads=torch_threads,
                method=start_method([config.get("experiment", {}).get("device", "cpu")]),
            )
        run_info = {
            "otsafe_version": otsafe.__version__,
            "jobs": len(jobs),
            "workers": workers,
            "wall_seconds": time.perf_counter() - started,
            "resumed": run_dir.resumed,
            "python": platform.python_version(),
            "machine": f"{platform.machine()}, {default_workers()} CPU cores",
        }
        summary = write_outputs(run_dir.staging, results, run_info)
        summary["run"] = {**run_info, **summary.get("run", {})}
        (run_dir.staging / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
        run_dir.finalise()
    except BaseException as exc:
        run_dir.stop(exc)
        raise
    return summary
