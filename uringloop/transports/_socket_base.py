"""Life-cycle steps shared by the socket transports (stream and datagram)."""

from __future__ import annotations

import asyncio
import warnings
from asyncio.log import logger
from typing import TYPE_CHECKING, Any

__all__ = ["SocketLifecycleMixin"]


class SocketLifecycleMixin:
    """``connection_made`` scheduling, repr, the unclosed-transport warning, fatal errors
    and the ``connection_lost`` steps.

    The transport provides ``_sock``, ``_fd``, ``_ring``, ``_recv_ud``, ``_send_ud``,
    ``_closing``, ``_paused``, ``_protocol``, ``_protocol_connected``, ``_lost_called``,
    ``_arm_recv()`` and ``_force_close()``.
    """

    __slots__ = ()

    _sock: Any
    _fd: int
    _ring: Any
    _recv_ud: int
    _send_ud: int
    _closing: bool
    _paused: bool
    _protocol: Any
    _protocol_connected: bool
    _lost_called: bool

    if TYPE_CHECKING:
        def _arm_recv(self) -> None: ...
        def _force_close(self, exc: BaseException | None) -> None: ...

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
            self._fatal_error(exc, "Fatal error: protocol.connection_made() failed")
            return
        self._protocol_connected = True  # type: ignore[misc]  # a slot of the transport class
        if not self._paused and not self._closing:
            self._arm_recv()
        if waiter is not None and not waiter.cancelled():
            waiter.set_result(None)

    def abort(self) -> None:
        self._force_close(None)

    def _fatal_error(self, exc: BaseException, message: str = "Fatal error on transport") -> None:
        if isinstance(exc, OSError):
            if self._loop.get_debug():  # type: ignore[attr-defined]
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._loop.call_exception_handler(  # type: ignore[attr-defined]
                {"message": message, "exception": exc, "transport": self,
                 "protocol": self._protocol}
            )
        self._force_close(exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        if self._lost_called:
            return
        self._lost_called = True  # type: ignore[misc]
        ring = self._ring
        ring.unregister(self._recv_ud)
        ring.unregister(self._send_ud)
        try:
            if self._protocol_connected:
                self._protocol.connection_lost(exc)
        finally:
            self._forget_fd()
            self._release()

    def _release(self) -> None:
        """After ``connection_lost``: close the socket and let go of the protocol."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        self._protocol = None
