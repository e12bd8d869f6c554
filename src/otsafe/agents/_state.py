"""Checks shared by the agents' ``load_state_dict`` (checkpoints)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from otsafe.errors import ConfigError

__all__ = ["check_header"]


def check_header(state: Any, kind: str, version: int, keys: tuple[str, ...]) -> None:
    """Raise ConfigError unless ``state`` is a mapping of ``kind``/``version`` with ``keys``."""
    if not isinstance(state, Mapping):
        raise ConfigError(
            f"cannot load the state: expected the dict of state_dict(), got {type(state).__name__}"
        )
    if state.get("kind") != kind:
        raise ConfigError(
            f"cannot load the state: it is a {state.get('kind')!r} state, this agent reads "
            f"{kind!r} states"
        )
    if state.get("version") != version:
        raise ConfigError(
            f"cannot load the state: format version {state.get('version')!r}, this otsafe reads "
            f"version {version}"
        )
    missing = [k for k in keys if k not in state]
    if missing:
        raise ConfigError(f"cannot load the state: missing {', '.join(missing)}")
