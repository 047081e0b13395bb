"""The stream (TCP, Unix) socket transport, with io_uring receives and sends.

Reads: one multishot ``RECV`` with buffer selection stays armed while reading; each
completion names a buffer of the loop's provided-buffer ring, which is copied into the
protocol and handed back to the kernel on the next ring call. The kernel ends a
multishot receive on EOF, errors, or an empty buffer group; it is re-armed when reading
should go on.

Writes: ``write()`` appends to a queue; once per loop iteration the queue is coalesced into
one ``SEND`` (one send in flight per socket, so bytes never reorder). ``write_zerocopy``
puts a :class:`~uringloop.zerocopy.ZeroCopyWrite` in the same queue, so ordering holds
across both kinds of write. Zero-copy writes that go out as plain sends (the adaptive
mode once it switched to copying, ``"never"``) are gathered, with the ``write()`` data
between them, into one ``SENDMSG`` (:class:`~uringloop.zerocopy.PlainSendBatch`).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import sys
from asyncio import (
    constants,
    protocols,
    transports,
    trsock,
)
from typing import TYPE_CHECKING, Any

from .._ring import BUFFER_GROUP, DATA_SHIFT, F_BUFFER, F_MORE
from .._uring import ffi, lib
from ..zerocopy import IOV_MAX, PlainSendBatch, ZeroCopyStreamMixin, ZeroCopyWrite
from ._socket_base import SocketLifecycleMixin

if TYPE_CHECKING:
    from ..loop import Loop

__all__ = ["StreamTransport"]

_ENOBUFS = -errno.ENOBUFS
_ECANCELED = -errno.ECANCELED
_HAS_SERVER_TRANSPORT_ARG = sys.version_info >= (3, 13)
_LAZY_EXTRA = frozenset(("socket", "sockname", "peername"))
#: Queued writes adding up to this many bytes go out as one SENDMSG over their own
#: buffers instead of being joined first (a join of large data is a full extra copy).
_GATHER_MIN = 32 * 1024
#: One send carries at most about this much (more chunks wait for the next send): on
#: loopback, larger sends were slower per byte (bench/zerocopy_adaptive_bench.py).
_SEND_MAX = 256 * 1024


def _os_error(res: int) -> OSError:
    err = -res
    if err in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ESHUTDOWN):
        cls: type[OSError] = {
            errno.ECONNRESET: ConnectionResetError,
            errno.EPIPE: BrokenPipeError,
            errno.ECONNABORTED: ConnectionAbortedError,
            errno.ESHUTDOWN: BrokenPipeError,
        }[err]
        return cls(err, os.strerror(err))
    return OSError(err, os.strerror(err))


class StreamTransport(
    SocketLifecycleMixin, ZeroCopyStreamMixin, transports._FlowControlMixin, transports.Transport
):
    """A socket stream transport whose I/O is io_uring operations."""

    max_size = 256 * 1024
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE
    _start_tls_compatible = True

    __slots__ = (
        "__weakref__", "_sock", "_fd", "_server", "_ring", "_pbuf", "_recv_ud",
        "_send_ud", "_queue", "_buffer_size", "_send_len", "_send_inflight",
        "_zc_inflight", "_scheduled", "_eof", "_recv_armed", "_paused", "_read_eof", "_stash",
        "_closing", "_conn_lost", "_lost_called", "_lost_exc", "_finalizing", "_aborted", "_shut",
        "_protocol", "_buffered", "_protocol_connected", "_direct", "_empty_waiter", "_zc",
        "_rbuf", "_rbuf_src", "_rbuf_owner", "_send_n",
        "_zc_batch",
    )

    if TYPE_CHECKING:
        # asyncio transport internals that typeshed does not declare.
        _extra: dict[str, Any]
        _high_water: int
        _protocol_paused: bool

        def _maybe_pause_protocol(self) -> None: ...
        def _maybe_resume_protocol(self) -> None: ...

    def __init__(
        self,
        loop: Loop,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future[None] | None = None,
        extra: dict[str, Any] | None = None,
        server: Any = None,
    ) -> None:
        super().__init__(extra, loop)
        self._loop: Loop = loop
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        loop._transports[self._fd] = self
        # "socket", "sockname" and "peername" are filled in on first use (get_extra_info):
        # an idle connection then carries no extra-info objects at all.
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self._server = server
        if server is not None:
            if _HAS_SERVER_TRANSPORT_ARG:
                server._attach(self)
            else:
                server._attach()
        ring = loop._ring
        self._ring = ring
        self._pbuf = ring.pbuf
        self._recv_ud = ring.register(self._on_recv)
        self._send_ud = ring.register(self._on_send)
        # write side
        self._queue: list[Any] = []  # bytes chunks and ZeroCopyWrite entries, in order
        self._buffer_size = 0  # bytes written but not yet confirmed sent
        self._send_len = 0
        self._send_n = 1  # queue items that the plain send in flight covers
        self._send_inflight = False
        self._zc_inflight: ZeroCopyWrite | None = None
        self._zc = None  # ZeroCopyState, made on first zero-copy use
        self._zc_batch: PlainSendBatch | None = None  # gathered plain sends of zero-copy writes
        self._scheduled = False  # in loop._dirty, waiting for the next flush
        self._eof = False  # write_eof() called
        # read side
        self._recv_armed = False
        self._paused = False
        self._read_eof = False
        self._stash: list[bytes] | None = None  # data held back while paused, made on demand
        # BufferedProtocol: the protocol's buffer that a RECV in flight writes into (cdata),
        # what get_buffer() returned, and the protocol that returned it
        self._rbuf: Any = None
        self._rbuf_src: Any = None
        self._rbuf_owner: Any = None
        # life cycle
        self._closing = False
        self._conn_lost = 0
        self._lost_called = False
        self._lost_exc: BaseException | None = None
        self._finalizing = False
        self._aborted = False
        self._shut = False
        self._protocol: asyncio.BaseProtocol = protocol
        self._buffered = isinstance(protocol, protocols.BufferedProtocol)
        self._direct = not self._buffered
        self._protocol_connected = False
        self._empty_waiter: asyncio.Future[None] | None = None
        loop.call_soon(self._connection_made, waiter)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        self._buffered = isinstance(protocol, protocols.BufferedProtocol)
        self._update_direct()

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        extra = self._extra
        if name in extra:
            return extra[name]
        sock = self._sock
        if sock is None or name not in _LAZY_EXTRA:
            return default
        if name == "socket":
            value: Any = trsock.TransportSocket(sock)
        else:
            try:
                value = sock.getsockname() if name == "sockname" else sock.getpeername()
            except OSError:
                value = None
        extra[name] = value
        return value

    def is_closing(self) -> bool:
        return self._closing

    def is_reading(self) -> bool:
        return not self._closing and not self._paused and not self._read_eof

    # -- reading -----------------------------------------------------------------------

    def _arm_recv(self) -> None:
        if self._recv_armed or self._sock is None:
            return
        if self._buffered:
            self._arm_recv_into()
            return
        rc = lib.ul_prep_recv_multishot(self._ring.ptr, self._fd, self._recv_ud, BUFFER_GROUP)
        if rc < 0:
            self._fatal_error(OSError(-rc, os.strerror(-rc)), "cannot queue a receive")
            return
        self._recv_armed = True

    def _arm_recv_into(self) -> None:
        """BufferedProtocol: one ``RECV`` straight into ``get_buffer()``'s memory.

        The kernel writes into the protocol's buffer, so nothing is copied in user space
        (a multishot receive into the shared buffer ring would need a copy). The buffer
        stays exported until the completion. A memoryview that the protocol hands out
        again (the usual pattern) is reused without a new export.
        """
        protocol: Any = self._protocol
        try:
            buf = protocol.get_buffer(-1)
            if buf is not self._rbuf_src or protocol is not self._rbuf_owner:
                view = memoryview(buf).cast("B")
                if not len(view):
                    raise RuntimeError("get_buffer() returned an empty buffer")
                self._rbuf = ffi.from_buffer(view, require_writable=True)
                self._rbuf_src = buf
                self._rbuf_owner = protocol
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.get_buffer() call failed.")
            return
        rbuf = self._rbuf
        rc = lib.ul_prep_recv(self._ring.ptr, self._fd, self._recv_ud, rbuf, len(rbuf), 0)
        if rc < 0:
            self._fatal_error(OSError(-rc, os.strerror(-rc)), "cannot queue a receive")
            return
        self._recv_armed = True

    def _on_recv_into(self, n: int) -> None:
        """A ``RECV`` into the protocol's buffer completed with ``n`` bytes."""
        self._recv_armed = False
        rbuf, owner = self._rbuf, self._rbuf_owner
        if type(self._rbuf_src) is not memoryview:
            # not reused: let the protocol resize or free its object again
            self._rbuf = self._rbuf_src = self._rbuf_owner = None
        if self._closing:
            pass  # closing: incoming data is dropped, as asyncio does
        elif self._paused or self._stash or self._protocol is not owner:
            # A pause raced the receive, or the protocol changed: deliver a copy, in order.
            self._hold(ffi.buffer(rbuf, n)[:])
            if not self._paused:
                self._loop.call_soon(self._deliver_stash)
            return
        else:
            try:
                self._protocol.buffer_updated(n)  # the owner of the buffer
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.buffer_updated() call failed.")
                return
            if not self._paused and not self._closing:
                self._arm_recv()
                return
        if self._closing:
            self._maybe_finalize()

    def _cancel_recv(self) -> None:
        if self._recv_armed:
            lib.ul_prep_cancel(self._ring.ptr, self._recv_ud, 0)

    def _update_direct(self) -> None:
        """Whether received data goes straight to ``protocol.data_received``."""
        self._direct = not (self._closing or self._paused or self._stash or self._buffered)

    def _on_recv(self, res: int, flags: int) -> None:
        if res > 0 and flags & F_MORE and self._direct:
            # The hot path: data for a plain Protocol, receive still armed.
            off = flags >> DATA_SHIFT
            try:
                self._protocol.data_received(self._pbuf[off : off + res].tobytes())  # type: ignore[attr-defined]
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
            return
        if res > 0 and not flags & F_BUFFER:
            self._on_recv_into(res)  # a RECV into a BufferedProtocol's buffer
            return
        if not flags & F_MORE:
            self._recv_armed = False
        if res > 0:
            off = flags >> DATA_SHIFT
            if self._closing:
                pass  # closing: incoming data is dropped, as asyncio does
            elif self._paused or self._stash:
                # Paused, or stashed data still waits for delivery: keep the byte order.
                self._hold(self._pbuf[off : off + res].tobytes())
            elif self._buffered:
                self._feed_buffered(off, res)
            else:
                try:
                    self._protocol.data_received(self._pbuf[off : off + res].tobytes())  # type: ignore[attr-defined]
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
                    return
            if not self._recv_armed and not self._paused and not self._closing:
                self._arm_recv()
        elif res == 0:
            self._on_eof()
        elif res == _ENOBUFS:
            # The buffer group ran dry; buffers go back to the kernel on the next ring call.
            if not self._paused and not self._closing:
                self._arm_recv()
        elif res == _ECANCELED:
            if not self._paused and not self._closing and not self._read_eof:
                self._arm_recv()  # cancelled by a pause that was since undone
        else:
            self._fatal_error(_os_error(res), "Fatal read error on socket transport")
        if self._closing:
            self._maybe_finalize()

    def _feed_buffered(self, off: int, n: int) -> None:
        protocol: Any = self._protocol
        src = self._pbuf
        while n:
            try:
                buf = protocol.get_buffer(n)
                view = memoryview(buf).cast("B")
                if not len(view):
                    raise RuntimeError("get_buffer() returned an empty buffer")
                m = min(len(view), n)
                view[:m] = src[off : off + m]
                protocol.buffer_updated(m)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.buffer_updated() call failed.")
                return
            off += m
            n -= m

    def _hold(self, data: bytes) -> None:
        """Keep received data (``b""`` for EOF) for delivery on resume, in order."""
        if self._stash is None:
            self._stash = []
        self._stash.append(data)
        self._direct = False

    def _on_eof(self) -> None:
        self._read_eof = True
        if self._closing:
            return
        if self._paused or self._stash:
            self._hold(b"")  # EOF, delivered after the held data on resume
            return
        self._deliver_eof()

    def _deliver_eof(self) -> None:
        try:
            keep_open = self._protocol.eof_received()  # type: ignore[attr-defined]
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return
        if not keep_open:
            self.close()

    def pause_reading(self) -> None:
        if self._closing or self._paused:
            return
        self._paused = True
        self._direct = False
        self._cancel_recv()

    def resume_reading(self) -> None:
        if self._closing or not self._paused:
            return
        self._paused = False
        self._update_direct()
        if self._stash:
            self._loop.call_soon(self._deliver_stash)
        elif not self._read_eof:
            self._arm_recv()

    def _deliver_stash(self) -> None:
        while self._stash and not self._paused and not self._closing:
            data = self._stash.pop(0)
            if not data:
                self._deliver_eof()
                return
            try:
                if self._buffered:
                    protocols._feed_data_to_buffered_proto(self._protocol, data)  # type: ignore[attr-defined]
                else:
                    self._protocol.data_received(data)  # type: ignore[attr-defined]
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
                return
        self._update_direct()
        if not self._stash and not self._paused and not self._read_eof:
            self._arm_recv()

    # -- writing -----------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if type(data) is not bytes:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(
                    f"data argument must be a bytes-like object, not {type(data).__name__!r}"
                )
            data = bytes(data)  # the caller may reuse its buffer as soon as we return
        if self._eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self._empty_waiter is not None:
            raise RuntimeError("unable to write; sendfile is in progress")
        if not data:
            return
        if self._conn_lost:
            if self._conn_lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                asyncio.log.logger.warning("socket.send() raised exception.")
            self._conn_lost += 1
            return
        self._queue.append(data)
        self._buffer_size += len(data)
        if not self._send_inflight and not self._scheduled:
            self._scheduled = True
            self._loop._dirty.append(self)
        if self._buffer_size > self._high_water:
            self._maybe_pause_protocol()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    # write_zerocopy(), zerocopy_generation(), set_zerocopy_mode(): ZeroCopyStreamMixin

    def _flush(self) -> None:
        """Queue the next send; called by the loop once per iteration when dirty."""
        self._scheduled = False
        queue = self._queue
        if self._send_inflight or not queue or self._sock is None:
            return
        head = queue[0]
        if len(queue) > 1 or type(head) is not bytes:
            if self._zc is not None and len(queue) > 1 and self._zc_flush_plain():
                return  # zero-copy writes in plain mode: one SENDMSG for the run
            if type(head) is ZeroCopyWrite:
                try:
                    head.submit(self._ring.ptr, self._fd)
                except OSError as exc:
                    self._fatal_error(exc, "cannot queue a zero-copy send")
                    return
                self._zc_inflight = head
                self._send_inflight = True
                return
            end = 1
            total = len(head)
            limit = min(len(queue), IOV_MAX)
            while end < limit and total < _SEND_MAX and type(queue[end]) is not ZeroCopyWrite:
                total += len(queue[end])
                end += 1
            if end > 1:  # coalesce this iteration's writes into one send
                if total >= _GATHER_MIN:
                    self._flush_gathered(end, total)
                    return
                head = b"".join(queue[:end])
                queue[:end] = [head]
        # The bytes object stays at the head of the queue until the send's CQE.
        self._send_len = n = len(head)
        rc = lib.ul_prep_send(self._ring.ptr, self._fd, self._send_ud, head, n, 0)
        if rc < 0:
            self._fatal_error(OSError(-rc, os.strerror(-rc)), "cannot queue a send")
            return
        self._send_inflight = True

    def _flush_gathered(self, n: int, total: int) -> None:
        """Send the first ``n`` queued bytes chunks with one SENDMSG, without joining.

        The chunks stay at the head of the queue (alive) until the completion.
        """
        batch = self._zc_batch
        if batch is None:
            batch = self._zc_batch = PlainSendBatch()
        block = batch.reserve(n)
        queue = self._queue
        set_iov = lib.ul_sendv_set
        for i in range(n):
            chunk = queue[i]
            set_iov(block, i, chunk, len(chunk))
        batch.items = queue[:n]  # _queue_fail keeps these: the kernel reads them
        rc = lib.ul_prep_sendv(self._ring.ptr, self._fd, self._send_ud, block, n)
        if rc < 0:
            batch.items = []
            self._fatal_error(OSError(-rc, os.strerror(-rc)), "cannot queue a send")
            return
        self._send_len = total
        self._send_n = n
        self._send_inflight = True

    def _sent_gathered(self, res: int) -> None:
        """Drop what a gathered send sent from the queue; cut a chunk sent in part."""
        n, self._send_n = self._send_n, 1
        self._zc_batch.items = []  # type: ignore[union-attr]
        queue = self._queue
        done = 0
        while done < n and res >= len(queue[done]):
            res -= len(queue[done])
            done += 1
        del queue[:done]
        if res:
            queue[0] = memoryview(queue[0])[res:].tobytes()

    def _on_send(self, res: int, flags: int) -> None:
        self._send_inflight = False
        if res == self._send_len and not self._aborted:
            # The common case: everything sent.
            self._buffer_size -= res
            queue = self._queue
            if self._send_n == 1:
                del queue[0]
            else:
                self._sent_gathered(res)
            if self._protocol_paused:
                self._maybe_resume_protocol()
            if queue:
                self._flush()
            elif self._eof or self._closing or self._empty_waiter is not None:
                self._after_send()
            return
        if res < 0:
            if self._send_n != 1:
                self._send_n = 1
                self._zc_batch.items = []  # type: ignore[union-attr]
            if res == _ECANCELED and self._closing:
                if self._aborted:  # the kernel let go of the data: drop it, unsent
                    self._queue_fail(self._lost_exc or ConnectionAbortedError("transport aborted"))
                self._maybe_finalize()
                return
            self._fatal_error(_os_error(res), "Fatal write error on socket transport")
            return
        self._buffer_size -= res
        if self._send_n != 1:
            self._sent_gathered(res)
        elif res == self._send_len:
            del self._queue[0]
        else:
            # Short send: keep the rest at the head of the queue, in order.
            self._queue[0] = memoryview(self._queue[0])[res:].tobytes()
        self._after_send()

    def _on_zerocopy_sent(self, entry: ZeroCopyWrite, res: int) -> None:
        self._send_inflight = False
        self._zc_inflight = None
        if res < 0:
            if res == _ECANCELED and self._closing:
                self._queue_fail(ConnectionAbortedError("transport closed"))
                self._maybe_finalize()
                return
            self._fatal_error(_os_error(res), "Fatal write error on socket transport")
            return
        self._buffer_size -= res
        if entry.sent_all:
            del self._queue[0]
        self._after_send()

    def _after_send(self) -> None:
        if self._aborted:
            self._queue_fail(self._lost_exc or ConnectionAbortedError("transport aborted"))
            self._maybe_finalize()
            return
        self._maybe_resume_protocol()
        if self._queue:
            # close() with data still queued (a short send left a rest) must keep sending
            if self._sock is not None:
                self._flush()
            return
        self._wake_empty_waiter()
        if self._eof:
            self._shutdown_write()
        if self._closing:
            self._maybe_finalize()

    def get_write_buffer_size(self) -> int:
        return self._buffer_size

    def _make_empty_waiter(self) -> asyncio.Future[None]:
        """A future resolved once every queued write has been sent (for sendfile)."""
        if self._empty_waiter is not None:
            raise RuntimeError("Empty waiter is already set")
        self._empty_waiter = self._loop.create_future()
        if not self._queue and not self._send_inflight:
            self._empty_waiter.set_result(None)
        return self._empty_waiter

    def _reset_empty_waiter(self) -> None:
        self._empty_waiter = None

    def _wake_empty_waiter(self, exc: BaseException | None = None) -> None:
        waiter = self._empty_waiter
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._closing or self._eof:
            return
        self._eof = True
        if not self._queue and not self._send_inflight:
            self._shutdown_write()

    def _shutdown_write(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    # -- closing -----------------------------------------------------------------------

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._direct = False
        self._cancel_recv()
        if not self._queue and not self._send_inflight:
            # Like the stdlib: writes after close() are dropped only once nothing is
            # left to send (an SSL close_notify written while draining must go out).
            self._conn_lost += 1
        self._maybe_finalize()

    # abort(), _fatal_error(): SocketLifecycleMixin

    def _force_close(self, exc: BaseException | None) -> None:
        if self._lost_called or self._finalizing:
            return
        if self._lost_exc is None:
            self._lost_exc = exc
        self._aborted = True
        self._wake_empty_waiter(exc or ConnectionAbortedError("transport closed"))
        unsent = exc or ConnectionAbortedError("transport aborted before the data was sent")
        self._queue_fail(unsent)
        if self._buffer_size and not self._send_inflight:
            self._buffer_size = 0
        self._maybe_resume_protocol()
        if not self._closing:
            self._closing = True
            self._direct = False
            self._conn_lost += 1
        if self._sock is not None and (self._recv_armed or self._send_inflight):
            lib.ul_prep_cancel_fd(self._ring.ptr, self._fd, 0)
        self._maybe_finalize()

    def _queue_fail(self, exc: BaseException) -> None:
        """Drop queued data that was never handed to the kernel."""
        queue = self._queue
        keep = 0  # the items at the head that the send in flight covers stay queued
        if self._send_inflight and queue:
            batch = self._zc_batch
            keep = len(batch.items) if batch is not None and batch.items else 1
        while len(queue) > keep:
            item = queue.pop()
            if type(item) is ZeroCopyWrite:
                item.fail_unsent(exc)
        self._buffer_size = sum(
            (i.nbytes - i.offset) if type(i) is ZeroCopyWrite else len(i) for i in queue
        )

    def _maybe_finalize(self) -> None:
        """Close the socket once nothing of ours is in flight on it any more."""
        if self._finalizing:
            return
        if self._queue and not self._aborted and not self._send_inflight:
            if self._sock is not None and not self._scheduled:
                self._flush()
            return
        if self._queue or self._send_inflight:
            return
        if not self._shut and self._sock is not None:
            # Nothing left to send: the peer sees EOF now, even if the loop stops before
            # the receive's cancellation completes and the fd can be closed.
            self._shut = True
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._recv_armed:
            return
        self._finalizing = True
        if not self._conn_lost:
            self._conn_lost = 1
        self._loop.call_soon(self._call_connection_lost, self._lost_exc)

    # _call_connection_lost(): SocketLifecycleMixin

    def _release(self) -> None:
        for name in _LAZY_EXTRA:  # still answered after close, as asyncio does
            self.get_extra_info(name)
        super()._release()  # closes the socket
        self._rbuf = self._rbuf_src = self._rbuf_owner = None
        server, self._server = self._server, None
        if server is not None:
            if _HAS_SERVER_TRANSPORT_ARG:
                server._detach(self)
            else:
                server._detach()
