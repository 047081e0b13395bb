"""Ways to run code on uringloop: new_event_loop, EventLoopPolicy, install, run."""

from __future__ import annotations

import asyncio
import functools
import os
import sys
import warnings
from collections.abc import Coroutine
from types import FrameType
from typing import Any, TypeVar

from .errors import UnsupportedError
from .loop import Loop

__all__ = ["new_event_loop", "EventLoopPolicy", "install", "run"]

T = TypeVar("T")

# Frames in these packages are skipped when a fallback warning picks the line to blame.
_INTERNAL = (
    os.path.dirname(os.path.abspath(__file__)) + os.sep,  # uringloop
    os.path.dirname(os.path.abspath(asyncio.__file__)) + os.sep,
)


def _warn_fallback(exc: UnsupportedError) -> None:
    """The one RuntimeWarning of every entry point that falls back, blamed on the first
    caller outside uringloop and asyncio (the line that called run(), install(),
    new_event_loop(), or asyncio.run() / new_event_loop() under the policy)."""
    level = 1  # this frame
    frame: FrameType | None = sys._getframe(0)
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame = frame.f_back
        level += 1
    warnings.warn(
        f"uringloop: falling back to the stdlib asyncio event loop: {exc.strerror or exc}",
        RuntimeWarning, stacklevel=level,
    )


def new_event_loop(*, fallback: bool = False) -> asyncio.AbstractEventLoop:
    """A new uringloop event loop.

    If io_uring is unavailable this raises :class:`UnsupportedError` (naming the cause and
    the remedy), or with ``fallback=True`` warns (one ``RuntimeWarning`` per call, with the
    same reason) and returns a stdlib ``asyncio`` loop instead.
    """
    try:
        return Loop()
    except UnsupportedError as exc:
        if not fallback:
            raise
        _warn_fallback(exc)
        return asyncio.SelectorEventLoop()


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """An event loop policy whose loops are uringloop loops.

    With ``fallback=True`` and io_uring unavailable its loops are stdlib loops; the first
    one comes with a ``RuntimeWarning`` naming the reason (one per policy, not per loop).
    """

    def __init__(self, *, fallback: bool = False) -> None:
        super().__init__()
        self._fallback = fallback
        self._warned = False  # the policy's one fallback warning was given

    def _loop_factory(self) -> asyncio.AbstractEventLoop:
        try:
            return Loop()
        except UnsupportedError as exc:
            if not self._fallback:
                raise
            if not self._warned:
                self._warned = True
                _warn_fallback(exc)
            return asyncio.SelectorEventLoop()


def install(*, fallback: bool = False) -> None:
    """Make uringloop the default loop of this process (``asyncio.set_event_loop_policy``).

    With ``fallback=True`` and io_uring unavailable it warns once, here (``RuntimeWarning``
    naming the reason), and installs a policy whose loops are stdlib loops.
    """
    policy = EventLoopPolicy(fallback=fallback)
    if fallback:
        try:  # the probe: a real loop, so it needs exactly what the policy's loops need
            Loop().close()
        except UnsupportedError as exc:
            _warn_fallback(exc)
            policy._warned = True  # that was the policy's one warning
    asyncio.set_event_loop_policy(policy)


def run(
    main: Coroutine[Any, Any, T], *, debug: bool | None = None, fallback: bool = False
) -> T:
    """Run ``main`` on a new uringloop loop, like ``asyncio.run`` (and ``uvloop.run``);
    ``fallback=True``: on a stdlib loop, with a RuntimeWarning, if io_uring is unavailable.

    Like ``asyncio.run`` it refuses (``RuntimeError``) to run inside a running loop."""
    if not asyncio.iscoroutine(main):
        raise ValueError(f"a coroutine was expected, got {main!r}")
    if asyncio.events._get_running_loop() is not None:
        main.close()  # no "never awaited" warning either
        raise RuntimeError("uringloop.run() cannot be called from a running event loop")
    factory = functools.partial(new_event_loop, fallback=fallback)
    if sys.version_info >= (3, 11):
        try:
            loop = factory()
        except BaseException:
            main.close()  # as asyncio.run leaves no "never awaited" warning behind
            raise
        with asyncio.Runner(loop_factory=lambda: loop, debug=debug) as runner:
            return runner.run(main)
    loop = factory()  # pragma: no cover (3.10)
    try:  # pragma: no cover
        asyncio.set_event_loop(loop)
        if debug is not None:
            loop.set_debug(debug)
        return loop.run_until_complete(main)
    finally:  # pragma: no cover
        asyncio.set_event_loop(None)
        loop.close()
