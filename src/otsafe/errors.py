"""Named errors raised by otsafe.

Every error that comes from bad user input derives from :class:`OtsafeError`, which is a
:class:`ValueError`. The command-line interface catches :class:`OtsafeError`, prints its message
on one line and exits with status 2.
"""

from __future__ import annotations

__all__ = [
    "ChainError",
    "ConfigError",
    "ConvergenceError",
    "DistributionError",
    "MapError",
    "OtsafeError",
    "ReportError",
    "ResumeError",
    "RunDirectoryError",
    "SafetyValuesError",
    "SweepError",
]


class OtsafeError(ValueError):
    """Base class of every input error raised by otsafe."""


class MapError(OtsafeError):
    """A grid map is malformed: bad characters, ragged rows, start/goal count, unreachable goal."""


class SafetyValuesError(OtsafeError):
    """User-supplied per-cell safety values are negative, non-finite, mis-shaped or all zero."""


class DistributionError(OtsafeError):
    """A probability vector is invalid: wrong shape, negative or non-finite entries, bad mass."""


class ChainError(OtsafeError):
    """A policy-induced Markov chain has no well-defined state distribution."""


class ConfigError(OtsafeError):
    """A configuration value or key is invalid."""


class ConvergenceError(OtsafeError):
    """An iterative solver could not meet the requested tolerance within its iteration budget."""


class RunDirectoryError(OtsafeError):
    """An output directory cannot be used for a run."""


class ResumeError(RunDirectoryError):
    """A run cannot be resumed: no interrupted run there, not a run directory, or its config
    differs from the one given."""


class SweepError(OtsafeError):
    """A sweep file or sweep directory is invalid (unknown keys, empty grids, a different sweep
    in the directory, an unreachable Ray cluster)."""


class ReportError(OtsafeError):
    """A report cannot be made: no runs found, or a run directory is incomplete or unreadable."""
