"""The ``websockets`` library (its asyncio implementation), server and client on one loop.

Echo of many messages of random sizes, text and binary, with and without
permessage-deflate, fragmented messages, pings, and the close handshake.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from .conftest import NEED_EXTRA, rand_bytes

ws_server = pytest.importorskip("websockets.asyncio.server", reason=NEED_EXTRA)
ws_client = pytest.importorskip("websockets.asyncio.client", reason=NEED_EXTRA)
from websockets.exceptions import ConnectionClosed  # noqa: E402

T = 30


async def echo(ws) -> None:  # type: ignore[no-untyped-def]
    async for msg in ws:
        await ws.send(msg)


@pytest.mark.parametrize("compression", ["deflate", None])
async def test_echo_random_sizes(compression: str | None) -> None:
    """4 clients x 120 messages (0 B .. 256 KiB, half text, half binary) + a pipelined
    burst of 50, each echoed and compared."""
    async with ws_server.serve(echo, "127.0.0.1", 0, max_size=None, compression=compression) as srv:
        port = srv.sockets[0].getsockname()[1]

        async def client(k: int) -> int:
            rng = random.Random(k)
            async with ws_client.connect(
                f"ws://127.0.0.1:{port}", max_size=None, compression=compression
            ) as ws:
                for i in range(120):
                    n = rng.choice(
                        [0, 1, 125, 126, 127, 65_535, 65_536, rng.randint(0, 256 * 1024)]
                    )
                    msg: str | bytes
                    if i % 2:
                        msg = rand_bytes(n, k * 10_000 + i)
                    else:
                        msg = "".join(rng.choice("abcдеж€😀") for _ in range(n // 16))
                    await ws.send(msg)
                    assert await ws.recv() == msg
                # pipelined: send a burst, then read all the echoes back in order
                burst = [rand_bytes(rng.randint(0, 20_000), 99 + j) for j in range(50)]
                for m in burst:
                    await ws.send(m)
                for m in burst:
                    assert await ws.recv() == m
            return 170

        done = await asyncio.wait_for(asyncio.gather(*(client(k) for k in range(4))), T)
        assert done == [170] * 4


async def test_fragments_ping_and_close() -> None:
    """A fragmented message, ping/pong round-trips, and a clean close with a code."""
    closed: list[tuple[int | None, str | None]] = []

    async def handler(ws) -> None:  # type: ignore[no-untyped-def]
        msg = await ws.recv()
        await ws.send(msg)
        try:
            await ws.recv()
        except ConnectionClosed:  # 4000 is not a "normal" close code, so not ...OK
            closed.append((ws.close_code, ws.close_reason))

    async with ws_server.serve(handler, "127.0.0.1", 0, max_size=None) as srv:
        port = srv.sockets[0].getsockname()[1]

        async def run() -> None:
            async with ws_client.connect(f"ws://127.0.0.1:{port}", max_size=None) as ws:
                parts = [rand_bytes(n, n) for n in (1, 70_000, 3, 1 << 20)]

                async def fragments():  # type: ignore[no-untyped-def]
                    for p in parts:
                        yield p

                await ws.send(fragments())
                assert await ws.recv() == b"".join(parts)
                for _ in range(20):
                    latency = await (await ws.ping())
                    assert latency >= 0
                await ws.close(code=4000, reason="done here")

        await asyncio.wait_for(run(), T)
        for _ in range(100):
            if closed:
                break
            await asyncio.sleep(0.01)
    assert closed == [(4000, "done here")]


async def test_unix_socket_echo(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """unix_serve / unix_connect: 200 binary messages echoed over a unix socket."""
    path = str(tmp_path / "ws.sock")
    async with ws_server.unix_serve(echo, path, max_size=None):

        async def run() -> None:
            async with ws_client.unix_connect(path, "ws://localhost/", max_size=None) as ws:
                for i in range(200):
                    msg = rand_bytes((i * 4099) % 150_000, i)
                    await ws.send(msg)
                    assert await ws.recv() == msg

        await asyncio.wait_for(run(), T)
