"""httpx (asyncio backend, through anyio and httpcore) as a client on uringloop.

The server is aiohttp in the same loop. Concurrent POSTs of several sizes, streamed
uploads and downloads, connection pooling/keep-alive, and a read timeout that cancels.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from .conftest import NEED_EXTRA, loop_module, rand_bytes, sha

httpx = pytest.importorskip("httpx", reason=NEED_EXTRA)
aiohttp = pytest.importorskip("aiohttp", reason=NEED_EXTRA)
from aiohttp import web  # noqa: E402

T = 30
SIZES = [0, 1, 512, 16_384, 65_537, 200_000]


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, set]]:
    peers: set = set()

    async def echo(request: web.Request) -> web.Response:
        peers.add(request.transport.get_extra_info("peername"))  # type: ignore[union-attr]
        body = await request.read()
        return web.Response(body=body, headers={"X-Sha256": sha(body), "X-Loop": loop_module()})

    async def blob(request: web.Request) -> web.StreamResponse:
        n, seed = int(request.query["n"]), int(request.query["seed"])
        data = rand_bytes(n, seed)
        resp = web.StreamResponse()
        resp.content_length = n
        await resp.prepare(request)
        for i in range(0, n, 100_000):
            await resp.write(data[i : i + 100_000])
        await resp.write_eof()
        return resp

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="late")

    app = web.Application(client_max_size=8 << 20)
    app.router.add_post("/echo", echo)
    app.router.add_get("/blob", blob)
    app.router.add_get("/slow", slow)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", peers
    finally:
        await runner.cleanup()


async def test_concurrent_posts_keepalive(server: tuple[str, set]) -> None:
    """250 POSTs over a pool of at most 20 connections; every body echoed, pool reused."""
    url, peers = server
    limits = httpx.Limits(max_connections=20, max_keepalive_connections=20)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=T) as c:

        async def one(i: int) -> None:
            body = rand_bytes(SIZES[i % len(SIZES)], i)
            r = await c.post("/echo", content=body)
            assert r.status_code == 200
            assert r.headers["x-sha256"] == sha(body)
            assert r.headers["x-loop"] == loop_module()
            assert r.content == body

        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(250))), T)
    assert 1 <= len(peers) <= 20, len(peers)


async def test_streaming_up_and_down(server: tuple[str, set]) -> None:
    """Chunked uploads from async generators and streamed downloads via aiter_bytes."""
    url, _ = server
    async with httpx.AsyncClient(base_url=url, timeout=T) as c:

        async def up(i: int) -> None:
            body = rand_bytes(SIZES[i % len(SIZES)] * 3, 100 + i)

            async def gen() -> AsyncIterator[bytes]:
                for j in range(0, len(body), 50_001):
                    yield body[j : j + 50_001]
                    await asyncio.sleep(0)

            r = await c.post("/echo", content=gen())
            assert r.headers["x-sha256"] == sha(body)
            assert r.content == body

        async def down(seed: int, n: int) -> None:
            got = bytearray()
            async with c.stream("GET", "/blob", params={"n": n, "seed": seed}) as r:
                assert int(r.headers["content-length"]) == n
                async for chunk in r.aiter_bytes():
                    got += chunk
            assert bytes(got) == rand_bytes(n, seed)

        await asyncio.wait_for(
            asyncio.gather(
                *(up(i) for i in range(28)),
                *(down(seed, n) for seed, n in enumerate([0, 1, 99_999, 5 << 20, 1 << 20])),
            ),
            T,
        )


async def test_read_timeout_cancels(server: tuple[str, set]) -> None:
    """A read timeout fires on time (a loop timer cancelling a pending read), and the
    client stays usable afterwards."""
    url, _ = server
    async with httpx.AsyncClient(base_url=url) as c:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(httpx.ReadTimeout):
            await c.get("/slow", timeout=httpx.Timeout(5, read=0.3))
        assert 0.25 <= loop.time() - t0 < 3
        r = await c.post("/echo", content=b"after", timeout=T)
        assert r.content == b"after"
