"""asyncpg against a real PostgreSQL server.

A session fixture runs ``initdb`` into a temporary directory (as the ``postgres`` user
when the tests run as root, since PostgreSQL refuses to run as root) and starts
``postgres`` on a free 127.0.0.1 port with its unix socket in that directory; it stops
the server and removes the directory afterwards. COPY of 10k rows, queries, cursors,
prepared statements, a concurrent pool, LISTEN/NOTIFY, and the unix-socket path.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import glob
import os
import pwd
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from .conftest import (
    NEED_EXTRA,
    die_with_parent,
    find_tool,
    free_port,
    loop_module,
    make_tls_cert,
    rand_bytes,
)

asyncpg = pytest.importorskip("asyncpg", reason=NEED_EXTRA)

T = 30


@dataclass
class PgServer:
    port: int
    sock_dir: str
    cafile: str | None  # the server's (self-signed) certificate when it has TLS on
    user: str = "uring"
    database: str = "postgres"

    def dsn(self) -> str:  # sslmode=disable: plain TCP (the TLS test asks for TLS itself)
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}?sslmode=disable"


def _pg_bin_dirs() -> list[str]:
    return sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]), reverse=True
    )


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    initdb = find_tool("initdb", *_pg_bin_dirs())
    if initdb is None:
        pytest.skip(
            "PostgreSQL (initdb/postgres) not installed "
            "(.ci/install-integration-deps.sh installs it)"
        )
    postgres = os.path.join(os.path.dirname(initdb), "postgres")
    run_as: dict = {}
    if os.geteuid() == 0:  # postgres refuses to run as root
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
        run_as = {"user": pw.pw_uid, "group": pw.pw_gid}
    tmp = tempfile.mkdtemp(prefix="uringloop-pg-")
    if run_as:
        os.chown(tmp, run_as["user"], run_as["group"])
    data = os.path.join(tmp, "data")
    logpath = os.path.join(tmp, "postgres.log")
    proc = None
    tls: list[str] = []
    cafile = None
    if shutil.which("openssl"):
        cafile, key = make_tls_cert(tmp)
        os.chmod(key, 0o600)
        if run_as:
            os.chown(key, run_as["user"], run_as["group"])
        tls = ["-c", "ssl=on", "-c", f"ssl_cert_file={cafile}", "-c", f"ssl_key_file={key}"]
    try:
        subprocess.run(
            [
                initdb,
                "-D",
                data,
                "-A",
                "trust",
                "-U",
                "uring",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            cwd=tmp,
            **run_as,
        )
        for _attempt in range(3):
            port = free_port()
            with open(logpath, "ab") as log:
                proc = subprocess.Popen(
                    [
                        postgres,
                        "-D",
                        data,
                        "-p",
                        str(port),
                        "-h",
                        "127.0.0.1",
                        "-k",
                        tmp,
                        "-c",
                        "fsync=off",
                        "-c",
                        "synchronous_commit=off",
                        "-c",
                        "full_page_writes=off",
                        "-c",
                        "max_connections=40",
                        "-c",
                        "shared_buffers=16MB",
                        *tls,
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=die_with_parent,
                    cwd=tmp,
                    **run_as,
                )
            deadline = time.monotonic() + 30
            ready = False
            while proc.poll() is None and time.monotonic() < deadline and not ready:
                with open(logpath, errors="replace") as f:
                    ready = "ready to accept connections" in f.read()
                if not ready:
                    time.sleep(0.05)
            if ready:
                break
            proc.kill()
            proc.wait()
        else:
            with open(logpath, errors="replace") as f:
                pytest.fail(f"postgres did not start:\n{f.read()}")
        yield PgServer(port, tmp, cafile)
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
async def conn(pg_server: PgServer) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(pg_server.dsn(), timeout=T)
    try:
        yield c
    finally:
        await c.close()


def _rows(n: int) -> list[tuple]:
    rng = random.Random(n)
    base = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    return [
        (
            i,
            f"name-{i}-" + "ß" * rng.randint(0, 20),
            rng.random() * 1000,
            rand_bytes(rng.randint(0, 300), i),
            base + dt.timedelta(seconds=i * 37),
            [f"t{j}" for j in range(i % 4)],
        )
        for i in range(n)
    ]


async def test_copy_and_queries(conn: asyncpg.Connection) -> None:
    """copy_records_to_table of 10k rows, then fetch/aggregate/cursor/executemany."""
    rows = _rows(10_000)

    async def run() -> None:
        await conn.execute(
            "CREATE TEMP TABLE items (id int PRIMARY KEY, name text, score float8, data bytea,"
            " created timestamptz, tags text[])"
        )
        res = await conn.copy_records_to_table(
            "items", records=rows, columns=["id", "name", "score", "data", "created", "tags"]
        )
        assert res == "COPY 10000"
        assert await conn.fetchval("SELECT count(*) FROM items") == 10_000
        total = await conn.fetchval("SELECT sum(score) FROM items")
        assert abs(total - sum(r[2] for r in rows)) < 1e-6
        got = await conn.fetch("SELECT id, name, score, data, created, tags FROM items ORDER BY id")
        assert [tuple(r) for r in got] == rows

        stmt = await conn.prepare("SELECT name, data FROM items WHERE id = $1")
        for i in range(0, 10_000, 97):
            rec = await stmt.fetchrow(i)
            assert (rec["name"], rec["data"]) == (rows[i][1], rows[i][3])

        async with conn.transaction():
            seen = 0
            async for rec in conn.cursor("SELECT id, data FROM items ORDER BY id", prefetch=333):
                assert rec["data"] == rows[seen][3]
                seen += 1
            assert seen == 10_000

        await conn.executemany(
            "UPDATE items SET score = $2 WHERE id = $1", [(i, -1.0) for i in range(0, 10_000, 10)]
        )
        assert await conn.fetchval("SELECT count(*) FROM items WHERE score = -1") == 1000
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("INSERT INTO items (id) VALUES (5)")
        assert await conn.fetchval("SELECT $1::text", loop_module()) == loop_module()

    await asyncio.wait_for(run(), T)


async def test_pool_concurrency(pg_server: PgServer) -> None:
    """A pool of 10 connections: 300 concurrent transactions, and sleeps that overlap."""
    table = f"pool_{loop_module().replace('.', '_')}"
    async with asyncpg.create_pool(pg_server.dsn(), min_size=2, max_size=10, timeout=T) as pool:
        await pool.execute(f"DROP TABLE IF EXISTS {table}")
        await pool.execute(f"CREATE TABLE {table} (k int PRIMARY KEY, v text, n int)")
        try:

            async def job(i: int) -> str:
                async with pool.acquire() as c, c.transaction():
                    await c.execute(f"INSERT INTO {table} VALUES ($1, $2, 0)", i, f"v{i}")
                    await c.execute(f"UPDATE {table} SET n = n + $2 WHERE k = $1", i, i)
                    return await c.fetchval(f"SELECT v || ':' || n FROM {table} WHERE k = $1", i)

            got = await asyncio.wait_for(asyncio.gather(*(job(i) for i in range(300))), T)
            assert got == [f"v{i}:{i}" for i in range(300)]
            assert await pool.fetchval(f"SELECT sum(n) FROM {table}") == sum(range(300))

            # 10 x 0.3 s sleeps on 10 connections overlap: the loop really multiplexes them.
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await asyncio.wait_for(
                asyncio.gather(*(pool.execute("SELECT pg_sleep(0.3)") for _ in range(10))), T
            )
            assert loop.time() - t0 < 2.0
        finally:
            await pool.execute(f"DROP TABLE IF EXISTS {table}")


async def test_listen_notify(conn: asyncpg.Connection, pg_server: PgServer) -> None:
    """300 NOTIFYs from a second connection reach a LISTENer, complete and in order."""
    got: list[str] = []
    done = asyncio.Event()

    def on_notify(_c, _pid, channel: str, payload: str) -> None:
        got.append(payload)
        if len(got) == 300:
            done.set()

    await conn.add_listener("events", on_notify)
    other = await asyncpg.connect(pg_server.dsn(), timeout=T)
    try:
        for i in range(300):
            await other.execute("SELECT pg_notify('events', $1)", f"e{i}:" + "x" * (i % 50))
        await asyncio.wait_for(done.wait(), T)
    finally:
        await other.close()
        await conn.remove_listener("events", on_notify)
    assert got == [f"e{i}:" + "x" * (i % 50) for i in range(300)]


async def test_unix_socket(pg_server: PgServer) -> None:
    """Connecting through the server's unix socket; a 4 MiB bytea round-trip."""
    c = await asyncpg.connect(
        host=pg_server.sock_dir,
        port=pg_server.port,
        user=pg_server.user,
        database=pg_server.database,
        timeout=T,
    )
    try:
        big = rand_bytes(4 << 20, 3)
        assert await asyncio.wait_for(c.fetchval("SELECT $1::bytea", big), T) == big
        assert await c.fetchval("SELECT count(*) FROM generate_series(1, 100000)") == 100_000
    finally:
        await c.close()


async def test_tls(pg_server: PgServer) -> None:
    """TLS with a verified certificate: asyncpg negotiates SSLRequest in the clear, then
    upgrades the connection with loop.start_tls; queries and a COPY run over it."""
    if pg_server.cafile is None:
        pytest.skip("openssl (the command-line tool) not installed, so the server has no TLS")
    import ssl

    ctx = ssl.create_default_context(cafile=pg_server.cafile)
    c = await asyncpg.connect(
        host="127.0.0.1",
        port=pg_server.port,
        user=pg_server.user,
        database=pg_server.database,
        ssl=ctx,
        timeout=T,
    )
    try:
        assert await c.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert c.get_server_pid() > 0
        big = rand_bytes(3 << 20, 9)
        assert await asyncio.wait_for(c.fetchval("SELECT $1::bytea", big), T) == big
        await c.execute("CREATE TEMP TABLE t (i int, s text)")
        rows = [(i, f"row {i}") for i in range(5000)]
        assert await c.copy_records_to_table("t", records=rows) == "COPY 5000"
        assert [tuple(r) for r in await c.fetch("SELECT i, s FROM t ORDER BY i")] == rows
    finally:
        await c.close()


async def test_query_timeout_cancels_on_server(conn: asyncpg.Connection) -> None:
    """A statement timeout on the client: asyncpg sends a CancelRequest on a second
    connection; the server cancels, and the connection stays usable."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(asyncio.TimeoutError):
        await conn.execute("SELECT pg_sleep(10)", timeout=0.3)
    assert loop.time() - t0 < 5
    assert await asyncio.wait_for(conn.fetchval("SELECT 41 + 1"), T) == 42
    # a task cancelled mid-query leaves the connection usable too
    task = asyncio.ensure_future(conn.fetchval("SELECT pg_sleep(10)"))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.wait_for(conn.fetchval("SELECT 'ok'"), T) == "ok"
