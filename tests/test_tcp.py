"""TCP transports, servers, streams and ``sock_*`` operations, on uringloop and asyncio."""

from __future__ import annotations

import asyncio
import errno
import random
import socket
import struct

import pytest

import uringloop

LOOPS = {"uringloop": uringloop.new_event_loop, "asyncio": asyncio.new_event_loop}
T = 10  # seconds: the bound on every wait in this file


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


HAS_IPV6 = _has_ipv6_loopback()
needs_ipv6 = pytest.mark.skipif(not HAS_IPV6, reason="IPv6 loopback ::1 is not available")


def rand_bytes(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


# -- protocols -------------------------------------------------------------------------


class Echo(asyncio.Protocol):
    """Echoes everything; closes its side on EOF (after the echo is flushed)."""

    def __init__(self):
        self.lost = []
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        return False  # close

    def connection_lost(self, exc):
        self.lost.append(exc)


class Collector(asyncio.Protocol):
    """Collects bytes; records every callback."""

    def __init__(self, loop, expect: int | None = None):
        self.loop = loop
        self.expect = expect
        self.data = bytearray()
        self.events = []
        self.transport = None
        self.made = loop.create_future()
        self.got_all = loop.create_future()
        self.eof = loop.create_future()
        self.lost = loop.create_future()
        self.lost_calls = []
        self.paused = 0
        self.resumed = 0

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")
        self.made.set_result(transport)

    def data_received(self, data):
        assert isinstance(data, bytes)
        assert not self.eof.done(), "data after EOF"
        self.events.append("data")
        self.data += data
        if self.expect is not None and len(self.data) >= self.expect and not self.got_all.done():
            self.got_all.set_result(bytes(self.data))

    def eof_received(self):
        self.events.append("eof")
        self.eof.set_result(None)
        return True  # keep the transport open (the test decides)

    def pause_writing(self):
        self.paused += 1

    def resume_writing(self):
        self.resumed += 1

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost_calls.append(exc)
        if not self.lost.done():
            self.lost.set_result(exc)


class BufferedCollector(asyncio.BufferedProtocol):
    def __init__(self, loop, size: int, expect: int, echo: bool = False):
        self.buf = bytearray(size)
        self.data = bytearray()
        self.expect = expect
        self.echo = echo
        self.calls = 0
        self.requested = []
        self.got_all = loop.create_future()
        self.lost = loop.create_future()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        self.requested.append(sizehint)
        return self.buf

    def buffer_updated(self, nbytes):
        assert 0 < nbytes <= len(self.buf)
        self.calls += 1
        chunk = bytes(self.buf[:nbytes])
        self.data += chunk
        if self.echo:
            self.transport.write(chunk)
        if len(self.data) >= self.expect and not self.got_all.done():
            self.got_all.set_result(bytes(self.data))

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


async def start_echo_server(host="127.0.0.1", **kw):
    loop = asyncio.get_running_loop()
    protos = []

    def factory():
        p = Echo()
        protos.append(p)
        return p

    server = await loop.create_server(factory, host, 0, **kw)
    return server, protos


def port_of(server, family=socket.AF_INET):
    for s in server.sockets:
        if s.family == family:
            return s.getsockname()[1]
    raise AssertionError("no socket of that family")


async def close_server(server):
    server.close()
    await asyncio.wait_for(server.wait_closed(), T)


async def close_transport(tr, proto):
    tr.close()
    await asyncio.wait_for(proto.lost, T)


async def echo_roundtrip(port, payload, host="127.0.0.1"):
    loop = asyncio.get_running_loop()
    tr, proto = await asyncio.wait_for(
        loop.create_connection(lambda: Collector(loop, len(payload)), host, port), T
    )
    tr.write(payload)
    got = await asyncio.wait_for(proto.got_all, T)
    await close_transport(tr, proto)
    return got


# -- servers and connections -----------------------------------------------------------


async def connect_to_plain_peer(loop):
    """A transport connected to a plain blocking socket that the test drives by hand."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    try:
        tr, proto = await loop.create_connection(lambda: Collector(loop), *lsock.getsockname())
        peer, _ = lsock.accept()
    finally:
        lsock.close()
    return tr, proto, peer


@pytest.mark.parametrize("size", [1, 1000, 65536, 3_000_000])
async def test_echo_exact(size, fd_guard):
    server, protos = await start_echo_server()
    payload = rand_bytes(size, size)
    got = await echo_roundtrip(port_of(server), payload)
    assert got == payload
    await close_server(server)


async def test_echo_many_connections_at_once(fd_guard):
    server, _ = await start_echo_server()
    port = port_of(server)
    rng = random.Random(1234)
    sizes = [rng.choice([1, 17, 4096, 65537, 200_000, 1_000_000]) for _ in range(20)]
    payloads = [rand_bytes(n, i) for i, n in enumerate(sizes)]
    results = await asyncio.wait_for(
        asyncio.gather(*(echo_roundtrip(port, p) for p in payloads)), 60
    )
    for got, want in zip(results, payloads, strict=True):
        assert got == want
    await close_server(server)


async def test_echo_many_small_writes_in_order():
    server, _ = await start_echo_server()
    loop = asyncio.get_running_loop()
    chunks = [struct.pack("!I", i) * (i % 7 + 1) for i in range(3000)]
    want = b"".join(chunks)
    tr, proto = await loop.create_connection(lambda: Collector(loop, len(want)),
                                             "127.0.0.1", port_of(server))
    for i, c in enumerate(chunks):
        tr.write(c if i % 3 else bytearray(c) if i % 2 else memoryview(c))
        if i % 500 == 0:
            await asyncio.sleep(0)
    assert await asyncio.wait_for(proto.got_all, T) == want
    await close_transport(tr, proto)
    await close_server(server)


async def test_large_writes_in_one_iteration_short_sends_keep_order(fd_guard):
    """Writes queued in one iteration adding up to more than 32 KiB go out gathered
    (one SENDMSG over their buffers); with a tiny send buffer and a slow reader most
    sends come back short, yet every byte arrives once and in order."""
    loop = asyncio.get_running_loop()
    tr, proto, peer = await connect_to_plain_peer(loop)
    tr.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    rng = random.Random(7)
    chunks = [rand_bytes(rng.randint(1, 9000), i) for i in range(400)]
    for rnd in range(3):
        for c in chunks[rnd::3]:
            tr.write(c)  # one iteration: gathered
        await asyncio.sleep(0)
    want = b"".join(b"".join(chunks[rnd::3]) for rnd in range(3))
    peer.setblocking(False)
    got = bytearray()
    deadline = loop.time() + T
    while len(got) < len(want) and loop.time() < deadline:
        try:
            got += peer.recv(3000)  # small reads: the sender sees short sends
        except BlockingIOError:
            await asyncio.sleep(0.001)
    assert bytes(got) == want
    for _ in range(500):
        if not tr.get_write_buffer_size():
            break
        await asyncio.sleep(0.01)
    assert tr.get_write_buffer_size() == 0
    peer.close()
    tr.close()
    await asyncio.wait_for(proto.lost, T)


async def test_abort_during_gathered_send(fd_guard):
    """abort() while a gathered send is in flight: connection_lost once, nothing hangs."""
    loop = asyncio.get_running_loop()
    tr, proto, peer = await connect_to_plain_peer(loop)
    for i in range(64):
        tr.write(rand_bytes(64 * 1024, i))  # 4 MiB: more than the socket buffers take
    await asyncio.sleep(0.02)  # the gathered send is in flight, blocked on the peer
    tr.abort()
    assert await asyncio.wait_for(proto.lost, T) is None
    assert len(proto.lost_calls) == 1
    peer.close()


async def test_write_copies_caller_buffer():
    """write(bytearray) must snapshot the data; mutating it afterwards changes nothing."""
    server, _ = await start_echo_server()
    loop = asyncio.get_running_loop()
    tr, proto = await loop.create_connection(lambda: Collector(loop, 8),
                                             "127.0.0.1", port_of(server))
    buf = bytearray(b"abcdefgh")
    tr.write(buf)
    buf[:] = b"XXXXXXXX"
    assert await asyncio.wait_for(proto.got_all, T) == b"abcdefgh"
    await close_transport(tr, proto)
    await close_server(server)


@pytest.mark.parametrize("bufsize", [100, 65536])
async def test_buffered_protocol_server_and_client(bufsize, fd_guard):
    loop = asyncio.get_running_loop()
    payload = rand_bytes(500_000, bufsize)
    servers = []

    def factory():
        p = BufferedCollector(loop, bufsize, len(payload), echo=True)
        servers.append(p)
        return p

    server = await loop.create_server(factory, "127.0.0.1", 0)
    tr, client = await loop.create_connection(
        lambda: BufferedCollector(loop, bufsize, len(payload)), "127.0.0.1", port_of(server)
    )
    tr.write(payload)
    got = await asyncio.wait_for(client.got_all, T)
    assert got == payload
    assert await asyncio.wait_for(servers[0].got_all, T) == payload
    if bufsize == 100:
        assert client.calls >= len(payload) // 100
        assert servers[0].calls >= len(payload) // 100
    tr.close()
    await asyncio.wait_for(client.lost, T)
    await asyncio.wait_for(servers[0].lost, T)
    await close_server(server)


async def test_streams_readexactly_readline(fd_guard):
    async def handler(reader, writer):
        try:
            line = await reader.readline()
            n = int(line)
            blob = await reader.readexactly(n)
            writer.write(b"len=%d\n" % len(blob))
            writer.write(blob[::-1])
            writer.write(b"last line\n")
            await writer.drain()
            assert await reader.read() == b""  # client's EOF
        finally:
            writer.close()
            await writer.wait_closed()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port_of(server)), T
    )
    blob = rand_bytes(1_234_567, 7)
    writer.write(b"%d\n" % len(blob))
    writer.write(blob)
    await writer.drain()
    assert await asyncio.wait_for(reader.readline(), T) == b"len=1234567\n"
    assert await asyncio.wait_for(reader.readexactly(len(blob)), T) == blob[::-1]
    assert await asyncio.wait_for(reader.readuntil(b"\n"), T) == b"last line\n"
    assert writer.can_write_eof()
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), T) == b""
    assert reader.at_eof()
    writer.close()
    await asyncio.wait_for(writer.wait_closed(), T)
    await close_server(server)


async def test_streams_incomplete_read_on_eof():
    async def handler(reader, writer):
        writer.write(b"short")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
    with pytest.raises(asyncio.IncompleteReadError) as ei:
        await asyncio.wait_for(reader.readexactly(100), T)
    assert ei.value.partial == b"short"
    writer.close()
    await writer.wait_closed()
    await close_server(server)


@needs_ipv6
async def test_ipv6_loopback(fd_guard):
    server, _ = await start_echo_server(host="::1")
    assert server.sockets[0].family == socket.AF_INET6
    port = port_of(server, socket.AF_INET6)
    payload = rand_bytes(100_000, 6)
    loop = asyncio.get_running_loop()
    tr, proto = await loop.create_connection(lambda: Collector(loop, len(payload)), "::1", port)
    assert tr.get_extra_info("peername")[:2] == ("::1", port)
    assert tr.get_extra_info("socket").family == socket.AF_INET6
    tr.write(payload)
    assert await asyncio.wait_for(proto.got_all, T) == payload
    await close_transport(tr, proto)
    await close_server(server)


async def test_reuse_port(fd_guard):
    if not hasattr(socket, "SO_REUSEPORT"):
        pytest.skip("SO_REUSEPORT is not available")
    loop = asyncio.get_running_loop()
    s1 = await loop.create_server(Echo, "127.0.0.1", 0, reuse_port=True)
    port = port_of(s1)
    s2 = await loop.create_server(Echo, "127.0.0.1", port, reuse_port=True)
    for s in (s1, s2):
        assert s.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
    # the kernel spreads connections over both; every one must be served
    for i in range(10):
        assert await echo_roundtrip(port, b"hello %d" % i) == b"hello %d" % i
    await close_server(s1)
    await close_server(s2)


async def test_dual_stack_host_none(fd_guard):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, None, 0)
    families = {s.family for s in server.sockets}
    assert socket.AF_INET in families
    assert await echo_roundtrip(port_of(server, socket.AF_INET), b"v4") == b"v4"
    if HAS_IPV6 and socket.AF_INET6 in families:
        assert await echo_roundtrip(port_of(server, socket.AF_INET6), b"v6", "::1") == b"v6"
    await close_server(server)


async def test_connect_accepted_socket(fd_guard):
    loop = asyncio.get_running_loop()
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    lsock.setblocking(False)
    csock = socket.socket()
    csock.setblocking(False)
    try:
        connect = loop.create_task(loop.sock_connect(csock, lsock.getsockname()))
        conn, _ = await asyncio.wait_for(loop.sock_accept(lsock), T)
        await asyncio.wait_for(connect, T)
    finally:
        lsock.close()
    srv_tr, srv = await loop.connect_accepted_socket(Echo, conn)
    payload = rand_bytes(300_000, 3)
    tr, proto = await loop.create_connection(lambda: Collector(loop, len(payload)), sock=csock)
    tr.write(payload)
    assert await asyncio.wait_for(proto.got_all, T) == payload
    assert srv_tr.get_extra_info("peername") == tr.get_extra_info("sockname")
    await close_transport(tr, proto)
    for _ in range(100):
        if srv.lost:
            break
        await asyncio.sleep(0.01)
    assert srv.lost == [None]


async def test_get_extra_info(fd_guard):
    loop = asyncio.get_running_loop()
    server_protos = []

    def factory():
        p = Collector(loop)
        server_protos.append(p)
        return p

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = port_of(server)
    tr, proto = await loop.create_connection(lambda: Collector(loop), "127.0.0.1", port)
    await asyncio.wait_for(proto.made, T)
    peer = tr.get_extra_info("peername")
    name = tr.get_extra_info("sockname")
    assert peer == ("127.0.0.1", port)
    assert name[0] == "127.0.0.1" and name[1] > 0
    sock = tr.get_extra_info("socket")
    assert sock.family == socket.AF_INET
    assert sock.type == socket.SOCK_STREAM
    assert sock.fileno() >= 0
    assert sock.getpeername() == peer
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    assert tr.get_extra_info("nonexistent", "dflt") == "dflt"
    for _ in range(500):
        if server_protos:
            break
        await asyncio.sleep(0.01)
    srv_tr = await asyncio.wait_for(server_protos[0].made, T)
    assert srv_tr.get_extra_info("peername") == name
    assert srv_tr.get_extra_info("sockname") == peer
    assert tr.get_protocol() is proto
    assert not tr.is_closing()
    await close_transport(tr, proto)
    assert tr.is_closing()
    await asyncio.wait_for(server_protos[0].eof, T)
    await close_transport(srv_tr, server_protos[0])
    await close_server(server)


async def test_extra_info_survives_close_and_fd_table_is_cleared(fd_guard):
    """Extra info read while open stays readable after close; the loop forgets the fd."""
    loop = asyncio.get_running_loop()
    server_protos = []

    def factory():
        server_protos.append(Collector(loop))
        return server_protos[-1]

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = port_of(server)
    tr, proto = await loop.create_connection(lambda: Collector(loop), "127.0.0.1", port)
    await asyncio.wait_for(proto.made, T)
    peer = tr.get_extra_info("peername")
    fd = tr.get_extra_info("socket").fileno()
    await close_transport(tr, proto)
    for sp in server_protos:  # Python 3.12+: wait_closed() waits for the connections too
        await asyncio.wait_for(sp.made, T)
        await close_transport(sp.transport, sp)
    assert tr.get_extra_info("peername") == peer  # cached while open
    assert tr.get_extra_info("socket") is not None  # asyncio keeps the socket wrapper
    if isinstance(loop, uringloop.Loop):  # the stdlib's table holds weak references
        assert fd not in loop._transports
    await close_server(server)


# -- flow control ----------------------------------------------------------------------


async def test_write_flow_control_pause_resume(fd_guard):
    loop = asyncio.get_running_loop()
    receivers = []

    class SlowReader(Collector):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.pause_reading()

    def factory():
        p = SlowReader(loop)
        receivers.append(p)
        return p

    server = await loop.create_server(factory, "127.0.0.1", 0)
    tr, proto = await loop.create_connection(lambda: Collector(loop), "127.0.0.1",
                                             port_of(server))
    await asyncio.wait_for(proto.made, T)
    tr.set_write_buffer_limits(high=64 * 1024)
    assert tr.get_write_buffer_limits()[1] == 64 * 1024
    chunk = rand_bytes(1 << 20, 9)
    total = 0
    for _ in range(256):  # at most 256 MiB: the kernel buffers can't hold that much
        tr.write(chunk)
        total += len(chunk)
        await asyncio.sleep(0)
        # uringloop pauses as soon as write() queues more than `high` and may resume
        # once the kernel took the bytes: stop when the protocol stays paused
        if proto.paused > proto.resumed:
            break
    assert proto.paused == proto.resumed + 1
    assert tr.get_write_buffer_size() > tr.get_write_buffer_limits()[0]
    # let the peer drain
    for _ in range(100):
        if receivers:
            break
        await asyncio.sleep(0.01)
    srv = receivers[0]
    srv.expect = total
    srv.transport.resume_reading()
    got = await asyncio.wait_for(srv.got_all, 30)
    assert len(got) == total
    assert got == chunk * (total // len(chunk))
    for _ in range(500):
        if tr.get_write_buffer_size() == 0 and proto.resumed == proto.paused:
            break
        await asyncio.sleep(0.01)
    assert proto.resumed == proto.paused >= 1
    assert tr.get_write_buffer_size() == 0
    await close_transport(tr, proto)
    await asyncio.wait_for(srv.eof, T)
    await close_transport(srv.transport, srv)
    await close_server(server)


async def test_stream_drain_blocks_until_peer_reads():
    paused_reader = asyncio.Event()
    release = asyncio.Event()
    received = []

    async def handler(reader, writer):
        paused_reader.set()
        await release.wait()
        received.append(await reader.read())
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
    writer.transport.set_write_buffer_limits(high=16 * 1024)
    await asyncio.wait_for(paused_reader.wait(), T)
    blob = rand_bytes(1 << 20, 10)
    sent = 0
    blocked = False
    for _ in range(64):
        writer.write(blob)
        sent += len(blob)
        try:
            await asyncio.wait_for(asyncio.shield(writer.drain()), 0.2)
        except asyncio.TimeoutError:
            blocked = True
            break
    assert blocked, "drain() never blocked though the peer does not read"
    release.set()
    await asyncio.wait_for(writer.drain(), 30)
    writer.write_eof()
    for _ in range(1000):
        if received:
            break
        await asyncio.sleep(0.01)
    assert received and received[0] == blob * (sent // len(blob))
    writer.close()
    await writer.wait_closed()
    await close_server(server)


async def test_pause_resume_reading(fd_guard):
    loop = asyncio.get_running_loop()
    receivers = []

    class Pausing(Collector):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.pause_reading()

    def factory():
        p = Pausing(loop)
        receivers.append(p)
        return p

    server = await loop.create_server(factory, "127.0.0.1", 0)
    tr, proto = await loop.create_connection(lambda: Collector(loop), "127.0.0.1",
                                             port_of(server))
    parts = [b"first-", b"second-", rand_bytes(200_000, 11), b"-last"]
    for p in parts:
        tr.write(p)
        await asyncio.sleep(0.02)
    for _ in range(100):
        if receivers:
            break
        await asyncio.sleep(0.01)
    srv = receivers[0]
    await asyncio.sleep(0.05)
    assert not srv.transport.is_reading()
    assert srv.data == b""
    assert "data" not in srv.events
    # resume, then pause again partway; whatever arrives must be in order
    srv.expect = sum(map(len, parts))
    srv.transport.resume_reading()
    assert srv.transport.is_reading()
    got = await asyncio.wait_for(srv.got_all, T)
    assert got == b"".join(parts)
    # pause again: new data is held back, then delivered in order after resume
    srv.transport.pause_reading()
    tr.write(b"while-paused")
    tr.write_eof()
    await asyncio.sleep(0.05)
    assert bytes(srv.data) == b"".join(parts)
    assert not srv.eof.done()
    srv.expect = len(srv.data) + len(b"while-paused")
    srv.got_all = loop.create_future()
    srv.transport.resume_reading()
    await asyncio.wait_for(srv.eof, T)
    assert bytes(srv.data) == b"".join(parts) + b"while-paused"
    assert srv.events[-1] == "eof"
    await close_transport(srv.transport, srv)
    await asyncio.wait_for(proto.eof, T)
    await close_transport(tr, proto)
    await close_server(server)


async def test_pause_reading_idempotent():
    loop = asyncio.get_running_loop()
    server, _ = await start_echo_server()
    tr, proto = await loop.create_connection(lambda: Collector(loop, 6), "127.0.0.1",
                                             port_of(server))
    tr.pause_reading()
    tr.pause_reading()
    tr.write(b"abcdef")
    await asyncio.sleep(0.05)
    assert proto.data == b""
    tr.resume_reading()
    tr.resume_reading()
    assert await asyncio.wait_for(proto.got_all, T) == b"abcdef"
    await close_transport(tr, proto)
    await close_server(server)


# -- half close, close, abort, reset -----------------------------------------------------


async def test_write_eof_half_close(fd_guard):
    loop = asyncio.get_running_loop()
    receivers = []

    class ReplyOnEof(Collector):
        def eof_received(self):
            super().eof_received()
            self.transport.write(b"got:" + bytes(self.data))
            self.transport.close()
            return True

    def factory():
        p = ReplyOnEof(loop)
        receivers.append(p)
        return p

    server = await loop.create_server(factory, "127.0.0.1", 0)
    tr, proto = await loop.create_connection(lambda: Collector(loop), "127.0.0.1",
                                             port_of(server))
    assert tr.can_write_eof()
    tr.write(b"question")
    tr.write_eof()
    with pytest.raises(RuntimeError):
        tr.write(b"more")
    await asyncio.wait_for(proto.eof, T)
    assert bytes(proto.data) == b"got:question"
    assert proto.events[0] == "made" and "data" in proto.events
    assert proto.events[-1] == "eof"
    await asyncio.wait_for(receivers[0].lost, T)
    await close_transport(tr, proto)
    assert proto.lost_calls == [None]


async def test_peer_reset(fd_guard):
    loop = asyncio.get_running_loop()
    receivers = []

    def factory():
        p = Collector(loop, 5)
        receivers.append(p)
        return p

    server = await loop.create_server(factory, "127.0.0.1", 0)
    csock = socket.create_connection(("127.0.0.1", port_of(server)))
    csock.sendall(b"hello")
    for _ in range(500):
        if receivers and receivers[0].got_all.done():
            break
        await asyncio.sleep(0.01)
    srv = receivers[0]
    await asyncio.wait_for(srv.got_all, T)
    csock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    csock.close()  # RST
    exc = await asyncio.wait_for(srv.lost, T)
    assert isinstance(exc, ConnectionResetError), exc  # what the stdlib loop reports too
    await asyncio.sleep(0.05)
    assert srv.lost_calls == [exc]  # exactly once
    assert srv.transport.is_closing()
    srv.transport.write(b"after reset")  # no raise
    await close_server(server)


async def test_peer_reset_while_writing(fd_guard):
    """The peer resets while we have lots of unsent data; connection_lost once."""
    loop = asyncio.get_running_loop()
    tr, proto, peer = await connect_to_plain_peer(loop)
    big = rand_bytes(4 << 20, 12)
    for _ in range(8):
        tr.write(big)
    await asyncio.sleep(0.05)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()
    exc = await asyncio.wait_for(proto.lost, T)
    assert exc is None or isinstance(exc, (ConnectionResetError, BrokenPipeError)), exc
    await asyncio.sleep(0.05)
    assert len(proto.lost_calls) == 1
    tr.write(b"x")  # no raise after loss


async def test_close_with_pending_data_delivers_everything(fd_guard):
    loop = asyncio.get_running_loop()
    payload = rand_bytes(5_000_000, 13)

    class SendAndClose(asyncio.Protocol):
        def connection_made(self, transport):
            transport.write(payload)
            transport.close()

    server = await loop.create_server(SendAndClose, "127.0.0.1", 0)
    tr, proto = await loop.create_connection(lambda: Collector(loop, len(payload)),
                                             "127.0.0.1", port_of(server))
    await asyncio.wait_for(proto.eof, 30)
    assert bytes(proto.data) == payload
    await close_transport(tr, proto)
    await close_server(server)


async def test_close_client_with_pending_data(fd_guard):
    loop = asyncio.get_running_loop()
    receivers = []

    def factory():
        p = Collector(loop)
        receivers.append(p)
        return p

    server = await loop.create_server(factory, "127.0.0.1", 0)
    tr, proto = await loop.create_connection(lambda: Collector(loop), "127.0.0.1",
                                             port_of(server))
    payload = rand_bytes(3_000_000, 14)
    tr.write(payload[:1000])
    tr.write(payload[1000:])
    tr.close()
    assert tr.is_closing()
    assert await asyncio.wait_for(proto.lost, 30) is None
    for _ in range(1000):
        if receivers and receivers[0].eof.done():
            break
        await asyncio.sleep(0.01)
    assert bytes(receivers[0].data) == payload
    assert proto.lost_calls == [None]
    await close_transport(receivers[0].transport, receivers[0])
    await close_server(server)


async def test_abort(fd_guard):
    loop = asyncio.get_running_loop()
    receivers = []

    def factory():
        p = Collector(loop)
        receivers.append(p)
        return p

    server = await loop.create_server(factory, "127.0.0.1", 0)
    tr, proto = await loop.create_connection(lambda: Collector(loop), "127.0.0.1",
                                             port_of(server))
    tr.write(rand_bytes(2_000_000, 15))
    tr.abort()
    assert tr.is_closing()
    assert await asyncio.wait_for(proto.lost, T) is None
    await asyncio.sleep(0.05)
    assert proto.lost_calls == [None]
    tr.abort()
    tr.close()
    await asyncio.sleep(0.01)
    assert proto.lost_calls == [None]
    for _ in range(500):
        if receivers:
            break
        await asyncio.sleep(0.01)
    srv = receivers[0]
    # the server sees EOF (its protocol keeps the transport open) or a reset
    await asyncio.wait_for(asyncio.wait([srv.eof, srv.lost],
                                        return_when=asyncio.FIRST_COMPLETED), T)
    if srv.lost.done():
        assert srv.lost.result() is None or isinstance(srv.lost.result(),
                                                       ConnectionResetError)
    else:
        assert srv.eof.done()
        await close_transport(srv.transport, srv)
    assert len(srv.lost_calls) == 1
    await close_server(server)


async def test_abort_before_connection_made_callback():
    loop = asyncio.get_running_loop()
    server, _ = await start_echo_server()
    tr, proto = await loop.create_connection(lambda: Collector(loop), "127.0.0.1",
                                             port_of(server))
    tr.abort()
    await asyncio.wait_for(proto.lost, T)
    assert proto.events[0] == "made" and proto.events[-1] == "lost"
    assert proto.lost_calls == [None]
    await close_server(server)


async def test_write_after_close_does_not_raise():
    loop = asyncio.get_running_loop()
    server, _ = await start_echo_server()
    tr, proto = await loop.create_connection(lambda: Collector(loop), "127.0.0.1",
                                             port_of(server))
    tr.close()
    tr.write(b"ignored")  # closing: no raise
    await asyncio.wait_for(proto.lost, T)
    for _ in range(10):
        tr.write(b"ignored")  # closed: no raise
    tr.close()  # idempotent
    await close_server(server)


async def test_write_rejects_non_bytes():
    loop = asyncio.get_running_loop()
    server, _ = await start_echo_server()
    tr, proto = await loop.create_connection(lambda: Collector(loop, 2), "127.0.0.1",
                                             port_of(server))
    for bad in ("text", 123, None, [b"a"], object()):
        with pytest.raises(TypeError):
            tr.write(bad)
    tr.write(b"ok")
    assert await asyncio.wait_for(proto.got_all, T) == b"ok"
    tr.write(b"")  # empty write is a no-op
    assert tr.get_write_buffer_size() == 0
    await close_transport(tr, proto)
    await close_server(server)


async def test_connection_refused(fd_guard):
    loop = asyncio.get_running_loop()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(ConnectionRefusedError):
        await asyncio.wait_for(loop.create_connection(asyncio.Protocol, "127.0.0.1", port), T)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), T)


async def test_data_received_exception_is_reported():
    loop = asyncio.get_running_loop()
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    class Bad(asyncio.Protocol):
        def data_received(self, data):
            raise ValueError("bad protocol")

        def connection_lost(self, exc):
            lost.set_result(exc)

    lost = loop.create_future()
    server, _ = await start_echo_server()
    tr, _p = await loop.create_connection(Bad, "127.0.0.1", port_of(server))
    tr.write(b"x")
    exc = await asyncio.wait_for(lost, T)
    assert isinstance(exc, ValueError)
    assert any(isinstance(c.get("exception"), ValueError) for c in contexts)
    loop.set_exception_handler(None)
    await close_server(server)


@pytest.fixture(params=list(LOOPS))
def loop_name(request):
    return request.param


def test_loop_close_with_server_and_connections_open(loop_name, fd_guard):
    loop = LOOPS[loop_name]()
    try:
        async def setup():
            server = await loop.create_server(Echo, "127.0.0.1", 0)
            conns = []
            for _ in range(5):
                conns.append(await loop.create_connection(
                    lambda: Collector(loop, 4), "127.0.0.1", port_of(server)))
            for tr, _p in conns:
                tr.write(b"ping")
            for _tr, p in conns:
                assert await asyncio.wait_for(p.got_all, T) == b"ping"
            # leave some in flight when everything is shut down
            conns[0][0].write(rand_bytes(1_000_000, 16))
            return server, conns

        server, conns = loop.run_until_complete(setup())

        async def teardown():
            server.close()
            for tr, _ in conns:
                tr.close()
            await asyncio.wait_for(asyncio.gather(*(p.lost for _, p in conns)), T)
            await asyncio.wait_for(server.wait_closed(), T)

        loop.run_until_complete(teardown())
        assert all(p.lost_calls == [None] for _, p in conns)
    finally:
        loop.close()


def test_loop_close_with_listening_server_not_closed(loop_name, fd_guard):
    """Closing the loop while a server still listens: closing the server later is fine."""
    loop = LOOPS[loop_name]()
    server = loop.run_until_complete(loop.create_server(Echo, "127.0.0.1", 0))
    loop.run_until_complete(asyncio.sleep(0.01))
    server.close()
    loop.run_until_complete(server.wait_closed())
    loop.close()


# -- sock_* operations -----------------------------------------------------------------


def _nb(sock):
    sock.setblocking(False)
    return sock


async def _sock_pair():
    loop = asyncio.get_running_loop()
    lsock = _nb(socket.socket())
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    csock = _nb(socket.socket())
    try:
        accept = loop.create_task(loop.sock_accept(lsock))
        await asyncio.wait_for(loop.sock_connect(csock, lsock.getsockname()), T)
        conn, addr = await asyncio.wait_for(accept, T)
    finally:
        lsock.close()
    assert addr == csock.getsockname()
    assert conn.gettimeout() == 0  # non-blocking
    return csock, conn


async def test_sock_ops_basics(fd_guard):
    loop = asyncio.get_running_loop()
    a, b = await _sock_pair()
    with a, b:
        await loop.sock_sendall(a, b"hello")
        assert await asyncio.wait_for(loop.sock_recv(b, 100), T) == b"hello"
        buf = bytearray(10)
        await loop.sock_sendall(b, memoryview(b"0123456789"))
        n = 0
        while n < 10:
            n += await asyncio.wait_for(loop.sock_recv_into(a, memoryview(buf)[n:]), T)
        assert buf == b"0123456789"
        # large sendall with a concurrent reader
        payload = rand_bytes(4_000_000, 17)

        async def read_all(n):
            out = bytearray()
            while len(out) < n:
                chunk = await loop.sock_recv(b, 1 << 16)
                assert chunk, "unexpected EOF"
                out += chunk
            return bytes(out)

        reader = loop.create_task(read_all(len(payload)))
        await asyncio.wait_for(loop.sock_sendall(a, bytearray(payload)), 30)
        assert await asyncio.wait_for(reader, 30) == payload
        a.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(loop.sock_recv(b, 100), T) == b""
        assert await asyncio.wait_for(loop.sock_recv(b, 0), T) == b""


async def test_sock_connect_refused(fd_guard):
    loop = asyncio.get_running_loop()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    addr = s.getsockname()
    s.close()
    with _nb(socket.socket()) as c:
        with pytest.raises(ConnectionRefusedError):
            await asyncio.wait_for(loop.sock_connect(c, addr), T)


async def test_sock_recv_cancelled_then_reused(fd_guard):
    loop = asyncio.get_running_loop()
    a, b = await _sock_pair()
    with a, b:
        task = loop.create_task(loop.sock_recv(b, 100))
        await asyncio.sleep(0.01)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, T)
        await asyncio.sleep(0.01)  # let the cancellation reach the kernel
        await loop.sock_sendall(a, b"after cancel")
        got = b""
        for _ in range(20):
            got += await asyncio.wait_for(loop.sock_recv(b, 100), T)
            if len(got) >= len(b"after cancel"):
                break
        assert got == b"after cancel"


async def test_sock_recv_cancelled_racing_with_data(fd_guard):
    """Data arriving as the recv is cancelled must not be lost (the stdlib loses none)."""
    loop = asyncio.get_running_loop()
    a, b = await _sock_pair()
    with a, b:
        for i in range(20):
            task = loop.create_task(loop.sock_recv(b, 100))
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            task.cancel()
            a.send(b"msg%02d;" % i)  # plain send, before the loop runs again
            try:
                early = await asyncio.wait_for(task, T)
            except asyncio.CancelledError:
                early = b""
            got = early
            while len(got) < 6:
                got += await asyncio.wait_for(loop.sock_recv(b, 6 - len(got)), T)
            assert got == b"msg%02d;" % i


async def test_sock_accept_cancelled_then_reused(fd_guard):
    loop = asyncio.get_running_loop()
    with _nb(socket.socket()) as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        task = loop.create_task(loop.sock_accept(lsock))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, T)
        await asyncio.sleep(0.01)
        with _nb(socket.socket()) as c:
            connect = loop.create_task(loop.sock_connect(c, lsock.getsockname()))
            conn, _ = await asyncio.wait_for(loop.sock_accept(lsock), T)
            await asyncio.wait_for(connect, T)
            with conn:
                await loop.sock_sendall(c, b"x")
                assert await asyncio.wait_for(loop.sock_recv(conn, 1), T) == b"x"


async def test_sock_recv_reset_raises(fd_guard):
    loop = asyncio.get_running_loop()
    a, b = await _sock_pair()
    with b:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        a.close()
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(loop.sock_recv(b, 100), T)


async def test_sock_sendall_to_closed_peer_raises(fd_guard):
    loop = asyncio.get_running_loop()
    a, b = await _sock_pair()
    with a:
        b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        b.close()
        await asyncio.sleep(0.01)
        with pytest.raises((ConnectionResetError, BrokenPipeError)) as ei:
            for _ in range(100):
                await asyncio.wait_for(loop.sock_sendall(a, b"x" * 65536), T)
        assert ei.value.errno in (errno.ECONNRESET, errno.EPIPE)
