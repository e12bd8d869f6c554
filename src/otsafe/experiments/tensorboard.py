"""Optional TensorBoard logging of every episode of every job (``experiment.tensorboard: true``).

Each job writes its own event files into ``tensorboard/<job>/`` of the run directory, one scalar
per metric column per episode (``tensorboard --logdir RUN/tensorboard``). It uses PyTorch's
:class:`torch.utils.tensorboard.SummaryWriter`, which needs the ``tensorboard`` package
(``pip install otsafe[tensorboard]``). A resumed job opens its writer with
``purge_step`` at its first new episode, so events an interrupted session wrote after its last
checkpoint are dropped instead of duplicated.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
from collections.abc import Callable, Iterator
from typing import Any

from otsafe.errors import ConfigError
from otsafe.experiments.checkpoint import JobContext

__all__ = ["check_tensorboard", "episode_logger"]


def check_tensorboard() -> None:
    """Raise :class:`ConfigError` if the ``tensorboard`` package is missing."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            "experiment.tensorboard needs the tensorboard package: "
            "pip install 'otsafe[tensorboard]'"
        )


@contextlib.contextmanager
def episode_logger(
    ctx: JobContext, key: str, enabled: bool, first_episode: int = 0
) -> Iterator[Callable[[int, dict[str, Any]], None] | None]:
    """A function ``log(episode, row)`` writing the row's numbers as scalars, or ``None``.

    ``None`` when logging is off or the context has no log directory (e.g. benchmarks).
    """
    if not enabled or ctx.log_dir is None:
        yield None
        return
    check_tensorboard()
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(ctx.log_dir / key), purge_step=first_episode + 1)

    def log(episode: int, row: dict[str, Any]) -> None:
        for name, value in row.items():
            if name != "episode" and isinstance(value, (int, float)) and math.isfinite(value):
                writer.add_scalar(name, float(value), global_step=episode + 1)

    try:
        yield log
    finally:
        writer.close()
