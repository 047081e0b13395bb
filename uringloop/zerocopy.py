"""Zero-copy sends: the awaitable ``write_zerocopy`` returns and what it resolves to.

A :class:`ZeroCopyWrite` owns one user buffer from the moment ``write_zerocopy`` is called
until the kernel's last completion for it. It may take several ``IORING_OP_SEND_ZC``
requests (a stream socket can accept fewer bytes than asked); each request posts a result
CQE and, when that CQE carries ``IORING_CQE_F_MORE``, a later notification CQE saying the
kernel no longer references the pages. The future resolves only when every request has
posted its final CQE and every byte was sent (or a send failed).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from ._ring import F_MORE, F_NOTIF, NOTIF_USAGE_ZC_COPIED
from ._uring import ffi, lib

if TYPE_CHECKING:
    from .transports.stream import StreamTransport

__all__ = [
    "ZeroCopyResult", "ZeroCopyWrite", "ZeroCopyGeneration", "ZeroCopyState", "as_send_buffer",
]

SEND_ZC_REPORT_USAGE = 1 << 3
RECVSEND_FIXED_BUF = 1 << 2
IOV_MAX = 1024  # UIO_MAXIOV: the most iovecs one SENDMSG takes
# A gathered plain send stops adding writes once it holds this many bytes: on loopback
# a larger send is slower per byte (its data has left the cache when the peer reads).
GATHER_BYTES = 256 * 1024


@dataclass(frozen=True)
class ZeroCopyResult:
    """What the kernel said about one ``write_zerocopy`` call.

    ``zerocopy`` is False when the kernel lacks SEND_ZC and an ordinary send was used.
    ``copied`` is True when the kernel reported that at least one send copied the data
    (always the case on loopback), False when every send was zero-copy, and None when the
    kernel cannot report it (no ``IORING_SEND_ZC_REPORT_USAGE``, before Linux 6.2).
    """

    nbytes: int
    sends: int
    notifications: int
    copied_sends: int
    zerocopy: bool
    copied: bool | None
    #: why some or all sends were plain copying sends: None (all SEND_ZC), "unsupported"
    #: (no SEND_ZC in this kernel, or not a TCP/UDP socket), "adaptive" (the kernel
    #: reported that this socket's zero-copy sends are copied, e.g. loopback) or "never"
    #: (``set_zerocopy_mode("never")``)
    fallback: str | None = None


def as_send_buffer(data: Any) -> memoryview:
    """A flat byte view of ``data``; TypeError for non-buffers and non-contiguous views."""
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(
            f"write_zerocopy() needs a bytes-like object, not {type(data).__name__}"
        ) from None
    if not view.c_contiguous:
        view.release()
        raise TypeError("write_zerocopy() needs a C-contiguous buffer")
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    return view


class ZeroCopyWrite:
    """One ``write_zerocopy`` call: its buffer, its requests, its future."""

    __slots__ = (
        "transport", "future", "view", "cdata", "nbytes", "offset", "sends", "inflight",
        "notifs_pending", "notifications", "copied_sends", "error", "sent_all",
        "zerocopy", "report_usage", "done", "group", "index", "pbuf", "buf_index",
        "zc_sends", "plain_sends", "fallback", "state",
    )

    def __init__(
        self, transport: StreamTransport, future: asyncio.Future[ZeroCopyResult],
        view: memoryview, zerocopy: bool, report_usage: bool,
    ) -> None:
        self.transport = transport
        self.future = future
        self.view = view
        # from_buffer keeps the buffer exported: a bytearray cannot be resized meanwhile.
        self.cdata: Any = ffi.from_buffer(view)
        self.nbytes = view.nbytes
        self.offset = 0
        self.sends = 0
        self.inflight = False
        self.notifs_pending = 0
        self.notifications = 0
        self.copied_sends = 0
        self.error: BaseException | None = None
        self.sent_all = False
        self.zerocopy = zerocopy
        self.report_usage = report_usage
        self.done = False
        self.group: ZeroCopyGeneration | None = None  # the generation this write belongs to
        self.index = 0  # its position in the generation
        self.pbuf: Any = None  # a pool buffer, handed back when the kernel is done
        self.buf_index = -1  # registered-buffer slot (FIXED_BUF) or -1
        self.zc_sends = 0
        self.plain_sends = 0
        self.fallback: str | None = None
        self.state: ZeroCopyState | None = None  # the transport's adaptive state

    def submit(self, ring: Any, fd: int) -> None:
        """Queue one send of the unsent rest of the buffer."""
        handlers = self.transport._ring
        ud = handlers.next_ud()
        handlers.handlers[ud] = partial(self._on_cqe, ud)
        remaining = self.nbytes - self.offset
        zc = self.zerocopy
        state = self.state
        if state is not None:
            zc, fallback = state.choose()
            if fallback is not None:
                self.fallback = fallback
        if zc:
            flags = SEND_ZC_REPORT_USAGE if self.report_usage else 0
            bi = self.buf_index
            if bi >= 0:
                flags |= RECVSEND_FIXED_BUF
            else:
                bi = 0
            rc = lib.ul_prep_send_zc(ring, fd, ud, self.cdata + self.offset, remaining, 0, flags,
                                     bi)
        else:
            rc = lib.ul_prep_send(ring, fd, ud, self.cdata + self.offset, remaining, 0)
        if rc < 0:
            handlers.unregister(ud)
            raise OSError(-rc, os.strerror(-rc))
        self.inflight = True
        self.sends += 1
        if zc:
            self.zc_sends += 1
        else:
            self.plain_sends += 1
        if state is not None:
            state.count_send(zc)
        self.transport._loop._zc_counters[0 if zc else 3] += 1

    def _on_cqe(self, ud: int, res: int, flags: int) -> None:
        ring = self.transport._ring
        if flags & F_NOTIF:
            # The kernel no longer references the pages this request sent.
            ring.unregister(ud)
            self.notifs_pending -= 1
            self.notifications += 1
            counters = self.transport._loop._zc_counters
            counters[1] += 1
            copied = res == NOTIF_USAGE_ZC_COPIED
            if copied:
                self.copied_sends += 1
                counters[2] += 1
            if self.state is not None and self.report_usage:
                self.state.on_notification(copied)
            self._maybe_finish()
            return
        self.inflight = False
        if flags & F_MORE:
            self.notifs_pending += 1  # same user_data comes back as the notification
        else:
            ring.unregister(ud)
        if res < 0:
            self.error = OSError(-res, os.strerror(-res))
        else:
            self.offset += res
            self.sent_all = self.offset >= self.nbytes
        self.transport._on_zerocopy_sent(self, res)
        self._maybe_finish()

    def fail_unsent(self, exc: BaseException) -> None:
        """The transport died before the rest of the buffer could be queued."""
        if self.error is None:
            self.error = exc
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self.done or self.inflight or self.notifs_pending:
            return
        if not self.sent_all and self.error is None:
            return
        self.done = True
        ffi.release(self.cdata)
        self.view.release()
        if self.pbuf is not None:
            self.pbuf._end_send()
            self.pbuf = None
        fut = self.future
        group = self.group
        if group is not None:
            group._write_done(self, self.error)
        if fut is None or fut.done():  # cancelled by the user: the buffer was held until now
            return
        if self.error is not None:
            fut.set_exception(self.error)
            return
        fut.set_result(self.result())

    def result(self) -> ZeroCopyResult:
        zerocopy = self.zc_sends > 0 if self.sends else self.zerocopy
        copied: bool | None
        if not zerocopy or self.plain_sends:
            copied = True
        elif self.report_usage:
            copied = self.copied_sends > 0
        else:
            copied = None
        key = (
            self.nbytes, self.sends, self.notifications, self.copied_sends + self.plain_sends,
            zerocopy, copied, self.fallback if (self.plain_sends or not self.sends) else None,
        )
        res = _RESULTS.get(key)
        if res is None:
            if len(_RESULTS) >= 1024:
                _RESULTS.clear()
            res = _RESULTS[key] = ZeroCopyResult(*key)
        return res


# Results are frozen values and most writes of a stream give equal ones (same size, one
# send): they are shared, which saves building a frozen dataclass per write.
_RESULTS: dict[tuple[Any, ...], ZeroCopyResult] = {}


class ZeroCopyState:
    """A transport's zero-copy mode and its adaptive decision.

    ``"always"`` sends every zero-copy write with SEND_ZC, ``"never"`` with a plain
    (copying) send, ``"auto"`` starts with SEND_ZC and switches the socket to plain sends
    once :attr:`COPIED_STREAK` notifications in a row say the kernel copied the data
    (loopback and other local delivery always copy). While switched it tries one SEND_ZC
    every :attr:`PROBE_INTERVAL` sends, and goes back to zero-copy when one is not copied.
    Without the kernel's usage report (before Linux 6.2) ``"auto"`` behaves as ``"always"``.
    """

    COPIED_STREAK = 3
    PROBE_INTERVAL = 1024
    MODES = ("auto", "always", "never")

    __slots__ = (
        "mode", "supported", "unsupported_reason", "active", "streak", "since_probe",
        "zc_sends", "plain_sends", "notifications", "copied_notifications", "switches",
        "generation",
    )

    def __init__(self, mode: str, supported: bool, reason: str | None = None) -> None:
        self.mode = check_mode(mode)
        self.supported = supported
        self.unsupported_reason = reason
        self.active = True  # auto: SEND_ZC currently in use
        self.streak = 0
        self.since_probe = 0
        self.zc_sends = 0
        self.plain_sends = 0
        self.notifications = 0
        self.copied_notifications = 0
        self.switches = 0
        self.generation: ZeroCopyGeneration | None = None  # the implicit (flush=False) one

    def choose(self) -> tuple[bool, str | None]:
        """(use SEND_ZC, reason when not) for the next send."""
        if not self.supported:
            return False, "unsupported"
        mode = self.mode
        if mode == "always":
            return True, None
        if mode == "never":
            return False, "never"
        if self.active:
            return True, None
        self.since_probe += 1
        if self.since_probe >= self.PROBE_INTERVAL:
            self.since_probe = 0
            return True, None  # probe: is this path still copying?
        return False, "adaptive"

    def plain_budget(self) -> int:
        """How many of the next :meth:`choose` calls will pick a plain send (at most
        :data:`IOV_MAX`), without choosing: 0 when the next send is a SEND_ZC."""
        mode = self.mode
        if not self.supported or mode == "never":
            return IOV_MAX
        if mode == "always" or self.active:
            return 0
        return min(IOV_MAX, max(0, self.PROBE_INTERVAL - 1 - self.since_probe))

    def take_plain(self, n: int) -> str:
        """``n`` :meth:`choose` calls that pick plain sends (at most :meth:`plain_budget`)
        and :meth:`count_send` for each; the reason they are plain."""
        self.plain_sends += n
        if not self.supported:
            return "unsupported"
        if self.mode == "never":
            return "never"
        self.since_probe += n
        return "adaptive"

    def count_send(self, zc: bool) -> None:
        if zc:
            self.zc_sends += 1
        else:
            self.plain_sends += 1

    def on_notification(self, copied: bool) -> None:
        self.notifications += 1
        if copied:
            self.copied_notifications += 1
            self.streak += 1
            if self.active and self.streak >= self.COPIED_STREAK and self.mode == "auto":
                self.active = False
                self.since_probe = 0
                self.switches += 1
        else:
            self.streak = 0
            if not self.active:
                self.active = True
                self.switches += 1

    def on_notifications(self, n: int, copied: int) -> None:
        """:meth:`on_notification` for ``n`` notifications of which ``copied`` said
        copied, in an order not known (an aggregated batch): the copied ones first."""
        if 0 < copied < n or n <= self.COPIED_STREAK:
            for i in range(n):
                self.on_notification(i < copied)
            return
        self.notifications += n - 1
        if copied:
            self.copied_notifications += n - 1
            self.streak += n - 1
        self.on_notification(bool(copied))

    def stats(self) -> dict[str, Any]:
        if not self.supported:
            using = "copy"
        elif self.mode == "auto":
            using = "zerocopy" if self.active else "copy"
        else:
            using = "zerocopy" if self.mode == "always" else "copy"
        return {
            "mode": self.mode, "using": using, "zerocopy_sends": self.zc_sends,
            "plain_sends": self.plain_sends, "notifications": self.notifications,
            "copied_notifications": self.copied_notifications, "switches": self.switches,
            "unsupported_reason": self.unsupported_reason,
        }


def check_mode(mode: str) -> str:
    if mode not in ZeroCopyState.MODES:
        raise ValueError(f"zero-copy mode must be 'auto', 'always' or 'never', not {mode!r}")
    return mode


def new_state(loop: Any, family: int | None) -> ZeroCopyState:
    """A transport's zero-copy state, in the loop's default mode: unsupported when the
    kernel has no SEND_ZC or the socket (of ``family``; None: not known) is not TCP/UDP."""
    supported = loop._caps.send_zc
    reason = None if supported else "this kernel has no IORING_OP_SEND_ZC (Linux 6.0)"
    if family is not None and family not in (socket.AF_INET, socket.AF_INET6):
        supported, reason = False, "SEND_ZC supports TCP/UDP sockets only"
    return ZeroCopyState(loop.get_zerocopy_mode(), supported, reason)


class ZeroCopyModeMixin:
    """The zero-copy mode API that the stream and the datagram transport share.

    The transport's ``_zc_state()`` gives its :class:`ZeroCopyState` (made on first use).
    """

    __slots__ = ()

    if TYPE_CHECKING:
        def _zc_state(self) -> ZeroCopyState: ...

    def set_zerocopy_mode(self, mode: str) -> None:
        """``"auto"`` (switch to copying sends when the kernel reports copies), ``"always"``
        (SEND_ZC for every zero-copy write) or ``"never"`` (plain sends; write_zerocopy
        still resolves only once the buffer is free)."""
        state = self._zc_state()
        state.mode = check_mode(mode)
        state.active = True
        state.streak = 0

    def get_zerocopy_mode(self) -> str:
        return self._zc_state().mode

    def zerocopy_stats(self) -> dict[str, Any]:
        """This transport's zero-copy mode, what it is using now, and its counters."""
        return self._zc_state().stats()


@dataclass(frozen=True)
class ZeroCopyGenerationResult:
    """What a closed generation of zero-copy writes did, once every buffer was released.

    ``copied_sends`` counts sends whose data the kernel copied (a copied notification, or a
    plain send chosen by the adaptive mode or a fallback); ``copied`` is None when the
    kernel cannot report it.
    """

    nbytes: int
    writes: int
    sends: int
    notifications: int
    copied_sends: int
    zerocopy: bool
    copied: bool | None


class ZeroCopyGeneration:
    """Several zero-copy writes under one awaitable.

    ``write()`` queues a zero-copy write (in order with every other write on the
    transport). ``close()`` seals the generation; awaiting it seals it too. The awaitable
    resolves to a :class:`ZeroCopyGenerationResult` once the generation is sealed and the
    kernel has released every buffer written in it. If a write failed, it raises the
    error of the earliest failed write (in write order), and only after every buffer of
    the generation was released. Cancelling the wait does not release anything early.
    """

    __slots__ = (
        "_transport", "_future", "_closed", "_outstanding", "_writes", "_nbytes", "_sends",
        "_notifications", "_copied", "_zc", "_unknown", "_error", "_error_index",
        "__weakref__",
    )

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._future: asyncio.Future[ZeroCopyGenerationResult] = transport._loop.create_future()
        self._closed = False
        self._outstanding = 0
        self._writes = 0
        self._nbytes = 0
        self._sends = 0
        self._notifications = 0
        self._copied = 0
        self._zc = False
        self._unknown = False
        self._error: BaseException | None = None
        self._error_index = -1

    def __repr__(self) -> str:
        state = "done" if self._future.done() else ("sealed" if self._closed else "open")
        return (f"<ZeroCopyGeneration {state} writes={self._writes} "
                f"outstanding={self._outstanding}>")

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def future(self) -> asyncio.Future[ZeroCopyGenerationResult]:
        return self._future

    def done(self) -> bool:
        return self._future.done()

    def write(self, data: Any) -> None:
        """Queue a zero-copy write of ``data`` in this generation."""
        if self._closed:
            raise RuntimeError("this zero-copy generation is closed")
        self._transport._zc_enqueue(data, None, self)

    def close(self) -> ZeroCopyGeneration:
        """Seal the generation: no more writes; it resolves once all are released."""
        if not self._closed:
            self._closed = True
            self._maybe_finish()
        return self

    def __await__(self) -> Any:
        self.close()
        return self._future.__await__()

    async def __aenter__(self) -> ZeroCopyGeneration:
        return self

    async def __aexit__(self, et: Any, exc: Any, tb: Any) -> bool:
        self.close()
        if et is None:
            await self._future
        else:
            # the body failed: still wait until the kernel let go of every buffer
            await asyncio.wait([self._future])
            if not self._future.cancelled():
                self._future.exception()  # retrieved: the body's exception wins
        return False

    # -- bookkeeping (called by ZeroCopyWrite) -------------------------------------------

    def _add(self, entry: ZeroCopyWrite) -> None:
        entry.group = self
        entry.index = self._writes
        self._writes += 1
        self._outstanding += 1

    def _write_done(self, entry: ZeroCopyWrite, error: BaseException | None) -> None:
        self._outstanding -= 1
        self._nbytes += entry.offset if error is not None else entry.nbytes
        self._sends += entry.sends
        self._notifications += entry.notifications
        self._copied += entry.copied_sends + entry.plain_sends
        if entry.zc_sends:
            self._zc = True
            if not entry.report_usage:
                self._unknown = True
        if error is not None and (self._error is None or entry.index < self._error_index):
            self._error = error
            self._error_index = entry.index
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if not self._closed or self._outstanding or self._future.done():
            return
        if self._error is not None:
            self._future.set_exception(self._error)
            return
        copied: bool | None
        if self._copied:
            copied = True
        elif self._unknown:
            copied = None
        else:
            copied = False if self._sends else None
        self._future.set_result(ZeroCopyGenerationResult(
            nbytes=self._nbytes, writes=self._writes, sends=self._sends,
            notifications=self._notifications, copied_sends=self._copied, zerocopy=self._zc,
            copied=copied,
        ))


class PlainSendBatch:
    """The gathered plain send of a stream transport (one per transport, reused).

    When the zero-copy writes at the head of the write queue go out as plain sends
    (adaptive copy mode, ``"never"``, no SEND_ZC), the run of them at the head of the
    queue, with the ``write()`` data queued between them, is sent in order by one
    ``SENDMSG`` whose iovecs point into the writes' own buffers, the way ``write()``
    coalesces its data into one ``SEND``, up to :data:`GATHER_BYTES` a send (the write
    that reaches it is the last one added). Each write's future resolves once the bytes
    covering it were sent: a plain send's completion means the kernel copied them.
    The run stays at the head of the queue, every buffer referenced and still exported,
    until that completion; a short send leaves the rest there (an entry keeps its byte
    ``offset``, a bytes chunk is cut) and the next send resumes at that byte.
    """

    __slots__ = ("mem", "block", "cap", "items", "ud")

    def __init__(self) -> None:
        self.mem: Any = None  # owns the block's memory
        self.block: Any = None  # ul_sendv *: msghdr + iovecs
        self.cap = 0
        self.items: list[Any] = []  # the queue's head items in flight, empty when idle
        self.ud = 0

    def reserve(self, n: int) -> Any:
        """The block, with room for ``n`` iovecs (only called with no send in flight)."""
        if n > self.cap:
            cap = min(IOV_MAX, max(16, 1 << (n - 1).bit_length()))
            self.mem = ffi.new("char[]", lib.ul_sendv_size(cap))
            self.block = ffi.cast("ul_sendv *", self.mem)
            self.cap = cap
        return self.block


class ZeroCopyStreamMixin(ZeroCopyModeMixin):
    """The zero-copy API of the stream transport (generations, pools, modes)."""

    __slots__ = ()
    _zc: ZeroCopyState | None

    def _zc_state(self) -> ZeroCopyState:
        state = self._zc
        if state is None:
            sock = self._sock  # type: ignore[attr-defined]
            family = sock.family if sock is not None else None
            # _zc: a slot of the transport class this mixin is part of
            state = self._zc = new_state(self._loop, family)  # type: ignore[misc,attr-defined]
        return state

    # set_zerocopy_mode(), get_zerocopy_mode(), zerocopy_stats(): ZeroCopyModeMixin

    def zerocopy_generation(self) -> ZeroCopyGeneration:
        """A new generation: ``async with tr.zerocopy_generation() as gen: gen.write(b)``."""
        return ZeroCopyGeneration(self)

    def zerocopy_flush(self) -> ZeroCopyGeneration | None:
        """Seal the implicit generation that ``write_zerocopy(..., flush=False)`` opened."""
        state = self._zc_state()
        gen, state.generation = state.generation, None
        if gen is not None:
            gen.close()
        return gen

    def write_zerocopy(self, data: Any, flush: bool = True) -> Any:
        """Send ``data`` with io_uring's zero-copy send; await the result to reuse it.

        ``data`` is any C-contiguous buffer, or a pool buffer (``buf`` / ``buf[:n]`` from
        ``loop.zerocopy_buffers()``, sent with ``IORING_RECVSEND_FIXED_BUF``).

        Returns a future resolving to a :class:`ZeroCopyResult` once the kernel no
        longer references the buffer (its last notification), or raising the send's
        OSError. With ``flush=False`` the write joins the transport's open generation
        (opening one if needed) and that :class:`ZeroCopyGeneration` is returned; a later
        ``write_zerocopy(..., flush=True)`` joins and seals it and returns it too, as does
        :meth:`zerocopy_flush`. Cancelling neither unsends data nor releases it early.
        """
        state = self._zc or self._zc_state()
        gen = state.generation
        if gen is None and flush:
            fut = self._loop.create_future()  # type: ignore[attr-defined]
            self._zc_enqueue(data, fut, None)
            return fut
        if gen is None:
            gen = state.generation = ZeroCopyGeneration(self)
        self._zc_enqueue(data, None, gen)
        if flush:
            state.generation = None
            gen.close()
        return gen

    def _zc_enqueue(self, data: Any, fut: Any, group: ZeroCopyGeneration | None) -> None:
        view: memoryview | None
        if type(data) is bytes or type(data) is bytearray:
            target = None
            view = memoryview(data)  # flat bytes: what as_send_buffer() would give
        else:
            from . import zcpool

            target = zcpool.send_target(data)
            view = as_send_buffer(data) if target is None else None
        t: Any = self
        if t._eof:
            if view is not None:
                view.release()
            raise RuntimeError("Cannot call write_zerocopy() after write_eof()")
        loop = t._loop
        buf_index = -1
        if target is not None:
            pbuf, start, stop = target
            view, buf_index = pbuf._begin_send(loop, start, stop)
        caps = loop._caps
        assert view is not None  # from as_send_buffer() or the pool buffer
        entry = ZeroCopyWrite(t, fut, view, caps.send_zc, caps.send_zc_report_usage)
        entry.state = self._zc or self._zc_state()
        if target is not None:
            entry.pbuf = target[0]
            entry.buf_index = buf_index
        if group is not None:
            group._add(entry)
        if t._conn_lost or t._closing:
            entry.fail_unsent(ConnectionResetError(errno.ECONNRESET, "transport is closing"))
            return
        if entry.nbytes == 0:
            entry.sent_all = True
            entry._maybe_finish()
            return
        t._queue.append(entry)
        t._buffer_size += entry.nbytes
        if not t._send_inflight and not t._scheduled:
            t._scheduled = True
            loop._dirty.append(t)
        if t._buffer_size > t._high_water:
            t._maybe_pause_protocol()

    # -- gathered plain sends (PlainSendBatch) ------------------------------------------

    def _zc_flush_plain(self) -> bool:
        """Send the head of the write queue as one gathered SENDMSG when it holds
        zero-copy writes that go out as plain sends now, with the ``write()`` data queued
        between them. False (nothing queued) when there is no such run of two or more
        items: the caller sends the head as before."""
        t: Any = self
        state = self._zc
        budget = state.plain_budget() if state is not None else 0
        if not budget:
            return False
        items = []
        zcs = nbytes = 0
        for item in t._queue:
            if type(item) is ZeroCopyWrite:
                if zcs == budget:
                    break  # this one is a SEND_ZC probe: it goes out on its own
                zcs += 1
                nbytes += item.nbytes - item.offset
            else:
                nbytes += len(item)
            items.append(item)
            if nbytes >= GATHER_BYTES or len(items) == IOV_MAX:
                break
        n = len(items)
        if not zcs or n < 2:
            return False
        batch = t._zc_batch
        if batch is None:
            batch = t._zc_batch = PlainSendBatch()
        block = batch.reserve(n)
        set_iov = lib.ul_sendv_set
        i = 0
        for item in items:
            if type(item) is ZeroCopyWrite:
                off = item.offset
                set_iov(block, i, item.cdata + off if off else item.cdata, item.nbytes - off)
            else:
                set_iov(block, i, item, len(item))  # bytes: kept alive by the queue
            i += 1
        ring = t._ring
        ud = ring.next_ud()
        ring.handlers[ud] = self._zc_on_sendv
        rc = lib.ul_prep_sendv(ring.ptr, t._fd, ud, block, n)
        if rc < 0:
            ring.unregister(ud)
            t._fatal_error(OSError(-rc, os.strerror(-rc)), "cannot queue a send")
            return True
        batch.items = items
        batch.ud = ud
        t._send_inflight = True
        assert state is not None
        fallback = state.take_plain(zcs)
        for item in items:
            if type(item) is ZeroCopyWrite:
                item.fallback = fallback
                item.inflight = True
                item.sends += 1
                item.plain_sends += 1
        t._loop._zc_counters[3] += zcs
        return True

    def _zc_on_sendv(self, res: int, flags: int) -> None:
        """The gathered SENDMSG completed: consume ``res`` bytes across its items."""
        t: Any = self
        batch = t._zc_batch
        t._ring.unregister(batch.ud)
        items, batch.items = batch.items, []
        t._send_inflight = False
        if res < 0:
            entries = [item for item in items if type(item) is ZeroCopyWrite]
            for entry in entries:
                entry.inflight = False
            # Nothing of the batch was sent: every write in it fails with this error.
            err = OSError(-res, os.strerror(-res))
            for entry in entries:
                if entry.error is None:
                    entry.error = err
            if res == -errno.ECANCELED and t._closing:
                t._queue_fail(ConnectionAbortedError("transport closed"))
                t._maybe_finalize()
            else:
                from .transports.stream import _os_error

                t._fatal_error(_os_error(res), "Fatal write error on socket transport")
            for entry in entries:
                entry._maybe_finish()  # done already when the queue was failed
            return
        t._buffer_size -= res
        queue = t._queue
        left = res
        done = 0  # items sent whole: the head of the queue
        finished = []
        for item in items:
            zc = type(item) is ZeroCopyWrite
            if zc:
                item.inflight = False
            if not left:
                continue  # not sent (a short send): it stays queued, in order
            if zc:
                rest = item.nbytes - item.offset
                if left < rest:
                    item.offset += left  # sent in part: the next send resumes here
                    left = 0
                    continue
                item.offset = item.nbytes
                item.sent_all = True
                finished.append(item)
            else:
                rest = len(item)
                if left < rest:
                    queue[done] = item[left:]  # sent in part: keep the rest
                    left = 0
                    continue
            left -= rest
            done += 1
        del queue[:done]
        if queue and not t._aborted and t._sock is not None:
            # Send the rest at the next flush, with what this iteration's callbacks queue
            # (the writers the futures below wake). No later for the kernel: an SQE
            # prepared now would wait for that same ring call to be submitted.
            t._maybe_resume_protocol()
            if not t._scheduled:
                t._scheduled = True
                t._loop._dirty.append(t)
        else:
            t._after_send()
        for entry in finished:
            entry._maybe_finish()
