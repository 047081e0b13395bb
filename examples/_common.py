"""What the example servers and clients share: loop choice, socket and rlimit set-up, and
serving until SIGINT/SIGTERM.

The examples run as scripts (``python examples/echo_server.py``), so Python puts this
folder first on ``sys.path`` and ``from _common import ...`` works from any cwd.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import socket
import sys
from collections.abc import Awaitable, Callable

LOOPS = ("uringloop", "asyncio", "uvloop")


def new_loop(name: str) -> asyncio.AbstractEventLoop:
    """Create (but do not run) an event loop of the requested kind."""
    if name == "uringloop":
        import uringloop

        return uringloop.new_event_loop()
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Disable Nagle on an accepted connection (same for every loop)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def raise_nofile(n: int) -> None:
    """Raise RLIMIT_NOFILE to n (the hard limit too, where permitted)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= n:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, max(n, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


def arg_parser(doc: str, port: int) -> argparse.ArgumentParser:
    """A parser described by ``doc``'s first line, with --loop, --host and --port."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--loop", choices=LOOPS, default="uringloop")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=port)
    return p


def serve(
    start: Callable[[asyncio.AbstractEventLoop], Awaitable[asyncio.AbstractServer]],
    *, loop_name: str, banner: str, nofile: int = 0, quiet: bool = False,
    cancel_tasks: bool = False,
) -> int:
    """Run ``start(loop)``'s server on a new ``loop_name`` loop until SIGINT/SIGTERM.

    ``banner`` is printed once listening (scripts wait for it). On the way out the
    server is closed and, with ``cancel_tasks``, the loop's tasks (stream handlers) are
    cancelled and given 2 s to finish.
    """
    if nofile:
        raise_nofile(nofile)

    loop = new_loop(loop_name)
    asyncio.set_event_loop(loop)

    def request_stop(signum: int, frame: object) -> None:
        loop.call_soon_threadsafe(loop.stop)

    # signal.signal + call_soon_threadsafe works on every loop, including
    # ones without add_signal_handler().
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    server = loop.run_until_complete(start(loop))
    print(banner, flush=True)
    try:
        loop.run_forever()
    finally:
        server.close()
        if cancel_tasks:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            try:
                loop.run_until_complete(
                    asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 2.0))
            except Exception:
                pass
        loop.close()
    if not quiet:
        print("bye", file=sys.stderr)
    return 0
