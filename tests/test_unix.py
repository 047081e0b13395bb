"""Unix domain stream sockets: servers, connections, streams, on uringloop and asyncio."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import uuid

import pytest

T = 10  # seconds: the bound on every wait in this file


def rand_bytes(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        return False


class Collector(asyncio.Protocol):
    def __init__(self, loop, expect):
        self.expect = expect
        self.data = bytearray()
        self.got_all = loop.create_future()
        self.lost = loop.create_future()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.data += data
        if len(self.data) >= self.expect and not self.got_all.done():
            self.got_all.set_result(bytes(self.data))

    def eof_received(self):
        return True

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


@pytest.fixture
def sock_path(tmp_path):
    return str(tmp_path / "s.sock")


async def roundtrip(payload, path=None, sock=None):
    loop = asyncio.get_running_loop()
    tr, proto = await asyncio.wait_for(
        loop.create_unix_connection(lambda: Collector(loop, len(payload)), path, sock=sock), T
    )
    tr.write(payload)
    got = await asyncio.wait_for(proto.got_all, T)
    tr.close()
    await asyncio.wait_for(proto.lost, T)
    return got, tr


async def close_server(server):
    server.close()
    await asyncio.wait_for(server.wait_closed(), T)


@pytest.mark.parametrize("size", [1, 70_000, 3_000_000])
async def test_echo_exact(size, sock_path, fd_guard):
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(Echo, sock_path)
    assert server.sockets[0].family == socket.AF_UNIX
    assert server.sockets[0].getsockname() == sock_path
    payload = rand_bytes(size, size)
    got, tr = await roundtrip(payload, sock_path)
    assert got == payload
    assert tr.get_extra_info("peername") == sock_path
    await close_server(server)


async def test_pathlike_and_many_clients(tmp_path, fd_guard):
    loop = asyncio.get_running_loop()
    path = tmp_path / "p.sock"
    server = await loop.create_unix_server(Echo, path)
    payloads = [rand_bytes(5000 + i, i) for i in range(10)]
    results = await asyncio.gather(*(roundtrip(p, path) for p in payloads))
    assert [r[0] for r in results] == payloads
    await close_server(server)


async def test_abstract_namespace(fd_guard):
    loop = asyncio.get_running_loop()
    name = "\0uringloop-test-" + uuid.uuid4().hex
    server = await loop.create_unix_server(Echo, name)
    assert server.sockets[0].getsockname() == name.encode()
    got, _ = await roundtrip(b"abstract hello", name)
    assert got == b"abstract hello"
    # bytes names work too
    got, _ = await roundtrip(b"bytes name", name.encode())
    assert got == b"bytes name"
    await close_server(server)


async def test_stale_socket_file_is_replaced(sock_path, fd_guard):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    stale.close()  # the file stays behind
    assert os.path.exists(sock_path)
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(Echo, sock_path)
    got, _ = await roundtrip(b"after stale", sock_path)
    assert got == b"after stale"
    await close_server(server)


async def test_regular_file_is_not_removed(sock_path, fd_guard):
    with open(sock_path, "w") as f:
        f.write("keep me")
    loop = asyncio.get_running_loop()
    with pytest.raises(OSError):
        await loop.create_unix_server(Echo, sock_path)
    with open(sock_path) as f:
        assert f.read() == "keep me"


@pytest.mark.asyncio(loop_factories=["uringloop"])
async def test_socket_file_removed_on_close(sock_path, fd_guard):
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(Echo, sock_path)
    assert os.path.exists(sock_path)
    await close_server(server)
    assert not os.path.exists(sock_path)


async def test_cleanup_socket_false_keeps_file(sock_path, fd_guard):
    loop = asyncio.get_running_loop()
    kw = {"cleanup_socket": False}
    if not hasattr(loop, "_ring") and not _stdlib_cleans_up():
        kw = {}
    server = await loop.create_unix_server(Echo, sock_path, **kw)
    await close_server(server)
    assert os.path.exists(sock_path)


async def test_replaced_file_is_not_removed_on_close(sock_path, fd_guard):
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(Echo, sock_path)
    os.unlink(sock_path)
    with open(sock_path, "w") as f:
        f.write("someone else's")
    await close_server(server)
    assert os.path.exists(sock_path)


def _stdlib_cleans_up() -> bool:
    import sys

    return sys.version_info >= (3, 13)


async def test_server_with_sock_and_connection_with_sock(sock_path, fd_guard):
    loop = asyncio.get_running_loop()
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(sock_path)
    server = await loop.create_unix_server(Echo, sock=lsock)
    csock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    csock.connect(sock_path)
    got, _ = await roundtrip(b"via sock", sock=csock)
    assert got == b"via sock"
    await close_server(server)


async def test_streams_api(sock_path, fd_guard):
    async def handle(reader, writer):
        line = await reader.readline()
        writer.write(line.upper())
        data = await reader.readexactly(100_000)
        writer.write(data[::-1])
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_unix_server(handle, sock_path)
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(sock_path), T)
    blob = rand_bytes(100_000, 3)
    writer.write(b"hello unix\n")
    writer.write(blob)
    await writer.drain()
    assert await asyncio.wait_for(reader.readline(), T) == b"HELLO UNIX\n"
    assert await asyncio.wait_for(reader.readexactly(100_000), T) == blob[::-1]
    assert await asyncio.wait_for(reader.read(), T) == b""
    writer.close()
    await writer.wait_closed()
    server.close()
    await asyncio.wait_for(server.wait_closed(), T)


async def test_connect_to_missing_path_raises(tmp_path, fd_guard):
    loop = asyncio.get_running_loop()
    with pytest.raises(FileNotFoundError):
        await loop.create_unix_connection(asyncio.Protocol, str(tmp_path / "nothing"))


async def test_connect_refused(sock_path, fd_guard):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(sock_path)  # bound, not listening
    try:
        loop = asyncio.get_running_loop()
        with pytest.raises(ConnectionRefusedError):
            await loop.create_unix_connection(asyncio.Protocol, sock_path)
    finally:
        s.close()


async def test_address_in_use(fd_guard):
    loop = asyncio.get_running_loop()
    name = "\0uringloop-inuse-" + uuid.uuid4().hex
    server = await loop.create_unix_server(Echo, name)
    with pytest.raises(OSError) as info:
        await loop.create_unix_server(Echo, name)
    assert "already in use" in str(info.value)
    await close_server(server)


async def test_start_serving_false(sock_path, fd_guard):
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(Echo, sock_path, start_serving=False)
    assert not server.is_serving()
    await server.start_serving()
    assert server.is_serving()
    got, _ = await roundtrip(b"late start", sock_path)
    assert got == b"late start"
    await close_server(server)


async def test_argument_checks(sock_path, fd_guard):
    loop = asyncio.get_running_loop()
    with pytest.raises(TypeError):
        await loop.create_unix_server(Echo, sock_path, ssl=True)
    with pytest.raises(ValueError):
        await loop.create_unix_server(Echo, sock_path, ssl_handshake_timeout=1)
    with pytest.raises(ValueError):
        await loop.create_unix_server(Echo, sock_path, ssl_shutdown_timeout=1)
    with pytest.raises(ValueError):
        await loop.create_unix_server(Echo)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(ValueError):
            await loop.create_unix_server(Echo, sock=tcp)
        with pytest.raises(ValueError):
            await loop.create_unix_connection(Echo, sock=tcp)
        with pytest.raises(ValueError):
            await loop.create_unix_server(Echo, sock_path, sock=tcp)
        with pytest.raises(ValueError):
            await loop.create_unix_connection(Echo, sock_path, sock=tcp)
    finally:
        tcp.close()
    with pytest.raises(ValueError):
        await loop.create_unix_connection(Echo)
    with pytest.raises(ValueError):
        await loop.create_unix_connection(Echo, sock_path, server_hostname="x")
    with pytest.raises(ValueError):
        await loop.create_unix_connection(Echo, sock_path, ssl_handshake_timeout=1)
    with pytest.raises(ValueError):
        await loop.create_unix_connection(Echo, sock_path, ssl_shutdown_timeout=1)
    assert not os.path.exists(sock_path)


@pytest.fixture
def ssl_contexts(tmp_path):
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl command not available")
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cert)
    return server_ctx, client_ctx


async def test_ssl_over_unix(sock_path, ssl_contexts, fd_guard):
    server_ctx, client_ctx = ssl_contexts

    async def handle(reader, writer):
        writer.write((await reader.readline()).upper())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_unix_server(handle, sock_path, ssl=server_ctx)
    reader, writer = await asyncio.wait_for(
        asyncio.open_unix_connection(sock_path, ssl=client_ctx, server_hostname="localhost"), T
    )
    writer.write(b"secret\n")
    assert await asyncio.wait_for(reader.readline(), T) == b"SECRET\n"
    writer.close()
    try:
        await writer.wait_closed()
    except (ConnectionError, OSError):
        pass
    server.close()
    await asyncio.wait_for(server.wait_closed(), T)
