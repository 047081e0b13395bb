"""Stream a large payload with ``write_zerocopy``, reusing one buffer safely.

The client fills a 1 MiB ``bytearray``, hands it to ``transport.write_zerocopy`` and
awaits the result before refilling it: the awaitable resolves only when the kernel's
notification says the pages are no longer referenced. A sink server in the same
process (also on uringloop) checksums what arrives, and the two checksums must match.

    python examples/zerocopy_client.py --total-mib 256
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import time

import uringloop

CHUNK = 1 << 20


class Sink(asyncio.Protocol):
    """Counts and hashes every byte received; reports at EOF."""

    def __init__(self, done: asyncio.Future[tuple[int, str]]) -> None:
        self.done = done
        self.hash = hashlib.blake2b()
        self.count = 0

    def data_received(self, data: bytes) -> None:
        self.hash.update(data)
        self.count += len(data)

    def eof_received(self) -> None:
        if not self.done.done():
            self.done.set_result((self.count, self.hash.hexdigest()))


def fill(buf: bytearray, index: int) -> None:
    """Deterministic, chunk-dependent content (so reordering would be caught)."""
    stamp = index.to_bytes(8, "little")
    buf[:] = stamp * (len(buf) // 8)


async def main(total_mib: int) -> int:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[int, str]] = loop.create_future()
    server = await loop.create_server(lambda: Sink(done), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    buf = bytearray(CHUNK)
    sent_hash = hashlib.blake2b()
    copied = sends = 0
    start = time.perf_counter()
    for i in range(total_mib):
        fill(buf, i)  # safe: the previous send's notification has arrived
        sent_hash.update(buf)
        result = await writer.transport.write_zerocopy(buf)
        sends += result.sends
        copied += result.copied_sends
    writer.write_eof()
    count, digest = await asyncio.wait_for(done, 60)
    elapsed = time.perf_counter() - start
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()

    ok = digest == sent_hash.hexdigest() and count == total_mib * CHUNK
    print(f"sent {count / 2**20:.0f} MiB in {elapsed:.2f} s ({count / elapsed / 1e9:.2f} GB/s), "
          f"{sends} SEND_ZC requests, {copied} reported copied by the kernel "
          f"(loopback always copies); checksum {'OK' if ok else 'MISMATCH'}")
    print("loop stats:", {k: v for k, v in loop.stats().items() if "zerocopy" in k or
                          k == "copied_sends"})
    return 0 if ok else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--total-mib", type=int, default=64)
    raise SystemExit(uringloop.run(main(p.parse_args().total_mib)))
