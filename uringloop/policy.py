"""Ways to run code on uringloop: new_event_loop, EventLoopPolicy, install, run."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

from .loop import Loop

__all__ = ["new_event_loop", "EventLoopPolicy", "install", "run"]

T = TypeVar("T")


def new_event_loop() -> Loop:
    """A new uringloop event loop (raises UnsupportedError if io_uring is unavailable)."""
    return Loop()


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):  # type: ignore[misc,valid-type]
    """An event loop policy whose loops are uringloop loops."""

    def _loop_factory(self) -> Loop:  # type: ignore[override]
        return new_event_loop()


def install() -> None:
    """Make uringloop the default loop of this process (``asyncio.set_event_loop_policy``)."""
    asyncio.set_event_loop_policy(EventLoopPolicy())


def run(main: Coroutine[Any, Any, T], *, debug: bool | None = None) -> T:
    """Run ``main`` on a new uringloop loop, like ``asyncio.run`` (and ``uvloop.run``)."""
    if not asyncio.iscoroutine(main):
        raise ValueError(f"a coroutine was expected, got {main!r}")
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=new_event_loop, debug=debug) as runner:
            return runner.run(main)
    loop = new_event_loop()  # pragma: no cover (3.10)
    try:  # pragma: no cover
        asyncio.set_event_loop(loop)
        if debug is not None:
            loop.set_debug(debug)
        return loop.run_until_complete(main)
    finally:  # pragma: no cover
        asyncio.set_event_loop(None)
        loop.close()
