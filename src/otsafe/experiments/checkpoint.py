"""Per-job checkpoints: atomic files, and the training loop that writes them.

A job (one method and seed) checkpoints into ``checkpoints/<job>.ckpt`` every ``every``
episodes, when a stop is requested, and when it finishes. A checkpoint is a pickle of

``{"version": 1, "job": <key>, "episodes": k, "agent": agent.state_dict(), "rows": [...],
"result": <the job's result once it has finished, else None>}``

written to a temporary file, flushed to disk and renamed over the old one
(:func:`os.replace` is atomic on POSIX), so a SIGKILL at any moment leaves either the previous
checkpoint or the new one, never a torn file. The agent's ``state_dict`` holds everything that
evolves during training (tables or networks, optimisers, replay buffer, RNG states), so a
resumed job continues exactly where the checkpoint left it; per-episode seeds come from
``SeedSequence([seed, ..., episode])``, so nothing else needs saving.

Checkpoints are pickles (not :func:`torch.save` files, so that tabular OT-Q runs never import
PyTorch; torch tensors pickle the same way): load only those your own runs wrote. A DSRL run on a
GPU holds CUDA tensors and resumes on a machine with a GPU.
"""

from __future__ import annotations

import os
import pickle
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from otsafe.errors import ResumeError

__all__ = [
    "CheckpointStore",
    "Checkpointable",
    "JobContext",
    "StopRequested",
    "train_with_checkpoints",
]

CHECKPOINT_VERSION = 1


class StopRequested(KeyboardInterrupt):
    """Raised by a job after it checkpointed because a stop was requested (SIGINT/SIGTERM)."""


class Checkpointable(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class StopFlag(Protocol):
    def is_set(self) -> bool: ...


class CheckpointStore:
    """The checkpoint files of one run, in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        return self.directory / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', key)}.ckpt"

    def save(self, key: str, state: dict[str, Any]) -> None:
        """Write the checkpoint of job ``key`` atomically."""
        path = self.path(key)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with tmp.open("wb") as fh:
            pickle.dump(
                {"version": CHECKPOINT_VERSION, "job": key, **state},
                fh,
                protocol=pickle.HIGHEST_PROTOCOL,
            )
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def load(self, key: str) -> dict[str, Any] | None:
        """The checkpoint of job ``key``, or ``None`` if it has none."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with path.open("rb") as fh:
                state = pickle.load(fh)
        except Exception as exc:  # a foreign or damaged file: say which
            raise ResumeError(f"cannot read checkpoint {str(path)!r}: {exc}") from None
        if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
            raise ResumeError(f"{str(path)!r} is not an otsafe checkpoint (version 1)")
        if state.get("job") != key:
            raise ResumeError(f"checkpoint {str(path)!r} belongs to job {state.get('job')!r}")
        return state


@dataclass
class JobContext:
    """What a running job is given besides its spec: where to checkpoint, how often, whether to
    stop, and where to report finished episodes."""

    store: CheckpointStore | None = None
    every: int = 0
    stop: StopFlag | None = None
    progress: Callable[[int], object] | None = None
    log_dir: Path | None = None
    # The last checkpoint this process wrote per job, so that finished() need not read it back.
    _written: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    def load(self, key: str) -> dict[str, Any] | None:
        return None if self.store is None else self.store.load(key)

    def save(self, key: str, state: dict[str, Any]) -> None:
        """Write the checkpoint of job ``key`` (nothing without a store)."""
        if self.store is not None:
            self.store.save(key, state)
            self._written[key] = state

    def finished(self, key: str, result: Any) -> None:
        """Add the finished job's ``result`` to its last checkpoint (resume then skips the job)."""
        if self.store is None:
            return
        state = self._written.pop(key, None)
        if state is None:  # written by an earlier session of the run
            state = self.store.load(key)
        if state is not None:
            state.pop("version", None)
            state.pop("job", None)
            self.store.save(key, {**state, "result": result})

    def check_stop(self, what: str) -> None:
        """Raise :class:`StopRequested` if a stop was requested (between phases of a job)."""
        if self.stop is not None and self.stop.is_set():
            raise StopRequested(f"stopped before {what}")

    def tick(self, n: int = 1) -> None:
        if self.progress is not None:
            self.progress(n)


def train_with_checkpoints(
    key: str,
    agent: Checkpointable,
    episodes: int,
    run_episode: Callable[[int], dict[str, Any]],
    ctx: JobContext,
    saved: dict[str, Any] | None = None,
    on_episode: Callable[[int, dict[str, Any]], object] | None = None,
) -> tuple[list[dict[str, Any]], float]:
    """Run episodes ``0 .. episodes - 1`` of job ``key``, resuming from its checkpoint.

    ``run_episode(k)`` plays episode ``k`` (0-based) and returns its metrics row. A checkpoint
    is written after every ``ctx.every``-th episode (``0``: never periodically), after the last
    one, and after the current episode when ``ctx.stop`` is set, after which
    :class:`StopRequested` is raised.

    ``saved`` is the job's checkpoint (from :meth:`JobContext.load`), if any: the agent is
    restored from it and its rows are kept. ``on_episode(k, row)`` sees every new row (logging).

    Returns the rows of all ``episodes`` episodes (restored ones first) and the training time in
    seconds, summed over the sessions of the job.
    """
    rows: list[dict[str, Any]] = []
    seconds = 0.0
    if saved is not None:
        agent.load_state_dict(saved["agent"])
        rows = list(saved["rows"])
        seconds = float(saved.get("seconds", 0.0))
        ctx.tick(len(rows))
    if ctx.stop is not None and ctx.stop.is_set() and len(rows) < episodes:
        raise StopRequested(f"job {key} not started: stop requested")
    start = time.perf_counter()
    for episode in range(len(rows), episodes):
        row = run_episode(episode)
        rows.append(row)
        if on_episode is not None:
            on_episode(episode, row)
        ctx.tick()
        last = episode + 1 == episodes
        stopping = ctx.stop is not None and ctx.stop.is_set()
        periodic = ctx.every > 0 and (episode + 1) % ctx.every == 0
        if ctx.store is not None and (stopping or periodic or last):
            elapsed = seconds + time.perf_counter() - start
            ctx.save(
                key,
                {
                    "episodes": len(rows),
                    "agent": agent.state_dict(),
                    "rows": rows,
                    "seconds": elapsed,
                    "result": None,
                },
            )
        if stopping and not last:
            raise StopRequested(f"job {key} stopped after episode {episode + 1}")
    return rows, seconds + time.perf_counter() - start
