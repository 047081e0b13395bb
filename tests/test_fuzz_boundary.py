"""Fuzz the Python <-> C boundary with hostile inputs through the public APIs.

Every call must either do exactly what it says (the bytes arrive intact) or raise a clean
Python exception (TypeError, ValueError, BufferError, OverflowError, OSError,
RuntimeError). A crash (segfault, abort, sanitizer report under tools/sanitize.sh) fails
the run. Bounded: a few dozen examples per test, each with a short timeout.
"""

from __future__ import annotations

import array
import asyncio
import gc
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import uringloop

CLEAN = (TypeError, ValueError, BufferError, OverflowError, OSError, RuntimeError)
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))

FORMATS = ["B", "b", "c", "h", "H", "i", "I", "l", "q", "f", "d"]


@st.composite
def buffers(draw, writable: bool = False):
    """Buffers of many kinds and shapes, some of them hostile (non-contiguous, read-only,
    zero-length, multi-dimensional, non-buffers)."""
    kind = draw(st.sampled_from([
        "bytes", "bytearray", "mv", "mv_slice", "mv_strided", "array", "mv_cast_fmt",
        "mv_2d", "mv_readonly", "released", "str", "int", "none", "list",
    ]))
    raw = draw(st.binary(min_size=0, max_size=4096))
    if kind == "bytes":
        return raw
    if kind == "bytearray":
        return bytearray(raw)
    if kind == "mv":
        return memoryview(bytearray(raw))
    if kind == "mv_slice":
        start = draw(st.integers(0, len(raw)))
        stop = draw(st.integers(start, len(raw)))
        return memoryview(bytearray(raw))[start:stop]
    if kind == "mv_strided":
        step = draw(st.integers(2, 5))
        return memoryview(bytearray(raw))[::step]
    if kind == "array":
        fmt = draw(st.sampled_from(["b", "B", "h", "i", "q", "f", "d"]))
        item = array.array(fmt).itemsize
        return array.array(fmt, raw[: len(raw) // item * item])
    if kind == "mv_cast_fmt":
        fmt = draw(st.sampled_from(FORMATS))
        size = array.array("b" if fmt == "c" else fmt).itemsize if fmt != "c" else 1
        return memoryview(bytearray(raw[: len(raw) // size * size])).cast(fmt)
    if kind == "mv_2d":
        rows = draw(st.integers(1, 8))
        cols = len(raw) // rows
        if cols == 0:
            return memoryview(bytearray(raw))
        return memoryview(bytearray(raw[: rows * cols])).cast("B", (rows, cols))
    if kind == "mv_readonly":
        return memoryview(raw)
    if kind == "released":
        mv = memoryview(bytearray(raw))
        mv.release()
        return mv
    if kind == "str":
        return raw.decode("latin-1")
    if kind == "int":
        return draw(st.integers(-(2**70), 2**70))
    if kind == "none":
        return None
    return list(raw[:16])


def _expected(buf) -> bytes | None:
    """The bytes a send of ``buf`` must deliver, or None when it must raise."""
    try:
        mv = memoryview(buf)
    except (TypeError, ValueError):
        return None
    return mv.tobytes()


@pytest.fixture(scope="module")
def loop():
    lp = uringloop.Loop()
    yield lp
    lp.close()


async def _drain(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    out = bytearray()
    while len(out) < n:
        chunk = await loop.sock_recv(sock, n - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


@FUZZ
@given(buf=buffers())
def test_sock_sendall_hostile_buffers(loop, buf) -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    with a, b:
        async def go() -> None:
            expected = _expected(buf)
            try:
                await asyncio.wait_for(loop.sock_sendall(a, buf), 5)
            except CLEAN:
                return  # non-buffers, released or non-contiguous views: a clean error
            assert expected is not None
            assert await asyncio.wait_for(_drain(b, len(expected)), 5) == expected

        loop.run_until_complete(go())
    assert loop.stats()["inflight"] == 1


@FUZZ
@given(buf=buffers(), data=st.binary(min_size=1, max_size=8192))
def test_sock_recv_into_hostile_buffers(loop, buf, data) -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    with a, b:
        b.sendall(data)

        async def go() -> None:
            try:
                n = await asyncio.wait_for(loop.sock_recv_into(a, buf), 5)
            except CLEAN:
                return  # read-only, non-contiguous, released, not a buffer
            nbytes = memoryview(buf).nbytes
            assert 0 <= n <= min(nbytes, len(data))
            assert memoryview(buf).cast("B").tobytes()[:n] == data[:n]

        loop.run_until_complete(go())
    assert loop.stats()["inflight"] == 1


@FUZZ
@given(n=st.one_of(st.integers(-(2**66), 1 << 16), st.integers(0x7FFFF001, 2**66),
                   st.floats(allow_nan=True), st.text(max_size=4), st.none()))
def test_sock_recv_hostile_sizes(loop, n) -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    with a, b:
        b.sendall(b"x" * 100)

        async def go() -> None:
            try:
                got = await asyncio.wait_for(loop.sock_recv(a, n), 2)
            except (*CLEAN, asyncio.TimeoutError):
                return
            assert got == b"x" * min(100, int(n))

        loop.run_until_complete(go())
    gc.collect()
    assert loop.stats()["inflight"] == 1


@FUZZ
@given(bufs=st.lists(buffers(), min_size=1, max_size=6), zc=st.lists(st.booleans(), min_size=6,
       max_size=6), drop=st.booleans())
def test_transport_write_and_write_zerocopy_hostile(loop, bufs, zc, drop) -> None:
    """write()/write_zerocopy() with hostile buffers; the accepted ones arrive in order.
    ``drop`` forgets the futures and the buffers at once (lifetimes held by the loop)."""

    async def go() -> None:
        with socket.socket() as lsock:
            lsock.bind(("127.0.0.1", 0))
            lsock.listen(1)
            tr, _ = await loop.create_connection(asyncio.Protocol, *lsock.getsockname())
            peer, _ = lsock.accept()
        peer.setblocking(False)
        expected = bytearray()
        futs = []
        for buf, use_zc in zip(bufs, zc, strict=False):
            want = _expected(buf)
            try:
                if use_zc:
                    fut = tr.write_zerocopy(buf)
                    if not drop:
                        futs.append(fut)
                else:
                    tr.write(buf)
            except CLEAN:
                continue
            assert want is not None
            expected += want
        if drop:
            del bufs[:]
            gc.collect()
        got = await asyncio.wait_for(_drain(peer, len(expected)), 10)
        assert got == bytes(expected)
        for fut in futs:
            res = await asyncio.wait_for(fut, 5)
            assert res.nbytes >= 0
        tr.close()
        peer.close()
        await asyncio.sleep(0.01)

    loop.run_until_complete(go())
    gc.collect()
    loop.run_until_complete(asyncio.sleep(0.01))
    assert loop.stats()["inflight"] == 1


@FUZZ
@given(recv_buffers=st.integers(-5, 70000), recv_buffer_size=st.integers(-5, 1 << 20),
       ring_entries=st.integers(-3, 70000), cq_entries=st.integers(-3, 1 << 20))
def test_loop_constructor_hostile_sizes(recv_buffers, recv_buffer_size, ring_entries,
                                        cq_entries) -> None:
    try:
        lp = uringloop.Loop(recv_buffers=recv_buffers, recv_buffer_size=recv_buffer_size,
                            ring_entries=ring_entries, cq_entries=cq_entries)
    except CLEAN:
        return
    try:
        lp.run_until_complete(asyncio.sleep(0))
        assert lp.stats()["inflight"] == 1
    finally:
        lp.close()


def test_stats_and_features_any_time() -> None:
    lp = uringloop.Loop()
    s1 = lp.stats()
    lp.run_until_complete(asyncio.sleep(0))
    lp.close()
    s2 = lp.stats()  # after close: the last values, no crash (it segfaulted once)
    assert s2["enters"] >= s1["enters"]
    lp.close()
    assert lp.stats() == s2
    f = uringloop.features()
    assert isinstance(f["ops"], dict) and f["kernel"]
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        lp.run_until_complete(coro)
    coro.close()
    with pytest.raises(RuntimeError):
        lp._ring.run(0)  # the ring of a closed loop refuses, never touches freed memory
    with pytest.raises(RuntimeError):
        lp._ring.submit()
