"""Errors: io_uring unavailable, loops inherited through fork(), wrong-thread use."""

from __future__ import annotations

import asyncio
import errno
import os
import re
import signal
import socket
import threading
import time

import pytest
from uringloop._uring import ffi

import uringloop
from uringloop import UnsupportedError, _caps, _ring, errors
from uringloop.errors import MIN_KERNEL, unsupported_from_errno

# -- UnsupportedError ------------------------------------------------------------------


def test_unsupported_error_is_oserror():
    assert issubclass(UnsupportedError, OSError)
    exc = unsupported_from_errno(errno.EPERM)
    assert isinstance(exc, UnsupportedError)
    assert exc.errno == errno.EPERM


def test_unsupported_error_eperm_message():
    msg = str(unsupported_from_errno(errno.EPERM))
    assert "EPERM" in msg
    assert os.strerror(errno.EPERM) in msg
    # cause
    assert "io_uring_disabled" in msg
    assert "seccomp" in msg
    # remedy
    assert "sysctl kernel.io_uring_disabled=0" in msg
    assert "io_uring_group" in msg
    # fallback
    assert "asyncio.new_event_loop" in msg


def test_unsupported_error_enosys_message():
    exc = unsupported_from_errno(errno.ENOSYS)
    msg = str(exc)
    assert exc.errno == errno.ENOSYS
    assert "ENOSYS" in msg
    assert "CONFIG_IO_URING" in msg  # cause: kernel built without io_uring
    assert "seccomp" in msg  # cause: container profile
    assert "Linux 6.0 or newer" in msg  # remedy: kernel version
    assert "io_uring_setup" in msg


def test_unsupported_messages_name_one_minimum_kernel():
    """Every "run on Linux X or newer" names the one minimum the loop needs (multishot
    receive: 6.0), whichever step failed."""
    assert MIN_KERNEL == "6.0"
    steps = (errors.SETUP, errors.PBUF_RING, errors.RECV_MULTISHOT)
    named = set()
    for step in steps:
        for err in (errno.ENOSYS, errno.EPERM, errno.ENOMEM, errno.EINVAL):
            named.update(re.findall(r"Linux (\d+\.\d+) or newer",
                                    str(unsupported_from_errno(err, step))))
    assert named == {MIN_KERNEL}
    for step in steps:  # the step that failed is named
        assert step in str(unsupported_from_errno(errno.EINVAL, step))


@pytest.mark.parametrize("err", [errno.ENOMEM, errno.EINVAL, errno.EIO, 9999])
def test_unsupported_error_other_errnos(err):
    exc = unsupported_from_errno(err)
    assert isinstance(exc, UnsupportedError)
    assert exc.errno == err
    msg = str(exc)
    assert str(errno.errorcode.get(err, err)) in msg
    assert "Likely cause:" in msg and "Remedy:" in msg


def test_unsupported_error_can_be_caught_as_oserror():
    with pytest.raises(OSError) as ei:
        raise unsupported_from_errno(errno.EPERM)
    assert ei.type is UnsupportedError


class _FailingLib:
    """Stands in for the cffi lib: ul_ring_create fails with a chosen errno."""

    def __init__(self, real, err):
        self._real = real
        self._err = err
        self.calls = 0

    def ul_ring_create(self, entries, cq_entries, errp):
        self.calls += 1
        errp[0] = self._err
        return ffi.NULL

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.mark.parametrize("err", [errno.EPERM, errno.ENOSYS])
def test_ring_raises_unsupported_when_setup_fails(monkeypatch, err):
    stub = _FailingLib(_ring.lib, err)
    monkeypatch.setattr(_ring, "lib", stub)
    with pytest.raises(UnsupportedError) as ei:
        _ring.Ring()
    assert stub.calls == 1
    assert ei.value.errno == err
    assert errno.errorcode[err] in str(ei.value)


def test_new_event_loop_raises_unsupported_when_setup_fails(monkeypatch, fd_guard):
    monkeypatch.setattr(_ring, "lib", _FailingLib(_ring.lib, errno.EPERM))
    with pytest.raises(UnsupportedError):
        uringloop.new_event_loop()
    import gc

    gc.collect()  # a half-built loop must not blow up when collected


@pytest.mark.parametrize("value", ["pbuf:EINVAL", "PBUF:22", "pbuf:EPERM"])
def test_buffer_ring_failure_is_unsupported(monkeypatch, fd_guard, value):
    """The ring is created but its provided-buffer ring cannot be registered (kernel
    before 5.19, seccomp): UnsupportedError, so fallback=True falls back, and the ring
    is not leaked."""
    monkeypatch.setenv("URINGLOOP_FAKE_SETUP_ERRNO", value)
    with pytest.raises(UnsupportedError) as ei:
        uringloop.Loop()
    assert "IORING_REGISTER_PBUF_RING" in str(ei.value)
    assert ei.value.errno in (errno.EINVAL, errno.EPERM)
    with pytest.warns(RuntimeWarning, match="IORING_REGISTER_PBUF_RING"):
        loop = uringloop.new_event_loop(fallback=True)
    assert not isinstance(loop, uringloop.Loop)
    loop.close()
    import gc

    gc.collect()


def test_buffer_ring_out_of_memory_is_not_unsupported(monkeypatch, fd_guard):
    """ENOMEM for the receive-buffer area is a memory shortage, not io_uring missing."""
    monkeypatch.setenv("URINGLOOP_FAKE_SETUP_ERRNO", "pbuf:ENOMEM")
    with pytest.raises(OSError) as ei:
        uringloop.Loop()
    assert type(ei.value) is OSError and ei.value.errno == errno.ENOMEM


def test_no_multishot_receive_is_unsupported(monkeypatch, fd_guard):
    """A kernel without multishot receive (before 6.0) cannot serve the loop's wake-up
    socket: UnsupportedError when the loop is created, not a loop that spins later."""
    monkeypatch.setattr(_caps, "_cached", None)  # probe again (restored afterwards)
    monkeypatch.setenv("URINGLOOP_FAKE_SETUP_ERRNO", "recv_multishot:EINVAL")
    with pytest.raises(UnsupportedError) as ei:
        uringloop.Loop()
    assert ei.value.errno == errno.EINVAL
    assert "IORING_RECV_MULTISHOT" in str(ei.value) and "Linux 6.0 or newer" in str(ei.value)
    assert _caps._cached is None  # a failed probe is not cached
    monkeypatch.delenv("URINGLOOP_FAKE_SETUP_ERRNO")
    assert _caps.capabilities().recv_multishot  # this kernel has it (the real probe)


def test_fake_hook_steps(monkeypatch):
    monkeypatch.setenv("URINGLOOP_FAKE_SETUP_ERRNO", "pbuf:EINVAL")
    assert errors.fake_errno(errors.PBUF_RING) == errno.EINVAL
    assert errors.fake_setup_errno() == 0 and errors.fake_errno(errors.RECV_MULTISHOT) == 0
    monkeypatch.setenv("URINGLOOP_FAKE_SETUP_ERRNO", "eperm")
    assert errors.fake_setup_errno() == errno.EPERM
    assert errors.fake_errno(errors.PBUF_RING) == 0
    monkeypatch.setenv("URINGLOOP_FAKE_SETUP_ERRNO", "nope:EPERM")
    with pytest.raises(ValueError, match="unknown step"):
        errors.fake_setup_errno()


def test_closed_ring_rejects_use():
    loop = uringloop.new_event_loop()
    ring = loop._ring
    loop.close()
    assert ring.closed
    with pytest.raises(RuntimeError):
        ring.ptr  # noqa: B018


# -- fork ------------------------------------------------------------------------------

_CHILD_RUNTIME_ERROR = 0
_CHILD_OTHER_ERROR = 1
_CHILD_NO_ERROR = 2
_CHILD_NEW_LOOP_FAILED = 3


def _wait_child(pid: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            if os.WIFSIGNALED(status):
                pytest.fail(f"child died from signal {os.WTERMSIG(status)}")
            return os.WEXITSTATUS(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the child hung using a loop inherited through fork()")


def _fork_and_use(loop) -> int:
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = _CHILD_OTHER_ERROR
        try:
            try:
                loop.run_until_complete(asyncio.sleep(0))
                code = _CHILD_NO_ERROR
            except RuntimeError:
                code = _CHILD_RUNTIME_ERROR
            except BaseException:
                code = _CHILD_OTHER_ERROR
            # a loop made in the child works
            try:
                fresh = uringloop.new_event_loop()
                try:
                    if fresh.run_until_complete(asyncio.sleep(0.001, "ok")) != "ok":
                        code = _CHILD_NEW_LOOP_FAILED
                finally:
                    fresh.close()
            except BaseException:
                code = _CHILD_NEW_LOOP_FAILED
        finally:
            os._exit(code)
    return _wait_child(pid)


@pytest.mark.parametrize("ran_before_fork", [True, False])
def test_loop_used_after_fork_raises_runtime_error(ran_before_fork):
    loop = uringloop.new_event_loop()
    try:
        if ran_before_fork:
            loop.run_until_complete(asyncio.sleep(0.001))
        code = _fork_and_use(loop)
        assert code == _CHILD_RUNTIME_ERROR, code
        # the parent's loop is unaffected
        assert loop.run_until_complete(asyncio.sleep(0, "parent")) == "parent"
    finally:
        loop.close()


# -- threads ---------------------------------------------------------------------------


def test_loop_run_from_second_thread_raises():
    """A ring is bound to the thread that first ran it (SINGLE_ISSUER)."""
    loop = uringloop.new_event_loop()
    try:
        loop.run_until_complete(asyncio.sleep(0))
        errors = []

        def other():
            coro = asyncio.sleep(0.01)  # must enter the kernel (a sleep(0) need not)
            try:
                loop.run_until_complete(coro)
            except RuntimeError as exc:
                errors.append(exc)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
            finally:
                coro.close()

        t = threading.Thread(target=other)
        t.start()
        t.join(10)
        assert not t.is_alive()
        if "SINGLE_ISSUER" not in loop.stats()["setup_flags"]:
            pytest.skip("this kernel has no IORING_SETUP_SINGLE_ISSUER")
        assert len(errors) == 1 and isinstance(errors[0], RuntimeError), errors
        # still fine in its own thread
        assert loop.run_until_complete(asyncio.sleep(0, 1)) == 1
    finally:
        loop.close()


def test_loop_created_in_one_thread_run_in_another():
    """Creating a loop does not bind it: the first thread that runs it owns it."""
    result = []
    loop = uringloop.new_event_loop()

    def runner():
        try:
            result.append(loop.run_until_complete(asyncio.sleep(0.001, "thread")))
        except BaseException as exc:  # pragma: no cover
            result.append(exc)

    t = threading.Thread(target=runner)
    t.start()
    t.join(10)
    loop.close()
    assert result == ["thread"]


def test_loop_made_in_thread_runs_there_and_closes():
    """The common pattern: make a loop, run_forever in a worker thread, stop it from here."""
    loop = uringloop.new_event_loop()
    started = threading.Event()
    t = threading.Thread(target=lambda: (loop.call_soon(started.set), loop.run_forever()))
    t.start()
    try:
        assert started.wait(10)

        async def work():
            server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            r, w = await asyncio.open_connection("127.0.0.1", port)
            assert await r.read() == b""
            w.close()
            await w.wait_closed()
            server.close()
            await server.wait_closed()
            return "done"

        fut = asyncio.run_coroutine_threadsafe(work(), loop)
        assert fut.result(10) == "done"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)
    assert not t.is_alive()
    loop.close()


@pytest.mark.parametrize("where", ["main", "thread"])
def test_close_releases_kernel_side_of_ring(where):
    """After loop.close(), requests still in flight (here: the multishot accept of a
    server closed just before) must not keep the listening socket alive."""
    out = []

    def trial():
        loop = uringloop.new_event_loop()
        try:
            server = loop.run_until_complete(
                loop.create_server(asyncio.Protocol, "127.0.0.1", 0))
            port = server.sockets[0].getsockname()[1]
            server.close()  # its accept cancel is never submitted: the loop doesn't run again
        finally:
            loop.close()
        out.append(port)

    if where == "main":
        trial()
    else:
        t = threading.Thread(target=trial)
        t.start()
        t.join(10)
    (port,) = out
    # the kernel tears the ring down asynchronously: allow it a moment
    for _ in range(500):
        with socket.socket() as s:
            try:
                s.connect(("127.0.0.1", port))
            except ConnectionRefusedError:
                return
        time.sleep(0.01)
    pytest.fail("the listening socket still accepts connections after loop.close()")


def test_many_loops_in_one_thread():
    """More loops than the kernel's 16 registered-ring slots per thread, one after another
    and several at once."""
    for _ in range(40):
        loop = uringloop.new_event_loop()
        loop.run_until_complete(asyncio.sleep(0.001))
        loop.close()
    loops = [uringloop.new_event_loop() for _ in range(20)]
    try:
        for lp in loops:
            assert lp.run_until_complete(asyncio.sleep(0.001, "ok")) == "ok"
    finally:
        for lp in loops:
            lp.close()
