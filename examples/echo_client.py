"""Small asyncio echo client: N connections ping-pong a message, verify, report.

Examples::

    python examples/echo_client.py                          # uringloop, 10 conns, 1 KiB, 3 s
    python examples/echo_client.py --loop asyncio -c 50 -s 65536 -d 5

For real measurements use bench/echo_bench.py (C load generator, pinned CPUs).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time

from _common import arg_parser, new_loop


async def worker(host: str, port: int, payload: bytes, deadline: float,
                 counts: list[int]) -> None:
    """One connection: send, read the exact echo back, compare, repeat."""
    reader, writer = await asyncio.open_connection(host, port)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while time.monotonic() < deadline:
            writer.write(payload)
            echoed = await reader.readexactly(len(payload))
            if echoed != payload:
                raise RuntimeError("echo mismatch")
            counts[0] += 1
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def run(args: argparse.Namespace) -> int:
    """Run all connections for the duration and print the totals."""
    payload = bytes(i % 251 for i in range(args.size))
    counts = [0]
    start = time.monotonic()
    deadline = start + args.duration
    results = await asyncio.gather(
        *(worker(args.host, args.port, payload, deadline, counts)
          for _ in range(args.conns)),
        return_exceptions=True,
    )
    elapsed = time.monotonic() - start
    errors = [r for r in results if isinstance(r, BaseException)]
    n = counts[0]
    print(f"loop={args.loop} conns={args.conns} size={args.size} "
          f"duration={elapsed:.2f}s requests={n}")
    print(f"{n / elapsed:,.0f} requests/s, "
          f"{n * args.size * 2 / elapsed / 1e6:,.1f} MB/s (both directions), "
          f"errors={len(errors)}")
    for err in errors[:3]:
        print(f"  error: {err!r}", file=sys.stderr)
    return 1 if errors or n == 0 else 0


def main(argv: list[str] | None = None) -> int:
    """Parse options and run the client on the selected loop."""
    p = arg_parser(__doc__, port=25000)
    p.add_argument("-c", "--conns", type=int, default=10)
    p.add_argument("-s", "--size", type=int, default=1024, help="message size in bytes")
    p.add_argument("-d", "--duration", type=float, default=3.0, help="seconds")
    args = p.parse_args(argv)

    loop = new_loop(args.loop)
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(run(args))
    finally:
        loop.close()


if __name__ == "__main__":
    sys.exit(main())
