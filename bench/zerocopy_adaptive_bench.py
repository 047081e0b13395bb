"""Loopback TCP: adaptive ``write_zerocopy`` (auto / always / never) vs plain ``write``.

Streams TOTAL bytes in CHUNK-byte pieces from a reused set of WINDOW buffers to a sink
on 127.0.0.1 and reports GB/s. ``write`` copies each bytearray into bytes then
``drain()``s; ``write_zerocopy`` keeps up to WINDOW writes in flight and reuses a buffer
only after its awaitable resolved (the zero-copy contract).

    python bench/zerocopy_adaptive_bench.py [--total-mib 2048] [--chunk-kib 256] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import uringloop


class Sink(asyncio.Protocol):
    def __init__(self, total: int, done: asyncio.Future) -> None:
        self.left = total
        self.done = done

    def data_received(self, data: bytes) -> None:
        self.left -= len(data)
        if self.left <= 0 and not self.done.done():
            self.done.set_result(None)


class Client(asyncio.Protocol):
    paused: asyncio.Future | None = None

    def pause_writing(self) -> None:
        self.paused = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.paused is not None:
            self.paused.set_result(None)
            self.paused = None


async def one(kind: str, total: int, chunk: int, window: int) -> float:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    server = await loop.create_server(lambda: Sink(total, done), "127.0.0.1", 0)
    tr, _ = await loop.create_connection(Client, "127.0.0.1",
                                         server.sockets[0].getsockname()[1])
    bufs = [bytearray(b"%d" % i) * (chunk // len(b"%d" % i)) for i in range(window)]
    bufs = [b[:chunk].ljust(chunk, b"x") for b in bufs]
    n = total // chunk
    t0 = time.perf_counter()
    if kind == "write":
        proto = tr.get_protocol()
        tr.set_write_buffer_limits(high=window * chunk, low=window * chunk // 2)
        for i in range(n):
            tr.write(bufs[i % window])  # copies the bytearray
            if proto.paused is not None:
                await proto.paused
    else:
        tr.set_zerocopy_mode(kind)
        pending: list = [None] * window
        for i in range(n):
            slot = i % window
            if pending[slot] is not None:
                await pending[slot]
            pending[slot] = tr.write_zerocopy(bufs[slot])
        for f in pending:
            if f is not None:
                await f
    await done
    dt = time.perf_counter() - t0
    stats = tr.zerocopy_stats() if kind != "write" else None
    tr.close()
    server.close()
    await server.wait_closed()
    return total / dt / 1e9, stats  # type: ignore[return-value]


async def main(a: argparse.Namespace) -> None:
    total, chunk = a.total_mib << 20, a.chunk_kib << 10
    out: dict[str, list[float]] = {}
    for _ in range(a.runs):
        for kind in ("write", "auto", "always", "never"):
            gbps, st = await one(kind, total, chunk, a.window)
            out.setdefault(kind, []).append(gbps)
    best = {k: max(v) for k, v in out.items()}
    for k, v in best.items():
        print(f"{k:7s} {v:6.2f} GB/s  ({v / best['write']:.2f}x write)  runs={out[k]}")
    print(json.dumps({"chunk": chunk, "window": a.window, "best_gbps": best}))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--total-mib", type=int, default=2048)
    p.add_argument("--chunk-kib", type=int, default=256)
    p.add_argument("--window", type=int, default=4)
    p.add_argument("--runs", type=int, default=3)
    uringloop.run(main(p.parse_args()))
