"""Pipe transports (``connect_read_pipe``/``connect_write_pipe``, subprocess pipes).

Reads: one io_uring ``READ`` in flight at a time into the transport's own buffer, at
offset -1 (the file position, meaningless for pipes). The kernel parks the read until
data or EOF arrives; each completion is delivered and the read re-armed. A read that
ends with ``-EAGAIN`` (kernels that honour ``O_NONBLOCK`` here) waits for a one-shot
``POLL_ADD`` and is issued again.

Writes: ``write()`` queues; once per loop iteration the queue is joined into one
``WRITE`` (one in flight per pipe, so bytes never reorder); a short write leaves the rest
at the head. Like asyncio's ``_UnixWritePipeTransport``, a write pipe keeps a poll on its
fd that completes when the reading end goes away (``POLLERR``), so an idle transport
still learns that its peer closed.

A transport's buffers stay referenced by its completion handlers until the final CQE of
each operation, so ``abort()``/``close()`` can cancel an operation, report
``connection_lost`` and close the pipe at once without the kernel ever writing into
freed memory.
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import stat
import warnings
from asyncio import constants, futures, transports
from asyncio.log import logger
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._uring import ffi, lib

if TYPE_CHECKING:
    from ..loop import Loop

__all__ = ["ReadPipeTransport", "WritePipeTransport"]

_CUR_POS = (1 << 64) - 1  # offset -1: "use the file position"
_ECANCELED = -errno.ECANCELED
_EAGAIN = -errno.EAGAIN
_EINTR = -errno.EINTR


def _os_error(res: int) -> OSError:
    err = -res
    if err == errno.EPIPE:
        return BrokenPipeError(err, os.strerror(err))
    if err == errno.ECONNRESET:
        return ConnectionResetError(err, os.strerror(err))
    return OSError(err, os.strerror(err))


class _PipeLifecycleMixin:
    """What the read and the write pipe transport share: setup, repr, the unclosed
    warning, protocol access and the ``connection_lost`` steps.

    The transport provides ``_ring``, ``_ud`` (its READ or WRITE), ``_inflight``,
    ``_poll_ud`` (its readiness poll, or 0) and ``_close()``. (They are not slotted.)
    """

    if TYPE_CHECKING:
        _extra: dict[str, Any]  # BaseTransport's, not declared by typeshed
        _ring: Any
        _ud: int
        _poll_ud: int
        _inflight: bool

        def _close(self, exc: BaseException | None) -> None: ...

    def _attach_pipe(self, loop: Loop, pipe: Any, protocol: asyncio.BaseProtocol,
                     wrong_kind: str) -> int:
        """Take ``pipe`` and ``protocol``; the pipe's ``st_mode`` (ValueError: not a
        pipe, socket or character device)."""
        self._extra["pipe"] = pipe
        self._loop: Loop = loop
        self._pipe: Any = pipe
        self._fileno: int = pipe.fileno()
        self._protocol: Any = protocol
        self._closing = False  # close() (or write_eof()) called, or the pipe failed
        self._lost_scheduled = False
        mode = os.fstat(self._fileno).st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
            self._pipe = None
            self._protocol = None
            raise ValueError(wrong_kind)
        os.set_blocking(self._fileno, False)
        return mode

    def _start(
        self, waiter: asyncio.Future[None] | None, then: Callable[[], None] | None = None
    ) -> None:
        """Schedule ``connection_made``, then ``then()``, then the waiter's result."""
        self._loop.call_soon(self._protocol.connection_made, self)
        if then is not None:
            self._loop.call_soon(then)
        if waiter is not None:
            self._loop.call_soon(futures._set_result_unless_cancelled, waiter, None)  # type: ignore[attr-defined]

    def _poll_ready(self, events: int, handler: Callable[[int, int], None]) -> int:
        """Wait for ``events`` on the pipe with a one-shot poll (``_poll_ud``; it counts as
        the operation in flight); the prep's return code (< 0: nothing queued)."""
        ring = self._ring
        ud = self._poll_ud = ring.register(handler)
        rc: int = lib.ul_prep_poll(ring.ptr, self._fileno, ud, events, 0)
        if rc < 0:
            ring.unregister(ud)
            self._poll_ud = 0
        else:
            self._inflight = True
        return rc

    def _end_poll(self) -> bool:
        """The readiness poll completed; False when the transport is gone (its last CQE)."""
        self._ring.unregister(self._poll_ud)
        self._poll_ud = 0
        self._inflight = False
        if self._pipe is None:
            self._ring.unregister(self._ud)
            return False
        return True

    def _cancel_inflight(self) -> None:
        """Cancel the READ/WRITE in flight, or the readiness poll standing in for it."""
        if self._inflight and not self._ring.closed:
            lib.ul_prep_cancel(self._ring.ptr, self._poll_ud or self._ud, 0)

    def _repr_info(self) -> list[str]:
        state = "closed" if self._pipe is None else ("closing" if self._closing else "open")
        return [type(self).__name__, f"fd={self._fileno}", state]

    def __repr__(self) -> str:
        return "<{}>".format(" ".join(self._repr_info()))

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if getattr(self, "_pipe", None) is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._pipe.close()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol  # type: ignore[no-any-return]

    def is_closing(self) -> bool:
        return self._closing

    def _quiet_error(self, exc: BaseException) -> bool:
        """Whether ``_fatal_error`` only logs ``exc`` (in debug mode): an OSError."""
        return isinstance(exc, OSError)

    def _fatal_error(
        self, exc: BaseException, message: str = "Fatal error on pipe transport"
    ) -> None:
        if self._quiet_error(exc):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._loop.call_exception_handler({
                "message": message, "exception": exc, "transport": self,
                "protocol": self._protocol,
            })
        self._close(exc)

    def _schedule_lost(self, exc: BaseException | None) -> None:
        if self._lost_scheduled:
            return
        self._lost_scheduled = True
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._protocol.connection_lost(exc)
        finally:
            pipe, self._pipe = self._pipe, None
            if pipe is not None:
                pipe.close()
            self._protocol = None
            if not self._inflight:
                self._ring.unregister(self._ud)
            # else: the handler (and its buffer) live on until the cancelled operation's CQE


class ReadPipeTransport(_PipeLifecycleMixin, transports.ReadTransport):
    """The read end of a pipe (or a socket / character device) on io_uring ``READ``."""

    max_size = 256 * 1024

    def __init__(
        self, loop: Loop, pipe: Any, protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future[None] | None = None, extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(extra)
        self._paused = False
        self._attach_pipe(loop, pipe, protocol, "Pipe transport is for pipes/sockets only.")
        self._ring = loop._ring
        self._buf = bytearray(self.max_size)
        self._cbuf = ffi.from_buffer(self._buf)
        self._ud = self._ring.register(self._on_read)
        self._poll_ud = 0
        self._inflight = False  # a READ (or its EAGAIN poll) is in the kernel
        self._stash: list[bytes] = []  # read while paused; b"" marks EOF
        self._start(waiter, self._arm)  # start reading only once connection_made() has run

    # -- reading -----------------------------------------------------------------------

    def is_reading(self) -> bool:
        return not self._paused and not self._closing

    def _arm(self) -> None:
        if self._inflight or not self.is_reading() or self._pipe is None or self._stash:
            return
        rc = lib.ul_prep_read(self._ring.ptr, self._fileno, self._ud, self._cbuf,
                              self.max_size, _CUR_POS)
        if rc < 0:
            self._fatal_error(OSError(-rc, os.strerror(-rc)), "cannot queue a pipe read")
            return
        self._inflight = True

    def _on_read(self, res: int, flags: int) -> None:
        self._inflight = False
        if self._pipe is None:  # connection_lost already ran: this was the last CQE
            self._ring.unregister(self._ud)
            return
        if res > 0:
            data = bytes(memoryview(self._buf)[:res])
            if self._closing:
                return
            if self._paused:
                self._stash.append(data)
                return
            try:
                self._protocol.data_received(data)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
                return
            self._arm()
        elif res == 0:
            if self._closing:
                return
            if self._paused:
                self._stash.append(b"")
                return
            self._on_eof()
        elif res == _ECANCELED or res == _EINTR:
            self._arm()  # cancelled by a pause that was since undone (no-op otherwise)
        elif res == _EAGAIN:
            self._wait_readable()
        else:
            self._fatal_error(_os_error(res), "Fatal read error on pipe transport")

    def _wait_readable(self) -> None:
        rc = self._poll_ready(select.POLLIN, self._on_poll)
        if rc < 0:
            self._fatal_error(OSError(-rc, os.strerror(-rc)), "cannot queue a pipe poll")

    def _on_poll(self, res: int, flags: int) -> None:
        if not self._end_poll():
            return
        if res < 0 and res != _ECANCELED:
            self._fatal_error(_os_error(res), "Fatal poll error on pipe transport")
            return
        self._arm()

    def _on_eof(self) -> None:
        if self._loop.get_debug():
            logger.info("%r was closed by peer", self)
        self._closing = True
        self._loop.call_soon(self._call_eof_received)
        self._schedule_lost(None)

    def _call_eof_received(self) -> None:
        if self._protocol is None:
            return
        try:
            self._protocol.eof_received()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler({
                "message": "Fatal error: protocol.eof_received() call failed.",
                "exception": exc, "transport": self, "protocol": self._protocol,
            })

    def pause_reading(self) -> None:
        if not self.is_reading():
            return
        self._paused = True
        self._cancel_inflight()
        if self._loop.get_debug():
            logger.debug("%r pauses reading", self)

    def resume_reading(self) -> None:
        if self._closing or not self._paused:
            return
        self._paused = False
        if self._stash:
            self._loop.call_soon(self._deliver_stash)
        else:
            self._arm()
        if self._loop.get_debug():
            logger.debug("%r resumes reading", self)

    def _deliver_stash(self) -> None:
        while self._stash and not self._paused and not self._closing:
            data = self._stash.pop(0)
            if not data:
                self._on_eof()
                return
            try:
                self._protocol.data_received(data)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
                return
        self._arm()

    # -- closing -----------------------------------------------------------------------

    def close(self) -> None:
        if not self._closing:
            self._close(None)

    def _quiet_error(self, exc: BaseException) -> bool:
        return isinstance(exc, OSError) and exc.errno == errno.EIO  # as asyncio's read pipe

    def _close(self, exc: BaseException | None) -> None:
        self._closing = True
        self._stash.clear()
        self._cancel_inflight()
        self._schedule_lost(exc)


class WritePipeTransport(
    _PipeLifecycleMixin, transports._FlowControlMixin, transports.WriteTransport
):
    """The write end of a pipe (or a socket / character device) on io_uring ``WRITE``."""

    if TYPE_CHECKING:
        # asyncio transport internals that typeshed does not declare.
        def _maybe_pause_protocol(self) -> None: ...
        def _maybe_resume_protocol(self) -> None: ...

    def __init__(
        self, loop: Loop, pipe: Any, protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future[None] | None = None, extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(extra, loop)
        self._conn_lost = 0
        mode = self._attach_pipe(
            loop, pipe, protocol, "Pipe transport is only for pipes, sockets and character devices"
        )
        ring = self._ring = loop._ring
        self._queue: deque[bytes] = deque()
        self._size = 0  # bytes written by the protocol, not yet confirmed written
        self._ud = ring.register(self._on_write)
        self._inflight = False  # a WRITE (or its EAGAIN poll) is in the kernel
        self._poll_ud = 0  # the EAGAIN poll
        self._send_data: Any = None  # the cffi view the WRITE in flight reads from
        self._send_len = 0
        self._head_off = 0  # bytes of queue[0] already written (after short writes)
        self._scheduled = False
        self._peer_ud = 0  # poll that completes when the reading end goes away
        peer_poll = stat.S_ISSOCK(mode) or stat.S_ISFIFO(mode)
        self._start(waiter, self._arm_peer_poll if peer_poll else None)

    def _repr_info(self) -> list[str]:
        return [*super()._repr_info(), f"bufsize={self._size}"]

    # -- peer-closed detection ---------------------------------------------------------

    def _arm_peer_poll(self) -> None:
        if self._pipe is None or self._lost_scheduled or self._peer_ud:
            return
        ring = self._ring
        ud = ring.register(self._on_peer_poll)
        # POLLIN never fires on a write-only pipe end: only POLLERR/POLLHUP (reader gone).
        if lib.ul_prep_poll(ring.ptr, self._fileno, ud, select.POLLIN, 0) < 0:
            ring.unregister(ud)
            return
        self._peer_ud = ud

    def _cancel_peer_poll(self) -> None:
        if self._peer_ud and not self._ring.closed:
            lib.ul_prep_poll_remove(self._ring.ptr, self._peer_ud, 0)

    def _on_peer_poll(self, res: int, flags: int) -> None:
        self._ring.unregister(self._peer_ud)
        self._peer_ud = 0
        if res == _ECANCELED or self._pipe is None or self._lost_scheduled:
            return
        if self._loop.get_debug():
            logger.info("%r was closed by peer", self)
        if self._queue or self._inflight:
            self._close(BrokenPipeError())
        else:
            self._close(None)

    # -- writing -----------------------------------------------------------------------

    def get_write_buffer_size(self) -> int:
        return self._size

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"data argument must be a bytes-like object, not {type(data).__name__!r}"
            )
        if not data:
            return
        if self._conn_lost or self._closing:
            if self._conn_lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning("pipe closed by peer or os.write(pipe, data) raised exception.")
            self._conn_lost += 1
            return
        data = bytes(data)  # the caller may reuse its buffer as soon as we return
        self._queue.append(data)
        self._size += len(data)
        if not self._inflight:
            # Write at once, as the stdlib's os.write() would: a reader may be waiting
            # on this data outside the loop.
            self._flush()
            self._loop._ring.submit()
        self._maybe_pause_protocol()

    def _flush(self) -> None:
        """Queue the next write; called by the loop once per iteration when dirty."""
        self._scheduled = False
        if self._inflight or not self._queue or self._pipe is None or self._lost_scheduled:
            return
        queue = self._queue
        if len(queue) > 1:
            off = self._head_off
            first = queue.popleft()
            parts = [memoryview(first)[off:] if off else first]
            parts.extend(queue.popleft() for _ in range(len(queue)))
            queue.append(b"".join(parts))
            self._head_off = 0
        head = queue[0]
        self._send_data = ffi.from_buffer(head)
        self._send_len = len(head) - self._head_off
        rc = lib.ul_prep_write(self._ring.ptr, self._fileno, self._ud,
                               self._send_data + self._head_off, self._send_len, _CUR_POS)
        if rc < 0:
            self._send_data = None
            self._conn_lost += 1
            self._fatal_error(OSError(-rc, os.strerror(-rc)), "cannot queue a pipe write")
            return
        self._inflight = True

    def _on_write(self, res: int, flags: int) -> None:
        self._inflight = False
        self._send_data = None
        if self._pipe is None or self._lost_scheduled:
            if self._pipe is None:
                self._ring.unregister(self._ud)
            return
        if res < 0:
            if res == _EAGAIN:
                self._wait_writable()
                return
            if res == _EINTR:
                self._flush()
                return
            self._queue.clear()
            self._head_off = 0
            self._size = 0
            self._conn_lost += 1
            self._fatal_error(_os_error(res), "Fatal write error on pipe transport")
            return
        self._size -= res
        if res == self._send_len:
            self._queue.popleft()
            self._head_off = 0
        else:  # short write: the rest stays first, in order
            self._head_off += res
        self._maybe_resume_protocol()  # may write more
        if self._queue:
            self._flush()
        elif self._closing:
            self._cancel_peer_poll()
            self._schedule_lost(None)

    def _wait_writable(self) -> None:
        if self._poll_ready(select.POLLOUT, self._on_writable) < 0:
            self._fatal_error(OSError(errno.EBUSY, "cannot queue a pipe poll"))

    def _on_writable(self, res: int, flags: int) -> None:
        if self._end_poll():
            self._flush()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._closing:
            return
        assert self._pipe
        self._closing = True
        if not self._queue and not self._inflight:
            self._cancel_peer_poll()
            self._schedule_lost(None)

    # -- closing -----------------------------------------------------------------------

    def close(self) -> None:
        if self._pipe is not None and not self._closing:
            self.write_eof()  # all a write pipe needs to close

    def abort(self) -> None:
        self._close(None)

    def _close(self, exc: BaseException | None = None) -> None:
        self._closing = True
        self._queue.clear()
        self._head_off = 0
        self._size = 0
        self._cancel_inflight()
        self._cancel_peer_poll()
        self._schedule_lost(exc)
