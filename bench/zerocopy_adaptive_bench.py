"""Loopback TCP: adaptive ``write_zerocopy`` (auto / always / never) vs plain ``write``.

Streams TOTAL bytes in CHUNK-byte pieces from a reused set of WINDOW buffers to a sink
on 127.0.0.1 and reports GB/s. ``write`` copies each bytearray into bytes and waits for
``resume_writing`` above WINDOW chunks buffered; ``write_zerocopy`` keeps up to WINDOW
writes in flight and reuses a buffer only after its awaitable resolved (the zero-copy
contract). ``auto`` is the adaptive mode (plain sends once loopback's copies are
reported), ``always`` forces SEND_ZC, ``never`` forces plain sends.

Each rep runs every mode once per chunk size, in a rotating order; the ratios
(mode / ``write``) are taken within a rep, so machine-wide drift cancels, and the
medians over the reps are reported.

    python bench/zerocopy_adaptive_bench.py [--chunk-kib 16 64 256] [--total-mib 1024]
                                            [--window 4] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
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


KINDS = ("write", "auto", "always", "never")


async def main(a: argparse.Namespace) -> None:
    total = a.total_mib << 20
    gbps: dict[int, dict[str, list[float]]] = {}
    ratios: dict[int, dict[str, list[float]]] = {}
    for rep in range(a.runs):
        for kib in a.chunk_kib:
            chunk = kib << 10
            order = KINDS[rep % len(KINDS):] + KINDS[:rep % len(KINDS)]
            got = {}
            for kind in order:
                got[kind], _ = await one(kind, total, chunk, a.window)
                gbps.setdefault(kib, {}).setdefault(kind, []).append(got[kind])
            for kind in KINDS[1:]:
                ratios.setdefault(kib, {}).setdefault(kind, []).append(got[kind] / got["write"])
    out = []
    print(f"loopback TCP, window {a.window}, {a.total_mib} MiB per run, median of {a.runs} reps")
    print("chunk    write GB/s  auto/write  always/write  never/write")
    for kib in a.chunk_kib:
        r = {k: statistics.median(v) for k, v in ratios[kib].items()}
        g = {k: statistics.median(v) for k, v in gbps[kib].items()}
        print(f"{kib:4d} KiB  {g['write']:9.2f}  {r['auto']:10.2f}  {r['always']:12.2f}"
              f"  {r['never']:11.2f}")
        out.append({"chunk_kib": kib, "window": a.window, "median_gbps": g,
                    "median_ratio_to_write": r})
    print(json.dumps(out))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--total-mib", type=int, default=1024)
    p.add_argument("--chunk-kib", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--window", type=int, default=4)
    p.add_argument("--runs", type=int, default=5)
    uringloop.run(main(p.parse_args()))
