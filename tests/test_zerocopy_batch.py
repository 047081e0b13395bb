"""sendto_zerocopy_many from pool buffers: the batch fast path (ZcPoolBatch), whose
SEND_ZC chain is prepped by one C call and whose completions are aggregated in C."""

from __future__ import annotations

import asyncio
import errno
import os
import socket

import pytest

import uringloop
from uringloop import ZeroCopyResult
from uringloop._zcdgram import ZcPoolBatch

pytestmark = pytest.mark.asyncio(loop_factories=["uringloop"])
T = 10
FEATURES = uringloop.features()
needs_zc = pytest.mark.skipif(not FEATURES["send_zc"], reason="no SEND_ZC")


class Sink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.want = 0
        self.done: asyncio.Future[None] | None = None

    def expect(self, n: int) -> asyncio.Future[None]:
        self.want = len(self.got) + n
        self.done = asyncio.get_running_loop().create_future()
        if len(self.got) >= self.want:
            self.done.set_result(None)
        return self.done

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.got.append(data)
        if self.done is not None and len(self.got) >= self.want and not self.done.done():
            self.done.set_result(None)


class Lost(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.lost: list[object] = []
        self.errors: list[Exception] = []

    def connection_lost(self, exc: object) -> None:
        self.lost.append(exc)

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)


async def pair(connected: bool):
    loop = asyncio.get_running_loop()
    rt, sink = await loop.create_datagram_endpoint(Sink, local_addr=("127.0.0.1", 0))
    rt.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    addr = rt.get_extra_info("sockname")
    if connected:
        st, sp = await loop.create_datagram_endpoint(Lost, remote_addr=addr)
    else:
        st, sp = await loop.create_datagram_endpoint(Lost, family=socket.AF_INET)
    st.set_zerocopy_mode("always")
    return rt, sink, st, sp, addr


def fill(pool, n: int, sizes: list[int]):
    bufs = [pool.acquire() for _ in range(n)]
    payloads = []
    for i, (b, size) in enumerate(zip(bufs, sizes, strict=True)):
        data = i.to_bytes(2, "big") + os.urandom(size - 2)
        b[:size] = data
        payloads.append(data)
    return bufs, payloads


@needs_zc
@pytest.mark.parametrize("connected", [False, True])
@pytest.mark.parametrize("uniform", [False, True])
async def test_pool_batch_delivers_bytes_in_order(connected, uniform, fd_guard):
    loop = asyncio.get_running_loop()
    pool = loop.zerocopy_buffers(32, 9000)
    rt, sink, st, sp, addr = await pair(connected)
    dest = None if connected else addr
    sizes = [8000] * 32 if uniform else [100 + 250 * i for i in range(32)]
    bufs, payloads = fill(pool, 32, sizes)
    stats0 = loop.stats()
    done = sink.expect(34)
    st.sendto(b"first", dest)
    fut = st.sendto_zerocopy_many([b[:s] for b, s in zip(bufs, sizes, strict=True)], dest)
    st.sendto(b"last", dest)
    assert type(st._queue[1][0]) is ZcPoolBatch  # the fast path: one queue entry
    for b in bufs:  # the kernel's now
        assert b.in_flight
        with pytest.raises(BufferError):
            _ = b.view
    res = await asyncio.wait_for(fut, T)
    await asyncio.wait_for(done, T)
    assert sink.got == [b"first", *payloads, b"last"]
    assert isinstance(res, ZeroCopyResult)
    assert res.sends == 32 and res.nbytes == sum(sizes) and res.zerocopy
    assert res.notifications == 32
    if FEATURES["send_zc_report_usage"]:  # loopback delivery always copies
        assert res.copied is True and res.copied_sends == 32
    stats = loop.stats()
    assert stats["zerocopy_sends"] - stats0["zerocopy_sends"] == 32
    assert stats["zerocopy_notifications"] - stats0["zerocopy_notifications"] == 32
    assert pool.stats()["free"] == 32  # every buffer came back
    for b in bufs:  # the handles are dead; the memory is reusable
        with pytest.raises(BufferError):
            _ = b.view
    again = [pool.acquire() for _ in range(32)]
    again[0][:3] = b"new"
    assert again[0].tobytes(0, 3) == b"new"
    for b in again:
        b.release()
    assert st.get_write_buffer_size() == 0
    assert st.zerocopy_stats()["zerocopy_sends"] == 32
    rt.close()
    st.close()
    pool.close()


@needs_zc
async def test_pool_batch_same_buffer_twice_and_partial_ranges(fd_guard):
    loop = asyncio.get_running_loop()
    pool = loop.zerocopy_buffers(2, 4096)
    rt, sink, st, sp, addr = await pair(True)
    b = pool.acquire()
    b[:4096] = bytes(range(256)) * 16
    done = sink.expect(3)
    res = await asyncio.wait_for(st.sendto_zerocopy_many([b[:100], b[100:300], b]), T)
    await asyncio.wait_for(done, T)
    assert sink.got == [bytes(range(100)), bytes(range(100, 256)) + bytes(range(44)),
                        bytes(range(256)) * 16]
    assert res.sends == 3 and res.nbytes == 100 + 200 + 4096
    assert pool.stats()["free"] == 2
    rt.close()
    st.close()
    pool.close()


@needs_zc
async def test_pool_batch_many_batches_few_enters(fd_guard):
    loop = asyncio.get_running_loop()
    pool = loop.zerocopy_buffers(64, 2000)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # read after, outside the loop
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    rx.bind(("127.0.0.1", 0))
    st, sp = await loop.create_datagram_endpoint(Lost, remote_addr=rx.getsockname())
    st.set_zerocopy_mode("always")
    e0 = loop.stats()["enters"]
    futs = []
    for i in range(20):
        while len(futs) >= 2:
            await futs.pop(0)
        bufs = [pool.acquire() for _ in range(32)]
        for j, b in enumerate(bufs):
            b[:2] = bytes([i, j])
        futs.append(st.sendto_zerocopy_many([b[:1000] for b in bufs]))
    results = await asyncio.wait_for(asyncio.gather(*futs), T)
    enters = loop.stats()["enters"] - e0
    assert all(r.sends == 32 for r in results)
    # the sends of a batch complete together, not one io_uring_enter per datagram
    assert enters < 20 * 32 // 4, enters
    assert pool.stats()["free"] == 64
    rx.settimeout(T)
    got = [rx.recv(2000)[:2] for _ in range(20 * 32)]
    assert got == [bytes([i, j]) for i in range(20) for j in range(32)]
    rx.close()
    st.close()
    pool.close()


@needs_zc
async def test_pool_batch_error_mid_batch_raises_after_release(fd_guard):
    loop = asyncio.get_running_loop()
    pool = loop.zerocopy_buffers(3, 70_000)
    rt, sink, st, sp, addr = await pair(True)
    a, big, c = (pool.acquire() for _ in range(3))
    a[:2] = b"ok"
    c[:2] = b"ok"
    done = sink.expect(2)
    fut = st.sendto_zerocopy_many([a[:2], big[:70_000], c[:2]])
    with pytest.raises(OSError) as ei:  # too big for one datagram
        await asyncio.wait_for(fut, T)
    assert ei.value.errno == errno.EMSGSIZE
    assert pool.stats()["free"] == 3  # released before the error was raised
    await asyncio.wait_for(done, T)  # the datagrams around it went out, in order
    assert sink.got == [b"ok", b"ok"]
    assert not st.is_closing() and sp.errors == []  # not fatal, and not error_received
    res = await asyncio.wait_for(st.sendto_zerocopy_many([pool.acquire()[:10]]), T)
    assert res.sends == 1
    rt.close()
    st.close()
    pool.close()


@needs_zc
async def test_pool_batch_connection_refused(fd_guard):
    loop = asyncio.get_running_loop()
    pool = loop.zerocopy_buffers(8, 4096)
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    dead = probe.getsockname()
    probe.close()  # nobody listens there: ICMP port unreachable
    st, sp = await loop.create_datagram_endpoint(Lost, remote_addr=dead)
    st.set_zerocopy_mode("always")
    err = None
    for _ in range(50):
        try:
            await asyncio.wait_for(
                st.sendto_zerocopy_many([pool.acquire()[:100] for _ in range(4)]), T)
        except OSError as exc:
            err = exc
            break
        await asyncio.sleep(0.01)
    assert err is not None and err.errno == errno.ECONNREFUSED
    assert pool.stats()["free"] == 8
    assert not st.is_closing()
    st.close()
    pool.close()


@needs_zc
@pytest.mark.parametrize("submitted", [False, True])
async def test_pool_batch_abort_in_flight(submitted, fd_guard):
    loop = asyncio.get_running_loop()
    pool = loop.zerocopy_buffers(64, 4096)
    rt, sink, st, sp, addr = await pair(True)
    futs = [st.sendto_zerocopy_many([pool.acquire()[:4000] for _ in range(32)])
            for _ in range(2)]
    if submitted:
        await asyncio.sleep(0)  # the first batch's chain goes to the kernel
    st.abort()
    for fut in futs:  # each resolves or fails, but only once its buffers are free
        try:
            await asyncio.wait_for(fut, T)
        except OSError:
            pass
    assert pool.stats()["free"] == 64
    for _ in range(10):
        await asyncio.sleep(0)
    assert len(sp.lost) == 1
    if not submitted:
        with pytest.raises(ConnectionAbortedError):
            futs[0].result()
    rt.close()
    pool.close()


async def test_pool_batch_rejections(fd_guard):
    loop = asyncio.get_running_loop()
    pool = loop.zerocopy_buffers(4, 4096)
    rt, sink, st, sp, addr = await pair(True)
    b = pool.acquire()
    b.release()
    ok = pool.acquire()
    with pytest.raises(BufferError):  # a returned handle
        st.sendto_zerocopy_many([ok[:10], b[:10]])
    assert not ok.in_flight  # nothing taken by the failed call
    ok[:2] = b"hi"
    held = pool.acquire()
    export = uringloop.zcpool.ffi.from_buffer(held.view)  # a real export of held.view
    with pytest.raises(BufferError, match="exported"):
        st.sendto_zerocopy_many([ok[:10], held[:10]])
    assert not ok.in_flight and not held.in_flight
    uringloop.zcpool.ffi.release(export)
    ok.release()
    held.release()
    assert pool.stats()["free"] == 4
    other = uringloop.new_event_loop()
    try:
        foreign = other.zerocopy_buffers(1, 4096)
        with pytest.raises(ValueError):
            st.sendto_zerocopy_many([foreign.acquire()[:10]])
    finally:
        other.close()
    st.close()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(st.sendto_zerocopy_many([pool.acquire()[:10]]), T)
    assert pool.stats()["free"] == 4  # given back with the error
    rt.close()
    pool.close()


@pytest.mark.parametrize("mode", ["always", "never"])
async def test_mixed_batch_rejection_takes_nothing(mode, fd_guard):
    """General path (pool buffers mixed with bytes): a later pool buffer that cannot be
    sent raises and gives back the pool buffers taken before it."""
    loop = asyncio.get_running_loop()
    pool = loop.zerocopy_buffers(4, 4096)
    rt, sink, st, sp, addr = await pair(True)
    st.set_zerocopy_mode(mode)
    b = pool.acquire()
    b.release()
    ok = pool.acquire()
    ok[:2] = b"ok"
    with pytest.raises(BufferError):  # a returned handle after a good one
        st.sendto_zerocopy_many([ok[:10], b"plain", b[:10]])
    assert not ok.in_flight
    ok[:2] = b"hi"  # still owned and writable
    held = pool.acquire()
    export = uringloop.zcpool.ffi.from_buffer(held.view)
    with pytest.raises(BufferError, match="exported"):
        st.sendto_zerocopy_many([ok, bytearray(b"x"), ok[:5], held[:10]])
    assert not ok.in_flight and not held.in_flight
    uringloop.zcpool.ffi.release(export)
    assert st.get_write_buffer_size() == 0
    # the buffers still work: send them and get them back
    held[:3] = b"abc"
    got = sink.expect(3)
    res = await asyncio.wait_for(st.sendto_zerocopy_many([ok[:2], b"plain", held[:3]]), T)
    assert res.sends == 3
    await asyncio.wait_for(got, T)
    assert sink.got[-3:] == [b"hi", b"plain", b"abc"]
    assert pool.stats()["free"] == 4
    st.close()
    rt.close()
    pool.close()


async def test_acquire_many(fd_guard):
    loop = asyncio.get_running_loop()
    pool = loop.zerocopy_buffers(4, 4096, max_count=8, grow_by=2)
    slices = pool.acquire_many(3, 100)
    assert [len(s) for s in slices] == [100] * 3
    assert len({id(s.buffer) for s in slices}) == 3
    assert pool.stats()["free"] == 1
    more = pool.acquire_many(3)  # grows by what is missing (at least grow_by)
    assert [len(s) for s in more] == [4096] * 3
    assert pool.stats()["buffers"] == 6
    free = pool.stats()["free"]
    with pytest.raises(BufferError):  # all or nothing: 8 at most
        pool.acquire_many(free + 3)
    assert pool.stats()["free"] == free
    with pytest.raises(ValueError):
        pool.acquire_many(1, 4097)
    assert pool.acquire_many(0) == []
    for s in slices + more:
        s.buffer.release()
    assert pool.stats()["free"] == pool.stats()["buffers"]
    pool.close()
    with pytest.raises(RuntimeError):
        pool.acquire_many(1)


@needs_zc
async def test_acquire_many_send(fd_guard):
    loop = asyncio.get_running_loop()
    pool = loop.zerocopy_buffers(32, 2048)
    rt, sink, st, sp, addr = await pair(False)
    slices = pool.acquire_many(32, 1000)
    for i, s in enumerate(slices):
        s.buffer[:2] = i.to_bytes(2, "big")
    got = sink.expect(32)
    res = await asyncio.wait_for(st.sendto_zerocopy_many(slices, addr), T)
    assert res.sends == 32 and res.nbytes == 32 * 1000
    await asyncio.wait_for(got, T)
    assert [d[:2] for d in sink.got[-32:]] == [i.to_bytes(2, "big") for i in range(32)]
    assert pool.stats()["free"] == 32
    st.close()
    rt.close()
    pool.close()
