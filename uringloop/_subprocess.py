"""Pipes and subprocesses: ``connect_read_pipe``, ``connect_write_pipe``, ``subprocess_*``.

``BaseEventLoop`` implements ``connect_*_pipe`` and ``subprocess_exec/shell`` on top of
the three factories defined here. The pipe transports are io_uring ``READ``/``WRITE``
(:mod:`uringloop.transports.pipe`).

Child exit is watched without signals or child watchers: a pidfd (``os.pidfd_open``)
with a one-shot io_uring ``POLL_ADD``, which completes when the child exits; then
``os.waitpid(pid, WNOHANG)`` reaps it. Where the kernel (or Python) has no pidfd, a
daemon thread blocks in ``waitpid`` instead, as asyncio's ``ThreadedChildWatcher`` does.
"""

from __future__ import annotations

import errno
import os
import select
import subprocess
import threading
from asyncio import base_subprocess
from asyncio.log import logger
from typing import Any

from ._ring import Ring
from ._uring import lib
from .transports.pipe import ReadPipeTransport, WritePipeTransport

__all__ = ["SubprocessMixin"]

_ECANCELED = -errno.ECANCELED


class _SubprocessTransport(base_subprocess.BaseSubprocessTransport):
    def _start(self, args: Any, shell: bool, stdin: Any, stdout: Any, stderr: Any,
               bufsize: int, **kwargs: Any) -> None:
        self._proc = subprocess.Popen(
            args, shell=shell, stdin=stdin, stdout=stdout, stderr=stderr,
            universal_newlines=False, bufsize=bufsize, **kwargs,
        )


def _returncode(transp: Any, pid: int) -> int:
    """The exit code of ``pid``, reaped by someone else (e.g. ``Popen.poll``)."""
    proc = getattr(transp, "_proc", None)
    if proc is not None and proc.returncode is not None:
        return int(proc.returncode)
    logger.warning("Unknown child process pid %d, will report returncode 255", pid)
    return 255


class _PidfdWatch:
    """Reaps one child when its pidfd polls readable, then reports the exit code."""

    __slots__ = ("loop", "ring", "pid", "pidfd", "transp", "ud")

    def __init__(self, loop: Any, pid: int, pidfd: int, transp: Any) -> None:
        self.loop = loop
        self.ring: Ring = loop._ring
        self.pid = pid
        self.pidfd = pidfd
        self.transp = transp
        self.ud = 0

    def arm(self) -> bool:
        ring = self.ring
        self.ud = ring.register(self._on_cqe)
        if lib.ul_prep_poll(ring.ptr, self.pidfd, self.ud, select.POLLIN, 0) < 0:
            ring.unregister(self.ud)
            self.ud = 0
            return False
        return True

    def _on_cqe(self, res: int, flags: int) -> None:
        self.ring.unregister(self.ud)
        self.ud = 0
        if res == _ECANCELED or self.pidfd < 0:
            self.close()
            return
        if res < 0:
            # The pidfd cannot be polled: wait in a thread instead.
            self.close()
            self.loop._subprocess_watch_thread(self.pid, self.transp)
            return
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            returncode = _returncode(self.transp, self.pid)
        else:
            if pid == 0:  # not exited after all: poll again
                if not self.arm():
                    self.close()
                    self.loop._subprocess_watch_thread(self.pid, self.transp)
                return
            returncode = os.waitstatus_to_exitcode(status)
        if self.loop.get_debug():
            logger.debug("process %s exited with returncode %s", self.pid, returncode)
        self.close()
        self.transp._process_exited(returncode)

    def close(self) -> None:
        self.loop._pidfd_watches.discard(self)
        fd, self.pidfd = self.pidfd, -1
        if fd >= 0:
            os.close(fd)
        if self.ud and not self.ring.closed:
            lib.ul_prep_poll_remove(self.ring.ptr, self.ud, 0)


def _wait_in_thread(loop: Any, pid: int, transp: Any) -> None:
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        returncode = _returncode(transp, pid)
    else:
        returncode = os.waitstatus_to_exitcode(status)
    if loop.is_closed():
        logger.warning("Loop %r that handles pid %r is closed", loop, pid)
        return
    try:
        loop.call_soon_threadsafe(transp._process_exited, returncode)
    except RuntimeError:  # closed in the meantime
        logger.warning("Loop %r that handles pid %r is closed", loop, pid)


class SubprocessMixin:
    """Pipe transports and subprocess transports for :class:`uringloop.Loop`."""

    _ring: Ring

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pidfd_watches: set[_PidfdWatch] = set()

    def _make_read_pipe_transport(self, pipe: Any, protocol: Any, waiter: Any = None,
                                  extra: Any = None) -> ReadPipeTransport:
        return ReadPipeTransport(self, pipe, protocol, waiter, extra)  # type: ignore[arg-type]

    def _make_write_pipe_transport(self, pipe: Any, protocol: Any, waiter: Any = None,
                                   extra: Any = None) -> WritePipeTransport:
        return WritePipeTransport(self, pipe, protocol, waiter, extra)  # type: ignore[arg-type]

    async def _make_subprocess_transport(
        self, protocol: Any, args: Any, shell: bool, stdin: Any, stdout: Any, stderr: Any,
        bufsize: int, extra: Any = None, **kwargs: Any,
    ) -> _SubprocessTransport:
        waiter = self.create_future()  # type: ignore[attr-defined]
        transp = _SubprocessTransport(self, protocol, args, shell, stdin, stdout, stderr,  # type: ignore[arg-type]
                                      bufsize, waiter=waiter, extra=extra, **kwargs)
        pid = transp.get_pid()
        assert pid is not None  # Popen's pid, set once the constructor returns
        self._watch_child(pid, transp)
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transp.close()
            await transp._wait()
            raise
        return transp

    def _watch_child(self, pid: int, transp: Any) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            # No pidfd (old kernel, seccomp) or the pid is already gone: a thread reaps it.
            self._subprocess_watch_thread(pid, transp)
            return
        watch = _PidfdWatch(self, pid, pidfd, transp)
        if not watch.arm():
            watch.close()
            self._subprocess_watch_thread(pid, transp)
            return
        self._pidfd_watches.add(watch)

    def _subprocess_watch_thread(self, pid: int, transp: Any) -> None:
        threading.Thread(target=_wait_in_thread, args=(self, pid, transp),
                         name=f"uringloop-waitpid-{pid}", daemon=True).start()

    def close(self) -> None:
        if not self.is_running() and not self.is_closed():  # type: ignore[attr-defined]
            for watch in list(self._pidfd_watches):
                watch.close()
        super().close()  # type: ignore[misc]
