"""The datagram (UDP, Unix datagram) socket transport, with io_uring receives and sends.

Reads: one single-shot ``RECVMSG`` is armed at a time, into a buffer owned by the
transport (64 KiB for IP sockets, which holds any UDP datagram; ``max_size`` for others)
plus a ``ul_dgram`` block (msghdr, iovec, sockaddr_storage) that the kernel fills with the
source address. Each completion is one datagram, copied out to the protocol, and the
receive is re-armed. Single-shot rather than multishot with the loop's provided buffers,
because those are ``recv_buffer_size`` bytes less a header: a datagram that does not fit
would be truncated, and a datagram cannot be read again.

Writes: ``sendto()`` appends ``(bytes, sockaddr)`` to a queue. Once per loop iteration
(the loop's ``_dirty`` list) up to :data:`MAX_BATCH` queued datagrams become one chain of
``SENDMSG`` requests linked with ``IOSQE_IO_HARDLINK``: they run one after the other in
queue order even when one fails, and their completions arrive in that order on the one
send user_data. The next chain is queued only when the previous one has completed, so
datagrams never reorder. Each datagram's bytes and its ``ul_dgram`` block stay referenced
(``_inflight``) until its completion.

A chain of two plain datagrams or more is an aggregated batch (``ul_batch_prep_sendmsg``,
as the zero-copy pool batches): its results are counted in C, Python gets each failed
datagram (in order) and one completion for the chain, and ``ul_run`` asks the kernel for
the chain's outstanding completions as ``min_complete``: under DEFER_TASKRUN a
hard-linked chain would otherwise advance one link per ``io_uring_enter``. A chain (or
zero-copy pool batch) that fits the send buffer is prepped unlinked (``_UNLINKED``).

AF_UNIX sockets send one plain datagram at a time with ``MSG_DONTWAIT`` instead: a send
that finds the peer's queue full has already consumed the msghdr's iterator, so one that
io_uring re-issued would send an empty datagram. An ``EAGAIN`` completion puts the
datagram back at the head of the queue and a one-shot ``POLL_ADD(POLLOUT)`` resends it.

Errors: an ``OSError`` from a receive or a send (ICMP errors such as ``ECONNREFUSED`` on
a connected socket) goes to ``protocol.error_received`` and the transport goes on, as in
asyncio; the send that failed is dropped. Errors that would repeat forever (a bad fd)
are fatal.

Life cycle: the socket is closed only after the final completion of every operation on
it; ``connection_lost`` is called exactly once, through ``call_soon``.
"""

from __future__ import annotations

import asyncio
import errno
import mmap
import os
import select
import socket
import sys
from asyncio import constants, transports, trsock
from collections import deque
from typing import TYPE_CHECKING, Any

from .. import _sockaddr
from .._uring import ffi, lib
from .._zcdgram import ZcDatagram, ZcPoolBatch, ZeroCopyDatagramMixin
from ._socket_base import SocketLifecycleMixin

if TYPE_CHECKING:
    from ..loop import Loop

__all__ = ["DatagramTransport", "encode_address", "DGRAM_SIZE"]

#: sends per linked chain (and ``ul_dgram`` blocks per transport)
MAX_BATCH = 32
DGRAM_SIZE: int = lib.ul_dgram_size()
_ECANCELED = -errno.ECANCELED
_F_MORE = 2  # IORING_CQE_F_MORE
_F_BATCH_ERROR = 1 << 20  # UL_BATCH_F_ERROR (_uring.h): one failed datagram of a chain
_EINTR = -errno.EINTR
_EAGAIN = -errno.EAGAIN
_POLLOUT = select.POLLOUT
# errors that would come back on every re-armed receive: fatal, not error_received()
_FATAL = frozenset(-e for e in (errno.EBADF, errno.ENOTSOCK, errno.EINVAL, errno.EOPNOTSUPP,
                                errno.EFAULT))
# Python 3.13 sends empty datagrams and counts an 8-byte header per buffered datagram.
_SEND_EMPTY = sys.version_info >= (3, 13)
_HEADER_SIZE = 8 if _SEND_EMPTY else 0
# Unlinked chains. Links only keep order when a send would block: an unlinked SQE that
# gets EAGAIN (send buffer full) is parked on poll while the ones after it go out. Unlinked
# SQEs are otherwise issued inline, one after the other in SQ order, within the
# io_uring_enter that submits them (io_uring/io_uring.c: io_submit_sqe -> io_queue_sqe ->
# io_issue_sqe(IO_URING_F_NONBLOCK); only -EAGAIN goes to io_queue_async/poll; no
# IOSQE_ASYNC here). So a chain that provably fits the send buffer is prepped unlinked
# (hard links cost ~10 % in the kernel): its charge, each datagram counted as its length
# plus _CHARGE_SLACK of skb overhead, must fit ul_sock_send_room (SO_SNDBUF / 2 - SIOCOUTQ,
# read per chain, so a setsockopt by the user is seen; the kernel only refuses a send when
# what is charged already reaches the full SO_SNDBUF, which leaves room for a truesize of
# up to about twice the payload; a copied datagram measured at most ~1.8x, kmalloc
# rounding). A zero-copy datagram is charged by the page (its frags pin whole pages: a
# 1200-byte one measured 4774 bytes), so it counts two pages more.
_UNLINKED = 2  # UL_BATCH_UNLINKED (_uring.h)
_CHARGE_SLACK = 1024
_ZC_CHARGE_SLACK = 2 * mmap.PAGESIZE + _CHARGE_SLACK


def _os_error(res: int) -> OSError:
    return OSError(-res, os.strerror(-res))  # OSError() picks the errno's subclass


def _port(port: Any) -> int:
    port = port.__index__() if not isinstance(port, int) else port
    if not 0 <= port <= 0xFFFF:
        raise OverflowError("sendto(): port must be 0-65535.")
    return port  # type: ignore[no-any-return]


def _host(host: Any, family: int) -> str:
    if isinstance(host, (bytes, bytearray)):
        host = bytes(host).decode("idna")
    if not isinstance(host, str):
        raise TypeError(f"str, bytes or bytearray expected, not {type(host).__name__}")
    if family == socket.AF_INET:
        if host == "":
            return "0.0.0.0"
        if host == "<broadcast>":
            return "255.255.255.255"
    numeric = host.partition("%")[0] if family == socket.AF_INET6 else host
    try:
        socket.inet_pton(family, numeric)
        return host
    except OSError:
        pass
    # A host name: resolve it (blocking), as socket.sendto() does.
    infos = socket.getaddrinfo(host, None, family, socket.SOCK_DGRAM)
    return infos[0][4][0]  # type: ignore[return-value]  # an AF_INET/AF_INET6 host: a str


def encode_address(family: int, addr: Any) -> bytes:
    """The sockaddr bytes of ``addr``, with socket.sendto()'s argument errors."""
    if family == socket.AF_INET:
        if not isinstance(addr, tuple):
            raise TypeError(f"AF_INET address must be tuple, not {type(addr).__name__}")
        if len(addr) != 2:
            raise TypeError("AF_INET address must be a pair (host, port)")
        return _sockaddr.encode(family, (_host(addr[0], family), _port(addr[1])))
    if family == socket.AF_INET6:
        if not isinstance(addr, tuple):
            raise TypeError(f"AF_INET6 address must be tuple, not {type(addr).__name__}")
        if not 2 <= len(addr) <= 4:
            raise TypeError("AF_INET6 address must be a tuple (host, port[, flowinfo[, scopeid]])")
        flowinfo = addr[2] if len(addr) > 2 else 0
        scope_id = addr[3] if len(addr) > 3 else 0
        if not 0 <= flowinfo <= 0xFFFFF:
            raise OverflowError("sendto(): flowinfo must be 0-1048575.")
        return _sockaddr.encode(
            family, (_host(addr[0], family), _port(addr[1]), flowinfo, scope_id)
        )
    if family == socket.AF_UNIX:
        if isinstance(addr, str):
            addr = os.fsencode(addr)
        elif isinstance(addr, (bytes, bytearray, memoryview)):
            addr = bytes(addr)
        else:
            raise TypeError(
                f"a bytes-like object is required, not '{type(addr).__name__}'"
            )
        return _sockaddr.encode(family, addr)
    raise OSError(errno.EAFNOSUPPORT, f"address family {family} is not supported by uringloop")


def decode_name(d: Any) -> Any:
    """The source address a RECVMSG left in the ``ul_dgram`` ``d`` (None if none)."""
    n = lib.ul_dgram_namelen(d)
    if n == 0:
        return None
    raw = ffi.buffer(lib.ul_dgram_name(d), min(n, _sockaddr.SOCKADDR_MAX))[:]
    if len(raw) < 2:
        return None
    return _sockaddr.decode(raw)


class _Chain:
    """A flushed chain of plain ``sendto()`` datagrams: one aggregated batch (see
    ``ul_batch_prep_sendmsg``), one entry of the transport's ``_inflight``."""

    __slots__ = ("cdatas", "slot", "size")

    def __init__(self, cdatas: list[Any], slot: int, size: int) -> None:
        self.cdatas = cdatas  # the datagrams' buffers, exported until the chain completes
        self.slot = slot
        self.size = size

    def __len__(self) -> int:
        # the transport counts len(entry) + one header per entry; a chain is n datagrams
        return self.size


def new_dgrams(n: int) -> tuple[Any, list[Any]]:
    """``n`` ``ul_dgram`` blocks in one allocation: (owner, [pointers])."""
    block = ffi.new("char[]", DGRAM_SIZE * n)
    return block, [ffi.cast("ul_dgram *", block + i * DGRAM_SIZE) for i in range(n)]


class DatagramTransport(SocketLifecycleMixin, ZeroCopyDatagramMixin, transports._FlowControlMixin,
                        transports.DatagramTransport):
    """A datagram socket transport whose I/O is io_uring operations."""

    max_size = 256 * 1024  # receive buffer for non-IP sockets (as asyncio's recvfrom size)

    if TYPE_CHECKING:
        # asyncio transport internals that typeshed does not declare.
        _extra: dict[str, Any]

        def _maybe_pause_protocol(self) -> None: ...
        def _maybe_resume_protocol(self) -> None: ...

    def __init__(
        self,
        loop: Loop,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        address: Any = None,
        waiter: asyncio.Future[None] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(extra, loop)
        self._loop: Loop = loop
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        loop._transports[self._fd] = self
        self._family = sock.family
        self._extra["socket"] = trsock.TransportSocket(sock)
        try:
            self._extra["sockname"] = sock.getsockname()
        except OSError:
            self._extra["sockname"] = None
        if "peername" not in self._extra:
            try:
                self._extra["peername"] = sock.getpeername()
            except OSError:
                self._extra["peername"] = None
        self._address = address
        ring = loop._ring
        self._ring = ring
        self._recv_ud = ring.register(self._on_recv)
        self._send_ud = ring.register(self._on_send)
        self._chain_ud = ring.register(self._on_chain)
        # read side: the buffer and msghdr the armed RECVMSG writes into
        size = 65536 if self._family in (socket.AF_INET, socket.AF_INET6) else self.max_size
        self._rbuf = bytearray(size)
        self._rview = memoryview(self._rbuf)
        self._rcbuf = ffi.from_buffer(self._rbuf, require_writable=True)
        self._rblock, (self._rmsg,) = new_dgrams(1)
        self._recv_armed = False
        self._paused = False
        self._stash: deque[tuple[bytes, Any]] = deque()
        # write side
        self._queue: deque[tuple[bytes, bytes | None]] = deque()
        # (data, cdata) per SENDMSG, or (_Chain, None) per aggregated chain
        self._inflight: deque[tuple[Any, Any]] = deque()
        self._sblock, self._smsgs = new_dgrams(MAX_BATCH)
        self._buffer_size = 0
        self._scheduled = False
        self._unlinked_chains = 0  # chains prepped unlinked (tests, debugging)
        # UDP only: an AF_UNIX datagram send also gets EAGAIN when the peer's receive
        # queue is full, whatever the send buffer says
        self._may_unlink = self._family in (socket.AF_INET, socket.AF_INET6)
        # AF_UNIX: unix_dgram_sendmsg copies the payload out of the msghdr's iterator
        # before it finds the peer's queue full, so a send that io_uring parks on EAGAIN
        # and re-issues would send an empty datagram. Plain datagrams go one at a time
        # with MSG_DONTWAIT (io_uring completes them with -EAGAIN, no internal retry);
        # an EAGAIN puts the datagram back at the head of the queue, a one-shot
        # POLL_ADD(POLLOUT) waits for room and the datagram is sent again from scratch.
        self._unix = self._family == socket.AF_UNIX
        self._unix_raw: bytes | None = None  # the address of the AF_UNIX send in flight
        self._pollout = False  # the POLLOUT poll is armed
        self._pollout_ud = ring.register(self._on_pollout)
        # life cycle
        self._closing = False
        self._conn_lost = 0
        self._aborted = False
        self._finalizing = False
        self._lost_called = False
        self._lost_exc: BaseException | None = None
        self._protocol: Any = protocol
        self._protocol_connected = False
        loop.call_soon(self._connection_made, waiter)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol  # type: ignore[no-any-return]

    def _call_protocol(self, name: str, *args: Any) -> None:
        """Call a protocol method; as in asyncio, an exception from it goes to the loop's
        exception handler and the transport goes on."""
        try:
            getattr(self._protocol, name)(*args)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler(
                {"message": f"Exception in protocol.{name}() of {self!r}", "exception": exc,
                 "transport": self, "protocol": self._protocol}
            )

    def is_closing(self) -> bool:
        return self._closing

    def is_reading(self) -> bool:
        return not self._closing and not self._paused

    # -- reading -----------------------------------------------------------------------

    def _arm_recv(self) -> None:
        if self._recv_armed or self._sock is None:
            return
        lib.ul_dgram_set_recv(self._rmsg, self._rcbuf, len(self._rbuf))
        rc = lib.ul_dgram_prep_recvmsg(self._ring.ptr, self._fd, self._recv_ud, self._rmsg)
        if rc < 0:
            self._fatal_error(_os_error(rc), "cannot queue a datagram receive")
            return
        self._recv_armed = True

    def _on_recv(self, res: int, flags: int) -> None:
        self._recv_armed = False
        if res >= 0:
            if not self._closing:
                data = self._rview[:res].tobytes()
                addr = decode_name(self._rmsg)
                if self._paused or self._stash:
                    self._stash.append((data, addr))
                else:
                    self._call_protocol("datagram_received", data, addr)
        elif res == _ECANCELED or res == _EINTR or res == _EAGAIN:
            pass
        elif res in _FATAL:
            self._fatal_error(_os_error(res), "Fatal read error on datagram transport")
            return
        elif not self._closing:
            self._call_protocol("error_received", _os_error(res))
        if self._closing:
            self._maybe_finalize()
        elif not self._paused and not self._stash:
            self._arm_recv()

    def pause_reading(self) -> None:
        if self._closing or self._paused:
            return
        self._paused = True
        if self._recv_armed:
            lib.ul_prep_cancel(self._ring.ptr, self._recv_ud, 0)

    def resume_reading(self) -> None:
        if self._closing or not self._paused:
            return
        self._paused = False
        if self._stash:
            self._loop.call_soon(self._deliver_stash)
        else:
            self._arm_recv()

    def _deliver_stash(self) -> None:
        while self._stash and not self._paused and not self._closing:
            data, addr = self._stash.popleft()
            self._call_protocol("datagram_received", data, addr)
        if not self._stash and not self._paused and not self._closing:
            self._arm_recv()

    # -- writing -----------------------------------------------------------------------

    def sendto(self, data: Any, addr: Any = None) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"data argument must be a bytes-like object, not {type(data).__name__!r}"
            )
        if not data and not _SEND_EMPTY:
            return
        if self._address:
            if addr not in (None, self._address):
                raise ValueError(f"Invalid address: must be None or {self._address}")
            addr = self._address
        if self._conn_lost or self._sock is None:
            if self._conn_lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                asyncio.log.logger.warning("socket.send() raised exception.")
            self._conn_lost += 1
            return
        raw: bytes | None = None
        if not self._extra["peername"]:
            try:
                raw = encode_address(self._family, addr)
            except OSError as exc:
                self._protocol.error_received(exc)
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal write error on datagram transport")
                return
        data = bytes(data)  # immutable: the caller may reuse its buffer
        self._queue.append((data, raw))
        self._buffer_size += len(data) + _HEADER_SIZE
        if not self._inflight and not self._scheduled:
            self._scheduled = True
            self._loop._dirty.append(self)
        self._maybe_pause_protocol()

    def _flush(self) -> None:
        """Queue the next chain of sends; called by the loop once per iteration."""
        self._scheduled = False
        if self._inflight or not self._queue or self._sock is None or self._aborted:
            return
        queue, inflight, msgs = self._queue, self._inflight, self._smsgs
        ptr, fd, ud = self._ring.ptr, self._fd, self._send_ud
        if self._unix:
            # one datagram at a time, never retried by io_uring (see __init__)
            if self._pollout:
                return
            if type(queue[0][0]) is bytes:
                self._flush_unix(ptr, fd, ud)
                return
            n = 1
        # two plain datagrams or more: one aggregated chain (a single one gains nothing
        # from it: no link to advance, and the batch slot costs more than it saves)
        elif (len(queue) > 1 and type(queue[0][0]) is bytes and type(queue[1][0]) is bytes
                and self._flush_chain(ptr, fd, queue, msgs)):
            return
        else:
            n = min(len(queue), MAX_BATCH)
        # pool batches at the head of the queue go out unlinked while the send buffer has
        # room for them all (see _UNLINKED); from the first entry that is linked on, every
        # entry is (an unlinked SQE after a linked one would be issued before it)
        unlinked = self._may_unlink
        room = -1
        for i in range(n):
            data, raw = queue[0]
            d = msgs[i]
            if unlinked and type(data) is ZcPoolBatch:
                if room < 0:
                    room = lib.ul_sock_send_room(fd)
                charge = data.total + data.n * _ZC_CHARGE_SLACK
                if 0 <= charge <= room:
                    room -= charge
                    cdata = None
                    rc = data.prep(ptr, fd, d, raw, _UNLINKED)
                    if rc == 0:
                        self._unlinked_chains += 1
                else:
                    unlinked = False
                    cdata = None
                    rc = data.prep(ptr, fd, d, raw, i < n - 1)
            elif type(data) is ZcDatagram or type(data) is ZcPoolBatch:  # sendto_zerocopy
                unlinked = False
                cdata = None
                rc = data.prep(ptr, fd, d, raw, i < n - 1)
            else:
                unlinked = False
                cdata = ffi.from_buffer(data)
                if raw is None:
                    lib.ul_dgram_set_send(d, cdata, len(data), ffi.NULL, 0)
                else:
                    lib.ul_dgram_set_send(d, cdata, len(data), raw, len(raw))
                rc = lib.ul_dgram_prep_sendmsg(ptr, fd, ud, d, i < n - 1)
            if rc < 0:
                # No SQE free: what was queued still completes; the rest goes later.
                if not inflight:
                    self._scheduled = True
                    self._loop._dirty.append(self)
                break
            queue.popleft()
            inflight.append((data, cdata))

    def _flush_unix(self, ptr: Any, fd: int, ud: int) -> None:
        """Send the datagram at the head of the queue of an AF_UNIX socket with a fresh
        msghdr and MSG_DONTWAIT: an EAGAIN completes (``_on_send``), it is not retried."""
        data, raw = self._queue[0]
        d = self._smsgs[0]
        cdata = ffi.from_buffer(data)
        if raw is None:
            lib.ul_dgram_set_send(d, cdata, len(data), ffi.NULL, 0)
        else:
            lib.ul_dgram_set_send(d, cdata, len(data), raw, len(raw))
        # the msghdr is the first member of the ul_dgram
        if lib.ul_prep_sendmsg(ptr, fd, ud, d, socket.MSG_DONTWAIT, 0, 0) < 0:
            ffi.release(cdata)
            self._scheduled = True  # no SQE free: try again next iteration
            self._loop._dirty.append(self)
            return
        self._queue.popleft()
        self._inflight.append((data, cdata))
        self._unix_raw = raw

    def _on_pollout(self, res: int, flags: int) -> None:
        """The AF_UNIX socket may have room again: resend the head of the queue."""
        self._pollout = False
        if self._aborted or self._sock is None:
            self._maybe_finalize()
        elif res in _FATAL:
            self._fatal_error(_os_error(res), "Fatal write error on datagram transport")
        elif self._queue and not self._inflight and not self._scheduled:
            self._flush()

    def _flush_chain(self, ptr: Any, fd: int, queue: Any, msgs: list[Any]) -> bool:
        """Send the leading plain datagrams of the queue (up to MAX_BATCH) as one
        aggregated batch: its results are counted in C and ``ul_run`` asks the kernel for
        all of them in one io_uring_enter (a hard-linked chain otherwise advances one
        link per enter under DEFER_TASKRUN). Python sees each failed datagram, in order,
        and one completion for the chain. False: no batch slot, use the plain path."""
        slot = lib.ul_batch_open(ptr, self._chain_ud)
        if slot < 0:
            return False
        cdatas = []
        size = 0
        n = 0
        for data, raw in queue:
            if type(data) is not bytes or n == MAX_BATCH:
                break
            cdata = ffi.from_buffer(data)
            nb = len(data)
            if raw is None:
                lib.ul_dgram_set_send(msgs[n], cdata, nb, ffi.NULL, 0)
            else:
                lib.ul_dgram_set_send(msgs[n], cdata, nb, raw, len(raw))
            cdatas.append(cdata)
            size += nb + _HEADER_SIZE
            n += 1
        # unlinked when the send buffer has room for the whole chain (see _UNLINKED)
        charge = size + n * (_CHARGE_SLACK - _HEADER_SIZE)
        link = _UNLINKED if self._may_unlink and charge <= lib.ul_sock_send_room(fd) else 0
        rc = lib.ul_batch_prep_sendmsg(ptr, slot, fd, msgs[0], n, link)
        if rc < 0:
            lib.ul_batch_close(ptr, slot, ffi.NULL)
            for cdata in cdatas:
                ffi.release(cdata)
            if rc != -errno.EBUSY:
                return False
            # no room for the whole chain in the SQ: try again next iteration
            self._scheduled = True
            self._loop._dirty.append(self)
            return True
        if link:
            self._unlinked_chains += 1
        for _ in range(n):
            queue.popleft()
        # len(entry) + _HEADER_SIZE is what _on_send/_force_close subtract per entry
        self._inflight.append((_Chain(cdatas, slot, size - _HEADER_SIZE), None))
        return True

    def _on_chain(self, res: int, flags: int) -> None:
        """A chain of _flush_chain: a failed datagram (UL_BATCH_F_ERROR), or the end of
        the chain (no F_MORE)."""
        if flags & _F_BATCH_ERROR:
            self._send_error(res)
        if flags & _F_MORE:
            return
        chain, _ = self._inflight.popleft()
        ring = self._ring
        if not ring.closed:
            lib.ul_batch_close(ring._ptr, chain.slot, ffi.NULL)
        for cdata in chain.cdatas:
            ffi.release(cdata)
        chain.cdatas = []
        self._buffer_size -= chain.size + _HEADER_SIZE
        self._sent()

    def _send_error(self, res: int) -> None:
        if res < 0 and res != _ECANCELED and not self._aborted:
            if res in _FATAL:
                self._fatal_error(_os_error(res), "Fatal write error on datagram transport")
            elif self._protocol_connected:
                self._call_protocol("error_received", _os_error(res))

    def _on_send(self, res: int, flags: int) -> None:
        data, cdata = self._inflight.popleft()
        if (res == _EAGAIN and self._unix and type(data) is bytes and not self._aborted
                and self._sock is not None):
            # the AF_UNIX peer's queue is full (MSG_DONTWAIT): keep the datagram at the
            # head of the queue (still counted in the buffer size), wait for POLLOUT
            ffi.release(cdata)
            self._queue.appendleft((data, self._unix_raw))
            if lib.ul_prep_poll(self._ring.ptr, self._fd, self._pollout_ud, _POLLOUT, 0) < 0:
                self._scheduled = True  # no SQE free: try again next iteration
                self._loop._dirty.append(self)
            else:
                self._pollout = True
            return
        self._buffer_size -= len(data) + _HEADER_SIZE
        if res < 0:
            self._send_error(res)
        if self._inflight:
            return
        self._sent()

    def _sent(self) -> None:
        """The chain in flight has completed: resume the protocol, send what is queued."""
        self._maybe_resume_protocol()  # may queue more
        if self._queue and not self._aborted and self._sock is not None:
            self._flush()
        elif self._closing:
            self._maybe_finalize()

    def get_write_buffer_size(self) -> int:
        return self._buffer_size

    # -- closing -----------------------------------------------------------------------

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._stash.clear()
        if not self._queue and not self._inflight:
            self._conn_lost += 1  # nothing left to send: later sendto() calls are dropped
        if self._recv_armed:
            lib.ul_prep_cancel(self._ring.ptr, self._recv_ud, 0)
        self._maybe_finalize()

    # abort(), _fatal_error(): SocketLifecycleMixin

    def _force_close(self, exc: BaseException | None) -> None:
        if self._lost_called or self._finalizing:
            return
        if self._lost_exc is None:
            self._lost_exc = exc
        self._aborted = True
        self._conn_lost = max(self._conn_lost, 1)
        self._stash.clear()
        for data, _ in self._queue:
            self._buffer_size -= len(data) + _HEADER_SIZE
            if type(data) is ZcDatagram or type(data) is ZcPoolBatch:
                data.drop(exc or ConnectionAbortedError("transport aborted before sending"))
        self._queue.clear()
        self._closing = True
        if self._sock is not None and (self._recv_armed or self._inflight or self._pollout):
            lib.ul_prep_cancel_fd(self._ring.ptr, self._fd, 0)
        self._maybe_finalize()

    def _maybe_finalize(self) -> None:
        """connection_lost once the queue is drained and nothing is in flight."""
        if self._finalizing:
            return
        if self._queue and not self._aborted:
            if not self._inflight and self._sock is not None and not self._scheduled:
                self._flush()
            return
        if self._queue or self._inflight or self._recv_armed or self._pollout:
            return
        self._finalizing = True
        self._conn_lost = max(self._conn_lost, 1)
        self._loop.call_soon(self._call_connection_lost, self._lost_exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        self._ring.unregister(self._chain_ud)
        self._ring.unregister(self._pollout_ud)
        super()._call_connection_lost(exc)  # SocketLifecycleMixin
