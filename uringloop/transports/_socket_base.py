"""Life-cycle steps shared by the socket transports (stream and datagram)."""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

__all__ = ["SocketLifecycleMixin"]


class SocketLifecycleMixin:
    """``connection_made`` scheduling, repr and the unclosed-transport warning.

    The transport provides ``_sock``, ``_fd``, ``_closing``, ``_paused``, ``_protocol``,
    ``_protocol_connected``, ``_arm_recv()`` and ``_fatal_error()``.
    """

    __slots__ = ()

    _sock: Any
    _fd: int
    _closing: bool
    _paused: bool
    _protocol: Any
    _protocol_connected: bool

    def __repr__(self) -> str:
        state = "closed" if self._sock is None else ("closing" if self._closing else "open")
        return f"<{type(self).__name__} fd={self._fd} {state}>"

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if getattr(self, "_sock", None) is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._sock.close()

    def _forget_fd(self) -> None:
        """Leave the loop's fd -> transport table (before the fd is closed and reused)."""
        table = self._loop._transports  # type: ignore[attr-defined]
        if table.get(self._fd) is self:
            del table[self._fd]

    def _connection_made(self, waiter: asyncio.Future[None] | None) -> None:
        if self._closing:
            if waiter is not None and not waiter.cancelled():
                waiter.set_result(None)
            return
        try:
            self._protocol.connection_made(self)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            if waiter is not None and not waiter.cancelled():
                waiter.set_exception(exc)
            self._fatal_error(exc, "Fatal error: protocol.connection_made() failed")  # type: ignore[attr-defined]
            return
        self._protocol_connected = True  # type: ignore[misc]  # a slot of the transport class
        if not self._paused and not self._closing:
            self._arm_recv()  # type: ignore[attr-defined]
        if waiter is not None and not waiter.cancelled():
            waiter.set_result(None)
