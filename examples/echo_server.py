"""TCP echo server runnable on uringloop, the stdlib asyncio loop or uvloop.

Examples::

    python examples/echo_server.py                      # uringloop, Protocol
    python examples/echo_server.py --mode streams
    python examples/echo_server.py --loop uvloop --mode buffered --port 25001
    python examples/echo_server.py --zerocopy           # transport.write_zerocopy()

Stop it with Ctrl-C (SIGINT) or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from _common import arg_parser, serve, set_nodelay

MODES = ("protocol", "streams", "buffered")
BUFFER_SIZE = 256 * 1024  # BufferedProtocol receive buffer per connection


class EchoProtocol(asyncio.Protocol):
    """Echo every chunk back with transport.write() (or write_zerocopy())."""

    def __init__(self, zerocopy: bool, log: bool) -> None:
        self.zerocopy = zerocopy
        self.log = log
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        set_nodelay(transport)
        if self.log:
            print("connection from", transport.get_extra_info("peername"))

    def data_received(self, data: bytes) -> None:
        if self.zerocopy:
            # The returned awaitable completes when the kernel is done with
            # `data`; the transport keeps what it needs alive by itself.
            self.transport.write_zerocopy(data)
        else:
            self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class BufferedEchoProtocol(asyncio.BufferedProtocol):
    """Receive into a preallocated buffer (no per-read allocation), echo it back."""

    def __init__(self, zerocopy: bool, log: bool) -> None:
        self.zerocopy = zerocopy
        self.log = log
        self.buf = bytearray(BUFFER_SIZE)
        self.view = memoryview(self.buf)
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        set_nodelay(transport)
        if self.log:
            print("connection from", transport.get_extra_info("peername"))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        # The buffer is reused for the next read, so hand the transport an
        # immutable copy: write() may keep a reference if the socket is full.
        data = bytes(self.view[:nbytes])
        if self.zerocopy:
            self.transport.write_zerocopy(data)
        else:
            self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def make_stream_handler(zerocopy: bool, log: bool) -> Any:
    """Return an asyncio.start_server() client callback that echoes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        set_nodelay(writer.transport)
        if log:
            print("connection from", writer.get_extra_info("peername"))
        try:
            while True:
                data = await reader.read(BUFFER_SIZE)
                if not data:
                    break
                if zerocopy:
                    await writer.transport.write_zerocopy(data)  # type: ignore[attr-defined]
                else:
                    writer.write(data)
                    await writer.drain()
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            # Shutdown cancels handlers; ending quietly avoids the noisy
            # "exception in callback" from StreamReaderProtocol on 3.11.
            pass
        finally:
            writer.close()

    return handle


async def start(args: argparse.Namespace) -> asyncio.AbstractServer:
    """Start listening in the selected mode."""
    loop = asyncio.get_running_loop()
    log = not args.quiet
    if args.mode == "streams":
        return await asyncio.start_server(
            make_stream_handler(args.zerocopy, log), args.host, args.port,
            reuse_address=True, limit=BUFFER_SIZE,
        )
    proto = EchoProtocol if args.mode == "protocol" else BufferedEchoProtocol
    return await loop.create_server(
        lambda: proto(args.zerocopy, log), args.host, args.port, reuse_address=True,
    )


def main(argv: list[str] | None = None) -> int:
    """Parse options, serve until SIGINT/SIGTERM."""
    p = arg_parser(__doc__, port=25000)
    p.add_argument("--mode", choices=MODES, default="protocol")
    p.add_argument("--zerocopy", action="store_true",
                   help="echo with transport.write_zerocopy() (uringloop)")
    p.add_argument("--quiet", action="store_true", help="no per-connection logging")
    p.add_argument("--nofile", type=int, default=0,
                   help="raise RLIMIT_NOFILE to this (e.g. 65536 for 10k+ connections)")
    args = p.parse_args(argv)
    return serve(
        lambda loop: start(args), loop_name=args.loop, nofile=args.nofile, quiet=args.quiet,
        banner=f"listening on {args.host}:{args.port} (loop={args.loop}, mode={args.mode})",
        cancel_tasks=True,  # streams mode: one handler task per connection
    )


if __name__ == "__main__":
    sys.exit(main())
