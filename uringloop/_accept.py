"""Listening sockets: one multishot ``ACCEPT`` per server socket."""

from __future__ import annotations

import errno
import os
import socket
from asyncio import constants
from typing import TYPE_CHECKING, Any

from ._ring import F_MORE
from ._uring import ffi, lib
from .transports.stream import StreamTransport

if TYPE_CHECKING:
    from .loop import Loop

__all__ = ["Acceptor"]

_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Acceptor:
    """Accepts connections on one listening socket and makes a transport for each."""

    def __init__(
        self,
        loop: Loop,
        protocol_factory: Any,
        sock: socket.socket,
        sslcontext: Any,
        server: Any,
        ssl_handshake_timeout: float | None,
        ssl_shutdown_timeout: float | None,
    ) -> None:
        self._loop = loop
        self._factory = protocol_factory
        self._sock = sock
        self._fd = sock.fileno()
        self._family, self._type, self._proto = sock.family, sock.type, sock.proto
        self._ssl = sslcontext
        self._server = server
        self._hs_timeout = ssl_handshake_timeout
        self._sd_timeout = ssl_shutdown_timeout
        self._ud = loop._ring.register(self._on_accept)
        self._armed = False
        self._serving = True
        self._retry: Any = None

    def start(self) -> None:
        if self._armed or not self._serving:
            return
        rc = lib.ul_prep_accept(self._loop._ring.ptr, self._fd, self._ud, 1, ffi.NULL, ffi.NULL)
        if rc < 0:
            raise OSError(-rc, os.strerror(-rc))
        self._armed = True

    def stop(self) -> None:
        """Stop accepting; the pending accept is cancelled (its CQE unregisters us)."""
        self._serving = False
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        ring = self._loop._ring
        if self._armed and not ring.closed and not ring.forked:
            lib.ul_prep_cancel(ring.ptr, self._ud, 0)
        else:
            ring.unregister(self._ud)

    def _rearm_later(self) -> None:
        self._retry = None
        self.start()

    def _on_accept(self, res: int, flags: int) -> None:
        if not flags & F_MORE:
            self._armed = False
        if res >= 0:
            self._new_connection(res)
        elif not self._serving:
            pass
        elif -res in _RESOURCE_ERRORS:
            self._loop.call_exception_handler(
                {
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(-res, os.strerror(-res)),
                    "socket": self._sock,
                }
            )
            if not self._armed and self._retry is None:
                self._retry = self._loop.call_later(
                    constants.ACCEPT_RETRY_DELAY, self._rearm_later
                )
            return
        if not self._armed:
            if self._serving:
                self.start()
            else:
                self._loop._ring.unregister(self._ud)

    def _new_connection(self, fd: int) -> None:
        conn = socket.socket(self._family, self._type, self._proto, fileno=fd)
        conn.setblocking(False)
        if not self._serving:
            conn.close()
            return
        loop = self._loop
        if self._ssl:
            loop.create_task(
                loop._accept_connection2(
                    self._factory, conn, {}, self._ssl, self._server,
                    self._hs_timeout, self._sd_timeout,
                )
            )
            return
        try:
            protocol = self._factory()
            StreamTransport(loop, conn, protocol, server=self._server)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            conn.close()
            loop.call_exception_handler(
                {"message": "Error on transport creation for incoming connection",
                 "exception": exc}
            )
