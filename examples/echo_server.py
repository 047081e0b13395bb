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
import resource
import signal
import socket
import sys
from typing import Any

LOOPS = ("uringloop", "asyncio", "uvloop")
MODES = ("protocol", "streams", "buffered")
BUFFER_SIZE = 256 * 1024  # BufferedProtocol receive buffer per connection


def _nodelay(transport: asyncio.BaseTransport) -> None:
    """Disable Nagle on an accepted connection (same for every loop)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class EchoProtocol(asyncio.Protocol):
    """Echo every chunk back with transport.write() (or write_zerocopy())."""

    def __init__(self, zerocopy: bool, log: bool) -> None:
        self.zerocopy = zerocopy
        self.log = log
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        _nodelay(transport)
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
        _nodelay(transport)
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
        _nodelay(writer.transport)
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


def new_loop(name: str) -> asyncio.AbstractEventLoop:
    """Create (but do not run) an event loop of the requested kind."""
    if name == "uringloop":
        import uringloop

        return uringloop.new_event_loop()
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


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


def raise_nofile(n: int) -> None:
    """Raise RLIMIT_NOFILE to n (the hard limit too, where permitted)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= n:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, max(n, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


def main(argv: list[str] | None = None) -> int:
    """Parse options, serve until SIGINT/SIGTERM."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loop", choices=LOOPS, default="uringloop")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=25000)
    p.add_argument("--mode", choices=MODES, default="protocol")
    p.add_argument("--zerocopy", action="store_true",
                   help="echo with transport.write_zerocopy() (uringloop)")
    p.add_argument("--quiet", action="store_true", help="no per-connection logging")
    p.add_argument("--nofile", type=int, default=0,
                   help="raise RLIMIT_NOFILE to this (e.g. 65536 for 10k+ connections)")
    args = p.parse_args(argv)
    if args.nofile:
        raise_nofile(args.nofile)

    loop = new_loop(args.loop)
    asyncio.set_event_loop(loop)

    def request_stop(signum: int, frame: object) -> None:
        loop.call_soon_threadsafe(loop.stop)

    # signal.signal + call_soon_threadsafe works on every loop, including
    # ones without add_signal_handler().
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    server = loop.run_until_complete(start(args))
    print(f"listening on {args.host}:{args.port} (loop={args.loop}, mode={args.mode})",
          flush=True)
    try:
        loop.run_forever()
    finally:
        server.close()
        tasks = asyncio.all_tasks(loop)
        for task in tasks:  # streams mode: one handler task per connection
            task.cancel()
        try:
            loop.run_until_complete(
                asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 2.0))
        except Exception:
            pass
        loop.close()
    if not args.quiet:
        print("bye", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
