"""Soak test: churn connections through a uringloop echo server and look for leaks.

    python bench/soak.py [--seconds 600] [--clients 32] [--sample 5]

The server runs on uringloop in this process; a client process (stdlib asyncio) keeps
``--clients`` connections busy for ``--seconds``: each connection sends a random number
of messages of random sizes (1 B .. 1 MiB, log-uniform), every message framed as
``length (4 B) | sha256 (32 B) | payload``. The server checks each checksum and echoes
the frame back; the client checks it again. About one connection in ten is aborted
(RST) halfway through a message, one in ten half-closes before its last read.

Every ``--sample`` seconds the server samples its open fds (``/proc/self/fd``), the
loop's in-flight operations (``loop.stats()['inflight']``) and its RSS. At the end it
waits for every connection to be gone and prints a report. Exit status 1 on any checksum
mismatch, a client failure, fds or in-flight operations above their start values, or
RSS growth beyond ``--rss-slack`` MiB over the first sample taken after warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import socket
import struct
import sys
import time

HDR = struct.Struct("!I32s")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def message_size(rng: random.Random) -> int:
    return max(1, int(2 ** rng.uniform(0, 20)))


# -- server (uringloop) ----------------------------------------------------------------


class Stats:
    def __init__(self) -> None:
        self.connections = 0
        self.active = 0
        self.messages = 0
        self.bytes_verified = 0
        self.mismatches = 0
        self.resets = 0


async def serve_one(stats: Stats, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
    stats.connections += 1
    stats.active += 1
    try:
        while True:
            try:
                hdr = await reader.readexactly(HDR.size)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    stats.resets += 1
                break
            n, digest = HDR.unpack(hdr)
            payload = await reader.readexactly(n)
            if hashlib.sha256(payload).digest() != digest:
                stats.mismatches += 1
                break
            stats.messages += 1
            stats.bytes_verified += n
            writer.write(hdr)
            writer.write(payload)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        stats.resets += 1
    finally:
        stats.active -= 1
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass


async def server_main(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stats = Stats()
    server = await asyncio.start_server(
        lambda r, w: serve_one(stats, r, w), "127.0.0.1", 0, backlog=1024
    )
    port = server.sockets[0].getsockname()[1]
    # Baselines, with the listener open and nothing connected.
    await asyncio.sleep(0.1)
    start = {"fds": open_fds(), "inflight": loop.stats()["inflight"], "rss": rss_mib()}
    samples: list[dict[str, float]] = []
    client = await asyncio.create_subprocess_exec(
        sys.executable, os.path.abspath(__file__), "--role", "client", "--port", str(port),
        "--seconds", str(args.seconds), "--clients", str(args.clients),
        "--seed", str(args.seed), stdout=asyncio.subprocess.PIPE,
    )
    t0 = time.monotonic()
    wait = asyncio.ensure_future(client.communicate())
    while not wait.done():
        await asyncio.wait([wait], timeout=args.sample)
        samples.append({
            "t": round(time.monotonic() - t0, 1), "fds": open_fds(),
            "inflight": loop.stats()["inflight"], "rss": round(rss_mib(), 1),
            "active": stats.active, "connections": stats.connections,
        })
        if args.verbose:
            print(json.dumps(samples[-1]), flush=True)
    out, _ = wait.result()
    client_report = json.loads(out.decode() or "{}")
    # Every connection must be gone; give the last closes a moment.
    for _ in range(100):
        if stats.active == 0:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    end = {"fds": open_fds(), "inflight": loop.stats()["inflight"], "rss": rss_mib()}
    server.close()
    await server.wait_closed()
    warm = [s for s in samples if s["t"] >= min(30.0, args.seconds / 4)] or samples
    rss_ref = warm[0]["rss"] if warm else start["rss"]
    failures = []
    if client.returncode != 0:
        failures.append(f"client exited with {client.returncode}")
    if stats.mismatches or client_report.get("mismatches", 1):
        failures.append(
            f"checksum mismatches: server {stats.mismatches}, "
            f"client {client_report.get('mismatches')}"
        )
    if end["fds"] > start["fds"]:
        failures.append(f"fd leak: {start['fds']} at start, {end['fds']} at end")
    if end["inflight"] > start["inflight"]:
        failures.append(f"in-flight ops leak: {start['inflight']} -> {end['inflight']}")
    if end["rss"] > rss_ref + args.rss_slack:
        failures.append(f"RSS grew from {rss_ref:.1f} to {end['rss']:.1f} MiB")
    if stats.active:
        failures.append(f"{stats.active} connections still active at the end")
    report = {
        "loop": type(loop).__module__ + "." + type(loop).__name__,
        "seconds": round(time.monotonic() - t0, 1),
        "connections_served": stats.connections,
        "messages_verified": stats.messages,
        "bytes_verified": stats.bytes_verified,
        "client": client_report,
        "server_saw_resets": stats.resets,
        "fds": [start["fds"], end["fds"]],
        "inflight": [start["inflight"], end["inflight"]],
        "rss_mib": [round(start["rss"], 1), round(rss_ref, 1), round(end["rss"], 1)],
        "max_fds": max((s["fds"] for s in samples), default=start["fds"]),
        "max_inflight": max((s["inflight"] for s in samples), default=start["inflight"]),
        "max_rss_mib": max((s["rss"] for s in samples), default=start["rss"]),
        "samples": len(samples),
        "failures": failures,
    }
    print(json.dumps(report, indent=2), flush=True)
    return 1 if failures else 0


# -- client (stdlib asyncio, in its own process) ---------------------------------------


async def client_worker(port: int, deadline: float, rng: random.Random, totals: dict) -> None:
    while time.monotonic() < deadline:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        totals["connections"] += 1
        kind = rng.random()
        nmsg = rng.randint(1, 20)
        try:
            for i in range(nmsg):
                payload = rng.randbytes(message_size(rng))
                frame = HDR.pack(len(payload), hashlib.sha256(payload).digest()) + payload
                if kind < 0.1 and i == nmsg - 1:
                    # abort halfway through the last message: the server sees a reset
                    writer.write(frame[: len(frame) // 2])
                    await writer.drain()
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    totals["aborted"] += 1
                    break
                writer.write(frame)
                if kind > 0.9 and i == nmsg - 1:
                    writer.write_eof()  # half-close; the echo must still arrive
                    totals["half_closed"] += 1
                await writer.drain()
                hdr = await reader.readexactly(HDR.size)
                n, digest = HDR.unpack(hdr)
                echoed = await reader.readexactly(n)
                if echoed != payload or hashlib.sha256(echoed).digest() != digest:
                    totals["mismatches"] += 1
                else:
                    totals["messages"] += 1
                    totals["bytes"] += n
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass


async def client_main(args: argparse.Namespace) -> int:
    totals = {"connections": 0, "messages": 0, "bytes": 0, "mismatches": 0, "aborted": 0,
              "half_closed": 0}
    deadline = time.monotonic() + args.seconds
    master = random.Random(args.seed)
    await asyncio.gather(*(
        client_worker(args.port, deadline, random.Random(master.random()), totals)
        for _ in range(args.clients)
    ))
    print(json.dumps(totals))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=600.0)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--rss-slack", type=float, default=64.0, help="MiB of RSS growth allowed")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--verbose", action="store_true", help="print every sample")
    p.add_argument("--role", choices=["server", "client"], default="server")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    if args.role == "client":
        return asyncio.run(client_main(args))
    import uringloop

    return uringloop.run(server_main(args))


if __name__ == "__main__":
    sys.exit(main())
