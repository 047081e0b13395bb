"""Minimal HTTP/1.1 keep-alive server (asyncio.Protocol + httptools) for any loop.

Answers every request with a fixed ``Hello, World!`` (text/plain, correct
Content-Length).  Keep-alive by default for HTTP/1.1, ``Connection: close`` and
HTTP/1.0 without keep-alive are honoured, and pipelined requests are answered
in order: all responses produced by one ``data_received()`` call go out in a
single ``transport.write()``.  Malformed input gets a 400 and the connection
is closed.  Needs ``pip install httptools``.

Examples::

    python examples/http_server.py                       # uringloop on :8080
    python examples/http_server.py --loop uvloop --port 8081
    wrk -t1 -c100 -d5s http://127.0.0.1:8080/

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

import httptools

LOOPS = ("uringloop", "asyncio", "uvloop")
BODY = b"Hello, World!"
RESPONSE_KEEP = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
RESPONSE_CLOSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                  b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(BODY), BODY))
RESPONSE_400 = (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                b"Connection: close\r\n\r\n")


class HttpProtocol(asyncio.Protocol):
    """One connection: parse with httptools, answer each complete request."""

    __slots__ = ("transport", "parser", "out", "closing")

    def __init__(self) -> None:
        self.transport: Any = None
        self.parser = httptools.HttpRequestParser(self)
        self.out: list[bytes] = []
        self.closing = False

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserUpgrade, httptools.HttpParserError):
            # Upgrades are not supported.  Bytes after a "Connection: close"
            # request also land here (llhttp refuses them): ignore those.
            if not self.closing:
                self.out.append(RESPONSE_400)
                self.closing = True
        out = self.out
        if out:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
        if self.closing:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    # -- httptools callbacks
    def on_message_complete(self) -> None:
        if self.closing:  # requests pipelined after a "Connection: close"
            return
        if self.parser.should_keep_alive():
            self.out.append(RESPONSE_KEEP)
        else:
            self.out.append(RESPONSE_CLOSE)
            self.closing = True


def new_loop(name: str) -> asyncio.AbstractEventLoop:
    """Create (but do not run) an event loop of the requested kind."""
    if name == "uringloop":
        import uringloop

        return uringloop.new_event_loop()
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


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
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--backlog", type=int, default=1024)
    p.add_argument("--nofile", type=int, default=0, help="raise RLIMIT_NOFILE to this")
    p.add_argument("--quiet", action="store_true", help="no startup/shutdown lines")
    args = p.parse_args(argv)
    if args.nofile:
        raise_nofile(args.nofile)

    loop = new_loop(args.loop)
    asyncio.set_event_loop(loop)

    def request_stop(signum: int, frame: object) -> None:
        loop.call_soon_threadsafe(loop.stop)

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    server = loop.run_until_complete(loop.create_server(
        HttpProtocol, args.host, args.port, reuse_address=True, backlog=args.backlog))
    print(f"listening on http://{args.host}:{args.port}/ (loop={args.loop})", flush=True)
    try:
        loop.run_forever()
    finally:
        server.close()
        loop.close()
    if not args.quiet:
        print("bye", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
