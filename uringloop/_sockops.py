"""The ``loop.sock_*`` coroutines, each one io_uring operation resolving a future."""

from __future__ import annotations

import asyncio
import errno
import itertools
import operator
import os
import socket
import weakref
from asyncio import base_events
from collections.abc import Callable
from typing import Any

from . import _sockaddr
from ._ring import F_MORE, Ring
from ._uring import ffi, lib

__all__ = ["SockOpsMixin"]


# The buffers of operations in flight are pinned here, by a module-level table, not only
# by the operation object. A loop dropped with operations in flight is a garbage reference
# cycle (ring -> handler -> operation -> future -> loop), and CPython's cycle collector
# clears a memoryview in such a cycle even while a cffi pointer still exports it
# (memory_clear drops its managed buffer with exports > 0), which segfaults when that
# export is released. A pinned buffer is never garbage. The final CQE unpins it; if that
# never comes (the ring was closed first) it stays pinned: the kernel might still use it.
_PINNED: dict[int, Any] = {}
_MAX_RECV = 0x7FFFF000  # the kernel's MAX_RW_COUNT: no receive returns more
_pin_keys = itertools.count()


class _OneShot:
    """One operation: holds its buffers until the final CQE, then resolves its future."""

    __slots__ = ("ring", "fut", "pin", "convert", "ud", "orphan")

    def __init__(
        self, ring: Ring, fut: asyncio.Future[Any], keep: Any, convert: Callable[[int], Any],
        orphan: Callable[[int], None] | None = None,
    ) -> None:
        self.ring = ring
        self.orphan = orphan
        self.fut = fut
        self.pin = next(_pin_keys)
        _PINNED[self.pin] = keep
        self.convert = convert
        self.ud = ring.register(self._on_cqe)
        fut.add_done_callback(self._on_done)

    def _on_cqe(self, res: int, flags: int) -> None:
        if flags & F_MORE:
            return
        self.ring.unregister(self.ud)
        _PINNED.pop(self.pin, None)
        fut = self.fut
        if fut.done():
            if res >= 0 and self.orphan is not None:
                self.orphan(res)  # e.g. close an fd accepted after the caller gave up
            return
        if res < 0:
            fut.set_exception(OSError(-res, os.strerror(-res)))
        else:
            try:
                fut.set_result(self.convert(res))
            except BaseException as exc:  # conversion failed (e.g. fd wrap): report it
                fut.set_exception(exc)

    def _on_done(self, fut: asyncio.Future[Any]) -> None:
        # A cancelled await must cancel the kernel operation; buffers stay until its CQE.
        if fut.cancelled() and self.ud in self.ring.handlers and not self.ring.closed:
            lib.ul_prep_cancel(self.ring.ptr, self.ud, 0)
            self.ring.submit()  # cancel now, as the stdlib's remove_reader/writer would


def _connected_to(sock: socket.socket, address: Any) -> bool:
    try:
        peer = sock.getpeername()
    except OSError:
        return False
    if isinstance(address, tuple) and isinstance(peer, tuple):
        return tuple(peer[:2]) == tuple(address[:2])
    return bool(peer == address)


def _identity(res: int) -> int:
    return res


class SockOpsMixin:
    """``sock_recv``, ``sock_sendall``, ``sock_connect``... for :class:`uringloop.Loop`."""

    _ring: Ring

    def _check_sock(self, sock: socket.socket) -> None:
        base_events._check_ssl_socket(sock)  # type: ignore[attr-defined]
        if self.get_debug() and sock.gettimeout() != 0:  # type: ignore[attr-defined]
            raise ValueError("the socket must be non-blocking")
        self._ensure_fd_no_transport(sock)  # type: ignore[attr-defined]

    def _oneshot(
        self,
        prep: Callable[[Any, int], int],
        keep: Any,
        convert: Callable[[int], Any] = _identity,
        orphan: Callable[[int], None] | None = None,
    ) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self.create_future()  # type: ignore[attr-defined]
        op = _OneShot(self._ring, fut, keep, convert, orphan)
        rc = prep(self._ring.ptr, op.ud)
        if rc < 0:
            self._ring.unregister(op.ud)
            _PINNED.pop(op.pin, None)
            fut.set_exception(OSError(-rc, os.strerror(-rc)))
        else:
            # Start it now, as the stdlib's direct system call would: a caller may block
            # on the effect (e.g. a peer's accept()) before the loop iterates again.
            self._ring.submit()
        return fut

    def _recv_stash(self) -> weakref.WeakKeyDictionary[socket.socket, bytearray]:
        """Bytes taken by a cancelled receive whose CQE raced the cancel, per socket.

        The kernel may complete a receive after its awaiting task was cancelled; those
        bytes are kept here and returned by the next receive on the socket, so a cancel
        never loses data (the stdlib loop never does either).
        """
        stash = self.__dict__.get("_sock_recv_stash")
        if stash is None:
            stash = self.__dict__["_sock_recv_stash"] = weakref.WeakKeyDictionary()
        return stash

    def _take_stashed(self, sock: socket.socket, n: int) -> bytes | None:
        stash = self.__dict__.get("_sock_recv_stash")
        pending = stash.get(sock) if stash is not None else None
        if not pending:
            return None
        data = bytes(pending[:n])
        del pending[:n]
        return data

    def _stash_orphan(self, sock: socket.socket, view: memoryview) -> Callable[[int], None]:
        def orphan(res: int) -> None:
            if res > 0:
                self._recv_stash().setdefault(sock, bytearray()).extend(view[:res])

        return orphan

    async def sock_recv(self, sock: socket.socket, n: int) -> bytes:
        self._check_sock(sock)
        n = operator.index(n)  # like socket.recv: TypeError for floats, str, None
        if n < 0:
            raise ValueError("negative buffersize in recv")
        if n > _MAX_RECV:  # refuse before allocating (and zeroing) a huge buffer
            raise OverflowError(f"buffersize {n} is larger than one receive can fill")
        stashed = self._take_stashed(sock, n)
        if stashed is not None:
            return stashed
        buf = bytearray(n)
        view = memoryview(buf)
        cbuf = ffi.from_buffer(buf)
        fd = sock.fileno()
        got = await self._oneshot(
            lambda r, ud: lib.ul_prep_recv(r, fd, ud, cbuf, n, 0), cbuf, _identity,
            self._stash_orphan(sock, view),
        )
        return bytes(view[:got])

    async def sock_recv_into(self, sock: socket.socket, buf: Any) -> int:
        self._check_sock(sock)
        view = memoryview(buf).cast("B")
        stashed = self._take_stashed(sock, view.nbytes)
        if stashed is not None:
            view[: len(stashed)] = stashed
            return len(stashed)
        cbuf = ffi.from_buffer(view, require_writable=True)
        fd, n = sock.fileno(), view.nbytes
        return await self._oneshot(  # type: ignore[no-any-return]
            lambda r, ud: lib.ul_prep_recv(r, fd, ud, cbuf, n, 0), (cbuf, view), _identity,
            self._stash_orphan(sock, view),
        )

    async def sock_sendall(self, sock: socket.socket, data: Any) -> None:
        self._check_sock(sock)
        view = memoryview(data).cast("B")
        cbuf = ffi.from_buffer(view)
        fd, total, off = sock.fileno(), view.nbytes, 0
        while off < total:
            start = off
            sent = await self._oneshot(
                lambda r, ud, start=start: lib.ul_prep_send(  # type: ignore[misc]
                    r, fd, ud, cbuf + start, total - start, 0
                ),
                (cbuf, view),
            )
            off += sent

    async def sock_connect(self, sock: socket.socket, address: Any) -> None:
        self._check_sock(sock)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            resolved = await self._ensure_resolved(  # type: ignore[attr-defined]
                address, family=sock.family, type=sock.type, proto=sock.proto, loop=self
            )
            address = resolved[0][4]
        raw = _sockaddr.encode(sock.family, address)
        craw = ffi.from_buffer(raw)
        fd, n = sock.fileno(), len(raw)
        try:
            await self._oneshot(lambda r, ud: lib.ul_prep_connect(r, fd, ud, craw, n), craw)
        except OSError as exc:
            # An earlier, cancelled connect on this socket may have completed in the
            # kernel after all (its retry raced the cancellation): connected to the
            # address asked for is success.
            if exc.errno != errno.EISCONN or not _connected_to(sock, address):
                raise

    async def sock_accept(self, sock: socket.socket) -> tuple[socket.socket, Any]:
        self._check_sock(sock)
        addr = ffi.new("char[]", _sockaddr.SOCKADDR_MAX)
        alen = ffi.new("unsigned int *", _sockaddr.SOCKADDR_MAX)
        family, stype, proto = sock.family, sock.type, sock.proto

        def wrap(fd: int) -> tuple[socket.socket, Any]:
            conn = socket.socket(family, stype, proto, fileno=fd)
            conn.setblocking(False)
            raw = ffi.buffer(addr, alen[0])[:]
            return conn, (_sockaddr.decode(raw) if len(raw) >= 2 else "")

        fd = sock.fileno()
        return await self._oneshot(  # type: ignore[no-any-return]
            lambda r, ud: lib.ul_prep_accept(r, fd, ud, 0, addr, alen), (addr, alen), wrap, os.close
        )
