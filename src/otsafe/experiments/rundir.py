"""The life of a run directory: staging, checkpoints, resume, and the atomic move into place.

A run writes everything into a hidden staging directory beside its output, ``.NAME.partial``.
Nothing appears under ``NAME`` until the run is complete: :meth:`RunDirectory.finalise` moves the
staged files into place, ``summary.json`` last, so a directory with ``summary.json`` is a
complete run and nothing else is.

The staging directory also holds what a resumed run needs:

``config.yaml``      the resolved configuration (resume refuses a different one);
``status.json``      ``running`` / ``interrupted`` / ``failed``, with the process id and times;
``checkpoints/``     one file per job (see :mod:`otsafe.experiments.checkpoint`).

What happens to it when a run stops early:

* **interrupted** (SIGINT / SIGTERM, after every job has written a checkpoint) or **killed**
  (SIGKILL, power loss): the staging directory stays; ``otsafe run ... --resume`` continues
  from the checkpoints.
* **failed** (an exception): the staging directory stays if it holds at least one checkpoint,
  so no finished work is lost; otherwise it is removed, with any parent directories the run
  created, and the output directory is left exactly as it was.

The checkpoints move into the finished run directory with the rest (``checkpoints/`` holds the
final state of every agent).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from otsafe.errors import ResumeError, RunDirectoryError

__all__ = [
    "RunDirectory",
    "atomic_write_text",
    "config_differences",
    "is_complete_run",
    "open_run_dir",
    "staging_path",
]

STATUS = "status.json"
SUMMARY = "summary.json"
CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and :func:`os.replace`."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def staging_path(out: Path) -> Path:
    """The hidden staging directory of the run directory ``out``."""
    return out.parent / f".{out.name}.partial"


def is_complete_run(path: Path) -> bool:
    """Whether ``path`` holds a finished run (``config.yaml`` and ``summary.json``)."""
    return (path / SUMMARY).is_file() and (path / CONFIG).is_file()


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config mappings, in order."""
    out = []
    for key in list(old) + [k for k in new if k not in old]:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(config_differences(a, b, f"{prefix}{key}."))
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


@dataclass
class RunDirectory:
    """Where a run is staged and where it lands.

    ``resumed`` is true when the staging directory came from an earlier, interrupted run.
    """

    out: Path
    staging: Path
    created_parents: list[Path] = field(default_factory=list)
    resumed: bool = False

    @property
    def checkpoints(self) -> Path:
        return self.staging / CHECKPOINTS

    def has_checkpoints(self) -> bool:
        return self.checkpoints.is_dir() and any(self.checkpoints.glob("*.ckpt"))

    def write_status(self, state: str, **extra: Any) -> None:
        """Record the run's state (``running``, ``interrupted``, ``failed``) in the staging dir."""
        record = {"state": state, "pid": os.getpid(), "time": time.time(), **extra}
        atomic_write_text(self.staging / STATUS, json.dumps(record, indent=2) + "\n")

    def finalise(self) -> None:
        """Move the complete staging directory into place (replacing old contents).

        ``summary.json`` moves last: its presence marks a complete run.
        """
        (self.staging / STATUS).unlink(missing_ok=True)
        out = self.out
        if not out.exists():
            self.staging.rename(out)
            return
        # ``out`` exists (empty, or replaced with --overwrite). Move entries rather than the
        # directory itself, which may be the working directory.
        trash = self.staging.parent / f".{out.name}.old-{os.getpid()}"
        trash.mkdir()
        for entry in list(out.iterdir()):
            entry.rename(trash / entry.name)
        entries = sorted(self.staging.iterdir(), key=lambda p: p.name == SUMMARY)
        for entry in entries:
            entry.rename(out / entry.name)
        self.staging.rmdir()
        shutil.rmtree(trash, ignore_errors=True)

    def stop(self, exc: BaseException) -> None:
        """Leave the staging directory after ``exc``: keep it if it holds checkpoints."""
        if self.has_checkpoints():
            interrupted = isinstance(exc, KeyboardInterrupt)
            self.write_status(
                "interrupted" if interrupted else "failed",
                error=None if interrupted else f"{type(exc).__name__}: {exc}",
            )
            return
        shutil.rmtree(self.staging, ignore_errors=True)
        for parent in self.created_parents:
            try:
                parent.rmdir()
            except OSError:
                break


def _read_status(staging: Path) -> dict[str, Any]:
    try:
        data = json.loads((staging / STATUS).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _pid_alive(pid: int) -> bool:
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def open_run_dir(
    out: str | Path, config: dict[str, Any], *, overwrite: bool, resume: bool
) -> RunDirectory | None:
    """Check ``out`` and return its (new or resumed) staging directory.

    Parameters
    ----------
    out
        The run directory the finished run will occupy.
    config
        The resolved configuration as a mapping; written to ``config.yaml`` in a fresh staging
        directory, and compared with the staged one on resume.
    overwrite
        Replace the contents of a non-empty ``out`` (only once the new run is complete), and
        discard the checkpoints of an interrupted run there.
    resume
        Continue the interrupted run staged for ``out``.

    Returns
    -------
    RunDirectory or None
        ``None`` when ``resume`` is set and ``out`` already holds the finished run with this
        config: there is nothing to do.

    Raises
    ------
    RunDirectoryError
        ``out`` is unusable, or holds a run and neither ``overwrite`` nor ``resume`` is set.
    ResumeError
        ``resume`` is set but there is no run to resume, ``out`` is not a run directory, the
        config differs, or another process is running it.
    """
    out = Path(out).resolve()
    if overwrite and resume:
        raise RunDirectoryError("--resume and --overwrite exclude each other")
    if out.exists() and not out.is_dir():
        raise RunDirectoryError(f"--out {str(out)!r} exists and is not a directory")
    staging = staging_path(out)
    if resume:
        return _resume(out, staging, config)
    if staging.exists():
        status = _read_status(staging)
        if status.get("state") == "running" and _pid_alive(int(status.get("pid", 0))):
            raise RunDirectoryError(
                f"another otsafe process (pid {status['pid']}) is running {str(out)!r}"
            )
        if not overwrite:
            raise RunDirectoryError(
                f"an interrupted run of {str(out)!r} has checkpoints in {str(staging)!r}; "
                "pass --resume to continue it or --overwrite to start again"
            )
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise RunDirectoryError(
            f"run directory {str(out)!r} already exists and is not empty; "
            "choose another --out, pass --overwrite, or --resume an interrupted run"
        )
    created: list[Path] = []
    parent = out.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirectoryError(f"cannot create {str(out.parent)!r}: {exc}") from None
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    (staging / CHECKPOINTS).mkdir()
    run_dir = RunDirectory(out=out, staging=staging, created_parents=created)
    atomic_write_text(staging / CONFIG, yaml.safe_dump(config, sort_keys=False))
    run_dir.write_status("running")
    return run_dir


def _resume(out: Path, staging: Path, config: dict[str, Any]) -> RunDirectory | None:
    if not staging.is_dir():
        if is_complete_run(out):
            _check_same_config(out / CONFIG, config, out)
            return None
        if out.is_dir() and any(out.iterdir()):
            raise ResumeError(f"{str(out)!r} is not an otsafe run directory (no summary.json)")
        raise ResumeError(
            f"nothing to resume at {str(out)!r}: no interrupted run (expected {str(staging)!r})"
        )
    if not (staging / CONFIG).is_file():
        raise ResumeError(f"{str(staging)!r} is not an otsafe run (no config.yaml)")
    status = _read_status(staging)
    if status.get("state") == "running" and _pid_alive(int(status.get("pid", 0))):
        raise ResumeError(f"another otsafe process (pid {status['pid']}) is running {str(out)!r}")
    _check_same_config(staging / CONFIG, config, out)
    (staging / CHECKPOINTS).mkdir(exist_ok=True)
    run_dir = RunDirectory(out=out, staging=staging, resumed=True)
    run_dir.write_status("running")
    return run_dir


#: Keys that do not change the results, so a resumed run may set them differently.
_RESUME_MAY_CHANGE = frozenset({"experiment.workers", "experiment.tensorboard"})


def _check_same_config(path: Path, config: dict[str, Any], out: Path) -> None:
    try:
        old = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ResumeError(f"cannot read {str(path)!r}: {exc}") from None
    if not isinstance(old, dict):
        raise ResumeError(f"{str(path)!r} is not an otsafe config")
    diff = [d for d in config_differences(old, config) if d.split(":")[0] not in _RESUME_MAY_CHANGE]
    if diff:
        more = f" (and {len(diff) - 1} more)" if len(diff) > 1 else ""
        raise ResumeError(
            f"the run at {str(out)!r} has a different config: {diff[0]}{more}; "
            "resume with the same preset and overrides, or start a new run"
        )
