"""A pytest plugin that runs pytest-asyncio tests on uringloop.

Enable it in a ``conftest.py`` with ``pytest_plugins = ["uringloop.pytest_plugin"]``.
The ini option ``uringloop_loops`` picks the loops every async test runs on (comma
separated, from ``uringloop``, ``asyncio`` and ``uvloop``; default ``uringloop``); a test
can narrow it with ``@pytest.mark.asyncio(loop_factories=["uringloop"])``.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from .policy import new_event_loop


def _uvloop_factory() -> asyncio.AbstractEventLoop:
    import uvloop

    return uvloop.new_event_loop()


_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uringloop": new_event_loop,
    "asyncio": asyncio.new_event_loop,
    "uvloop": _uvloop_factory,
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "uringloop_loops",
        "loops that async tests run on: uringloop, asyncio, uvloop (comma separated)",
        default="uringloop",
    )


def _loop_names(config: pytest.Config) -> list[str]:
    """The loops named by ``uringloop_loops``; pytest.UsageError for a bad value."""
    value = str(config.getini("uringloop_loops"))
    names = [n.strip() for n in value.split(",") if n.strip()]
    valid = ", ".join(_FACTORIES)
    unknown = [n for n in names if n not in _FACTORIES]
    if unknown:
        raise pytest.UsageError(
            f"uringloop_loops = {value!r}: unknown loop {', '.join(map(repr, unknown))}; "
            f"valid values (comma separated): {valid}"
        )
    if not names:
        raise pytest.UsageError(
            f"uringloop_loops = {value!r} names no loop; valid values (comma separated): "
            f"{valid}"
        )
    if "uvloop" in names and importlib.util.find_spec("uvloop") is None:
        raise pytest.UsageError("uringloop_loops names uvloop, which is not installed")
    return names


def pytest_configure(config: pytest.Config) -> None:
    _loop_names(config)  # a bad value stops the run here, as a usage error


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], Any]]:
    return {name: _FACTORIES[name] for name in _loop_names(config)}
