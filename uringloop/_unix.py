"""Unix domain stream sockets: ``create_unix_server`` and ``create_unix_connection``.

Both mirror ``asyncio.unix_events._UnixSelectorEventLoop``: the argument checks and
error messages are the stdlib's, the listening side is an ``asyncio.base_events.Server``
(served by the loop's io_uring ``ACCEPT``), and the connecting side is an io_uring
``CONNECT`` (:meth:`sock_connect`) followed by the ordinary stream transport.

A listening socket's file is removed when the server closes if it is still the file the
server bound (same inode): Python 3.13's ``cleanup_socket=True`` behaviour, on every
supported version.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from asyncio import base_events, tasks
from asyncio.log import logger
from typing import TYPE_CHECKING, Any

__all__ = ["UnixMixin"]


class _UnixServer(base_events.Server):
    """A ``Server`` that unlinks the socket files it bound when it is closed."""

    _unix_cleanup: dict[str, int]

    if TYPE_CHECKING:
        # Server internals that typeshed does not declare.
        _sockets: list[socket.socket] | None

        def _start_serving(self) -> None: ...

    def close(self) -> None:
        if self._sockets is None:
            return
        super().close()
        cleanup = getattr(self, "_unix_cleanup", None)
        if not cleanup:
            return
        self._unix_cleanup = {}
        for path, ino in cleanup.items():
            try:
                if os.stat(path).st_ino == ino:
                    os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as err:
                logger.error("Unable to clean up listening UNIX socket %r: %r", path, err)


def _is_abstract(path: Any) -> bool:
    return bool(path) and path[0] in (0, "\x00")


class UnixMixin:
    """``create_unix_server`` / ``create_unix_connection`` for :class:`uringloop.Loop`."""

    async def create_unix_connection(
        self,
        protocol_factory: Any,
        path: Any = None,
        *,
        ssl: Any = None,
        sock: socket.socket | None = None,
        server_hostname: str | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> tuple[Any, Any]:
        assert server_hostname is None or isinstance(server_hostname, str)
        if ssl:
            if server_hostname is None:
                raise ValueError("you have to pass server_hostname when using ssl")
        else:
            if server_hostname is not None:
                raise ValueError("server_hostname is only meaningful with ssl")
            if ssl_handshake_timeout is not None:
                raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
            if ssl_shutdown_timeout is not None:
                raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")

        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")
            path = os.fspath(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0)
            try:
                sock.setblocking(False)
                await self.sock_connect(sock, path)  # type: ignore[attr-defined]
            except BaseException:
                sock.close()
                raise
        else:
            if sock is None:
                raise ValueError("no path and sock were specified")
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")
            sock.setblocking(False)

        transport, protocol = await self._create_connection_transport(  # type: ignore[attr-defined]
            sock, protocol_factory, ssl, server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        return transport, protocol

    async def create_unix_server(
        self,
        protocol_factory: Any,
        path: Any = None,
        *,
        sock: socket.socket | None = None,
        backlog: int = 100,
        ssl: Any = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
        start_serving: bool = True,
        cleanup_socket: bool = True,
    ) -> base_events.Server:
        if isinstance(ssl, bool):
            raise TypeError("ssl argument must be an SSLContext or None")
        if ssl_handshake_timeout is not None and not ssl:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
        if ssl_shutdown_timeout is not None and not ssl:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")

        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")
            path = os.fspath(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            # Remove a stale socket file (never anything else); abstract names have none.
            if not _is_abstract(path):
                try:
                    if stat.S_ISSOCK(os.stat(path).st_mode):
                        os.remove(path)
                except FileNotFoundError:
                    pass
                except OSError as err:
                    # The directory may only allow creating the socket.
                    logger.error("Unable to check or remove stale UNIX socket %r: %r", path, err)
            try:
                sock.bind(path)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    msg = f"Address {path!r} is already in use"
                    raise OSError(errno.EADDRINUSE, msg) from None
                raise
            except BaseException:
                sock.close()
                raise
        else:
            if sock is None:
                raise ValueError("path was not specified, and no sock specified")
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")

        cleanup: dict[str, int] = {}
        if cleanup_socket:
            try:
                bound = sock.getsockname()
            except OSError:
                bound = None
            if bound and not _is_abstract(bound):
                try:
                    cleanup[os.fsdecode(bound)] = os.stat(bound).st_ino
                except OSError:
                    pass

        sock.setblocking(False)
        server = _UnixServer(self, [sock], protocol_factory, ssl, backlog,  # type: ignore[arg-type]
                             ssl_handshake_timeout, ssl_shutdown_timeout)
        server._unix_cleanup = cleanup
        if start_serving:
            server._start_serving()
            # One iteration, so that the accept is queued before we return.
            await tasks.sleep(0)
        return server
