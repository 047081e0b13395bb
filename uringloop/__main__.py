"""Command line: ``python -m uringloop info`` and ``python -m uringloop echo``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from . import __version__


def _info() -> int:
    from ._caps import features
    from .errors import UnsupportedError

    print(f"uringloop {__version__}, Python {sys.version.split()[0]}, "
          f"Linux {os.uname().release} ({os.uname().machine})")
    try:
        feats = features()
    except UnsupportedError as exc:
        print(f"io_uring: NOT usable\n{exc.strerror}")
        return 1
    print("io_uring: usable")
    print(f"ring setup flags uringloop uses: {' | '.join(feats['setup_flags'])}")
    print(f"kernel feature bits: {', '.join(feats['features'])}")
    ops = feats["ops"]
    print("operations: " + ", ".join(f"{name}{'' if ok else ' (missing)'}"
                                     for name, ok in ops.items()))
    print(f"zero-copy send (SEND_ZC): {feats['send_zc']}; SENDMSG_ZC: {feats['sendmsg_zc']}; "
          f"usage report: {feats['send_zc_report_usage']}")
    print(f"multishot receive: {feats['recv_multishot']}")
    return 0


def _echo(argv: list[str]) -> int:
    import socket

    from .policy import run

    p = argparse.ArgumentParser(prog="python -m uringloop echo",
                                description="A TCP echo server on uringloop.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=25000)
    args = p.parse_args(argv)

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.Transport = transport  # type: ignore[assignment]

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, args.host, args.port,
                                          family=socket.AF_UNSPEC)
        addrs = ", ".join(str(s.getsockname()) for s in server.sockets)
        print(f"echo server on uringloop listening on {addrs}; Ctrl-C stops it", flush=True)
        async with server:
            await server.serve_forever()

    try:
        run(main())
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m uringloop {info,echo} [options]\n"
              "  info   what this kernel's io_uring offers and what uringloop will use\n"
              "  echo   run a TCP echo server on uringloop (--host, --port)")
        return 0 if argv else 2
    if argv[0] == "info":
        return _info()
    if argv[0] == "echo":
        return _echo(argv[1:])
    print(f"unknown command {argv[0]!r}; try: info, echo", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
