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
import os
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from ._ring import F_MORE, F_NOTIF, NOTIF_USAGE_ZC_COPIED
from ._uring import ffi, lib

if TYPE_CHECKING:
    from .transports.stream import StreamTransport

__all__ = ["ZeroCopyResult", "ZeroCopyWrite", "as_send_buffer"]

SEND_ZC_REPORT_USAGE = 1 << 3


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
        "zerocopy", "report_usage", "done",
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

    def submit(self, ring: Any, fd: int) -> None:
        """Queue one send of the unsent rest of the buffer."""
        handlers = self.transport._ring
        ud = handlers.next_ud()
        handlers.handlers[ud] = partial(self._on_cqe, ud)
        remaining = self.nbytes - self.offset
        if self.zerocopy:
            flags = SEND_ZC_REPORT_USAGE if self.report_usage else 0
            rc = lib.ul_prep_send_zc(ring, fd, ud, self.cdata + self.offset, remaining, 0, flags, 0)
        else:
            rc = lib.ul_prep_send(ring, fd, ud, self.cdata + self.offset, remaining, 0)
        if rc < 0:
            handlers.unregister(ud)
            raise OSError(-rc, os.strerror(-rc))
        self.inflight = True
        self.sends += 1
        self.transport._loop._zc_counters[0 if self.zerocopy else 3] += 1

    def _on_cqe(self, ud: int, res: int, flags: int) -> None:
        ring = self.transport._ring
        if flags & F_NOTIF:
            # The kernel no longer references the pages this request sent.
            ring.unregister(ud)
            self.notifs_pending -= 1
            self.notifications += 1
            counters = self.transport._loop._zc_counters
            counters[1] += 1
            if res == NOTIF_USAGE_ZC_COPIED:
                self.copied_sends += 1
                counters[2] += 1
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
        fut = self.future
        if fut.done():  # cancelled by the user: the buffer was still held until now
            return
        if self.error is not None:
            fut.set_exception(self.error)
            return
        copied: bool | None
        if not self.zerocopy:
            copied = True
        elif self.report_usage:
            copied = self.copied_sends > 0
        else:
            copied = None
        fut.set_result(
            ZeroCopyResult(
                nbytes=self.nbytes, sends=self.sends, notifications=self.notifications,
                copied_sends=self.copied_sends if self.zerocopy else self.sends,
                zerocopy=self.zerocopy, copied=copied,
            )
        )
