"""``transport.write_zerocopy``: results, ordering, buffer types, pinning, cancellation.

These only make sense on uringloop. On loopback the kernel always copies the data, so
every send is reported as copied.
"""

from __future__ import annotations

import array
import asyncio
import random

import pytest

import uringloop
from uringloop import ZeroCopyResult

from .test_tcp import Collector, close_server, close_transport, port_of, rand_bytes

pytestmark = pytest.mark.asyncio(loop_factories=["uringloop"])

T = 10
FEATURES = uringloop.features()


async def connected_pair(mode: str | None = "always", paused_server: bool = False,
                         expect: int | None = None):
    """(client transport, client protocol, server protocol, server); the client in zero-copy
    ``mode`` ("always" by default: most tests check SEND_ZC itself, not the adaptive
    mode; None: the loop's default)."""
    loop = asyncio.get_running_loop()
    made = loop.create_future()

    class Server(Collector):
        def connection_made(self, transport):
            super().connection_made(transport)
            if paused_server:
                transport.pause_reading()
            made.set_result(self)

    server = await loop.create_server(lambda: Server(loop, expect), "127.0.0.1", 0)
    tr, proto = await loop.create_connection(lambda: Collector(loop), "127.0.0.1",
                                             port_of(server))
    srv = await asyncio.wait_for(made, T)
    if mode is not None:
        tr.set_zerocopy_mode(mode)
    return tr, proto, srv, server


async def shutdown(tr, proto, srv, server):
    if not tr.is_closing():
        tr.close()
    await asyncio.wait_for(proto.lost, T)
    if not srv.transport.is_closing():
        srv.transport.close()
    await asyncio.wait_for(srv.lost, T)
    await close_server(server)


def check_loopback_result(res: ZeroCopyResult, nbytes: int) -> None:
    assert isinstance(res, ZeroCopyResult)
    assert res.nbytes == nbytes
    assert res.sends >= 1
    assert res.zerocopy is FEATURES["send_zc"]
    if res.zerocopy:
        # one notification per send that the kernel accepted for zero-copy
        assert res.notifications >= 1
        if FEATURES["send_zc_report_usage"]:
            assert res.copied is True  # loopback always copies
            assert res.copied_sends == res.notifications >= 1
        else:
            assert res.copied is None
    else:
        assert res.copied is True
        assert res.copied_sends == res.sends


async def test_write_zerocopy_result(fd_guard):
    payload = rand_bytes(100_000, 1)
    tr, proto, srv, server = await connected_pair(expect=len(payload))
    fut = tr.write_zerocopy(payload)
    assert isinstance(fut, asyncio.Future)
    res = await asyncio.wait_for(fut, T)
    check_loopback_result(res, len(payload))
    assert await asyncio.wait_for(srv.got_all, T) == payload
    assert tr.get_write_buffer_size() == 0
    await shutdown(tr, proto, srv, server)


async def test_zerocopy_result_is_frozen():
    tr, proto, srv, server = await connected_pair(expect=3)
    res = await asyncio.wait_for(tr.write_zerocopy(b"abc"), T)
    with pytest.raises(AttributeError):
        res.nbytes = 5  # type: ignore[misc]
    await shutdown(tr, proto, srv, server)


async def test_zerocopy_interleaved_with_write_keeps_order(fd_guard):
    rng = random.Random(42)
    parts = []
    for _ in range(200):
        parts.append(rng.randbytes(rng.choice([1, 7, 100, 4096, 30_000, 150_000])))
    want = b"".join(parts)
    tr, proto, srv, server = await connected_pair(expect=len(want))
    futs = []
    for i, p in enumerate(parts):
        if i % 2:
            futs.append((tr.write_zerocopy(p), len(p)))
        else:
            tr.write(p)
        if i % 37 == 0:
            await asyncio.sleep(0)  # let some sends start mid-sequence
    got = await asyncio.wait_for(srv.got_all, 30)
    assert len(got) == len(want)
    assert got == want
    results = await asyncio.wait_for(asyncio.gather(*(f for f, _ in futs)), T)
    for res, (_, n) in zip(results, futs, strict=True):
        check_loopback_result(res, n)
    await shutdown(tr, proto, srv, server)


async def test_large_zerocopy_to_slow_reader(fd_guard):
    payload = rand_bytes(8 << 20, 2)
    tr, proto, srv, server = await connected_pair(paused_server=True, expect=len(payload))
    fut = tr.write_zerocopy(payload)
    await asyncio.sleep(0.05)
    assert not fut.done()  # the peer does not read: the kernel cannot take 8 MiB
    assert tr.get_write_buffer_size() > 0
    srv.transport.resume_reading()
    res = await asyncio.wait_for(fut, 30)
    check_loopback_result(res, len(payload))
    assert res.sends >= 2  # it had to be sent in pieces
    assert await asyncio.wait_for(srv.got_all, 30) == payload
    await shutdown(tr, proto, srv, server)


def _two_d(n_rows: int, n_cols: int) -> memoryview:
    raw = bytearray(rand_bytes(n_rows * n_cols, 3))
    return memoryview(raw).cast("B", (n_rows, n_cols))


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: rand_bytes(5000, 4), id="bytes"),
        pytest.param(lambda: bytearray(rand_bytes(5000, 5)), id="bytearray"),
        pytest.param(lambda: memoryview(rand_bytes(5000, 6)), id="memoryview"),
        pytest.param(lambda: memoryview(rand_bytes(5000, 6))[100:4000], id="memoryview-slice"),
        pytest.param(lambda: array.array("i", range(1000)), id="array-i"),
        pytest.param(lambda: array.array("d", [1.5] * 300), id="array-d"),
        pytest.param(lambda: _two_d(50, 40), id="2d-memoryview"),
    ],
)
async def test_zerocopy_buffer_types(make):
    data = make()
    want = memoryview(data).tobytes()
    tr, proto, srv, server = await connected_pair(expect=len(want))
    res = await asyncio.wait_for(tr.write_zerocopy(data), T)
    check_loopback_result(res, len(want))
    assert await asyncio.wait_for(srv.got_all, T) == want
    await shutdown(tr, proto, srv, server)


async def test_zerocopy_rejects_bad_types():
    tr, proto, srv, server = await connected_pair(expect=2)
    for bad in ("text", 12, None, object(), [1, 2]):
        with pytest.raises(TypeError):
            tr.write_zerocopy(bad)
    with pytest.raises(TypeError):
        tr.write_zerocopy(memoryview(b"abcdefgh")[::2])  # not contiguous
    # still usable afterwards
    tr.write(b"ok")
    assert await asyncio.wait_for(srv.got_all, T) == b"ok"
    assert tr.get_write_buffer_size() == 0
    await shutdown(tr, proto, srv, server)


async def test_zerocopy_bad_type_does_not_pin_buffer():
    tr, proto, srv, server = await connected_pair()
    buf = bytearray(b"abcdefgh")
    with pytest.raises(TypeError):
        tr.write_zerocopy(memoryview(buf)[::2])
    buf.extend(b"more")  # no export left behind
    await shutdown(tr, proto, srv, server)


async def test_zerocopy_buffer_is_pinned_while_in_flight(fd_guard):
    n = 16 << 20
    buf = bytearray(rand_bytes(n, 7))
    want = bytes(buf)
    tr, proto, srv, server = await connected_pair(paused_server=True, expect=n)
    fut = tr.write_zerocopy(buf)
    await asyncio.sleep(0.05)
    assert not fut.done()
    with pytest.raises(BufferError):
        buf.extend(b"x")
    with pytest.raises(BufferError):
        del buf[:]
    assert len(buf) == n
    srv.transport.resume_reading()
    res = await asyncio.wait_for(fut, 30)
    check_loopback_result(res, n)
    buf.extend(b"x")  # released: resizing works again
    del buf[:]
    assert len(buf) == 0
    assert await asyncio.wait_for(srv.got_all, 30) == want
    await shutdown(tr, proto, srv, server)


async def test_zerocopy_cancel_future(fd_guard):
    n = 16 << 20
    buf = bytearray(rand_bytes(n, 8))
    want = bytes(buf)
    tr, proto, srv, server = await connected_pair(paused_server=True, expect=n)
    fut = tr.write_zerocopy(buf)
    await asyncio.sleep(0.05)
    assert not fut.done()
    fut.cancel()
    await asyncio.sleep(0)
    assert fut.cancelled()
    # the kernel still holds the pages: the buffer stays exported
    with pytest.raises(BufferError):
        buf.extend(b"x")
    srv.transport.resume_reading()
    got = await asyncio.wait_for(srv.got_all, 30)
    assert got == want  # cancelling did not unsend or truncate anything
    # once the last notification arrives, the buffer is released
    for _ in range(500):
        try:
            buf.extend(b"x")
            break
        except BufferError:
            await asyncio.sleep(0.01)
    else:
        pytest.fail("the buffer was never released after the cancelled zero-copy write")
    assert tr.get_write_buffer_size() == 0
    # the transport still works
    tr.write(b"tail")
    srv.expect = n + 4
    srv.got_all = asyncio.get_running_loop().create_future()
    assert (await asyncio.wait_for(srv.got_all, T))[n:] == b"tail"
    await shutdown(tr, proto, srv, server)


async def test_zerocopy_after_close_fails():
    tr, proto, srv, server = await connected_pair()
    tr.close()
    fut = tr.write_zerocopy(b"data")
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(fut, T)
    await asyncio.wait_for(proto.lost, T)
    fut2 = tr.write_zerocopy(bytearray(b"data"))
    with pytest.raises(OSError):
        await asyncio.wait_for(fut2, T)
    await shutdown(tr, proto, srv, server)


async def test_zerocopy_after_close_releases_buffer():
    tr, proto, srv, server = await connected_pair()
    tr.close()
    buf = bytearray(b"data")
    fut = tr.write_zerocopy(buf)
    with pytest.raises(OSError):
        await asyncio.wait_for(fut, T)
    buf.extend(b"more")
    await shutdown(tr, proto, srv, server)


async def test_zerocopy_after_write_eof_raises():
    tr, proto, srv, server = await connected_pair()
    tr.write_eof()
    with pytest.raises(RuntimeError):
        tr.write_zerocopy(b"x")
    await asyncio.wait_for(srv.eof, T)
    await shutdown(tr, proto, srv, server)


async def test_zerocopy_empty_buffer_resolves_at_once():
    tr, proto, srv, server = await connected_pair()
    for empty in (b"", bytearray(), memoryview(b"abc")[3:]):
        fut = tr.write_zerocopy(empty)
        assert fut.done()
        res = fut.result()
        assert isinstance(res, ZeroCopyResult)
        assert res.nbytes == 0
        assert res.sends == 0
    assert tr.get_write_buffer_size() == 0
    await shutdown(tr, proto, srv, server)


async def test_zerocopy_close_with_pending_zc_delivers(fd_guard):
    payload = rand_bytes(6 << 20, 9)
    tr, proto, srv, server = await connected_pair(paused_server=True, expect=len(payload))
    fut = tr.write_zerocopy(payload)
    tr.close()
    await asyncio.sleep(0.02)
    srv.transport.resume_reading()
    res = await asyncio.wait_for(fut, 30)
    check_loopback_result(res, len(payload))
    assert await asyncio.wait_for(srv.eof, 30) is None
    assert bytes(srv.data) == payload
    await shutdown(tr, proto, srv, server)


async def test_zerocopy_abort_resolves_future(fd_guard):
    """abort() with zero-copy writes queued: every future resolves, buffers are freed."""
    tr, proto, srv, server = await connected_pair(paused_server=True)
    bufs = [bytearray(8 << 20) for _ in range(4)]
    futs = [tr.write_zerocopy(b) for b in bufs]
    await asyncio.sleep(0.05)
    tr.abort()
    assert await asyncio.wait_for(proto.lost, T) is None
    # what the kernel already accepted stays queued on the socket (abort is a plain
    # close, as in asyncio) and keeps the pages until the peer reads it
    srv.transport.resume_reading()
    done, pending = await asyncio.wait(futs, timeout=T)
    assert not pending
    for f in futs:
        if f.exception() is None:
            assert f.result().nbytes == 8 << 20
        else:
            assert isinstance(f.exception(), OSError)
    assert any(f.exception() is not None for f in futs)  # not all 32 MiB got out
    for b in bufs:
        b.extend(b"x")  # all released
    assert proto.lost_calls == [None]
    await shutdown(tr, proto, srv, server)


async def test_zerocopy_stats_counters():
    loop = asyncio.get_running_loop()
    s0 = loop.stats()
    tr, proto, srv, server = await connected_pair(expect=3 * 50_000)
    results = [await asyncio.wait_for(tr.write_zerocopy(rand_bytes(50_000, i)), T)
               for i in range(3)]
    await asyncio.wait_for(srv.got_all, T)
    s1 = loop.stats()
    sends = sum(r.sends for r in results)
    if FEATURES["send_zc"]:
        assert s1["zerocopy_sends"] - s0["zerocopy_sends"] == sends
        notifs = sum(r.notifications for r in results)
        assert s1["zerocopy_notifications"] - s0["zerocopy_notifications"] == notifs >= 3
        if FEATURES["send_zc_report_usage"]:
            assert s1["copied_sends"] - s0["copied_sends"] == notifs
        assert s1["zerocopy_fallback_sends"] == s0["zerocopy_fallback_sends"]
    else:
        assert s1["zerocopy_fallback_sends"] - s0["zerocopy_fallback_sends"] == sends
    await shutdown(tr, proto, srv, server)
    # nothing of the connection stays registered in the ring
    for _ in range(100):
        if loop.stats()["inflight"] <= s0["inflight"]:
            break
        await asyncio.sleep(0.01)
    assert loop.stats()["inflight"] <= s0["inflight"]


async def test_zerocopy_with_asyncio_streams(fd_guard):
    payload = rand_bytes(2_000_000, 10)
    received = asyncio.get_running_loop().create_future()

    async def handler(reader, writer):
        received.set_result(await reader.readexactly(len(payload) + 5))
        writer.write(b"thanks")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
    writer.write(b"head:")
    res = await asyncio.wait_for(writer.transport.write_zerocopy(payload), T)
    check_loopback_result(res, len(payload))
    await writer.drain()
    assert await asyncio.wait_for(received, T) == b"head:" + payload
    assert await asyncio.wait_for(reader.read(), T) == b"thanks"
    writer.close()
    await asyncio.wait_for(writer.wait_closed(), T)
    await close_server(server)


async def test_zerocopy_many_connections_concurrently(fd_guard):
    loop = asyncio.get_running_loop()
    rng = random.Random(5)
    server_protos = []

    def factory():
        p = Collector(loop)
        server_protos.append(p)
        return p

    server = await loop.create_server(factory, "127.0.0.1", 0)

    async def one(i):
        size = rng.choice([1, 1000, 100_000, 1_000_000])
        payload = rand_bytes(size, 100 + i)
        tr, proto = await loop.create_connection(lambda: Collector(loop), "127.0.0.1",
                                                 port_of(server))
        res = await asyncio.wait_for(tr.write_zerocopy(payload), 30)
        check_loopback_result(res, size)
        tr.write_eof()
        await close_transport(tr, proto)
        return payload

    payloads = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(10))), 60)
    for _ in range(500):
        if len(server_protos) == 10 and all(p.eof.done() for p in server_protos):
            break
        await asyncio.sleep(0.01)
    assert sorted(bytes(p.data) for p in server_protos) == sorted(payloads)
    for p in server_protos:
        await close_transport(p.transport, p)
    await close_server(server)
