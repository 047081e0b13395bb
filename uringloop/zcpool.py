"""Registered zero-copy buffer pools: ``loop.zerocopy_buffers(count, size)``.

A pool owns page-aligned anonymous memory (``mmap`` objects, one per *region*), each
region registered with the loop's io_uring as one slot of a sparse registered-buffer
table (``IORING_REGISTER_BUFFERS2`` + ``IORING_REGISTER_BUFFERS_UPDATE``), so a pool
grows by adding a region without re-registering the others. A send from a pool buffer
uses ``IORING_RECVSEND_FIXED_BUF`` with the region's slot: the kernel neither pins the
pages per request nor charges them to RLIMIT_MEMLOCK again.

Ownership: :meth:`ZeroCopyBufferPool.acquire` lends a :class:`ZeroCopyBuffer` to the
caller, who fills it (``buf[a:b] = data``, ``buf.view``, ``await buf.read_from(fd)``)
and hands it to ``write_zerocopy(buf[:n])`` / ``sendto_zerocopy(buf[:n])``. From that
call on the buffer belongs to the kernel: its ``view`` is released (revoked) and every
accessor raises :class:`BufferError`. When the kernel's last notification for it
arrives it goes back to the pool by itself; the handle is dead from then on (a later
``acquire`` returns a new handle, possibly for the same memory). ``release()`` gives back
a buffer that was never sent.

Limits: a memoryview *derived* from ``buf.view`` (a slice, ``memoryview(buf.view)``)
cannot be revoked; writing through it while the buffer is in flight changes the bytes
the kernel sends. Use the buffer object itself. If registration is impossible (old
kernel, RLIMIT_MEMLOCK) the pool still works, with ordinary zero-copy sends.
"""

from __future__ import annotations

import asyncio
import mmap
import os
from collections import deque
from typing import Any

from ._uring import ffi, lib

__all__ = ["ZeroCopyBufferPool", "ZeroCopyBuffer", "ZeroCopySlice"]

PAGE = mmap.PAGESIZE
TABLE_SLOTS = 1024
MAX_REGION = 1 << 30  # the kernel limits one registered buffer to 1 GiB

OWNED, IN_FLIGHT, RETURNED, READING = 0, 1, 2, 3
_STATE_MSG = {
    IN_FLIGHT: "the kernel still holds this zero-copy buffer (a send is in flight)",
    RETURNED: "this buffer was returned to its pool; acquire() a new one",
    READING: "a read into this buffer is in flight",
}


class _Table:
    """The loop's sparse registered-buffer table (created on first use)."""

    def __init__(self, ring: Any) -> None:
        self.ring = ring
        self.ok: bool | None = None
        self.error = 0
        self.free: list[int] = []

    def alloc(self, addr: Any, nbytes: int) -> int:
        """Register [addr, addr+nbytes) in a free slot: the slot, or -1."""
        if self.ok is None:
            rc = lib.ul_zc_table_init(self.ring.ptr, TABLE_SLOTS)
            self.ok = rc == 0
            self.error = -rc
            self.free = list(range(TABLE_SLOTS - 1, -1, -1))
        if not self.ok or not self.free:
            return -1
        slot = self.free.pop()
        rc = lib.ul_zc_table_set(self.ring.ptr, slot, addr, nbytes)
        if rc < 0:
            self.free.append(slot)
            self.error = -rc
            return -1
        return slot

    def release(self, slot: int) -> None:
        if slot < 0 or self.ring.closed:
            return
        lib.ul_zc_table_set(self.ring.ptr, slot, ffi.NULL, 0)
        self.free.append(slot)


class _Region:
    __slots__ = ("mm", "cdata", "mv", "slot", "nbytes", "addr")

    def __init__(self, nbytes: int, table: _Table) -> None:
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
        self.mm = mmap.mmap(-1, nbytes, flags=flags)
        self.nbytes = nbytes
        self.cdata = ffi.from_buffer("char[]", self.mm, require_writable=True)
        self.addr: int = int(ffi.cast("uintptr_t", self.cdata))  # for batched sends
        self.mv = memoryview(self.mm)
        self.slot = table.alloc(self.cdata, nbytes)

    def free(self, table: _Table) -> None:
        table.release(self.slot)
        self.slot = -1
        try:
            self.mv.release()
            ffi.release(self.cdata)
            self.mm.close()
        except BufferError:
            pass  # a view of it is still alive somewhere: the GC unmaps it later


class ZeroCopySlice:
    """``buf[a:b]``: a byte range of a pool buffer, to pass to a zero-copy send."""

    __slots__ = ("buffer", "start", "stop")

    def __init__(self, buffer: ZeroCopyBuffer, start: int, stop: int) -> None:
        self.buffer = buffer
        self.start = start
        self.stop = stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __repr__(self) -> str:
        return f"<ZeroCopySlice {self.start}:{self.stop} of {self.buffer!r}>"


class ZeroCopyBuffer:
    """One pool buffer lent to the caller; see the module docstring for its life cycle."""

    __slots__ = ("_pool", "_region", "_offset", "size", "_view", "_state", "_inflight",
                 "__weakref__")

    def __init__(self, pool: ZeroCopyBufferPool, region: _Region, offset: int) -> None:
        self._pool = pool
        self._region = region
        self._offset = offset
        self.size = pool.buffer_size
        self._view: memoryview | None = None
        self._state = OWNED
        self._inflight = 0

    def __repr__(self) -> str:
        state = ("owned", "in flight", "returned", "reading")[self._state]
        return f"<ZeroCopyBuffer {self.size} bytes, {state}>"

    def __len__(self) -> int:
        return self.size

    def _check_owned(self) -> None:
        if self._state != OWNED:
            raise BufferError(_STATE_MSG[self._state])

    @property
    def pool(self) -> ZeroCopyBufferPool:
        return self._pool

    @property
    def in_flight(self) -> bool:
        return self._state == IN_FLIGHT

    @property
    def registered(self) -> bool:
        return self._region.slot >= 0

    @property
    def view(self) -> memoryview:
        """A writable memoryview of the buffer; BufferError once it was sent."""
        self._check_owned()
        if self._view is None:
            off = self._offset
            self._view = self._region.mv[off : off + self.size]
        return self._view

    def __getitem__(self, key: slice) -> ZeroCopySlice:
        if type(key) is slice:
            start, stop = key.start, key.stop
            if (key.step is None and type(stop) is int and 0 <= stop <= self.size
                    and (start is None or (type(start) is int and 0 <= start <= stop))):
                return ZeroCopySlice(self, start or 0, stop)  # buf[:n], buf[a:b]: in range
        if not isinstance(key, slice):
            raise TypeError("index a ZeroCopyBuffer with a slice (buf[:n]) to send part of it")
        start, stop, step = key.indices(self.size)
        if step != 1:
            raise ValueError("a zero-copy slice must be contiguous")
        return ZeroCopySlice(self, start, max(start, stop))

    def __setitem__(self, key: Any, value: Any) -> None:
        self.view[key] = value

    def tobytes(self, start: int = 0, stop: int | None = None) -> bytes:
        return self.view[start:stop].tobytes()

    def release(self) -> None:
        """Give a buffer that was never sent back to the pool."""
        if self._state == RETURNED:
            return
        self._check_owned()
        self._revoke()
        self._state = RETURNED
        self._pool._put_back(self._region, self._offset)

    def _revoke(self) -> None:
        view = self._view
        if view is not None:
            try:
                view.release()
            except BufferError:
                raise BufferError(
                    "the buffer's view is still exported (release memoryviews, numpy "
                    "arrays... made from it first)"
                ) from None
            self._view = None

    async def read_from(self, fd: int, offset: int = 0, nbytes: int | None = None,
                        start: int = 0) -> int:
        """Read up to ``nbytes`` from ``fd`` at file ``offset`` into ``buf[start:]`` with an
        io_uring ``READ_FIXED`` (``READ`` if the pool is not registered). Returns the count."""
        self._check_owned()
        if nbytes is None:
            nbytes = self.size - start
        if start < 0 or nbytes < 0 or start + nbytes > self.size:
            raise ValueError("read range outside the buffer")
        self._revoke()
        loop = self._pool._loop
        ring = loop._ring
        fut = loop.create_future()
        ud = ring.next_ud()
        region = self._region

        def done(res: int, flags: int) -> None:
            ring.unregister(ud)
            if self._state == READING:
                self._state = OWNED
            if fut.done():
                return
            if res < 0:
                fut.set_exception(OSError(-res, os.strerror(-res)))
            else:
                fut.set_result(res)

        ring.handlers[ud] = done
        rc = lib.ul_prep_read_fixed(ring.ptr, fd, ud, region.cdata + self._offset + start,
                                    nbytes, offset, region.slot)
        if rc < 0:
            ring.unregister(ud)
            raise OSError(-rc, os.strerror(-rc))
        self._state = READING
        return await fut  # type: ignore[no-any-return]

    # -- used by the transports --------------------------------------------------------

    def _begin_send(self, loop: Any, start: int, stop: int) -> tuple[memoryview, int]:
        """The kernel takes the buffer: (view of [start, stop), registered slot or -1)."""
        if self._pool._loop is not loop:
            raise ValueError("this zero-copy buffer belongs to another event loop's pool")
        if self._state == IN_FLIGHT:
            pass  # sending another range of a buffer already sent: its bytes are frozen
        else:
            self._check_owned()
            self._revoke()
            self._state = IN_FLIGHT
        self._inflight += 1
        off = self._offset
        return self._region.mv[off + start : off + stop], self._region.slot

    def _end_send(self) -> None:
        self._inflight -= 1
        if self._inflight == 0 and self._state == IN_FLIGHT:
            self._state = RETURNED
            self._pool._put_back(self._region, self._offset)


def end_sends(pbufs: list[ZeroCopyBuffer]) -> None:
    """``_end_send()`` of each buffer, with one put-back per pool (a zero-copy batch)."""
    back: list[tuple[_Region, int]] = []
    pool: Any = None
    for pb in pbufs:
        pb._inflight -= 1
        if pb._inflight == 0 and pb._state == IN_FLIGHT:
            pb._state = RETURNED
            if pb._pool is not pool:
                if back:
                    pool._put_back_many(back)
                    back = []
                pool = pb._pool
            back.append((pb._region, pb._offset))
    if back:
        pool._put_back_many(back)


def send_target(data: Any) -> tuple[ZeroCopyBuffer, int, int] | None:
    """(buffer, start, stop) when ``data`` is a pool buffer or a slice of one."""
    t = type(data)
    if t is ZeroCopySlice:
        return data.buffer, data.start, data.stop
    if t is ZeroCopyBuffer:
        return data, 0, data.size
    return None


class ZeroCopyBufferPool:
    """Page-aligned buffers registered with one loop's ring; see the module docstring.

    ``count`` buffers of ``size`` bytes (rounded up to whole pages) are allocated and
    registered now. When the pool is empty, ``acquire()`` grows it by ``grow_by`` buffers
    (default ``count``) as long as the total stays within ``max_count`` (None: no limit);
    otherwise it raises BufferError, and ``await acquire_wait()`` waits for a buffer.
    The memory is freed by ``close()`` or when the loop closes.
    """

    def __init__(self, loop: Any, count: int, size: int, *, max_count: int | None = None,
                 grow_by: int | None = None) -> None:
        if count < 1 or size < 1:
            raise ValueError("count and size must be positive")
        self._loop = loop
        self.buffer_size = -(-size // PAGE) * PAGE
        if self.buffer_size > MAX_REGION:
            raise ValueError("a zero-copy buffer can be at most 1 GiB")
        self.max_count = max_count
        self.grow_by = grow_by or count
        self._regions: list[_Region] = []
        self._free: deque[tuple[_Region, int]] = deque()
        self._count = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self.grow(count)

    def __repr__(self) -> str:
        return (f"<ZeroCopyBufferPool {self._count} x {self.buffer_size} B, "
                f"{len(self._free)} free, registered={self.registered}>")

    @property
    def registered(self) -> bool:
        """Whether every region is registered with the ring (sends use FIXED_BUF)."""
        return all(r.slot >= 0 for r in self._regions)

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return self._count

    def grow(self, n: int) -> None:
        """Add ``n`` buffers (one registered region, or more past 1 GiB)."""
        if self._closed:
            raise RuntimeError("the zero-copy buffer pool is closed")
        table = self._loop._zc_table()
        per_region = max(1, MAX_REGION // self.buffer_size)
        while n > 0:
            k = min(n, per_region)
            region = _Region(k * self.buffer_size, table)
            self._regions.append(region)
            for i in range(k):
                self._free.append((region, i * self.buffer_size))
            self._count += k
            n -= k

    def acquire(self) -> ZeroCopyBuffer:
        """A free buffer (grows the pool if allowed); BufferError when none is left."""
        free = self._free
        if free and not self._closed:
            region, off = free.popleft()
            return ZeroCopyBuffer(self, region, off)
        if self._closed:
            raise RuntimeError("the zero-copy buffer pool is closed")
        if not self._free:
            room = self.grow_by if self.max_count is None else min(
                self.grow_by, self.max_count - self._count)
            if room <= 0:
                raise BufferError("zero-copy buffer pool exhausted")
            self.grow(room)
        region, off = self._free.popleft()
        return ZeroCopyBuffer(self, region, off)

    def acquire_many(self, n: int, size: int | None = None) -> list[ZeroCopySlice]:
        """``n`` free buffers at once, as ``[buf[:size], ...]`` slices ready for
        ``sendto_zerocopy_many`` (``size`` defaults to the whole buffer); each slice's
        ``.buffer`` is its ``ZeroCopyBuffer``. Grows the pool as ``acquire()`` does, by
        at least what is missing; all or nothing: BufferError when ``n`` cannot be had."""
        if self._closed:
            raise RuntimeError("the zero-copy buffer pool is closed")
        bs = self.buffer_size
        if size is None:
            size = bs
        elif not 0 <= size <= bs:
            raise ValueError(f"size must be 0-{bs}")
        if n < 0:
            raise ValueError("n must not be negative")
        free = self._free
        missing = n - len(free)
        if missing > 0:
            room = None if self.max_count is None else self.max_count - self._count
            if room is not None and room < missing:
                raise BufferError("zero-copy buffer pool exhausted")
            self.grow(max(missing, self.grow_by if room is None else min(self.grow_by, room)))
        pop = free.popleft
        buf, sl = ZeroCopyBuffer, ZeroCopySlice
        return [sl(buf(self, *pop()), 0, size) for _ in range(n)]

    async def acquire_wait(self) -> ZeroCopyBuffer:
        """Like acquire(), but wait for a buffer to come back instead of raising."""
        while True:
            try:
                return self.acquire()
            except BufferError:
                fut = self._loop.create_future()
                self._waiters.append(fut)
                try:
                    await fut
                finally:
                    if fut in self._waiters:
                        self._waiters.remove(fut)

    def _put_back(self, region: _Region, offset: int) -> None:
        if self._closed:
            self._maybe_free()
            return
        self._free.append((region, offset))
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(None)
                break

    def _put_back_many(self, items: list[tuple[_Region, int]]) -> None:
        if self._closed:
            self._maybe_free()
            return
        self._free.extend(items)
        waiters = self._waiters
        for _ in items:
            while waiters:
                w = waiters.popleft()
                if not w.done():
                    w.set_result(None)
                    break
            else:
                return

    def stats(self) -> dict[str, Any]:
        return {"buffers": self._count, "free": len(self._free),
                "buffer_size": self.buffer_size, "regions": len(self._regions),
                "registered": self.registered}

    def close(self) -> None:
        """Free the memory (buffers still in flight are freed when the kernel lets go)."""
        if self._closed:
            return
        self._closed = True
        self._loop._zc_pools.discard(self)
        for w in self._waiters:
            if not w.done():
                w.set_exception(RuntimeError("the zero-copy buffer pool was closed"))
        self._waiters.clear()
        self._free.clear()
        self._maybe_free()

    def _maybe_free(self) -> None:
        # Regions are freed together once no buffer is lent out or in flight; with the
        # ring closed the kernel has dropped every reference, so free at once.
        table = self._loop._zc_table()
        for region in self._regions:
            region.free(table)
        self._regions.clear()


class ZeroCopyLoopMixin:
    """``loop.zerocopy_buffers()`` and the loop-wide zero-copy settings."""

    _ring: Any

    def _zc_table(self) -> _Table:
        table = self.__dict__.get("_zc_table_obj")
        if table is None:
            table = self.__dict__["_zc_table_obj"] = _Table(self._ring)
        return table

    @property
    def _zc_pools(self) -> set[ZeroCopyBufferPool]:
        pools = self.__dict__.get("_zc_pools_set")
        if pools is None:
            pools = self.__dict__["_zc_pools_set"] = set()
        return pools

    def zerocopy_buffers(self, count: int, size: int, *, max_count: int | None = None,
                         grow_by: int | None = None) -> ZeroCopyBufferPool:
        """A pool of ``count`` page-aligned buffers of ``size`` bytes, registered with this
        loop's ring for ``IORING_RECVSEND_FIXED_BUF`` zero-copy sends."""
        if self.is_closed():  # type: ignore[attr-defined]
            raise RuntimeError("Event loop is closed")
        pool = ZeroCopyBufferPool(self, count, size, max_count=max_count, grow_by=grow_by)
        self._zc_pools.add(pool)
        return pool

    def set_zerocopy_mode(self, mode: str) -> None:
        """Default zero-copy mode for transports created from now on:
        ``"auto"`` (default), ``"always"`` or ``"never"``."""
        from .zerocopy import check_mode

        self.__dict__["_zerocopy_mode"] = check_mode(mode)

    def get_zerocopy_mode(self) -> str:
        return self.__dict__.get("_zerocopy_mode", "auto")  # type: ignore[no-any-return]

    def _close_zc_pools(self) -> None:
        for pool in list(self.__dict__.get("_zc_pools_set", ())):
            pool.close()
