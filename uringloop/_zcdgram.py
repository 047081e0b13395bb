"""Zero-copy UDP: ``DatagramTransport.sendto_zerocopy`` and ``sendto_zerocopy_many``.

Each datagram is one ``IORING_OP_SEND_ZC`` with the destination in ``addr2``/``addr_len``
(the sendto form, Linux 6.0) and, for pool buffers, ``IORING_RECVSEND_FIXED_BUF``
(which ``SEND_ZC`` accepts from 6.0, whereas ``SENDMSG_ZC`` needs 6.15). The datagrams
go into the transport's ordinary send queue, so they keep their order with ``sendto()``:
the queue is sent as chains of hard-linked requests, one chain in flight at a time.

A batch (one call) has one user_data shared by all its requests: the result CQEs come in
chain order and are passed on to the transport's send accounting; the notifications
(in any order) are only counted. The batch's future resolves when every datagram has its
result and every notification has arrived, so all its buffers are free; it raises the
error of the earliest failed datagram. Pool buffers of a batch go back to their pool when
the batch completes.

Fast path (:class:`ZcPoolBatch`): when every buffer of a ``sendto_zerocopy_many`` call is
a pool buffer (or a slice of one) of this loop and the transport uses SEND_ZC, the batch
is one queue entry. One C call (``ul_batch_prep_sendzc``) preps its hard-linked chain of
(unlinked when the send buffer has room for it all: ``_UNLINKED`` in transports/datagram.py)
SEND_ZC requests with a tagged user_data that ``ul_run`` accounts in C (bytes, first
error, notifications, copied): Python sees one completion when every result is in (the
transport's chain accounting, so the next queued sends go out in order) and one when the
last notification arrived (pool buffers go back, the future resolves). The results are
the same as on the general path.
"""

from __future__ import annotations

import errno
import os
from array import array
from typing import Any

from . import zcpool
from ._ring import F_MORE, F_NOTIF, NOTIF_USAGE_ZC_COPIED
from ._uring import ffi, lib
from .zerocopy import (
    RECVSEND_FIXED_BUF,
    SEND_ZC_REPORT_USAGE,
    ZeroCopyModeMixin,
    ZeroCopyResult,
    ZeroCopyState,
    as_send_buffer,
    new_state,
)

__all__ = ["ZcDatagram", "ZcDatagramBatch", "ZcPoolBatch", "ZeroCopyDatagramMixin"]

_ECANCELED = -errno.ECANCELED
# uringloop.transports.datagram, imported on first use: it imports this module, and an
# import statement in the hot path costs about 1 us per call even once imported.
_dgram: Any = None
_FATAL = frozenset(-e for e in (errno.EBADF, errno.ENOTSOCK, errno.EINVAL, errno.EOPNOTSUPP,
                                errno.EFAULT))
#: the most datagrams one ZcPoolBatch takes (a larger call uses the general path)
FAST_MAX = 1024
_ZcSlice = zcpool.ZeroCopySlice
_ZcBuffer = zcpool.ZeroCopyBuffer
_OWNED = zcpool.OWNED
_IN_FLIGHT = zcpool.IN_FLIGHT


class ZcDatagram:
    """One queued zero-copy datagram (an entry of the transport's send queue)."""

    __slots__ = ("batch", "view", "ptr", "nbytes", "buf_index", "raw", "owned_cdata")

    def __init__(self, batch: ZcDatagramBatch, view: memoryview, buf_index: int,
                 ptr: Any = None) -> None:
        self.batch = batch
        self.view = view
        self.nbytes = view.nbytes
        if ptr is None:
            # from_buffer keeps the buffer exported: a bytearray cannot be resized meanwhile
            self.owned_cdata = ptr = ffi.from_buffer(view)
        else:
            # a pool buffer: a plain pointer into its region (``view`` keeps it mapped),
            # cheaper than from_buffer + release per datagram
            self.owned_cdata = None
        self.ptr = ptr
        self.buf_index = buf_index
        self.raw: bytes | None = None

    def __len__(self) -> int:
        return self.nbytes

    def prep(self, ring: Any, fd: int, d: Any, raw: bytes | None, link: bool) -> int:
        batch = self.batch
        self.raw = raw  # the kernel copies the address at submission; keep it till then
        state = batch.state
        mode = state.mode
        if state.supported and (mode == "always" or (mode == "auto" and state.active)):
            zc, fallback = True, None  # what choose() returns here, without the call
        else:
            zc, fallback = state.choose()
        if zc:
            flags = batch.zc_flags
            bi = self.buf_index
            if bi >= 0:
                flags |= RECVSEND_FIXED_BUF
            else:
                bi = 0
            if raw is None:
                rc: int = lib.ul_prep_sendto_zc(ring, fd, batch.ud, self.ptr, self.nbytes, ffi.NULL,
                                                0, flags, bi, link)
            else:
                rc = lib.ul_prep_sendto_zc(ring, fd, batch.ud, self.ptr, self.nbytes, raw,
                                           len(raw), flags, bi, link)
        else:
            if raw is None:
                lib.ul_dgram_set_send(d, self.ptr, self.nbytes, ffi.NULL, 0)
            else:
                lib.ul_dgram_set_send(d, self.ptr, self.nbytes, raw, len(raw))
            rc = lib.ul_dgram_prep_sendmsg(ring, fd, batch.ud, d, link)
        if rc == 0:
            if zc:
                state.zc_sends += 1  # state.count_send(True)
                batch.zc_sends += 1
                batch.counters[0] += 1
            else:
                state.plain_sends += 1
                batch.plain_sends += 1
                batch.fallback = fallback
                batch.counters[3] += 1
        return rc

    def drop(self, exc: BaseException) -> None:
        """The transport dropped this datagram before sending it."""
        self.batch._result(-1, exc)


class ZcDatagramBatch:
    """The datagrams of one sendto_zerocopy(_many) call, and its future."""

    __slots__ = (
        "transport", "future", "ud", "items", "total", "results", "notifs_pending",
        "notifications", "copied", "zc_sends", "plain_sends", "nbytes", "error",
        "error_index", "pbufs", "state", "report_usage", "fallback", "done", "counters",
        "zc_flags",
    )

    def __init__(self, transport: Any, future: Any, state: ZeroCopyState) -> None:
        self.transport = transport
        self.future = future
        ring = transport._ring
        self.ud = ring.register(self._on_cqe)
        self.items: list[ZcDatagram] = []
        self.total = 0
        self.results = 0
        self.notifs_pending = 0
        self.notifications = 0
        self.copied = 0
        self.zc_sends = 0
        self.plain_sends = 0
        self.nbytes = 0
        self.error: BaseException | None = None
        self.error_index = -1
        self.pbufs: list[Any] = []
        self.state = state
        self.report_usage = transport._loop._caps.send_zc_report_usage
        self.zc_flags = SEND_ZC_REPORT_USAGE if self.report_usage else 0
        self.counters = transport._loop._zc_counters  # the loop's stats(), shared
        self.fallback: str | None = None
        self.done = False

    def _on_cqe(self, res: int, flags: int) -> None:
        if flags & F_NOTIF:
            self.notifs_pending -= 1
            self.notifications += 1
            counters = self.counters
            copied = res == NOTIF_USAGE_ZC_COPIED
            if copied:
                self.copied += 1
                counters[2] += 1
            counters[1] += 1
            if self.report_usage:
                self.state.on_notification(copied)
            if not self.notifs_pending and self.results >= self.total:
                self._maybe_finish()
            return
        if flags & F_MORE:
            self.notifs_pending += 1
        if res >= 0:  # _result(res, None), inlined
            self.results += 1
            self.nbytes += res
            if self.results >= self.total and not self.notifs_pending:
                self._maybe_finish()
        else:
            self._result(res, OSError(-res, os.strerror(-res)))
        # The transport's accounting (pops its in-flight entry, queues the next chain).
        # Non-fatal errors are reported through this batch's future, not error_received.
        self.transport._on_send(res if (res >= 0 or res == _ECANCELED or res in _FATAL) else 0,
                                0)

    def _result(self, res: int, exc: BaseException | None) -> None:
        idx = self.results
        self.results += 1
        if exc is not None:
            if self.error is None or idx < self.error_index:
                self.error = exc
                self.error_index = idx
        else:
            self.nbytes += res
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self.done or self.results < self.total or self.notifs_pending:
            return
        self.done = True
        self.transport._ring.unregister(self.ud)
        for item in self.items:
            if item.owned_cdata is not None:
                ffi.release(item.owned_cdata)
            item.view.release()
        self.items = []
        for pb in self.pbufs:
            pb._end_send()
        self.pbufs = []
        fut = self.future
        if fut.done():
            return
        if self.error is not None:
            fut.set_exception(self.error)
            return
        sends = self.zc_sends + self.plain_sends
        zerocopy = self.zc_sends > 0
        copied: bool | None
        if self.plain_sends or self.copied:
            copied = True
        elif not self.report_usage and zerocopy:
            copied = None
        else:
            copied = False if sends else None
        fut.set_result(ZeroCopyResult(
            nbytes=self.nbytes, sends=sends, notifications=self.notifications,
            copied_sends=self.copied + self.plain_sends, zerocopy=zerocopy, copied=copied,
            fallback=self.fallback if self.plain_sends else None,
        ))


class ZcPoolBatch:
    """A sendto_zerocopy_many call of pool buffers only: one queue entry, one C prep call,
    completions aggregated in C (see the module docstring)."""

    __slots__ = ("transport", "future", "ud", "slot", "pbufs", "views", "n", "total",
                 "addrs", "lens", "bidx", "len0", "bidx0", "raw", "state", "report_usage",
                 "zc_flags",
                 "counters", "results_done", "done", "prepped")

    def __init__(self, transport: Any, future: Any, state: ZeroCopyState, pbufs: list[Any],
                 views: list[memoryview], addrs: array[int], lens: Any, bidx: Any, len0: int,
                 bidx0: int, total: int, slot: int, ud: int) -> None:
        self.transport = transport
        self.future = future
        self.state = state
        self.pbufs = pbufs
        self.views = views  # one empty view per region: keeps the mapping alive
        self.n = len(addrs)
        self.total = total
        self.addrs = addrs
        self.lens = lens  # per-datagram arrays, or NULL: every one is len0 / bidx0
        self.bidx = bidx
        self.len0 = len0
        self.bidx0 = bidx0
        self.raw: bytes | None = None
        self.slot = slot
        self.ud = ud
        self.report_usage = transport._loop._caps.send_zc_report_usage
        self.zc_flags = SEND_ZC_REPORT_USAGE if self.report_usage else 0
        self.counters = transport._loop._zc_counters
        self.results_done = False
        self.done = False
        self.prepped = False

    def __len__(self) -> int:
        # the transport counts len(entry) + one header per entry; a batch is n datagrams
        return self.total + (self.n - 1) * _dgram._HEADER_SIZE  # type: ignore[no-any-return]

    def prep(self, ring: Any, fd: int, d: Any, raw: bytes | None, link: int) -> int:
        """link: hard-link the last SQE to the next entry too (1), not (0), or link none
        of them (2, UL_BATCH_UNLINKED: the transport saw room for the whole batch)."""
        self.raw = raw  # the kernel copies the address at submission; keep it till then
        addrs = ffi.from_buffer("uint64_t[]", self.addrs)
        if raw is None:
            rc: int = lib.ul_batch_prep_sendzc(ring, self.slot, fd, addrs, self.lens, self.bidx,
                                               self.n, self.len0, self.bidx0, ffi.NULL, 0,
                                               self.zc_flags, link)
        else:
            rc = lib.ul_batch_prep_sendzc(ring, self.slot, fd, addrs, self.lens, self.bidx,
                                          self.n, self.len0, self.bidx0, raw, len(raw),
                                          self.zc_flags, link)
        ffi.release(addrs)
        if rc == 0:
            self.prepped = True
            self.state.zc_sends += self.n
            self.counters[0] += self.n
        return rc

    def drop(self, exc: BaseException) -> None:
        """The transport dropped this batch before sending it."""
        self._finish(exc)

    def _on_cqe(self, res: int, flags: int) -> None:
        if not self.results_done:
            self.results_done = True
            # the transport's accounting (pops its in-flight entry, queues the next chain);
            # non-fatal errors are reported through the future, not error_received
            self.transport._on_send(
                res if (res >= 0 or res == _ECANCELED or res in _FATAL) else 0, 0)
        if not flags & F_MORE:
            self._finish(None)

    def _finish(self, exc: BaseException | None) -> None:
        if self.done:
            return
        self.done = True
        ring = self.transport._ring
        ring.unregister(self.ud)
        out = ffi.new("int64_t[6]")
        if not ring.closed:
            lib.ul_batch_close(ring._ptr, self.slot, out)
        nbytes, err, notifs, copied = out[0], out[1], out[4], out[5]
        zcpool.end_sends(self.pbufs)
        self.pbufs = []
        for v in self.views:
            v.release()
        self.views = []
        if notifs:
            self.counters[1] += notifs
            if copied:
                self.counters[2] += copied
            if self.report_usage:
                self.state.on_notifications(notifs, copied)
        fut = self.future
        if fut.done():
            return
        if exc is None and err:
            exc = OSError(-err, os.strerror(-err))
        if exc is not None:
            fut.set_exception(exc)
            return
        sends = self.n if self.prepped else 0
        copied_flag: bool | None
        if copied:
            copied_flag = True
        elif not self.report_usage and sends:
            copied_flag = None
        else:
            copied_flag = False if sends else None
        fut.set_result(ZeroCopyResult(
            nbytes=nbytes, sends=sends, notifications=notifs, copied_sends=copied,
            zerocopy=sends > 0, copied=copied_flag, fallback=None,
        ))


def _pool_batch(t: Any, loop: Any, fut: Any, state: ZeroCopyState,
                buffers: Any) -> ZcPoolBatch | None:
    """The fast path of sendto_zerocopy_many, or None when a buffer is not a pool buffer
    of this loop that can be sent now (the general path then handles, or rejects, it).
    Each buffer is taken (revoked, in flight) as it is checked; all are given back if
    one does not qualify."""
    pbufs: list[Any] = []
    addrs: list[int] = []
    views: list[memoryview] = []
    add_pbuf, add_addr = pbufs.append, addrs.append
    last_region: Any = None
    base = 0
    len0 = bidx0 = -1
    uniform = True  # one length, one registered slot: no per-datagram arrays
    total = 0
    ok = True
    for data in buffers:
        tp = type(data)
        if tp is _ZcSlice:
            pb = data.buffer
            start = data.start
            n = data.stop - start
        elif tp is _ZcBuffer:
            pb = data
            start = 0
            n = data.size
        else:
            ok = False
            break
        st = pb._state
        if st != _IN_FLIGHT:
            if pb._pool._loop is not loop:
                ok = False
                break
            if st != _OWNED:  # returned, or a read in flight
                _give_back(pbufs, views)
                pb._check_owned()
            if pb._view is not None:
                try:
                    pb._revoke()
                except BufferError:
                    _give_back(pbufs, views)
                    raise
            pb._state = _IN_FLIGHT
        elif pb._pool._loop is not loop:
            ok = False
            break
        pb._inflight += 1
        add_pbuf(pb)
        region = pb._region
        if region is not last_region:
            if last_region is None:
                bidx0 = region.slot
                len0 = n
            elif region.slot != bidx0:
                uniform = False
            last_region = region
            base = region.addr
            views.append(region.mv[:0])  # keeps the mapping alive while in flight
        if n != len0:
            uniform = False
        add_addr(base + pb._offset + start)
        total += n
    if ok:
        ring = t._ring
        ud = ring.next_ud()
        bslot: int = lib.ul_batch_open(ring.ptr, ud)
        if bslot >= 0:
            if uniform:
                lens: Any = ffi.NULL
                bidx: Any = ffi.NULL
            else:
                lens = ffi.new("uint32_t[]", [len(b) for b in buffers])
                bidx = ffi.new("int32_t[]", [pb._region.slot for pb in pbufs])
            batch = ZcPoolBatch(t, fut, state, pbufs, views, array("Q", addrs), lens, bidx,
                                len0, bidx0, total, bslot, ud)
            ring.handlers[ud] = batch._on_cqe
            return batch
    _give_back(pbufs, views)  # not all pool buffers, or every batch slot in use
    return None


def _give_back(pbufs: list[Any], views: list[memoryview]) -> None:
    """Undo _pool_batch's taking of ``pbufs`` (their bytes were never handed over)."""
    for pb in pbufs:
        pb._inflight -= 1
        if not pb._inflight:
            pb._state = _OWNED
    for v in views:
        v.release()


class ZeroCopyDatagramMixin(ZeroCopyModeMixin):
    """``sendto_zerocopy`` / ``sendto_zerocopy_many`` for the datagram transport."""

    def _zc_state(self) -> ZeroCopyState:
        state = self.__dict__.get("_zcs")
        if state is None:
            state = self.__dict__["_zcs"] = new_state(self._loop, self._family)  # type: ignore[attr-defined]
        return state

    # set_zerocopy_mode(), get_zerocopy_mode(), zerocopy_stats(): ZeroCopyModeMixin

    def sendto_zerocopy(self, data: Any, addr: Any = None) -> Any:
        """Send one datagram with SEND_ZC; a future resolving to a ZeroCopyResult once
        the kernel has released the buffer (a pool buffer goes back to its pool then)."""
        return self.sendto_zerocopy_many((data,), addr)

    def sendto_zerocopy_many(self, buffers: Any, addr: Any = None) -> Any:
        """Send each buffer as one datagram to ``addr``, in order, with one future for all:
        it resolves once every buffer is released (result totals over the batch) or
        raises the error of the earliest failed datagram, after all are released."""
        global _dgram
        t: Any = self
        dg = _dgram
        if dg is None:
            from .transports import datagram as dg

            _dgram = dg
        loop = t._loop
        fut = loop.create_future()
        if t._address:
            if addr not in (None, t._address):
                raise ValueError(f"Invalid address: must be None or {t._address}")
            addr = t._address
        raw: bytes | None = None
        if not t._extra["peername"]:
            raw = dg.encode_address(t._family, addr)
        state = self._zc_state()
        if (state.supported and not (t._conn_lost or t._sock is None or t._closing)
                and (state.mode == "always" or (state.mode == "auto" and state.active))
                and type(buffers) in (list, tuple) and 0 < len(buffers) <= FAST_MAX):
            pbatch = _pool_batch(t, loop, fut, state, buffers)
            if pbatch is not None:
                t._queue.append((pbatch, raw))
                t._buffer_size += pbatch.total + pbatch.n * dg._HEADER_SIZE
                if not t._inflight and not t._scheduled:
                    t._scheduled = True
                    loop._dirty.append(t)
                t._maybe_pause_protocol()
                return fut
        # validate everything before taking any pool buffer
        targets: list[tuple[tuple[zcpool.ZeroCopyBuffer, int, int] | None, memoryview | None]] = []
        for data in buffers:
            target = zcpool.send_target(data)
            if target is None:
                targets.append((None, as_send_buffer(data)))
            else:
                if target[0]._pool._loop is not loop:
                    for _, v in targets:
                        if v is not None:
                            v.release()
                    raise ValueError("this zero-copy buffer belongs to another event loop's pool")
                targets.append((target, None))
        batch = ZcDatagramBatch(t, fut, state)
        items = batch.items
        try:
            for target, view in targets:
                bi = -1
                ptr = None
                if target is not None:
                    pbuf, start, stop = target
                    view, bi = pbuf._begin_send(loop, start, stop)
                    batch.pbufs.append(pbuf)
                    ptr = pbuf._region.cdata + (pbuf._offset + start)
                assert view is not None  # each target is (pool buffer, None) or (None, view)
                items.append(ZcDatagram(batch, view, bi, ptr))
        except BaseException:
            # all or nothing: a buffer that cannot be sent (returned, exported, already
            # being read) gives back the pool buffers taken before it, untouched
            t._ring.unregister(batch.ud)
            for item in items:
                if item.owned_cdata is not None:
                    ffi.release(item.owned_cdata)
                item.view.release()
            for _, view in targets:
                if view is not None:
                    view.release()
            _give_back(batch.pbufs, [])
            batch.items = []
            batch.pbufs = []
            raise
        batch.total = len(items)
        if t._conn_lost or t._sock is None or t._closing:
            exc = ConnectionResetError(errno.ECONNRESET, "transport is closing")
            for item in items:
                item.drop(exc)
            batch._maybe_finish()
            return fut
        if not items:
            batch._maybe_finish()
            return fut
        queue = t._queue
        header = dg._HEADER_SIZE
        size = 0
        for item in items:
            queue.append((item, raw))
            size += item.nbytes + header
        t._buffer_size += size
        if not t._inflight and not t._scheduled:
            t._scheduled = True
            loop._dirty.append(t)
        t._maybe_pause_protocol()
        return fut
