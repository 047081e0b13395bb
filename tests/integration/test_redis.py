"""redis-py's asyncio client against a real redis-server (TCP and a unix socket).

A session fixture starts ``redis-server`` on a free 127.0.0.1 port (no persistence) and
stops it afterwards. Pipelines, 10k SET/GET, transactions with WATCH, pub/sub.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from .conftest import NEED_EXTRA, die_with_parent, find_tool, free_port, loop_module, rand_bytes

aioredis = pytest.importorskip("redis.asyncio", reason=NEED_EXTRA)

T = 30


@dataclass
class RedisServer:
    port: int
    unix_path: str


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    exe = find_tool("redis-server", "/usr/sbin", "/usr/local/bin")
    if exe is None:
        pytest.skip("redis-server not installed (.ci/install-integration-deps.sh installs it)")
    tmp = tempfile.mkdtemp(prefix="uringloop-redis-")
    sock_path = os.path.join(tmp, "redis.sock")
    for _attempt in range(3):
        port = free_port()
        proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--unixsocket",
                sock_path,
                "--unixsocketperm",
                "700",
                "--dir",
                tmp,
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        break
            except OSError:
                time.sleep(0.05)
        if proc.poll() is None:
            break
    else:
        out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.fail(f"redis-server did not start:\n{out}")
    try:
        yield RedisServer(port, sock_path)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
async def r(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis(host="127.0.0.1", port=redis_server.port, max_connections=32)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.flushdb()
        await client.aclose()


async def test_set_get_10k(r: aioredis.Redis) -> None:
    """10k SETs through pipelines, 10k GETs as concurrent commands over the pool, MGET."""
    n = 10_000
    vals = [rand_bytes(i % 700, i) for i in range(n)]

    async def run() -> None:
        for start in range(0, n, 1000):
            async with r.pipeline(transaction=False) as p:
                for i in range(start, start + 1000):
                    p.set(f"k:{i}", vals[i])
                assert await p.execute() == [True] * 1000
        assert await r.dbsize() == n

        sem = asyncio.Semaphore(32)

        async def get(i: int) -> bytes | None:
            async with sem:
                return await r.get(f"k:{i}")

        got = await asyncio.gather(*(get(i) for i in range(n)))
        assert got == vals
        assert await r.mget([f"k:{i}" for i in range(0, n, 7)]) == vals[::7]

    await asyncio.wait_for(run(), T)


async def test_transactions_with_watch(r: aioredis.Redis) -> None:
    """10 tasks each add 1, 30 times, with optimistic WATCH/MULTI/EXEC: no lost update."""
    await r.set("counter", 0)

    async def incr() -> None:
        for _ in range(30):
            while True:
                async with r.pipeline(transaction=True) as p:
                    try:
                        await p.watch("counter")
                        v = int(await p.get("counter"))
                        p.multi()
                        p.set("counter", v + 1)
                        await p.execute()
                        break
                    except aioredis.WatchError:
                        continue

    await asyncio.wait_for(asyncio.gather(*(incr() for _ in range(10))), T)
    assert int(await r.get("counter")) == 300


async def test_pubsub(r: aioredis.Redis) -> None:
    """1000 messages on a channel and 200 on a pattern arrive complete and in order."""
    ps = r.pubsub()
    await ps.subscribe("news")
    await ps.psubscribe("sensor.*")
    try:
        for _ in range(2):  # the two subscribe confirmations
            m = await ps.get_message(timeout=5)
            assert m is not None and m["type"] in ("subscribe", "psubscribe")

        async def publish() -> None:
            for i in range(1000):
                assert await r.publish("news", f"{loop_module()}:{i}") == 1
                if i % 5 == 0:
                    await r.publish(f"sensor.{i}", rand_bytes(i, i))

        async def listen() -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
            news: list[bytes] = []
            sensors: list[tuple[bytes, bytes]] = []
            async for m in ps.listen():
                if m["type"] == "message":
                    news.append(m["data"])
                elif m["type"] == "pmessage":
                    sensors.append((m["channel"], m["data"]))
                if len(news) == 1000 and len(sensors) == 200:
                    break
            return news, sensors

        listener = asyncio.ensure_future(listen())
        await asyncio.wait_for(publish(), T)
        news, sensors = await asyncio.wait_for(listener, T)
        assert news == [f"{loop_module()}:{i}".encode() for i in range(1000)]
        assert sensors == [(f"sensor.{i}".encode(), rand_bytes(i, i)) for i in range(0, 1000, 5)]
    finally:
        await ps.aclose()


async def test_unix_socket(redis_server: RedisServer) -> None:
    """The same client over redis-server's unix socket: 2000 pipelined SETs, big values."""
    c = aioredis.Redis(unix_socket_path=redis_server.unix_path)
    try:
        async with c.pipeline(transaction=False) as p:
            for i in range(2000):
                p.set(f"u:{i}", i)
            await asyncio.wait_for(p.execute(), T)
        assert [int(v) for v in await c.mget([f"u:{i}" for i in range(2000)])] == list(range(2000))
        big = rand_bytes(4 << 20, 1)
        await c.set("big", big)
        assert await asyncio.wait_for(c.get("big"), T) == big
        await c.flushdb()
    finally:
        await c.aclose()
