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

import asyncio
import sys
from typing import Any

import httptools
from _common import arg_parser, serve, set_nodelay

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
        set_nodelay(transport)

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


def main(argv: list[str] | None = None) -> int:
    """Parse options, serve until SIGINT/SIGTERM."""
    p = arg_parser(__doc__, port=8080)
    p.add_argument("--backlog", type=int, default=1024)
    p.add_argument("--nofile", type=int, default=0, help="raise RLIMIT_NOFILE to this")
    p.add_argument("--quiet", action="store_true", help="no startup/shutdown lines")
    args = p.parse_args(argv)
    return serve(
        lambda loop: loop.create_server(
            HttpProtocol, args.host, args.port, reuse_address=True, backlog=args.backlog),
        loop_name=args.loop, nofile=args.nofile, quiet=args.quiet,
        banner=f"listening on http://{args.host}:{args.port}/ (loop={args.loop})",
    )


if __name__ == "__main__":
    sys.exit(main())
