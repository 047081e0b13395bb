"""loop.sendfile / loop.sock_sendfile: byte-exact, offsets, file position, fallback."""

from __future__ import annotations

import asyncio
import io
import os
import socket

import pytest


class Collect(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.done = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> None:
        if not self.done.done():
            self.done.set_result(bytes(self.data))


@pytest.fixture
def payload_file(tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 123)
    path = tmp_path / "payload.bin"
    path.write_bytes(data)
    with open(path, "rb") as f:
        yield f, data


async def _pair():
    loop = asyncio.get_running_loop()
    proto = Collect()
    server = await loop.create_server(lambda: proto, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    tr, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    return server, proto, tr


@pytest.mark.parametrize("offset,count", [(0, None), (1000, None), (5, 1_000_000), (0, 1)])
async def test_sendfile_over_transport(payload_file, offset, count, fd_guard):
    f, data = payload_file
    loop = asyncio.get_running_loop()
    server, proto, tr = await _pair()
    sent = await loop.sendfile(tr, f, offset, count)
    expect = data[offset : offset + count] if count else data[offset:]
    assert sent == len(expect)
    assert f.tell() == offset + sent
    tr.write(b"tail")  # the transport is usable again afterwards
    tr.write_eof()
    got = await asyncio.wait_for(proto.done, 20)
    assert got == expect + b"tail"
    tr.close()
    server.close()
    await server.wait_closed()


async def test_write_during_sendfile_raises(payload_file, fd_guard):
    f, data = payload_file
    loop = asyncio.get_running_loop()
    server, proto, tr = await _pair()
    task = asyncio.create_task(loop.sendfile(tr, f))
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        tr.write(b"x")
    assert await task == len(data)
    tr.write_eof()
    assert await asyncio.wait_for(proto.done, 20) == data
    tr.close()
    server.close()
    await server.wait_closed()


async def test_sendfile_fallback_for_non_regular_file(fd_guard):
    loop = asyncio.get_running_loop()
    server, proto, tr = await _pair()
    data = os.urandom(200_000)
    sent = await loop.sendfile(tr, io.BytesIO(data))
    assert sent == len(data)
    tr.write_eof()
    assert await asyncio.wait_for(proto.done, 20) == data
    tr.close()
    server.close()
    await server.wait_closed()


async def test_sock_sendfile(payload_file, fd_guard):
    f, data = payload_file
    loop = asyncio.get_running_loop()
    lsock = socket.create_server(("127.0.0.1", 0))
    lsock.setblocking(False)
    csock = socket.socket()
    csock.setblocking(False)
    with lsock, csock:
        await loop.sock_connect(csock, lsock.getsockname())
        conn, _ = await loop.sock_accept(lsock)
        with conn:
            async def reader():
                got = bytearray()
                while True:
                    chunk = await loop.sock_recv(conn, 1 << 20)
                    if not chunk:
                        return bytes(got)
                    got += chunk

            task = asyncio.create_task(reader())
            sent = await loop.sock_sendfile(csock, f, 0, None)
            csock.shutdown(socket.SHUT_WR)
            assert sent == len(data)
            assert await asyncio.wait_for(task, 20) == data


async def test_sock_sendfile_no_fallback_rejects_bytesio(fd_guard):
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    with a, b:
        with pytest.raises(asyncio.SendfileNotAvailableError):
            await loop.sock_sendfile(a, io.BytesIO(b"abc"), fallback=False)
