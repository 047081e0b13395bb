"""Download a file from ``zerocopy_file_server.py`` with many concurrent clients and verify
every byte (SHA-256 against the local file, or against ``--sha256``).

    python examples/zerocopy_file_client.py FILE --port 9000 --clients 50
    python examples/zerocopy_file_client.py --self-test --clients 50   # server in-process
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import struct
import sys
import tempfile
import time

import uringloop


async def fetch(host: str, port: int) -> tuple[int, str]:
    """(bytes received, sha256 hex) of one download."""
    reader, writer = await asyncio.open_connection(host, port)
    (size,) = struct.unpack("!Q", await reader.readexactly(8))
    h = hashlib.sha256()
    got = 0
    while got < size:
        data = await reader.read(1 << 20)
        if not data:
            break
        h.update(data)
        got += len(data)
    writer.close()
    await writer.wait_closed()
    if got != size:
        raise ConnectionError(f"short download: {got} of {size} bytes")
    return got, h.hexdigest()


async def run_clients(host: str, port: int, clients: int, want: str) -> float:
    t0 = time.perf_counter()
    results = await asyncio.gather(*(fetch(host, port) for _ in range(clients)))
    dt = time.perf_counter() - t0
    bad = [i for i, (_, digest) in enumerate(results) if digest != want]
    if bad:
        raise AssertionError(f"checksum mismatch for clients {bad}")
    return sum(n for n, _ in results) / dt


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


async def _self_test(clients: int, mib: int) -> None:
    sys.path.insert(0, os.path.dirname(__file__))
    from zerocopy_file_server import close_file_server, serve_file

    with tempfile.NamedTemporaryFile() as f:
        f.write(os.urandom(mib << 20))
        f.flush()
        server = await serve_file(f.name)
        port = server.sockets[0].getsockname()[1]
        rate = await run_clients("127.0.0.1", port, clients, sha256_file(f.name))
        print(f"{clients} clients x {mib} MiB verified, {rate / 1e9:.2f} GB/s aggregate; "
              f"pool {server.zc_pool.stats()}")  # type: ignore[attr-defined]
        await close_file_server(server)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file", nargs="?")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--sha256")
    p.add_argument("--self-test", action="store_true")
    p.add_argument("--mib", type=int, default=32)
    a = p.parse_args()
    if a.self_test:
        uringloop.run(_self_test(a.clients, a.mib))
    else:
        want = a.sha256 or sha256_file(a.file)
        rate = uringloop.run(run_clients(a.host, a.port, a.clients, want))
        print(f"{a.clients} clients verified, {rate / 1e9:.2f} GB/s aggregate")
