"""``add_reader``/``add_writer``: readiness callbacks on io_uring ``POLL_ADD``.

asyncio's readiness callbacks are level-triggered: the callback runs again on every loop
iteration while the fd stays ready. A multishot io_uring poll is edge-style (no new
completion while the fd merely stays ready), so each direction of a watched fd keeps one
**one-shot** ``POLL_ADD`` in flight, re-armed only after the callback has run. A one-shot
poll completes at once when the fd is already ready at submission, which gives the level
semantics, and because it is queued after the callback ran, a callback that drained the
fd is not called again for nothing.

Every arm gets a fresh user_data; a completion whose user_data is no longer the
direction's current one is stale (removed, or replaced) and is dropped. ``remove_*`` and
replacing a callback cancel the poll in flight with ``POLL_REMOVE``: the poll holds a
reference to the *file*, so after ``close(fd)`` and a new fd with the same number it
would otherwise keep watching the old file.
"""

from __future__ import annotations

import errno
import select
import selectors
from asyncio import events
from functools import partial
from typing import TYPE_CHECKING, Any

from ._ring import Ring
from ._uring import lib

if TYPE_CHECKING:
    from collections.abc import Callable

    from typing_extensions import TypeVarTuple, Unpack

    _Ts = TypeVarTuple("_Ts")

__all__ = ["ReadinessMixin"]

_POLLIN = select.POLLIN
_POLLOUT = select.POLLOUT
_ECANCELED = -errno.ECANCELED


class _Watch:
    """One direction (read or write) of one watched fd."""

    __slots__ = ("loop", "ring", "fd", "events", "handle", "ud", "fire", "revents")

    def __init__(self, loop: Any, fd: int, events_mask: int) -> None:
        self.loop = loop
        self.ring: Ring = loop._ring
        self.fd = fd
        self.events = events_mask
        self.handle: events.Handle | None = None
        self.ud = 0  # user_data of the poll in flight; 0: none
        self.revents = 0
        # Queued on the ready queue when the poll fires: runs the callback, then re-arms.
        self.fire = events.Handle(self._fire, (), loop, None)

    def arm(self) -> None:
        if self.ud or self.handle is None or self.ring.closed:
            return
        ring = self.ring
        ud = ring.next_ud()
        ring.handlers[ud] = partial(self._on_cqe, ud)
        rc = lib.ul_prep_poll(ring.ptr, self.fd, ud, self.events, 0)
        if rc < 0:
            ring.unregister(ud)
            raise OSError(-rc, "cannot queue a poll request (submission queue full)")
        self.ud = ud

    def disarm(self) -> None:
        """Cancel the poll in flight (its completion will be dropped)."""
        ud = self.ud
        if not ud:
            return
        self.ud = 0
        if not self.ring.closed:
            lib.ul_prep_poll_remove(self.ring.ptr, ud, 0)

    def _on_cqe(self, ud: int, res: int, flags: int) -> None:
        self.ring.unregister(ud)
        if ud != self.ud:
            return  # stale: removed or replaced since
        self.ud = 0
        handle = self.handle
        if handle is None:
            return
        if handle._cancelled:
            self.loop._readiness_drop(self)
            return
        if res == _ECANCELED:
            self.arm()  # cancelled by something else while still wanted: poll again
            return
        self.revents = res
        self.loop._ready.append(self.fire)

    def _fire(self) -> None:
        handle = self.handle
        if handle is None:
            return
        if handle._cancelled:
            self.loop._readiness_drop(self)
            return
        try:
            handle._run()
        finally:
            # The fd may have been closed (EBADF) or unwatchable: then stop polling it
            # rather than spin; the callback stays registered until removed.
            if self.handle is not None and self.revents >= 0 and not self.loop.is_closed():
                self.arm()


class ReadinessMixin:
    """``add_reader``/``remove_reader``/``add_writer``/``remove_writer``."""

    _ring: Ring

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._readers_w: dict[int, _Watch] = {}
        self._writers_w: dict[int, _Watch] = {}

    def _readiness_tables(self) -> tuple[dict[int, _Watch], dict[int, _Watch]]:
        return self._readers_w, self._writers_w

    def _readiness_drop(self, watch: _Watch) -> None:
        readers, writers = self._readiness_tables()
        table = readers if watch.events == _POLLIN else writers
        if table.get(watch.fd) is watch:
            del table[watch.fd]
        watch.handle = None
        watch.disarm()

    def _add_watch(self, table: dict[int, _Watch], mask: int, fd: Any, callback: Any,
                   args: tuple[Any, ...]) -> events.Handle:
        self._check_closed()  # type: ignore[attr-defined]
        fd = selectors._fileobj_to_fd(fd)  # type: ignore[attr-defined]
        handle = events.Handle(callback, args, self, None)  # type: ignore[arg-type]
        watch = table.get(fd)
        if watch is None:
            watch = table[fd] = _Watch(self, fd, mask)
        else:
            old = watch.handle
            if old is not None:
                old.cancel()
            # The fd number may now name another file: never keep the old poll.
            watch.disarm()
        watch.handle = handle
        watch.revents = 0
        watch.arm()
        return handle

    def _remove_watch(self, table: dict[int, _Watch], fd: Any) -> bool:
        if self.is_closed():  # type: ignore[attr-defined]
            return False
        fd = selectors._fileobj_to_fd(fd)  # type: ignore[attr-defined]
        watch = table.pop(fd, None)
        if watch is None or watch.handle is None:
            return False
        handle, watch.handle = watch.handle, None
        handle.cancel()
        watch.disarm()
        return True

    def _add_reader(self, fd: Any, callback: Any, *args: Any) -> events.Handle:
        return self._add_watch(self._readiness_tables()[0], _POLLIN, fd, callback, args)

    def _remove_reader(self, fd: Any) -> bool:
        return self._remove_watch(self._readiness_tables()[0], fd)

    def _add_writer(self, fd: Any, callback: Any, *args: Any) -> events.Handle:
        return self._add_watch(self._readiness_tables()[1], _POLLOUT, fd, callback, args)

    def _remove_writer(self, fd: Any) -> bool:
        return self._remove_watch(self._readiness_tables()[1], fd)

    def add_reader(
        self, fd: Any, callback: Callable[[Unpack[_Ts]], Any], *args: Unpack[_Ts]
    ) -> None:
        """Call ``callback(*args)`` while ``fd`` is readable (level-triggered)."""
        self._ensure_fd_no_transport(fd)  # type: ignore[attr-defined]
        self._add_reader(fd, callback, *args)

    def remove_reader(self, fd: Any) -> bool:
        """Stop watching ``fd`` for reading; True if a reader was registered."""
        self._ensure_fd_no_transport(fd)  # type: ignore[attr-defined]
        return self._remove_reader(fd)

    def add_writer(
        self, fd: Any, callback: Callable[[Unpack[_Ts]], Any], *args: Unpack[_Ts]
    ) -> None:
        """Call ``callback(*args)`` while ``fd`` is writable (level-triggered)."""
        self._ensure_fd_no_transport(fd)  # type: ignore[attr-defined]
        self._add_writer(fd, callback, *args)

    def remove_writer(self, fd: Any) -> bool:
        """Stop watching ``fd`` for writing; True if a writer was registered."""
        self._ensure_fd_no_transport(fd)  # type: ignore[attr-defined]
        return self._remove_writer(fd)
