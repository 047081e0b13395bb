"""``sock_sendfile`` and ``loop.sendfile`` on io_uring: file → pipe → socket splices.

Each chunk is two ``IORING_OP_SPLICE`` requests: file (at an explicit offset, so the
file position is untouched until the end) into a private pipe, then pipe into the
socket, repeated until the pipe is drained. The kernel moves page references; no byte
goes through Python.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import socket
from asyncio import exceptions
from typing import Any

from ._uring import lib

__all__ = ["SendfileMixin"]

_PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
# A first splice failing with one of these means "not possible here": use the fallback.
_NOT_AVAILABLE = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ESPIPE,
                            errno.EBADF, errno.ENOTSOCK})


class SendfileMixin:
    """Native sendfile for :class:`uringloop.Loop`."""

    async def _sock_sendfile_native(
        self, sock: socket.socket, file: Any, offset: int, count: int | None
    ) -> int:
        try:
            fileno = file.fileno()
        except (AttributeError, io.UnsupportedOperation) as err:
            raise exceptions.SendfileNotAvailableError("not a regular file") from err
        try:
            fsize = os.fstat(fileno).st_size
        except OSError as err:
            raise exceptions.SendfileNotAvailableError("not a regular file") from err
        end = offset + count if count else fsize
        if end <= offset:
            return 0
        rpipe, wpipe = os.pipe2(os.O_CLOEXEC)
        try:
            try:
                pipe_size = fcntl.fcntl(wpipe, _F_SETPIPE_SZ, _PIPE_SIZE)
            except OSError:
                pipe_size = 65536
            return await self._splice_loop(sock, file, fileno, offset, end, count is None,
                                           rpipe, wpipe, pipe_size)
        finally:
            os.close(rpipe)
            os.close(wpipe)

    async def _splice_loop(
        self, sock: socket.socket, file: Any, fileno: int, offset: int, end: int,
        to_eof: bool, rpipe: int, wpipe: int, pipe_size: int,
    ) -> int:
        sockfd = sock.fileno()
        total = 0
        try:
            while to_eof or offset + total < end:
                want = pipe_size if to_eof else min(pipe_size, end - offset - total)
                pos = offset + total
                try:
                    n = await self._oneshot(  # type: ignore[attr-defined]
                        lambda r, ud, pos=pos, want=want: lib.ul_prep_splice(
                            r, fileno, pos, wpipe, -1, want, 0, ud, 0), None)
                except OSError as exc:
                    if total == 0 and exc.errno in _NOT_AVAILABLE:
                        raise exceptions.SendfileNotAvailableError(
                            f"splice from {file!r} is not possible: {exc}") from exc
                    raise
                if n == 0:
                    break  # end of file
                left = n
                while left:
                    k = await self._oneshot(  # type: ignore[attr-defined]
                        lambda r, ud, left=left: lib.ul_prep_splice(
                            r, rpipe, -1, sockfd, -1, left, 0, ud, 0), None)
                    if k == 0:
                        raise BrokenPipeError(errno.EPIPE, "socket closed during sendfile")
                    left -= k
                    total += k
            return total
        finally:
            if total > 0:
                file.seek(offset + total)

    async def _sendfile_native(self, transp: Any, file: Any, offset: int,
                               count: int | None) -> int:
        sock = getattr(transp, "_sock", None)
        if sock is None or not hasattr(transp, "_make_empty_waiter"):
            raise exceptions.SendfileNotAvailableError("not a uringloop socket transport")
        resume_reading = transp.is_reading()
        transp.pause_reading()
        await transp._make_empty_waiter()
        try:
            return await self.sock_sendfile(  # type: ignore[attr-defined,no-any-return]
                sock, file, offset, count, fallback=False)
        finally:
            transp._reset_empty_waiter()
            if resume_reading:
                transp.resume_reading()

