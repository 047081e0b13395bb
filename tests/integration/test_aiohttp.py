"""aiohttp on uringloop: its server (HTTP + websockets) and its client, with real traffic.

The server tests run server and client in the test's loop; the client test talks to an
aiohttp server that runs on a stdlib loop in another thread, so only the client side is
on the loop under test.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import ssl
import threading
from collections.abc import AsyncIterator, Iterator

import pytest

from .conftest import NEED_EXTRA, loop_module, on_uringloop, rand_bytes, sha

aiohttp = pytest.importorskip("aiohttp", reason=NEED_EXTRA)
from aiohttp import web  # noqa: E402

T = 30  # seconds: the bound on every test body's waits

SIZES = [0, 1, 17, 1000, 4096, 65_535, 65_536, 200_000, 1 << 20]


def make_app(static_dir: str | None = None) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(body=body, headers={"X-Sha256": sha(body), "X-Loop": loop_module()})

    async def loop_name(request: web.Request) -> web.Response:
        return web.Response(text=loop_module())

    async def blob(request: web.Request) -> web.StreamResponse:
        # A chunked download: n bytes in pieces of random size, seeded by the query.
        n, seed = int(request.query["n"]), int(request.query["seed"])
        data = rand_bytes(n, seed)
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        rng = random.Random(seed)
        i = 0
        while i < n:
            step = rng.randint(1, 256 * 1024)
            await resp.write(data[i : i + step])
            i += step
        await resp.write_eof()
        return resp

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async def cookie_set(request: web.Request) -> web.Response:
        resp = web.Response(text="set")
        resp.set_cookie("flavour", request.query["v"])
        return resp

    async def cookie_get(request: web.Request) -> web.Response:
        return web.Response(text=request.cookies.get("flavour", "-"))

    async def ws_echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    app = web.Application(client_max_size=8 << 20)
    app.router.add_post("/echo", echo)
    app.router.add_get("/loop", loop_name)
    app.router.add_get("/blob", blob)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/cookie/set", cookie_set)
    app.router.add_get("/cookie/get", cookie_get)
    app.router.add_get("/ws", ws_echo)
    if static_dir is not None:
        app.router.add_static("/static", static_dir)  # FileResponse: loop.sendfile
    return app


@pytest.fixture
async def server() -> AsyncIterator[str]:
    """The app served in the test's own loop; yields its base URL."""
    runner = web.AppRunner(make_app(), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture(scope="module")
def threaded_server() -> Iterator[str]:
    """The app served by a stdlib asyncio loop in a thread; yields its base URL."""
    loop = asyncio.new_event_loop()
    ready: list[str] = []
    started = threading.Event()
    runner = web.AppRunner(make_app(), handle_signals=False)

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        ready.append(f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}")  # type: ignore[union-attr]
        started.set()

    def main() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    t = threading.Thread(target=main, daemon=True)
    t.start()
    assert started.wait(10)
    try:
        yield ready[0]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)


async def test_server_concurrent_post_echo(server: str) -> None:
    """600 POSTs of sizes 0 B .. 1 MiB, 64 at a time over a pooled client, each echoed."""
    expected_loop = loop_module()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as s:
        async with s.get(server + "/loop") as r:
            assert await r.text() == expected_loop

        async def one(i: int) -> int:
            body = rand_bytes(SIZES[i % len(SIZES)], i)
            async with s.post(server + "/echo", data=body) as r:
                assert r.status == 200
                got = await r.read()
                assert r.headers["X-Sha256"] == sha(body)
                assert r.headers["X-Loop"] == expected_loop
            assert got == body, (i, len(got), len(body))
            return len(got)

        total = sum(await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(600))), T))
    assert total == sum(SIZES[i % len(SIZES)] for i in range(600))
    if on_uringloop():
        assert expected_loop.startswith("uringloop")


async def test_server_websocket_echo(server: str) -> None:
    """4 websocket clients each echo 150 text/binary messages of random size (<= 300 KiB)."""

    async def client(k: int) -> int:
        rng = random.Random(k)
        n = 0
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(server + "/ws", max_msg_size=0) as ws:
                for i in range(150):
                    size = rng.choice([0, 1, 125, 126, 65_535, 65_536, rng.randint(0, 300_000)])
                    if i % 2:
                        msg = rand_bytes(size, k * 1000 + i)
                        await ws.send_bytes(msg)
                        assert await ws.receive_bytes() == msg
                    else:
                        text = "é" * (size // 2)
                        await ws.send_str(text)
                        assert await ws.receive_str() == text
                    n += 1
                await ws.close()
        return n

    assert await asyncio.wait_for(asyncio.gather(*(client(k) for k in range(4))), T) == [150] * 4


async def test_client_against_threaded_server(threaded_server: str) -> None:
    """The client alone on the loop: keep-alive, chunked downloads, uploads, redirects, cookies."""
    base = threaded_server
    jar = aiohttp.CookieJar(unsafe=True)  # unsafe: accept cookies from an IP-address host
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8), cookie_jar=jar) as s:
        async with s.get(base + "/redirect") as r:  # redirect followed; server is stdlib
            assert r.status == 200 and await r.text() == "asyncio.unix_events"
            assert len(r.history) == 1

        async with s.get(base + "/cookie/set", params={"v": "lemon"}) as r:
            assert await r.text() == "set"
        async with s.get(base + "/cookie/get") as r:
            assert await r.text() == "lemon"

        async def download(seed: int, n: int) -> None:
            async with s.get(base + "/blob", params={"n": str(n), "seed": str(seed)}) as r:
                assert r.headers.get("Transfer-Encoding") == "chunked"
                h = []
                async for chunk in r.content.iter_chunked(50_000):
                    h.append(chunk)
            assert b"".join(h) == rand_bytes(n, seed)

        await asyncio.wait_for(
            asyncio.gather(
                *(download(seed, n) for seed, n in enumerate([0, 10, 4 << 20, 700_001] * 3))
            ),
            T,
        )

        async def upload(i: int) -> None:
            body = rand_bytes(SIZES[i % len(SIZES)], 7 * i)

            async def gen() -> AsyncIterator[bytes]:  # a streamed (chunked) upload
                for j in range(0, len(body), 33_333):
                    yield body[j : j + 33_333]

            async with s.post(base + "/echo", data=gen()) as r:
                assert r.headers["X-Sha256"] == sha(body)
                assert await r.read() == body

        await asyncio.wait_for(asyncio.gather(*(upload(i) for i in range(90))), T)


async def _serve(app: web.Application, ssl_context: ssl.SSLContext | None = None):  # type: ignore[no-untyped-def]
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def test_server_static_files_sendfile(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """FileResponse (aiohttp's loop.sendfile path): whole files, ranges, concurrent fetches."""
    files = {f"f{n}.bin": rand_bytes(n, n) for n in (0, 1, 4095, 65_536, 1_000_003, 6 << 20)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    runner, port = await _serve(make_app(static_dir=str(tmp_path)))
    base = f"http://127.0.0.1:{port}/static/"
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as s:

            async def whole(name: str) -> None:
                async with s.get(base + name, headers={"Accept-Encoding": "identity"}) as r:
                    assert r.status == 200
                    assert await r.read() == files[name]

            async def part(name: str, start: int, end: int) -> None:
                async with s.get(base + name, headers={"Range": f"bytes={start}-{end}"}) as r:
                    assert r.status == 206
                    assert await r.read() == files[name][start : end + 1]

            await asyncio.wait_for(
                asyncio.gather(
                    *(whole(n) for n in files for _ in range(3)),
                    part("f1000003.bin", 0, 0),
                    part("f1000003.bin", 12_345, 999_999),
                    part(f"f{6 << 20}.bin", 5 << 20, (6 << 20) - 1),
                    part("f65536.bin", 65_535, 65_535),
                ),
                T,
            )
    finally:
        await runner.cleanup()


async def test_https_server_and_client(tls_cert) -> None:  # type: ignore[no-untyped-def]
    """aiohttp over TLS (asyncio's SSL protocol on the loop's transports), verified cert:
    120 echoed POSTs up to 1 MiB and a websocket over wss."""
    cert, key = tls_cert
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=cert)
    runner, port = await _serve(make_app(), server_ctx)
    base = f"https://127.0.0.1:{port}"
    try:
        conn = aiohttp.TCPConnector(ssl=client_ctx, limit=16)
        async with aiohttp.ClientSession(connector=conn) as s:

            async def one(i: int) -> None:
                body = rand_bytes(SIZES[i % len(SIZES)], 31 * i)
                async with s.post(base + "/echo", data=body) as r:
                    assert r.headers["X-Sha256"] == sha(body)
                    assert await r.read() == body

            await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(120))), T)

            async def wss() -> None:
                async with s.ws_connect(base.replace("https", "wss") + "/ws", max_msg_size=0) as ws:
                    for i in range(40):
                        msg = rand_bytes(i * 7919, i)
                        await ws.send_bytes(msg)
                        assert await ws.receive_bytes() == msg

            await asyncio.wait_for(wss(), T)
    finally:
        await runner.cleanup()


async def test_many_connections_and_localhost_fallback(server: str) -> None:
    """400 requests on fresh connections (force_close, up to 200 open at once: a burst of
    accepts), then "localhost" resolved through the loop's getaddrinfo, where ::1 (if it
    comes first) is refused and the connector falls back to 127.0.0.1."""
    port = int(server.rsplit(":", 1)[1])
    conn = aiohttp.TCPConnector(limit=200, force_close=True)
    async with aiohttp.ClientSession(connector=conn) as s:

        async def one(i: int) -> None:
            body = rand_bytes(i % 3000, i)
            async with s.post(server + "/echo", data=body) as r:
                assert await r.read() == body

        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(400))), T)
        for _ in range(3):
            async with s.get(f"http://localhost:{port}/loop") as r:
                assert await r.text() == loop_module()


async def test_unix_socket_site(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """aiohttp served on a unix socket (UnixSite) and reached with a UnixConnector."""
    path = str(tmp_path / "aiohttp.sock")
    runner = web.AppRunner(make_app(), handle_signals=False)
    await runner.setup()
    await web.UnixSite(runner, path).start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path)) as s:

            async def one(i: int) -> None:
                body = rand_bytes(SIZES[i % len(SIZES)], 3 * i)
                async with s.post("http://unix/echo", data=body) as r:
                    assert r.headers["X-Loop"] == loop_module()
                    assert await r.read() == body

            await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(90))), T)
    finally:
        await runner.cleanup()


async def test_backpressure_both_ways() -> None:
    """Flow control through aiohttp: the server streams 24 MiB to a client that reads
    slowly at first (server transport pauses), and a client uploads 24 MiB to a handler
    that reads slowly (client transport pauses). Every byte is checked."""
    n = 24 << 20
    chunk = 256 * 1024

    def piece(i: int) -> bytes:  # cheap, position-dependent content
        return i.to_bytes(4, "big") * (chunk // 4)

    async def download(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = n
        await resp.prepare(request)
        for i in range(n // chunk):
            await resp.write(piece(i))  # waits for the transport to drain
        await resp.write_eof()
        return resp

    async def upload(request: web.Request) -> web.Response:
        h = hashlib.sha256()
        got = 0
        while True:
            data = await request.content.read(65_536)
            if not data:
                break
            h.update(data)
            got += len(data)
            if got < (10 << 20):
                await asyncio.sleep(0.002)  # a slow reader for the first 10 MiB
        return web.Response(text=f"{got}:{h.hexdigest()}")

    app = web.Application(client_max_size=n + 1)
    app.router.add_get("/down", download)
    app.router.add_post("/up", upload)
    runner, port = await _serve(app)
    try:
        async with aiohttp.ClientSession() as s:

            async def down() -> None:
                h, expect = hashlib.sha256(), hashlib.sha256()
                for i in range(n // chunk):
                    expect.update(piece(i))
                got = 0
                async with s.get(f"http://127.0.0.1:{port}/down") as r:
                    async for data in r.content.iter_chunked(65_536):
                        h.update(data)
                        got += len(data)
                        if got < (10 << 20):
                            await asyncio.sleep(0.002)  # a slow reader at first
                assert got == n and h.hexdigest() == expect.hexdigest()

            async def up() -> None:
                expect = hashlib.sha256()

                async def gen() -> AsyncIterator[bytes]:
                    for i in range(n // chunk):
                        p = piece(i)
                        expect.update(p)
                        yield p

                async with s.post(f"http://127.0.0.1:{port}/up", data=gen()) as r:
                    assert await r.text() == f"{n}:{expect.hexdigest()}"

            await asyncio.wait_for(asyncio.gather(down(), up()), T)
    finally:
        await runner.cleanup()


async def test_server_closes_idle_keepalive() -> None:
    """The server's keep-alive timeout closes an idle connection (a receive is pending on
    it): the client sees a clean EOF, and a new connection works."""
    runner = web.AppRunner(make_app(), handle_signals=False, keepalive_timeout=0.3)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /loop HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
            assert head.startswith(b"HTTP/1.1 200")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            assert await reader.readexactly(length) == loop_module().encode()
            t0 = asyncio.get_running_loop().time()
            assert await asyncio.wait_for(reader.read(100), T) == b""  # closed by the server
            assert 0.2 < asyncio.get_running_loop().time() - t0 < 5
            writer.close()
            await writer.wait_closed()
    finally:
        await runner.cleanup()
