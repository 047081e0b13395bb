"""Fault injection: what the application sees when things go wrong, and that nothing leaks.

Each test asserts the application-visible outcome (exception type, callbacks, bytes) and
that no file descriptor (``fd_guard``) and, on uringloop, no in-flight operation
(``loop.stats()['inflight']``) is left behind.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import pytest

import uringloop
from uringloop.transports.stream import StreamTransport

UL = pytest.mark.asyncio(loop_factories=["uringloop"])


def _is_uring(loop: asyncio.AbstractEventLoop) -> bool:
    return isinstance(loop, uringloop.Loop)


def _inflight(loop: asyncio.AbstractEventLoop) -> int:
    return loop.stats()["inflight"] if _is_uring(loop) else 0


def _pattern(n: int, seed: int = 0) -> bytes:
    block = bytes((seed + i) % 251 for i in range(251))
    return (block * (n // 251 + 1))[:n]


class Recorder(asyncio.Protocol):
    """Records everything a transport tells its protocol."""

    def __init__(self, keep_open_on_eof: bool = True) -> None:
        self.transport: asyncio.Transport | None = None
        self.data = bytearray()
        self.eof = 0
        self.lost: list[BaseException | None] = []
        self.keep_open = keep_open_on_eof
        self.made = asyncio.get_running_loop().create_future()
        self.done = asyncio.get_running_loop().create_future()
        self.got_eof = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.made.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        self.eof += 1
        if not self.got_eof.done():
            self.got_eof.set_result(None)
        return self.keep_open

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)
        if not self.done.done():
            self.done.set_result(exc)


def _listener() -> socket.socket:
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(64)
    return lsock


async def _connected(loop: asyncio.AbstractEventLoop) -> tuple[Recorder, socket.socket]:
    """A loop transport connected to a plain blocking peer socket."""
    with _listener() as lsock:
        _, proto = await loop.create_connection(Recorder, *lsock.getsockname())
        peer, _ = lsock.accept()
    await proto.made
    return proto, peer


def _rst_close(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# -- peer resets ---------------------------------------------------------------------


async def test_peer_reset_mid_write(fd_guard) -> None:
    loop = asyncio.get_running_loop()
    base = _inflight(loop)
    proto, peer = await _connected(loop)
    tr = proto.transport
    assert tr is not None
    tr.write(_pattern(16 << 20))  # far more than the socket buffers hold
    for _ in range(20):
        await asyncio.sleep(0.01)
    assert tr.get_write_buffer_size() > 0  # a send is still in flight / queued
    _rst_close(peer)
    exc = await asyncio.wait_for(proto.done, 5)
    await asyncio.sleep(0.05)
    assert isinstance(exc, (ConnectionResetError, BrokenPipeError)), exc
    assert len(proto.lost) == 1
    assert tr.is_closing()
    assert tr.get_write_buffer_size() == 0
    tr.write(b"after")  # writes after the loss are dropped, never raise
    assert _inflight(loop) == base


async def test_peer_reset_mid_read(fd_guard) -> None:
    loop = asyncio.get_running_loop()
    base = _inflight(loop)
    proto, peer = await _connected(loop)
    payload = _pattern(1 << 20, 7)
    await loop.run_in_executor(None, peer.sendall, payload)
    deadline = time.monotonic() + 5
    while len(proto.data) < len(payload) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert bytes(proto.data) == payload  # all of it, in order, before the reset
    peer.send(b"partial")
    _rst_close(peer)
    exc = await asyncio.wait_for(proto.done, 5)
    await asyncio.sleep(0.05)
    assert isinstance(exc, ConnectionResetError), exc
    assert len(proto.lost) == 1 and proto.eof == 0
    # whatever arrived after the bulk is a prefix of what the peer sent
    assert (payload + b"partial").startswith(bytes(proto.data))
    assert _inflight(loop) == base


# -- half-close ----------------------------------------------------------------------


async def test_half_close_peer_shuts_write(fd_guard) -> None:
    loop = asyncio.get_running_loop()
    base = _inflight(loop)
    proto, peer = await _connected(loop)
    peer.sendall(b"request")
    peer.shutdown(socket.SHUT_WR)
    await asyncio.wait_for(proto.got_eof, 5)
    assert bytes(proto.data) == b"request" and proto.eof == 1
    tr = proto.transport
    assert tr is not None and not tr.is_closing()  # eof_received returned True
    reply = _pattern(300_000, 3)
    tr.write(reply)
    tr.close()
    got = bytearray()
    peer.settimeout(5)
    while True:
        chunk = await loop.run_in_executor(None, peer.recv, 65536)
        if not chunk:
            break
        got += chunk
    assert bytes(got) == reply  # every byte written before close(), then EOF
    assert await asyncio.wait_for(proto.done, 5) is None
    assert proto.lost == [None] and proto.eof == 1
    peer.close()
    await asyncio.sleep(0.05)
    assert _inflight(loop) == base


async def test_half_close_transport_write_eof(fd_guard) -> None:
    loop = asyncio.get_running_loop()
    base = _inflight(loop)
    proto, peer = await _connected(loop)
    tr = proto.transport
    assert tr is not None and tr.can_write_eof()
    body = _pattern(500_000, 5)
    tr.write(body)
    tr.write_eof()
    with pytest.raises(RuntimeError):
        tr.write(b"x")
    got = bytearray()
    peer.settimeout(5)
    while True:
        chunk = await loop.run_in_executor(None, peer.recv, 65536)
        if not chunk:
            break
        got += chunk
    assert bytes(got) == body
    # The other direction still works after our write_eof.
    peer.sendall(b"still talking")
    deadline = time.monotonic() + 5
    while len(proto.data) < 13 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert bytes(proto.data) == b"still talking"
    assert not proto.lost
    proto.keep_open = False
    peer.close()
    assert await asyncio.wait_for(proto.done, 5) is None
    assert proto.eof == 1 and proto.lost == [None]
    await asyncio.sleep(0.05)
    assert _inflight(loop) == base


# -- connect / bind errors -----------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_econnrefused(fd_guard) -> None:
    loop = asyncio.get_running_loop()
    base = _inflight(loop)
    port = _closed_port()
    for _ in range(3):
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        sock = socket.socket()
        sock.setblocking(False)
        with sock, pytest.raises(ConnectionRefusedError) as info:
            await loop.sock_connect(sock, ("127.0.0.1", port))
        assert info.value.errno == errno.ECONNREFUSED
    assert _inflight(loop) == base


async def test_eaddrinuse(fd_guard) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, reuse_address=False)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(OSError) as info:
            await loop.create_server(asyncio.Protocol, "127.0.0.1", port, reuse_address=False)
        assert info.value.errno == errno.EADDRINUSE
        # the first server still serves
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


# -- EMFILE ---------------------------------------------------------------------------

_EMFILE_CHILD = textwrap.dedent(
    """
    import asyncio, json, os, resource, sys
    sys.path.insert(0, {root!r})
    import uringloop

    N = int(sys.argv[2])

    async def main():
        loop = asyncio.get_running_loop()
        errors = []
        loop.set_exception_handler(lambda l, ctx: errors.append(ctx.get("exception")))
        served = 0
        done = asyncio.Event()

        async def handle(reader, writer):
            nonlocal served
            data = await reader.readexactly(5)
            writer.write(data.upper())
            await writer.drain()
            await reader.read()  # until the client closes
            writer.close()
            await writer.wait_closed()
            served += 1
            if served == N:
                done.set()

        # io_uring's accept reads RLIMIT_NOFILE when the request is queued (the kernel's
        # accept->nofile), so the limit is lowered before the server starts accepting:
        # room for the listener and three connections.
        pre = len(os.listdir("/proc/self/fd")) - 1  # minus listdir's own fd
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (pre + 4, hard))
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        await asyncio.sleep(0.05)
        base = len(os.listdir("/proc/self/fd")) - 1
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.wait_for(done.wait(), 30)
        await asyncio.sleep(0.1)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        after = len(os.listdir("/proc/self/fd")) - 1
        server.close()
        await server.wait_closed()
        emfile = sum(1 for e in errors if isinstance(e, OSError) and e.errno == 24)
        other = [repr(e) for e in errors if not (isinstance(e, OSError) and e.errno == 24)]
        print(json.dumps({{"served": served, "emfile": emfile, "other": other,
                          "base": base, "after": after}}), flush=True)

    if sys.argv[1] == "uringloop":
        uringloop.run(main())
    else:
        asyncio.run(main())
    """
)


@pytest.mark.parametrize("loop_name", ["uringloop", "asyncio"])
def test_emfile_server_keeps_accepting(loop_name: str, tmp_path) -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(uringloop.__file__)))
    script = tmp_path / "emfile_child.py"
    script.write_text(_EMFILE_CHILD.format(root=root))
    n = 9
    child = subprocess.Popen(
        [sys.executable, str(script), loop_name, str(n)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        clients = []
        for _ in range(n):
            c = socket.create_connection(("127.0.0.1", port), timeout=20)
            c.sendall(b"hello")
            clients.append(c)
        # The server can hold only ~3 connections at once: each reply below needs an
        # earlier connection closed and the accept retried after EMFILE.
        for c in clients:
            assert c.recv(5) == b"HELLO"
            c.close()
        out, err = child.communicate(timeout=40)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["served"] == n
    assert report["emfile"] >= 1, report  # accept failed and was reported ...
    assert report["other"] == []
    assert report["after"] == report["base"], report  # ... and no fd leaked


# -- provided-buffer ring exhaustion ---------------------------------------------------


def test_provided_buffers_exhausted(fd_guard, monkeypatch) -> None:
    enobufs = 0
    orig = StreamTransport._on_recv

    def counting(self, res, flags):
        nonlocal enobufs
        if res == -errno.ENOBUFS:
            enobufs += 1
        return orig(self, res, flags)

    monkeypatch.setattr(StreamTransport, "_on_recv", counting)
    nconn, size = 24, 1 << 20

    class Sink(asyncio.Protocol):
        def __init__(self) -> None:
            self.buf = bytearray()
            self.done = loop.create_future()

        def data_received(self, data: bytes) -> None:
            self.buf += data

        def eof_received(self) -> None:
            self.done.set_result(bytes(self.buf))

    async def main() -> None:
        sinks: list[Sink] = []

        def factory() -> Sink:
            sinks.append(Sink())
            return sinks[-1]

        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        writers = []
        for i in range(nconn):
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(i.to_bytes(2, "big") + _pattern(size, i))
            w.write_eof()
            writers.append(w)
        await asyncio.gather(*(w.drain() for w in writers))
        while len(sinks) < nconn:
            await asyncio.sleep(0.01)
        got = await asyncio.wait_for(asyncio.gather(*(s.done for s in sinks)), 30)
        for data in got:
            i = int.from_bytes(data[:2], "big")
            assert data[2:] == _pattern(size, i), f"connection {i}: bytes lost or reordered"
        assert sorted(int.from_bytes(d[:2], "big") for d in got) == list(range(nconn))
        for w in writers:
            w.close()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)

    loop = uringloop.Loop(recv_buffers=4, recv_buffer_size=4096)
    try:
        loop.run_until_complete(main())
        inflight = loop.stats()["inflight"]
    finally:
        loop.close()
    assert enobufs > 0, "the buffer group never ran dry: the test did not test anything"
    assert inflight == 1  # only the self-pipe receive


def test_provided_buffers_grow_when_receives_run_dry(fd_guard) -> None:
    """A loop starts with an eighth of its receive buffers in use and doubles that each
    time receives ran out (ENOBUFS), up to recv_buffers; no byte is lost on the way."""
    loop = uringloop.Loop(recv_buffers=16, recv_buffer_size=4096)
    nconn, rounds = 40, 8

    async def main() -> list[int]:
        async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while data := await r.read(65536):
                w.write(data)
            w.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(nconn)]
        in_use = [loop.stats()["recv_buffers_in_use"]]
        for k in range(rounds):
            msgs = [_pattern(3000 + k, i) for i in range(nconn)]
            for (_, w), m in zip(conns, msgs, strict=True):  # every connection at once
                w.write(m)
            for (r, _), m in zip(conns, msgs, strict=True):
                assert await asyncio.wait_for(r.readexactly(len(m)), 10) == m
            in_use.append(loop.stats()["recv_buffers_in_use"])
        for _, w in conns:
            w.close()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)
        return in_use

    try:
        in_use = loop.run_until_complete(main())
    finally:
        loop.close()
    assert in_use[0] == 2
    assert in_use[-1] == 16, in_use  # grew to the limit: 40 busy connections > 16
    assert all(b in (2, 4, 8, 16) for b in in_use), in_use
    assert in_use == sorted(in_use), in_use  # never shrinks


# -- completion / submission queue limits ----------------------------------------------


def test_cq_overflow_nothing_dropped(fd_guard) -> None:
    loop = uringloop.Loop(ring_entries=4, cq_entries=8)
    pairs = [socket.socketpair() for _ in range(300)]
    try:
        for i, (a, b) in enumerate(pairs):
            a.setblocking(False)
            b.sendall(b"%06d" % i)

        async def main() -> list[bytes]:
            # every receive completes at once: ~300 CQEs for an 8-entry CQ
            return await asyncio.gather(*(loop.sock_recv(a, 16) for a, _ in pairs))

        got = loop.run_until_complete(main())
        assert got == [b"%06d" % i for i in range(len(pairs))]
        stats = loop.stats()
        assert stats["overflow_flushes"] > 0, stats  # the CQ did overflow
        assert stats["inflight"] == 1
    finally:
        loop.close()
        for a, b in pairs:
            a.close()
            b.close()


@pytest.mark.parametrize("entries", [(8, 16), (2, 4)])
def test_sq_full_many_connections(fd_guard, entries) -> None:
    loop = uringloop.Loop(ring_entries=entries[0], cq_entries=entries[1])
    nconn = 200

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()
        writer.write(data)
        await writer.drain()
        writer.close()

    async def client(port: int, i: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_pattern(20_000 + i, i))
        writer.write_eof()
        data = await reader.read()
        writer.close()
        await writer.wait_closed()
        return data

    async def main() -> None:
        server = await asyncio.start_server(echo, "127.0.0.1", 0, backlog=nconn)
        port = server.sockets[0].getsockname()[1]
        got = await asyncio.wait_for(
            asyncio.gather(*(client(port, i) for i in range(nconn))), 60
        )
        for i, data in enumerate(got):
            assert data == _pattern(20_000 + i, i), i
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)

    try:
        loop.run_until_complete(main())
        assert loop.stats()["inflight"] == 1
    finally:
        loop.close()


# -- closing with operations in flight --------------------------------------------------


def test_close_transports_and_loop_with_ops_in_flight(fd_guard) -> None:
    loop = uringloop.Loop()
    peers: list[socket.socket] = []
    zc_buf = bytearray(_pattern(8 << 20))

    async def main() -> asyncio.Future:
        protos = []
        with _listener() as lsock:
            for _ in range(6):
                _, proto = await loop.create_connection(Recorder, *lsock.getsockname())  # noqa: F821 (deleted at the end)
                peers.append(lsock.accept()[0])
                await proto.made
                protos.append(proto)
        for p in protos:
            p.transport.write(_pattern(4 << 20))  # sends blocked: the peers never read
        zc = protos[0].transport.write_zerocopy(zc_buf)
        dangling = asyncio.ensure_future(loop.sock_recv(peers_nb, 100))  # noqa: F821 (deleted at the end)
        await asyncio.sleep(0.05)
        protos[1].transport.close()
        protos[2].transport.abort()
        # protos[3:] stay open: loop.close() must cope with them
        await asyncio.sleep(0)
        return zc, dangling

    a, b = socket.socketpair()
    a.setblocking(False)
    peers_nb = a
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        zc, dangling = loop.run_until_complete(main())
        assert loop.stats()["inflight"] > 3
        loop.close()  # ops in flight: no crash, no hang
        assert loop.is_closed()
        # the zero-copy buffer is still exported: the kernel may have referenced it
        if not zc.done():
            with pytest.raises(BufferError):
                zc_buf.append(0)
        assert not dangling.done() or dangling.cancelled() or dangling.exception()
        del zc, dangling, loop
        gc.collect()
    for s in peers:
        s.close()
    a.close()
    b.close()


def test_loop_close_with_pending_sock_recv_into_keeps_buffer(fd_guard) -> None:
    loop = uringloop.Loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    buf = bytearray(64)

    async def main() -> asyncio.Task:
        t = asyncio.ensure_future(loop.sock_recv_into(a, buf))  # noqa: F821 (deleted at the end)
        await asyncio.sleep(0.01)
        return t

    task = loop.run_until_complete(main())
    assert not task.done()
    loop.close()
    b.send(b"late data")  # after close: the kernel must not write into a freed buffer
    time.sleep(0.05)
    assert bytes(buf) == bytes(64)
    del task, loop
    gc.collect()
    a.close()
    b.close()


def test_gc_transports_with_ops_in_flight(fd_guard) -> None:
    loop = uringloop.Loop()
    peers: list[socket.socket] = []

    class Forget(asyncio.Protocol):
        lost = 0

        def connection_lost(self, exc: BaseException | None) -> None:
            Forget.lost += 1

    async def main() -> None:
        with _listener() as lsock:
            for _ in range(8):
                await loop.create_connection(Forget, *lsock.getsockname())
                peers.append(lsock.accept()[0])
        await asyncio.sleep(0.01)

    loop.run_until_complete(main())
    # Nobody holds the transports or protocols now, receives are armed on all of them.
    gc.collect()
    # receive + send handlers of each transport stay in the loop's table: not freed
    assert loop.stats()["inflight"] == 1 + 2 * 8
    for p in peers:
        p.sendall(b"data")
        p.close()  # EOF: each transport closes itself (eof_received returns None)
    loop.run_until_complete(asyncio.sleep(0.1))
    gc.collect()
    assert Forget.lost == 8
    assert loop.stats()["inflight"] == 1
    loop.close()


def test_gc_loop_with_ops_in_flight(fd_guard) -> None:
    """Dropping an unclosed loop with operations in flight: no crash, fds released."""
    peers: list[socket.socket] = []

    def run() -> None:
        loop = uringloop.Loop()

        async def main() -> None:
            with _listener() as lsock:
                for _ in range(4):
                    _, proto = await loop.create_connection(Recorder, *lsock.getsockname())
                    peers.append(lsock.accept()[0])
                    await proto.made
                    proto.transport.write(_pattern(4 << 20))
            await asyncio.sleep(0.02)

        loop.run_until_complete(main())
        loop.close()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        run()
        gc.collect()
    for p in peers:
        p.close()


# -- fork ---------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_child_gets_runtime_error_parent_keeps_working(fd_guard) -> None:
    loop = uringloop.Loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        async def roundtrip(tag: bytes) -> bytes:
            b.send(tag)
            return await loop.sock_recv(a, 100)

        assert loop.run_until_complete(roundtrip(b"before")) == b"before"
        stats_before = loop.stats()["submitted"]
        r, w = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
            pid = os.fork()
        if pid == 0:  # pragma: no cover (child)
            results = []
            for attempt in (
                lambda: loop.run_until_complete(asyncio.sleep(0)),
                lambda: loop.run_until_complete(loop.sock_recv(a, 1)),
                lambda: loop.run_until_complete(loop.sock_sendall(a, b"x")),
                lambda: loop._ring.run(0),
                lambda: loop._ring.submit(),
            ):
                try:
                    attempt()
                    results.append("no error")
                except RuntimeError as exc:
                    results.append("RuntimeError" if "fork" in str(exc) else repr(exc))
                except BaseException as exc:
                    results.append(repr(exc))
            try:
                loop.close()
                results.append("closed")
            except BaseException as exc:
                results.append(f"close: {exc!r}")
            os.write(w, json.dumps(results).encode())
            os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            results = json.loads(f.read())
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert results == ["RuntimeError"] * 5 + ["closed"], results
        # the parent's ring is intact and works
        for i in range(20):
            tag = b"after-%d" % i
            assert loop.run_until_complete(roundtrip(tag)) == tag
        assert loop.stats()["submitted"] > stats_before
    finally:
        loop.close()
        a.close()
        b.close()


# -- signals and threads -------------------------------------------------------------------


async def test_signals_during_wait() -> None:
    """Each signal is sent from a thread while the loop sits in its wait; the next one is
    sent once the previous handler ran (POSIX merges a signal sent while the same one is
    still pending, so a blind burst could legitimately lose some)."""
    loop = asyncio.get_running_loop()
    n = 60
    got: list[float] = []
    acked = threading.Event()
    done = asyncio.Event()

    def on_signal(tag: str) -> None:
        assert tag == "usr1"
        got.append(time.monotonic())
        acked.set()
        if len(got) == n:
            done.set()

    loop.add_signal_handler(signal.SIGUSR1, on_signal, "usr1")
    failures: list[str] = []
    try:
        def sender() -> None:
            for i in range(n):
                acked.clear()
                time.sleep(0.002)  # let the loop go back into io_uring_enter
                os.kill(os.getpid(), signal.SIGUSR1)
                if not acked.wait(5):
                    failures.append(f"signal {i} was not handled")
                    return

        t = threading.Thread(target=sender)
        t.start()
        await asyncio.wait_for(done.wait(), 30)
        t.join()
        await asyncio.sleep(0.05)
        assert failures == []
        assert len(got) == n
    finally:
        assert loop.remove_signal_handler(signal.SIGUSR1)
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


async def test_call_soon_threadsafe_16_threads() -> None:
    loop = asyncio.get_running_loop()
    nthreads, per = 16, 1000
    counts = [[0] * per for _ in range(nthreads)]
    remaining = nthreads * per
    done = asyncio.Event()

    def hit(t: int, i: int) -> None:
        nonlocal remaining
        counts[t][i] += 1
        remaining -= 1
        if remaining == 0:
            done.set()

    barrier = threading.Barrier(nthreads)

    def worker(t: int) -> None:
        barrier.wait()
        for i in range(per):
            loop.call_soon_threadsafe(hit, t, i)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(nthreads)]
    for th in threads:
        th.start()
    await asyncio.wait_for(done.wait(), 30)
    for th in threads:
        th.join()
    await asyncio.sleep(0.05)
    assert all(c == 1 for row in counts for c in row)
