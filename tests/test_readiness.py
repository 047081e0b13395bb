"""add_reader / add_writer / remove_*: level-triggered readiness callbacks."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

T = 5  # seconds: the bound on every wait in this file


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


async def spin(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def wait_until(pred, timeout: float = T) -> None:
    async def poll():
        while not pred():
            await asyncio.sleep(0.001)

    await asyncio.wait_for(poll(), timeout)


def is_uring(loop) -> bool:
    return hasattr(loop, "_ring")


async def test_reader_is_level_triggered(pair, fd_guard):
    loop = asyncio.get_running_loop()
    a, b = pair
    calls = []
    loop.add_reader(a.fileno(), calls.append, "r")
    await spin(5)
    assert calls == []  # nothing to read yet
    b.send(b"x")  # never read: the reader must keep firing
    await wait_until(lambda: len(calls) >= 5)
    assert loop.remove_reader(a.fileno()) is True
    await spin(3)
    n = len(calls)
    await spin(20)
    assert len(calls) == n  # stopped after remove_reader
    assert a.recv(10) == b"x"


async def test_reader_that_drains_is_not_called_spuriously(pair, fd_guard):
    loop = asyncio.get_running_loop()
    a, b = pair
    got = bytearray()
    spurious = []

    def on_readable():
        try:
            got.extend(a.recv(65536))
        except BlockingIOError:
            spurious.append(1)

    loop.add_reader(a, on_readable)  # a file object works as well as an fd number
    for i in range(20):
        b.send(bytes([i]) * 100)
        await wait_until(lambda i=i: len(got) == (i + 1) * 100)
        await spin(3)
    assert loop.remove_reader(a)
    assert bytes(got) == b"".join(bytes([i]) * 100 for i in range(20))
    assert spurious == []


async def test_callback_args_and_exception_keeps_watching(pair, fd_guard):
    loop = asyncio.get_running_loop()
    a, b = pair
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx.get("exception")))
    calls = []

    def cb(x, y):
        calls.append((x, y))
        raise RuntimeError("boom")

    b.send(b"1")
    loop.add_reader(a.fileno(), cb, 1, 2)
    await wait_until(lambda: len(calls) >= 3)
    assert calls[0] == (1, 2)
    assert all(isinstance(e, RuntimeError) for e in errors) and errors
    loop.remove_reader(a.fileno())
    loop.set_exception_handler(None)


async def test_replacing_a_reader(pair, fd_guard):
    loop = asyncio.get_running_loop()
    a, b = pair
    first, second = [], []
    loop.add_reader(a.fileno(), first.append, 1)
    loop.add_reader(a.fileno(), second.append, 2)
    b.send(b"data")
    await wait_until(lambda: len(second) >= 3)
    assert first == []
    assert loop.remove_reader(a.fileno()) is True
    assert loop.remove_reader(a.fileno()) is False


async def test_remove_unknown_returns_false(pair, fd_guard):
    loop = asyncio.get_running_loop()
    a, _ = pair
    assert loop.remove_reader(a.fileno()) is False
    assert loop.remove_writer(a.fileno()) is False
    assert loop.remove_reader(12345) is False


async def test_writer_fires_and_stops(pair, fd_guard):
    loop = asyncio.get_running_loop()
    a, _ = pair
    calls = []
    loop.add_writer(a, calls.append, "w")
    await wait_until(lambda: len(calls) >= 3)  # writable: level-triggered too
    assert loop.remove_writer(a) is True
    await spin(3)
    n = len(calls)
    await spin(10)
    assert len(calls) == n
    assert loop.remove_writer(a) is False


async def test_writer_waits_for_space(pair, fd_guard):
    loop = asyncio.get_running_loop()
    a, b = pair
    try:
        while True:
            a.send(b"\0" * 65536)
    except BlockingIOError:
        pass
    fired = loop.create_future()
    loop.add_writer(a.fileno(), lambda: fired.done() or fired.set_result(True))
    await spin(10)
    assert not fired.done()  # the socket buffer is full
    while True:  # drain the peer
        try:
            b.recv(1 << 20)
        except BlockingIOError:
            break
    assert await asyncio.wait_for(fired, T)
    loop.remove_writer(a.fileno())


async def test_reader_and_writer_on_same_fd(pair, fd_guard):
    loop = asyncio.get_running_loop()
    a, b = pair
    r, w = [], []
    loop.add_reader(a.fileno(), r.append, 1)
    loop.add_writer(a.fileno(), w.append, 1)
    await wait_until(lambda: len(w) >= 2)
    assert r == []
    b.send(b"z")
    await wait_until(lambda: len(r) >= 2)
    assert loop.remove_writer(a.fileno())
    n = len(w)
    await spin(10)
    assert len(w) == n
    assert loop.remove_reader(a.fileno())


async def test_remove_reader_inside_callback(pair, fd_guard):
    loop = asyncio.get_running_loop()
    a, b = pair
    calls = []

    def cb():
        calls.append(1)
        loop.remove_reader(a.fileno())

    loop.add_reader(a.fileno(), cb)
    b.send(b"y")
    await wait_until(lambda: calls)
    await spin(20)
    assert calls == [1]


async def test_reader_on_pipe_sees_eof(fd_guard):
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    os.set_blocking(r, False)
    chunks = []
    done = loop.create_future()

    def cb():
        data = os.read(r, 4096)
        chunks.append(data)
        if not data:
            loop.remove_reader(r)
            done.set_result(None)

    loop.add_reader(r, cb)
    os.write(w, b"hello")
    os.close(w)
    await asyncio.wait_for(done, T)
    os.close(r)
    assert b"".join(chunks) == b"hello" and chunks[-1] == b""


async def test_fd_number_reused_after_close(fd_guard):
    """A poll must follow the new file when an fd number is reused."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    fd = a.fileno()
    loop.add_reader(fd, lambda: None)
    assert loop.remove_reader(fd)
    a.close()
    b.close()
    c, d = socket.socketpair()
    try:
        assert c.fileno() == fd or d.fileno() == fd
        target = c if c.fileno() == fd else d
        peer = d if target is c else c
        fired = loop.create_future()
        loop.add_reader(fd, lambda: fired.done() or fired.set_result(True))
        peer.send(b"!")
        assert await asyncio.wait_for(fired, T)
        assert loop.remove_reader(fd)
    finally:
        c.close()
        d.close()


@pytest.mark.asyncio(loop_factories=["uringloop"])
async def test_closed_without_remove_then_reused(fd_guard):
    """uringloop re-polls on add_reader even when the old fd was never removed."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    fd = a.fileno()
    loop.add_reader(fd, lambda: None)
    await spin(2)
    a.close()
    b.close()
    c, d = socket.socketpair()
    try:
        target = c if c.fileno() == fd else d
        assert target.fileno() == fd
        peer = d if target is c else c
        fired = loop.create_future()
        loop.add_reader(fd, lambda: fired.done() or fired.set_result(True))
        peer.send(b"!")
        assert await asyncio.wait_for(fired, T)
        assert loop.remove_reader(fd)
    finally:
        c.close()
        d.close()


@pytest.mark.asyncio(loop_factories=["uringloop"])
async def test_no_inflight_left_after_remove(pair):
    loop = asyncio.get_running_loop()
    a, b = pair
    base = loop.stats()["inflight"]
    for _ in range(50):
        loop.add_reader(a.fileno(), lambda: None)
        loop.add_writer(a.fileno(), lambda: None)
        loop.remove_reader(a.fileno())
        loop.remove_writer(a.fileno())
    await spin(10)
    assert loop.stats()["inflight"] == base


async def test_invalid_fd_object():
    loop = asyncio.get_running_loop()
    with pytest.raises(ValueError):
        loop.add_reader(-1, lambda: None)
    with pytest.raises(ValueError):
        loop.add_reader("nope", lambda: None)


def test_add_reader_on_closed_loop_raises():
    import uringloop

    for factory in (uringloop.new_event_loop, asyncio.new_event_loop):
        loop = factory()
        loop.close()
        with pytest.raises(RuntimeError):
            loop.add_reader(0, lambda: None)
        assert loop.remove_reader(0) is False
