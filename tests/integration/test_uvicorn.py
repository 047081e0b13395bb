"""uvicorn serving an ASGI app on uringloop (``--loop uringloop:new_event_loop``).

The server runs as a subprocess with ``--http httptools`` and with ``--http h11`` (and,
as a baseline, on the stdlib loop with httptools); the app reports the module of its
running loop, so the test proves which loop serves. The client (aiohttp, plus the
websockets library for /ws) runs on the loop under test.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from .conftest import HERE, NEED_EXTRA, die_with_parent, rand_bytes, sha

pytest.importorskip("uvicorn", reason=NEED_EXTRA)
aiohttp = pytest.importorskip("aiohttp", reason=NEED_EXTRA)
websockets_client = pytest.importorskip("websockets.asyncio.client", reason=NEED_EXTRA)

T = 30
N_REQUESTS = 1500
SIZES = [0, 1, 100, 1500, 8192, 40_000, 65_536, 150_000]


@dataclass
class Server:
    url: str
    loop: str  # what the app must report from /loop
    log: str  # path of the server's stderr


SERVERS = {
    "uringloop-httptools": ("uringloop:new_event_loop", "httptools", "uringloop.loop"),
    "uringloop-h11": ("uringloop:new_event_loop", "h11", "uringloop.loop"),
    "asyncio-httptools": ("asyncio", "httptools", "asyncio.unix_events"),
}


@pytest.fixture(scope="module", params=list(SERVERS), ids=[f"server={k}" for k in SERVERS])
def uvicorn_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    loop, http, expected = SERVERS[request.param]
    if http == "httptools":
        pytest.importorskip("httptools", reason=NEED_EXTRA)
    log = tempfile.NamedTemporaryFile(prefix="uvicorn-", suffix=".log", delete=False)
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "_asgi_app:app",
        "--app-dir",
        str(HERE),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--loop",
        loop,
        "--http",
        http,
        "--ws",
        "websockets",
        "--no-access-log",
        "--timeout-graceful-shutdown",
        "5",
    ]
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(HERE), preexec_fn=die_with_parent
    )
    try:
        deadline = time.monotonic() + 20
        m = None
        while m is None:
            with open(log.name) as f:
                text = f.read()
            m = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", text)
            if proc.poll() is not None:
                pytest.fail(f"uvicorn exited with {proc.returncode}:\n{text}")
            if time.monotonic() > deadline:
                pytest.fail(f"uvicorn did not start:\n{text}")
            if m is None:
                time.sleep(0.05)
        yield Server(f"http://127.0.0.1:{m.group(1)}", expected, log.name)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = None
        with open(log.name) as f:
            text = f.read()
        os.unlink(log.name)
        log.close()
    assert rc == 0, f"uvicorn exit status {rc}:\n{text}"
    for bad in ("Traceback", "Exception in ASGI application", "ERROR"):
        assert bad not in text, text
    assert "Finished server process" in text, text


async def test_requests_with_bodies(uvicorn_server: Server) -> None:
    """1500 POSTs (0 B .. 150 KB bodies, 50 at a time) echoed and verified, + /loop."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50)) as s:
        async with s.get(uvicorn_server.url + "/loop") as r:
            assert r.status == 200
            assert await r.text() == uvicorn_server.loop

        async def one(i: int) -> int:
            body = rand_bytes(SIZES[i % len(SIZES)], i)
            async with s.post(uvicorn_server.url + "/echo", data=body) as r:
                assert r.status == 200
                assert r.headers["x-sha256"] == sha(body)
                assert int(r.headers["content-length"]) == len(body)
                got = await r.read()
            assert got == body, i
            return 1

        done = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(N_REQUESTS))), T)
        assert sum(done) == N_REQUESTS

        async with s.get(uvicorn_server.url + "/nope") as r:
            assert r.status == 404


async def test_streamed_responses(uvicorn_server: Server) -> None:
    """Responses sent as many ASGI body messages (chunked on the wire) arrive intact."""
    async with aiohttp.ClientSession() as s:

        async def one(seed: int, n: int) -> None:
            async with s.get(uvicorn_server.url + "/stream", params={"n": n, "seed": seed}) as r:
                assert r.status == 200
                assert await r.read() == rand_bytes(n, seed)

        await asyncio.wait_for(
            asyncio.gather(*(one(seed, n) for seed, n in enumerate([0, 1, 99_999, 3 << 20] * 2))), T
        )


async def test_websocket_echo(uvicorn_server: Server) -> None:
    """The websockets client against uvicorn's websockets protocol: 200 messages echoed."""
    url = uvicorn_server.url.replace("http://", "ws://") + "/ws"
    rng = random.Random(5)

    async def run() -> None:
        async with websockets_client.connect(url, max_size=None) as ws:
            for i in range(200):
                n = rng.choice([0, 1, 125, 126, 65_536, rng.randint(0, 200_000)])
                msg: bytes | str = rand_bytes(n, i) if i % 2 else "x" * n
                await ws.send(msg)
                assert await ws.recv() == msg

    await asyncio.wait_for(run(), T)


def test_wrk_load(uvicorn_server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """wrk drives 64 keep-alive connections of 1 KiB POSTs for 1 s: no socket errors,
    no non-2xx responses, and the server is still healthy (checked by the fixture's
    teardown: clean exit, no tracebacks in its log)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        pytest.skip("wrk not installed (.ci/install-integration-deps.sh installs it)")
    script = tmp_path / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.body = string.rep("a", 1024)\n')
    out = subprocess.run(
        [wrk, "-t1", "-c64", "-d1s", "-s", str(script), uvicorn_server.url + "/echo"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    m = re.search(r"(\d+) requests in", out)
    assert m and int(m.group(1)) > 200, out
    assert "Socket errors" not in out, out
    assert "Non-2xx" not in out, out


async def test_abrupt_client_disconnects(uvicorn_server: Server) -> None:
    """Clients that vanish mid-request (half-sent headers or bodies, some with RST) do not
    disturb the server: later requests are answered, and its log stays clean."""
    import socket as _socket
    import struct

    host, port = uvicorn_server.url.rsplit("/", 1)[-1].split(":")

    async def vandal(i: int) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        if i % 3 == 0:
            writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
            writer.write(b"z" * (i * 100))
        elif i % 3 == 1:
            writer.write(b"GET /loop HTTP/1.1\r\nHo")
        else:
            writer.write(b"GET /stream?n=5000000&seed=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            await reader.read(1000)  # the response has started; walk away mid-body
        await writer.drain()
        await asyncio.sleep(0.01)
        if i % 2:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass

    await asyncio.wait_for(asyncio.gather(*(vandal(i) for i in range(60))), T)
    async with aiohttp.ClientSession() as s:
        for _ in range(20):
            async with s.post(uvicorn_server.url + "/echo", data=b"still here") as r:
                assert await r.read() == b"still here"
