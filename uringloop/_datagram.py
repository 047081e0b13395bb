"""UDP for :class:`uringloop.Loop`: the datagram transport factory and the datagram
``sock_*`` coroutines, each one io_uring ``RECVMSG``/``SENDMSG`` resolving a future."""

from __future__ import annotations

import asyncio
import operator
import socket
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from ._uring import ffi, lib
from .transports.datagram import DatagramTransport, decode_name, encode_address, new_dgrams

__all__ = ["DatagramMixin"]


class DatagramMixin:
    """``create_datagram_endpoint`` support and ``sock_recvfrom``/``sock_sendto``.

    Relies on :class:`uringloop._sockops.SockOpsMixin` (``_check_sock``, ``_oneshot``)
    being among the loop's bases.
    """

    _check_sock: Callable[[socket.socket], None]
    _oneshot: Callable[..., asyncio.Future[Any]]

    def _make_datagram_transport(
        self, sock: socket.socket, protocol: asyncio.BaseProtocol, address: Any = None,
        waiter: asyncio.Future[None] | None = None, extra: dict[str, Any] | None = None,
    ) -> DatagramTransport:
        return DatagramTransport(self, sock, protocol, address, waiter, extra)  # type: ignore[arg-type]

    async def _recvmsg(self, sock: socket.socket, buf: Any, view: memoryview,
                       nbytes: int) -> tuple[int, Any]:
        # A datagram that a cancelled receive took (its CQE raced the cancel) was kept
        # for the next receive on the socket: the stdlib loop never loses one either.
        stashes = self.__dict__.get("_dgram_stashes")
        stash = stashes.get(sock) if stashes is not None else None
        if stash:
            data, addr = stash.popleft()
            n = min(len(data), nbytes)  # the rest is discarded, as recvfrom() does
            view[:n] = data[:n]
            return n, addr
        cbuf = ffi.from_buffer(view, require_writable=True)
        block, (d,) = new_dgrams(1)
        lib.ul_dgram_set_recv(d, cbuf, nbytes)
        fd = sock.fileno()

        def convert(res: int) -> tuple[int, Any]:
            return res, decode_name(d)

        def orphan(res: int) -> None:
            st = self.__dict__.get("_dgram_stashes")
            if st is None:
                st = self.__dict__["_dgram_stashes"] = weakref.WeakKeyDictionary()
            st.setdefault(sock, deque()).append((view[:res].tobytes(), decode_name(d)))

        return await self._oneshot(  # type: ignore[no-any-return]
            lambda r, ud: lib.ul_dgram_prep_recvmsg(r, fd, ud, d), (block, cbuf, buf, view),
            convert, orphan,
        )

    async def sock_recvfrom(self, sock: socket.socket, bufsize: int) -> tuple[bytes, Any]:
        """Receive one datagram: ``(data, address)``, as ``socket.recvfrom``."""
        self._check_sock(sock)
        bufsize = operator.index(bufsize)
        if bufsize < 0:
            raise ValueError("negative buffersize in recvfrom")
        buf = bytearray(bufsize)
        view = memoryview(buf)
        n, addr = await self._recvmsg(sock, buf, view, bufsize)
        return bytes(view[:n]), addr

    async def sock_recvfrom_into(
        self, sock: socket.socket, buf: Any, nbytes: int = 0
    ) -> tuple[int, Any]:
        """Receive one datagram into ``buf``: ``(nbytes, address)``."""
        self._check_sock(sock)
        if not nbytes:
            nbytes = len(buf)
        nbytes = operator.index(nbytes)
        view = memoryview(buf).cast("B")
        if nbytes < 0:
            raise ValueError("negative buffersize in recvfrom_into")
        if nbytes > view.nbytes:
            raise ValueError("nbytes is greater than the length of the buffer")
        return await self._recvmsg(sock, buf, view, nbytes)

    async def sock_sendto(self, sock: socket.socket, data: Any, address: Any) -> int:
        """Send one datagram to ``address``; the number of bytes sent."""
        self._check_sock(sock)
        view = memoryview(data).cast("B")
        raw = encode_address(sock.family, address)
        cbuf = ffi.from_buffer(view)
        block, (d,) = new_dgrams(1)
        lib.ul_dgram_set_send(d, cbuf, view.nbytes, raw, len(raw))
        fd = sock.fileno()
        return await self._oneshot(  # type: ignore[no-any-return]
            lambda r, ud: lib.ul_dgram_prep_sendmsg(r, fd, ud, d, 0), (block, cbuf, view, raw)
        )
