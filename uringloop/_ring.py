"""The proactor: owns one io_uring, hands out user_data, dispatches completions.

Every operation in flight is an entry ``user_data -> handler`` in :attr:`Ring.handlers`.
A handler is a bound method called as ``handler(res, flags)`` for each completion of that
user_data; whoever registered it removes it on the operation's final completion (a CQE
without ``IORING_CQE_F_MORE``, or a zero-copy notification). The handler keeps alive every
buffer the kernel may still touch, so nothing is released before its last completion.

user_data 0 is reserved for fire-and-forget requests (cancels) whose completion is ignored.
"""

from __future__ import annotations

import errno
import os
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from ._uring import ffi, lib
from .errors import PBUF_RING, fake_errno, fake_setup_errno, unsupported_from_errno

__all__ = ["Ring", "Handler"]

Handler = Callable[[int, int], None]

# CQE flags
F_BUFFER = 1 << 0
F_MORE = 1 << 1
F_SOCK_NONEMPTY = 1 << 2
F_NOTIF = 1 << 3
#: a receive into the provided ring: its data's offset in Ring.pbuf is ``flags >> DATA_SHIFT``
DATA_SHIFT = 32
NOTIF_USAGE_ZC_COPIED = -(1 << 31)  # 0x80000000 read as int32

# setup flags, for reporting
SETUP_FLAGS = {
    "IOPOLL": 1 << 0, "SQPOLL": 1 << 1, "SQ_AFF": 1 << 2, "CQSIZE": 1 << 3,
    "CLAMP": 1 << 4, "ATTACH_WQ": 1 << 5, "R_DISABLED": 1 << 6, "SUBMIT_ALL": 1 << 7,
    "COOP_TASKRUN": 1 << 8, "TASKRUN_FLAG": 1 << 9, "SQE128": 1 << 10, "CQE32": 1 << 11,
    "SINGLE_ISSUER": 1 << 12, "DEFER_TASKRUN": 1 << 13, "NO_MMAP": 1 << 14,
    "REGISTERED_FD_ONLY": 1 << 15, "NO_SQARRAY": 1 << 16,
}

BUFFER_GROUP = 0
_all_rings: weakref.WeakSet[Ring] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # The child shares the parent's ring mappings: it must never submit or reap.
    for ring in list(_all_rings):
        ring.mark_forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _reraise(exc: BaseException, handler: Handler) -> None:
    raise exc


class Ring:
    """One io_uring with a provided-buffer ring for receives."""

    def __init__(
        self,
        entries: int = 4096,
        cq_entries: int = 16384,
        recv_buffers: int = 512,
        recv_buffer_size: int = 262144,
    ) -> None:
        if fake_setup_errno():  # test hook: io_uring_setup "fails"
            raise unsupported_from_errno(fake_setup_errno())
        err = ffi.new("int *")
        ptr = lib.ul_ring_create(entries, cq_entries, err)
        if ptr == ffi.NULL:
            raise unsupported_from_errno(err[0])
        self._ptr: Any = ptr
        self.closed = False
        self.forked = False
        rc = -fake_errno(PBUF_RING)  # test hook: the registration "fails"
        if not rc:
            rc = lib.ul_pbuf_init(ptr, BUFFER_GROUP, recv_buffers, recv_buffer_size,
                                  max(1, recv_buffers // 8))
        if rc < 0:
            lib.ul_ring_destroy(ptr)
            if rc == -errno.ENOMEM:  # the buffer area itself: memory, not io_uring
                raise OSError(
                    errno.ENOMEM,
                    f"cannot allocate the receive buffer ring ({recv_buffers} x "
                    f"{recv_buffer_size} bytes): {os.strerror(errno.ENOMEM)}",
                )
            # EINVAL: no provided-buffer rings (before 5.19); EPERM/ENOSYS: seccomp
            raise unsupported_from_errno(-rc, PBUF_RING)
        self.recv_buffer_size = recv_buffer_size
        self.recv_buffers = recv_buffers
        base = lib.ul_pbuf_base(ptr)
        #: the whole receive-buffer area (a completion's data: see DATA_SHIFT)
        self.pbuf = memoryview(ffi.buffer(base, recv_buffers * recv_buffer_size))
        self.setup_flags: int = lib.ul_ring_setup_flags(ptr)
        self.features: int = lib.ul_ring_features(ptr)
        self.handlers: dict[int, Handler] = {}
        self._batch: Iterator[tuple[int, int, int]] | None = None
        self._next_ud = 1
        cap = min(lib.ul_ring_cq_entries(ptr), 4096)
        self._cap = cap
        self._ud = ffi.new("uint64_t[]", cap)
        self._res = ffi.new("int32_t[]", cap)
        self._flags = ffi.new("uint64_t[]", cap)
        self._ud_mv = memoryview(ffi.buffer(self._ud)).cast("Q")
        self._res_mv = memoryview(ffi.buffer(self._res)).cast("i")
        self._flags_mv = memoryview(ffi.buffer(self._flags)).cast("Q")
        self._counters = ffi.new("uint64_t[4]")
        self._in_use = 0
        self.on_error: Callable[[BaseException, Handler], None] = _reraise
        _all_rings.add(self)

    # -- bookkeeping -------------------------------------------------------------------

    @property
    def recv_buffers_in_use(self) -> int:
        """How many provided buffers receives use now (grows on ENOBUFS, up to recv_buffers)."""
        if self._ptr != ffi.NULL:  # after close(): the value read when it closed
            self._in_use = int(lib.ul_pbuf_supplied(self._ptr))
        return self._in_use

    def register(self, handler: Handler) -> int:
        """Allocate a user_data that dispatches to ``handler``."""
        ud = self._next_ud
        self._next_ud = ud + 1
        self.handlers[ud] = handler
        return ud

    def next_ud(self) -> int:
        """Allocate a user_data; the caller installs its handler."""
        ud = self._next_ud
        self._next_ud = ud + 1
        return ud

    def unregister(self, ud: int) -> None:
        self.handlers.pop(ud, None)

    @property
    def ptr(self) -> Any:
        if self.closed:
            raise RuntimeError("the io_uring of this loop is closed")
        if self.forked:
            raise RuntimeError("uringloop: a loop inherited through fork() cannot be used")
        return self._ptr

    def counters(self) -> dict[str, int]:
        if self._ptr != ffi.NULL:  # after close(): the values read when it closed
            lib.ul_counters(self._ptr, self._counters)
        c = self._counters
        return {"enters": c[0], "submitted": c[1], "completions": c[2], "overflow_flushes": c[3]}

    def setup_flag_names(self) -> list[str]:
        return [name for name, bit in SETUP_FLAGS.items() if self.setup_flags & bit]

    def mark_forked(self) -> None:
        self.forked = True
        if not self.closed:
            lib.ul_ring_mark_forked(self._ptr)

    # -- the hot path ------------------------------------------------------------------

    def run(self, timeout: float | None) -> int:
        """Submit what is queued, wait up to ``timeout`` seconds, dispatch completions.

        Returns the number of completions reaped. An exception from a handler goes to
        :attr:`on_error` and the rest of the batch is still dispatched.
        """
        n = self.reap(timeout)
        self.dispatch()
        return n

    def reap(self, timeout: float | None) -> int:
        """Submit what is queued, wait up to ``timeout`` seconds and take the completions
        as the pending batch, to be handed out by :meth:`dispatch`.

        A batch still pending (a handler raised SystemExit or KeyboardInterrupt) is
        dispatched first: its receive buffers go back to the kernel in this call.
        """
        if self.closed:
            raise RuntimeError("the io_uring of this loop is closed")
        if self._batch is not None:
            self.dispatch()
        if timeout is None:
            n: int = lib.ul_run(self._ptr, 1, -1, self._ud, self._res, self._flags, self._cap)
        elif timeout > 0:
            n = lib.ul_run(
                self._ptr, 1, int(timeout * 1e9), self._ud, self._res, self._flags, self._cap
            )
        else:
            n = lib.ul_run(self._ptr, 0, 0, self._ud, self._res, self._flags, self._cap)
        if n <= 0:
            if n < 0:
                self._raise_run_error(-n)
            return 0
        self._batch = zip(  # noqa: B905 (equal lengths by construction)
            self._ud_mv[:n].tolist(), self._res_mv[:n].tolist(), self._flags_mv[:n].tolist()
        )
        return n

    @property
    def pending(self) -> bool:
        """Whether reaped completions wait for :meth:`dispatch`."""
        return self._batch is not None

    def dispatch(self) -> None:
        """Call the handler of every completion of the pending batch, in order."""
        batch = self._batch
        if batch is None:
            return
        handlers = self.handlers
        for ud, res, flags in batch:
            handler = handlers.get(ud)
            if handler is not None:
                try:
                    handler(res, flags)
                except (SystemExit, KeyboardInterrupt):
                    raise  # the iterator keeps the rest of the batch for the next call
                except BaseException as exc:
                    self.on_error(exc, handler)
        self._batch = None

    def submit(self) -> None:
        """Start what is queued now (no wait), for operations whose effect callers
        expect at once, as a direct system call would give it."""
        if self.closed:
            raise RuntimeError("the io_uring of this loop is closed")
        rc = lib.ul_submit(self._ptr)
        if rc < 0 and rc != -errno.EBUSY and rc != -errno.EAGAIN:
            self._raise_run_error(-rc)

    def _raise_run_error(self, err: int) -> None:
        if err == errno.EEXIST:
            raise RuntimeError(
                "uringloop: this loop's io_uring belongs to the thread that first ran it "
                "(IORING_SETUP_SINGLE_ISSUER); run a loop in one thread only"
            )
        if err == errno.EBADFD and self.forked:
            raise RuntimeError("uringloop: a loop inherited through fork() cannot be used")
        raise OSError(err, f"io_uring_enter failed: {os.strerror(err)}")

    def close(self) -> None:
        """Release the ring (the kernel cancels what is still in flight).

        The handler table is kept: buffers a zero-copy send may still reference stay
        alive as long as this object does.
        """
        if self.closed:
            return
        self.closed = True
        try:
            self.pbuf.release()
        except BufferError:  # a slice is still exported: keep the mapping (leak, not crash)
            return
        lib.ul_counters(self._ptr, self._counters)
        self._in_use = int(lib.ul_pbuf_supplied(self._ptr))
        lib.ul_ring_destroy(self._ptr)
        self._ptr = ffi.NULL
