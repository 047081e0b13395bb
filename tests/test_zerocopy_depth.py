"""Zero-copy in depth: generations, registered buffer pools, UDP, adaptive mode, the
example file server. uringloop only (the stdlib loop has none of it)."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import sys

import pytest

import uringloop
from uringloop import ZeroCopyGenerationResult, ZeroCopyResult

from .test_tcp import close_server, rand_bytes
from .test_zerocopy import connected_pair as pair
from .test_zerocopy import shutdown

pytestmark = pytest.mark.asyncio(loop_factories=["uringloop"])
T = 10
FEATURES = uringloop.features()
needs_zc = pytest.mark.skipif(not FEATURES["send_zc"], reason="no SEND_ZC")
needs_usage = pytest.mark.skipif(not FEATURES["send_zc_report_usage"], reason="no usage report")


# -- generations ------------------------------------------------------------------------


async def test_generation_context_manager(fd_guard):
    parts = [rand_bytes(n, i) for i, n in enumerate([1, 70_000, 3000, 1 << 20])]
    want = b"head" + b"".join(parts) + b"tail"
    tr, proto, srv, server = await pair(expect=len(want))
    tr.write(b"head")
    bufs = [bytearray(p) for p in parts]
    async with tr.zerocopy_generation() as gen:
        for b in bufs:
            gen.write(b)
        with pytest.raises(BufferError):
            bufs[1].append(1)  # pinned while the generation is in flight
    tr.write(b"tail")
    res = gen.future.result()
    assert isinstance(res, ZeroCopyGenerationResult)
    assert res.writes == 4 and res.nbytes == sum(map(len, parts))
    assert res.sends >= 4 and res.zerocopy is FEATURES["send_zc"]
    if FEATURES["send_zc_report_usage"]:
        assert res.copied is True and res.copied_sends == res.sends  # loopback copies
    for b in bufs:
        b.append(1)  # all released
    assert await asyncio.wait_for(srv.got_all, T) == want
    await shutdown(tr, proto, srv, server)


async def test_generation_await_and_seal():
    tr, proto, srv, server = await pair(expect=6)
    gen = tr.zerocopy_generation()
    gen.write(b"abc")
    gen.write(memoryview(b"defxyz")[:3])
    assert not gen.closed
    res = await asyncio.wait_for(gen, T)
    assert gen.closed and gen.done()
    assert res.writes == 2 and res.nbytes == 6
    with pytest.raises(RuntimeError):
        gen.write(b"late")
    empty = await tr.zerocopy_generation()
    assert empty.writes == 0 and empty.nbytes == 0 and empty.sends == 0
    assert await asyncio.wait_for(srv.got_all, T) == b"abcdef"
    await shutdown(tr, proto, srv, server)


async def test_write_zerocopy_flush_false_joins_generation():
    tr, proto, srv, server = await pair(expect=9)
    g1 = tr.write_zerocopy(b"aaa", flush=False)
    g2 = tr.write_zerocopy(b"bbb", flush=False)
    assert g1 is g2 and isinstance(g1, uringloop.ZeroCopyGeneration) and not g1.closed
    g3 = tr.write_zerocopy(b"ccc")  # flush=True joins and seals the open generation
    assert g3 is g1 and g1.closed
    res = await asyncio.wait_for(g1, T)
    assert res.writes == 3 and res.nbytes == 9
    # with no generation open, write_zerocopy is per write again
    fut = tr.write_zerocopy(b"")
    assert isinstance(fut, asyncio.Future) and isinstance(fut.result(), ZeroCopyResult)
    g4 = tr.write_zerocopy(b"d", flush=False)
    assert tr.zerocopy_flush() is g4 and g4.closed
    assert tr.zerocopy_flush() is None
    assert (await g4).nbytes == 1
    assert await asyncio.wait_for(srv.got_all, T) == b"aaabbbccc"
    await shutdown(tr, proto, srv, server)


async def test_generation_error_after_all_released(fd_guard):
    """abort() mid-generation: it raises, but only once every buffer is released."""
    tr, proto, srv, server = await pair(paused_server=True)
    bufs = [bytearray(8 << 20) for _ in range(4)]
    gen = tr.zerocopy_generation()
    for b in bufs:
        gen.write(b)
    gen.close()
    await asyncio.sleep(0.05)
    assert not gen.done()
    tr.abort()
    await asyncio.wait_for(proto.lost, T)
    srv.transport.resume_reading()  # lets the kernel free what it had accepted
    with pytest.raises(OSError):
        await asyncio.wait_for(gen, T)
    for b in bufs:
        b.append(1)  # every buffer was released before the error was raised
    await shutdown(tr, proto, srv, server)


async def test_generation_on_closed_transport_raises():
    tr, proto, srv, server = await pair()
    tr.close()
    buf = bytearray(b"x" * 100)
    with pytest.raises(ConnectionResetError):
        async with tr.zerocopy_generation() as gen:
            gen.write(buf)
    buf.append(1)
    await shutdown(tr, proto, srv, server)


async def test_generation_body_exception_wins_and_waits():
    tr, proto, srv, server = await pair(expect=1000)
    buf = bytearray(1000)
    with pytest.raises(KeyError):
        async with tr.zerocopy_generation() as gen:
            gen.write(buf)
            raise KeyError("body")
    assert gen.done()  # the exit waited for the kernel
    buf.append(1)
    await asyncio.wait_for(srv.got_all, T)
    await shutdown(tr, proto, srv, server)


# -- pools ------------------------------------------------------------------------------


async def test_pool_send_returns_buffer_after_notification(fd_guard):
    loop = asyncio.get_running_loop()
    pool = loop.zerocopy_buffers(2, 10_000)
    assert pool.buffer_size % os.sysconf("SC_PAGE_SIZE") == 0 and pool.buffer_size >= 10_000
    assert len(pool) == 2 and pool.stats()["free"] == 2
    tr, proto, srv, server = await pair(expect=5000)
    buf = pool.acquire()
    assert pool.stats()["free"] == 1
    payload = rand_bytes(5000, 3)
    buf[:5000] = payload
    assert buf.tobytes(0, 5000) == payload
    fut = tr.write_zerocopy(buf[:5000])
    assert buf.in_flight
    with pytest.raises(BufferError):
        _ = buf.view
    with pytest.raises(BufferError):
        buf[:1] = b"x"
    res = await asyncio.wait_for(fut, T)
    assert res.nbytes == 5000
    assert pool.stats()["free"] == 2  # back in the pool once the kernel let go
    with pytest.raises(BufferError, match="returned"):
        _ = buf.view  # the old handle is dead
    assert await asyncio.wait_for(srv.got_all, T) == payload
    assert pool.registered == (pool.stats()["registered"])
    await shutdown(tr, proto, srv, server)
    pool.close()


async def test_pool_view_export_blocks_send():
    loop = asyncio.get_running_loop()
    pool = loop.zerocopy_buffers(1, 4096)
    tr, proto, srv, server = await pair()
    buf = pool.acquire()
    exported = memoryview(buf.view).cast("B")  # a derived view shares the export
    ffi_export = uringloop.zcpool.ffi.from_buffer(buf.view)  # a real export of buf.view
    with pytest.raises(BufferError, match="exported"):
        tr.write_zerocopy(buf[:10])
    uringloop.zcpool.ffi.release(ffi_export)
    exported.release()
    assert (await asyncio.wait_for(tr.write_zerocopy(buf[:10]), T)).nbytes == 10
    await shutdown(tr, proto, srv, server)
    pool.close()


async def test_pool_growth_limits_and_wait():
    loop = asyncio.get_running_loop()
    pool = loop.zerocopy_buffers(2, 4096, max_count=3, grow_by=1)
    a, b = pool.acquire(), pool.acquire()
    c = pool.acquire()  # grows by one
    assert len(pool) == 3 and pool.stats()["regions"] == 2
    with pytest.raises(BufferError, match="exhausted"):
        pool.acquire()
    waiter = asyncio.ensure_future(pool.acquire_wait())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    b.release()
    d = await asyncio.wait_for(waiter, T)
    assert d is not b and d.view.nbytes == 4096
    with pytest.raises(BufferError):
        _ = b.view
    for x in (a, c, d):
        x.release()
    assert pool.stats()["free"] == 3
    pool.close()
    with pytest.raises(RuntimeError):
        pool.acquire()


async def test_pool_buffer_of_other_loop_rejected():
    other = uringloop.new_event_loop()
    try:
        foreign = other.zerocopy_buffers(1, 4096)
        tr, proto, srv, server = await pair()
        buf = foreign.acquire()
        with pytest.raises(ValueError, match="another event loop"):
            tr.write_zerocopy(buf[:10])
        buf.view[:1] = b"x"  # still owned by the caller
        await shutdown(tr, proto, srv, server)
    finally:
        other.close()
    assert foreign.closed  # freed with its loop


async def test_pool_read_from_file_and_send(tmp_path, fd_guard):
    loop = asyncio.get_running_loop()
    data = rand_bytes(300_000, 9)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    pool = loop.zerocopy_buffers(4, 128 * 1024)
    tr, proto, srv, server = await pair(expect=len(data))
    fd = os.open(path, os.O_RDONLY)
    try:
        off = 0
        futs = []
        while off < len(data):
            buf = await pool.acquire_wait()
            n = await buf.read_from(fd, off)
            futs.append(tr.write_zerocopy(buf[:n]))
            off += n
        await asyncio.wait_for(asyncio.gather(*futs), T)
    finally:
        os.close(fd)
    assert await asyncio.wait_for(srv.got_all, T) == data
    assert pool.stats()["free"] == pool.stats()["buffers"]
    await shutdown(tr, proto, srv, server)
    pool.close()


# -- adaptive mode ----------------------------------------------------------------------


@needs_zc
@needs_usage
async def test_auto_mode_switches_to_copy_on_loopback():
    tr, proto, srv, server = await pair(mode=None, expect=20 * 50_000)
    assert tr.get_zerocopy_mode() == "auto"
    results = [await asyncio.wait_for(tr.write_zerocopy(rand_bytes(50_000, i)), T)
               for i in range(20)]
    assert results[0].zerocopy and results[0].fallback is None
    assert results[-1].zerocopy is False and results[-1].fallback == "adaptive"
    assert results[-1].copied is True and results[-1].notifications == 0
    st = tr.zerocopy_stats()
    assert st["using"] == "copy" and st["switches"] == 1
    assert st["copied_notifications"] == st["notifications"] >= 3
    assert len(await asyncio.wait_for(srv.got_all, T)) == 20 * 50_000
    await shutdown(tr, proto, srv, server)


async def test_never_and_always_modes():
    tr, proto, srv, server = await pair(mode="never", expect=2000)
    buf = bytearray(1000)
    res = await asyncio.wait_for(tr.write_zerocopy(buf), T)
    assert res.zerocopy is False and res.fallback == "never" and res.copied is True
    buf.append(0)  # free after the send's completion
    tr.set_zerocopy_mode("always")
    res = await asyncio.wait_for(tr.write_zerocopy(b"y" * 1000), T)
    assert res.zerocopy is FEATURES["send_zc"]
    with pytest.raises(ValueError):
        tr.set_zerocopy_mode("sometimes")
    await asyncio.wait_for(srv.got_all, T)
    await shutdown(tr, proto, srv, server)


async def test_loop_default_mode():
    loop = asyncio.get_running_loop()
    assert loop.get_zerocopy_mode() == "auto"
    loop.set_zerocopy_mode("never")
    try:
        tr, proto, srv, server = await pair(mode=None, expect=3)
        assert tr.get_zerocopy_mode() == "never"
        assert (await tr.write_zerocopy(b"abc")).fallback == "never"
        await asyncio.wait_for(srv.got_all, T)
        await shutdown(tr, proto, srv, server)
    finally:
        loop.set_zerocopy_mode("auto")


async def test_unix_socket_write_zerocopy_copies(tmp_path):
    """SEND_ZC rejects AF_UNIX: auto mode uses plain sends instead of failing."""
    loop = asyncio.get_running_loop()
    got = loop.create_future()

    async def handler(reader, writer):
        got.set_result(await reader.readexactly(5))
        writer.close()

    path = str(tmp_path / "s")
    server = await asyncio.start_unix_server(handler, path)
    reader, writer = await asyncio.open_unix_connection(path)
    res = await asyncio.wait_for(writer.transport.write_zerocopy(b"hello"), T)
    assert res.zerocopy is False and res.fallback == "unsupported"
    assert await asyncio.wait_for(got, T) == b"hello"
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()


# -- gathered plain sends ---------------------------------------------------------------
# In plain mode ("never", or "auto" once loopback's copies are reported) the zero-copy
# writes queued at the head of the queue, with the write() data between them, go out as
# one SENDMSG whose iovecs point into the writes' own buffers.


def mixed_batch(n: int, size: int, seed: int):
    """n zero-copy buffers of ``size`` + i bytes and the write() chunks between them."""
    bufs = [bytearray(rand_bytes(size + i, seed + i)) for i in range(n)]
    small = [b"<%d>" % i * (1 + i % 3) for i in range(n)]
    want = b"".join(bytes(b) + s for b, s in zip(bufs, small, strict=True))
    return bufs, small, want


def queue_mixed(tr, bufs, small):
    futs = []
    for b, s in zip(bufs, small, strict=True):
        futs.append(tr.write_zerocopy(b))
        tr.write(s)
    return futs


def shrink_sndbuf(tr, size=16384):
    # (the receive side keeps its size: tiny TCP windows crawl on loopback)
    tr.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def released(bufs):
    for b in bufs:
        b.append(0)  # BufferError while the transport still holds it
        del b[-1]


@pytest.mark.parametrize("mode", ["never", "auto"])
async def test_plain_mode_gathers_writes_in_order(mode, fd_guard):
    loop = asyncio.get_running_loop()
    bufs, small, want = mixed_batch(60, 1000, 100)
    tr, proto, srv, server = await pair(mode=mode, expect=3 * 3000 + len(want))
    if mode == "auto":  # get the socket switched to plain sends first
        for _ in range(3):
            await asyncio.wait_for(tr.write_zerocopy(b"z" * 3000), T)
        assert tr.zerocopy_stats()["using"] == "copy"
    else:
        tr.write(b"z" * 9000)
    pool = loop.zerocopy_buffers(1, 4096)
    pbuf = pool.acquire()
    pbuf[:5] = b"POOL!"
    before, st0 = loop.stats(), tr.zerocopy_stats()
    futs = queue_mixed(tr, bufs[:30], small[:30])
    futs.append(tr.write_zerocopy(pbuf[:5]))  # a pool buffer in the batch too
    futs += queue_mixed(tr, bufs[30:], small[30:])
    with pytest.raises(BufferError):
        bufs[7].append(0)  # exported until the send that covers it completed
    results = await asyncio.wait_for(asyncio.gather(*futs), T)
    cut = sum(map(len, bufs[:30] + small[:30]))
    want = want[:cut] + b"POOL!" + want[cut:]
    got = await asyncio.wait_for(srv.got_all, T)
    assert got == b"z" * 9000 + want
    released(bufs)
    assert pool.stats()["free"] == 1  # the pool buffer went back after its send
    fallback = "adaptive" if mode == "auto" else "never"
    for res, b in zip(results, bufs[:30] + [b"POOL!"] + bufs[30:], strict=True):
        assert res.nbytes == len(b) and res.zerocopy is False and res.copied is True
        assert res.fallback == fallback and res.sends >= 1 and res.notifications == 0
        assert res.copied_sends == res.sends
    after, st1 = loop.stats(), tr.zerocopy_stats()
    # gathered: a few SENDMSGs for 61 zero-copy writes and 60 write()s, not 121 sends
    assert after["submitted"] - before["submitted"] < 15
    assert st1["plain_sends"] - st0["plain_sends"] == sum(r.sends for r in results)
    assert after["zerocopy_fallback_sends"] - before["zerocopy_fallback_sends"] == \
        sum(r.sends for r in results)
    assert st1["zerocopy_sends"] == st0["zerocopy_sends"]
    assert tr.get_write_buffer_size() == 0
    await shutdown(tr, proto, srv, server)
    pool.close()


async def test_plain_mode_gathered_send_is_capped(monkeypatch):
    """A gathered send stops adding writes at GATHER_BYTES (at least one write each)."""
    from uringloop import zerocopy

    monkeypatch.setattr(zerocopy, "GATHER_BYTES", 2500)
    sizes = []
    on_sendv = zerocopy.ZeroCopyStreamMixin._zc_on_sendv

    def spy(self, res, flags):
        sizes.append([len(i) if type(i) is bytes else i.nbytes for i in self._zc_batch.items])
        on_sendv(self, res, flags)

    monkeypatch.setattr(zerocopy.ZeroCopyStreamMixin, "_zc_on_sendv", spy)
    bufs = [bytearray(rand_bytes(1000, 800 + i)) for i in range(10)] + [bytearray(9000)]
    tr, proto, srv, server = await pair(mode="never", expect=19_000 + 20)
    tr.write(b"x" * 10)
    futs = [tr.write_zerocopy(b) for b in bufs]
    tr.write(b"y" * 10)
    await asyncio.wait_for(asyncio.gather(*futs), T)
    assert await asyncio.wait_for(srv.got_all, T) == \
        b"x" * 10 + b"".join(bufs) + b"y" * 10
    # writes join while the batch holds less than the cap (the last one may overshoot it);
    # the trailing write() data then goes out as a plain SEND of its own
    assert sizes == [[10, 1000, 1000, 1000], [1000, 1000, 1000], [1000, 1000, 1000],
                     [1000, 9000]]
    await shutdown(tr, proto, srv, server)


async def test_plain_mode_short_sends_resume_at_the_byte(fd_guard):
    """A peer that does not read: the gathered send is cut anywhere (inside a zero-copy
    buffer or a write() chunk) and the next send resumes at that byte."""
    bufs, small, want = mixed_batch(40, 50_021, 200)
    tr, proto, srv, server = await pair(mode="never", paused_server=True, expect=len(want))
    shrink_sndbuf(tr)
    futs = queue_mixed(tr, bufs, small)
    await asyncio.sleep(0.1)
    assert not all(f.done() for f in futs)  # the kernel cannot take 2 MB
    assert tr.get_write_buffer_size() > 0
    srv.transport.resume_reading()
    results = await asyncio.wait_for(asyncio.gather(*futs), 30)
    assert await asyncio.wait_for(srv.got_all, 30) == want
    released(bufs)
    assert [r.nbytes for r in results] == [len(b) for b in bufs]
    assert any(r.sends >= 2 for r in results)  # some buffer was split between two sends
    assert tr.get_write_buffer_size() == 0
    await shutdown(tr, proto, srv, server)


async def test_plain_mode_cancel_keeps_buffers_until_sent(fd_guard):
    bufs, small, want = mixed_batch(20, 100_003, 300)
    tr, proto, srv, server = await pair(mode="never", paused_server=True, expect=len(want))
    shrink_sndbuf(tr)
    futs = queue_mixed(tr, bufs, small)
    await asyncio.sleep(0.05)
    for f in futs:
        f.cancel()
    await asyncio.sleep(0)
    with pytest.raises(BufferError):
        bufs[-1].append(0)  # cancelled, but not sent yet: still exported
    srv.transport.resume_reading()
    assert await asyncio.wait_for(srv.got_all, 30) == want  # nothing unsent
    await asyncio.sleep(0.01)
    released(bufs)
    await shutdown(tr, proto, srv, server)


async def test_plain_mode_peer_reset_mid_batch_fails_the_rest(fd_guard):
    bufs, small, want = mixed_batch(40, 50_021, 400)
    tr, proto, srv, server = await pair(mode="never", paused_server=True)
    shrink_sndbuf(tr)
    futs = queue_mixed(tr, bufs, small)
    for _ in range(100):
        await asyncio.sleep(0.01)
        if tr.get_write_buffer_size() < len(want):
            break  # a first part was sent: the rest waits for the peer
    assert not all(f.done() for f in futs)
    ssock = srv.transport.get_extra_info("socket")
    ssock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    srv.transport.abort()  # closes with a RST
    done, pending = await asyncio.wait(futs, timeout=T)
    assert not pending  # every future resolved: sent in full, or failed
    failed = [f for f in futs if f.exception() is not None]
    assert failed and all(isinstance(f.exception(), OSError) for f in failed)
    # in order: a write can only have gone out whole if every earlier one did
    ok = [f.exception() is None for f in futs]
    assert ok == sorted(ok, reverse=True)
    released(bufs)  # every buffer released, failed ones included
    await asyncio.wait_for(proto.lost, T)
    await asyncio.wait_for(srv.lost, T)
    await close_server(server)


async def test_plain_mode_abort_mid_batch_fails_the_unsent(fd_guard):
    bufs, small, want = mixed_batch(40, 50_021, 450)
    tr, proto, srv, server = await pair(mode="never", paused_server=True)
    shrink_sndbuf(tr)
    futs = queue_mixed(tr, bufs, small)
    await asyncio.sleep(0.05)
    assert not all(f.done() for f in futs)
    tr.abort()  # cancels the gathered send in flight
    done, pending = await asyncio.wait(futs, timeout=T)
    assert not pending
    ok = [f.exception() is None for f in futs]
    assert not all(ok) and ok == sorted(ok, reverse=True)
    assert all(isinstance(f.exception(), OSError) for f in futs if f.exception())
    released(bufs)
    await asyncio.wait_for(proto.lost, T)
    srv.transport.resume_reading()
    await shutdown(tr, proto, srv, server)


async def test_plain_mode_batch_error_raises_on_every_write():
    """The gathered SENDMSG itself fails: every write it covered gets the error."""
    tr, proto, srv, server = await pair(mode="never")
    ssock = srv.transport.get_extra_info("socket")
    ssock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    srv.transport.abort()
    await asyncio.wait_for(srv.lost, T)
    tr.pause_reading()  # the reset must reach the send, not the receive
    await asyncio.sleep(0.05)
    bufs, small, _ = mixed_batch(10, 1000, 500)
    futs = queue_mixed(tr, bufs, small)
    done, pending = await asyncio.wait(futs, timeout=T)
    assert not pending
    errs = [f.exception() for f in futs]
    assert all(isinstance(e, OSError) and e.errno in (errno.ECONNRESET, errno.EPIPE)
               for e in errs), errs
    released(bufs)
    await asyncio.wait_for(proto.lost, T)
    await close_server(server)


async def test_plain_mode_probe_is_sent_alone(monkeypatch):
    """auto mode switched to copy still sends its periodic SEND_ZC probe, on its own."""
    from uringloop.zerocopy import ZeroCopyState

    monkeypatch.setattr(ZeroCopyState, "PROBE_INTERVAL", 8)
    bufs, small, want = mixed_batch(30, 2000, 600)
    tr, proto, srv, server = await pair(mode=None, expect=3 * 100 + len(want))
    for _ in range(3):
        await asyncio.wait_for(tr.write_zerocopy(b"p" * 100), T)
    st0 = tr.zerocopy_stats()
    if not (FEATURES["send_zc"] and FEATURES["send_zc_report_usage"]):
        pytest.skip("auto mode cannot switch without SEND_ZC usage reports")
    assert st0["using"] == "copy"
    futs = queue_mixed(tr, bufs, small)
    results = await asyncio.wait_for(asyncio.gather(*futs), T)
    assert await asyncio.wait_for(srv.got_all, T) == b"p" * 300 + want
    probes = [i for i, r in enumerate(results) if r.zerocopy]
    assert len(probes) == 30 // 8  # one SEND_ZC every 8 sends
    assert all(results[i].sends == 1 and results[i].notifications == 1 for i in probes)
    st1 = tr.zerocopy_stats()
    assert st1["zerocopy_sends"] - st0["zerocopy_sends"] == len(probes)
    assert st1["plain_sends"] - st0["plain_sends"] == 30 - len(probes)
    assert st1["using"] == "copy"  # the probes were copied too (loopback)
    released(bufs)
    await shutdown(tr, proto, srv, server)


async def test_always_mode_is_not_gathered():
    bufs, small, want = mixed_batch(10, 3000, 700)
    tr, proto, srv, server = await pair(mode="always", expect=len(want))
    results = await asyncio.wait_for(asyncio.gather(*queue_mixed(tr, bufs, small)), T)
    assert await asyncio.wait_for(srv.got_all, T) == want
    for r in results:
        assert r.zerocopy is FEATURES["send_zc"]
        assert r.fallback == (None if FEATURES["send_zc"] else "unsupported")
    released(bufs)
    await shutdown(tr, proto, srv, server)


# -- UDP --------------------------------------------------------------------------------


class Sink(asyncio.DatagramProtocol):
    def __init__(self, n):
        self.n = n
        self.got = []
        self.done = asyncio.get_running_loop().create_future()

    def datagram_received(self, data, addr):
        self.got.append(data)
        if len(self.got) >= self.n and not self.done.done():
            self.done.set_result(None)


async def udp_pair(n, connected=False, mode="always"):
    loop = asyncio.get_running_loop()
    rt, sink = await loop.create_datagram_endpoint(lambda: Sink(n), local_addr=("127.0.0.1", 0))
    addr = rt.get_extra_info("sockname")
    if connected:
        st, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=addr)
    else:
        st, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                    family=socket.AF_INET)
    st.set_zerocopy_mode(mode)
    rt.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    return rt, sink, st, addr


@pytest.mark.parametrize("connected", [False, True])
async def test_udp_sendto_zerocopy_in_order_with_sendto(connected, fd_guard):
    rt, sink, st, addr = await udp_pair(40, connected)
    dest = None if connected else addr
    futs = []
    for i in range(40):
        payload = i.to_bytes(2, "big") * (100 + i)
        if i % 2:
            futs.append(st.sendto_zerocopy(bytearray(payload), dest))
        else:
            st.sendto(payload, dest)
    results = await asyncio.wait_for(asyncio.gather(*futs), T)
    await asyncio.wait_for(sink.done, T)
    assert [int.from_bytes(d[:2], "big") for d in sink.got] == list(range(40))
    for r in results:
        assert isinstance(r, ZeroCopyResult) and r.sends == 1
        assert r.zerocopy is FEATURES["send_zc"]
    assert st.get_write_buffer_size() == 0
    rt.close()
    st.close()


async def test_udp_sendto_zerocopy_many_with_pool(fd_guard):
    loop = asyncio.get_running_loop()
    pool = loop.zerocopy_buffers(8, 65536)
    rt, sink, st, addr = await udp_pair(100)
    bufs = [pool.acquire() for _ in range(8)]
    for i, b in enumerate(bufs):
        b[:4] = i.to_bytes(4, "big")
    items = [b[:1000 + i] for i, b in enumerate(bufs)]
    items += [bytes([i]) * 500 for i in range(92)]
    res = await asyncio.wait_for(st.sendto_zerocopy_many(items, addr), T)
    assert res.sends == 100 and res.nbytes == sum(len(x) for x in items)
    if FEATURES["send_zc"]:
        assert res.notifications == res.sends and res.zerocopy
    assert pool.stats()["free"] == 8  # every pool buffer came back
    await asyncio.wait_for(sink.done, T)
    assert [int.from_bytes(d[:4], "big") for d in sink.got[:8]] == list(range(8))
    assert [len(d) for d in sink.got[:8]] == [1000 + i for i in range(8)]
    empty = await st.sendto_zerocopy_many([], addr)
    assert empty.sends == 0
    rt.close()
    st.close()
    pool.close()


async def test_udp_sendto_zerocopy_errors():
    rt, sink, st, addr = await udp_pair(1)
    with pytest.raises(TypeError):
        st.sendto_zerocopy("text", addr)
    buf = bytearray(70_000)
    with pytest.raises(OSError) as ei:  # too big for one datagram
        await asyncio.wait_for(st.sendto_zerocopy_many([b"ok", buf, b"ok"], addr), T)
    assert ei.value.errno == errno.EMSGSIZE
    buf.append(0)  # released before the error was raised
    assert not st.is_closing()  # not fatal, as for sendto()
    await asyncio.wait_for(sink.done, T)
    st.close()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(st.sendto_zerocopy(b"late", addr), T)
    rt.close()


@needs_zc
@needs_usage
async def test_udp_auto_mode_switches_on_loopback():
    rt, sink, st, addr = await udp_pair(30, mode="auto")
    for _ in range(30):
        res = await asyncio.wait_for(st.sendto_zerocopy(b"d" * 2000, addr), T)
    assert res.zerocopy is False and res.fallback == "adaptive"
    assert st.zerocopy_stats()["using"] == "copy"
    await asyncio.wait_for(sink.done, T)
    rt.close()
    st.close()


async def test_udp_abort_with_queued_zerocopy_resolves():
    rt, sink, st, addr = await udp_pair(1)
    bufs = [bytearray(1000) for _ in range(200)]
    fut = st.sendto_zerocopy_many(bufs, addr)
    st.abort()
    with pytest.raises(OSError):
        await asyncio.wait_for(fut, T)
    for b in bufs:
        b.append(0)
    rt.close()


# -- the example file server ------------------------------------------------------------


async def test_file_server_50_clients(tmp_path, fd_guard):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
    try:
        import zerocopy_file_client as client
        import zerocopy_file_server as fileserver
    finally:
        sys.path.pop(0)
    path = tmp_path / "big.bin"
    path.write_bytes(rand_bytes(3 << 20, 11))
    server = await fileserver.serve_file(str(path), chunk=64 * 1024, window=3,
                                         pool_buffers=32)
    port = server.sockets[0].getsockname()[1]
    await asyncio.wait_for(
        client.run_clients("127.0.0.1", port, 50, client.sha256_file(str(path))), 60)
    pool = server.zc_pool
    assert pool.stats()["free"] == pool.stats()["buffers"]
    await fileserver.close_file_server(server)
