"""The README's demo: the echo server on uringloop, driven by a short client run.

Starts ``examples/echo_server.py`` in a child process for each server loop (uringloop,
then uvloop and the stdlib loop for comparison, and uringloop echoing with
``write_zerocopy``), runs ``examples/echo_client.py`` against it for a few seconds
(byte-exact verification of every echo), and prints requests/s side by side.

This is a demonstration, not a benchmark: client and server share two cores here. For
measured numbers use ``bench/echo_bench.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_case(label: str, server_args: list[str], args: argparse.Namespace) -> float | None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(HERE / "echo_server.py"), "--port", str(port), "--quiet",
         *server_args],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        line = server.stdout.readline() if server.stdout else ""
        if "listening" not in line:
            print(f"{label:28} server failed to start: {line.strip()!r}")
            return None
        client = subprocess.run(
            [sys.executable, str(HERE / "echo_client.py"), "--loop", "uringloop",
             "--port", str(port), "-c", str(args.conns), "-s", str(args.size),
             "-d", str(args.duration)],
            capture_output=True, text=True, timeout=args.duration + 30,
        )
        match = re.search(r"([\d,]+) requests/s", client.stdout)
        if client.returncode != 0 or match is None:
            print(f"{label:28} client failed: {client.stdout.strip()} {client.stderr.strip()}")
            return None
        rps = float(match.group(1).replace(",", ""))
        print(f"{label:28} {rps:>12,.0f} requests/s   (every echo verified)", flush=True)
        return rps
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-c", "--conns", type=int, default=10)
    p.add_argument("-s", "--size", type=int, default=1024)
    p.add_argument("-d", "--duration", type=float, default=2.0)
    args = p.parse_args()

    import uringloop

    feats = uringloop.features()
    print(f"uringloop {uringloop.__version__} on Linux {feats['kernel']}; "
          f"ring flags {'|'.join(feats['setup_flags'])}; SEND_ZC {feats['send_zc']}")
    print(f"echo: {args.conns} connections x {args.size} B messages, "
          f"{args.duration:g} s per server, client on uringloop\n")
    cases = [("uringloop (Protocol)", ["--loop", "uringloop"]),
             ("uringloop (streams)", ["--loop", "uringloop", "--mode", "streams"]),
             ("uringloop (write_zerocopy)", ["--loop", "uringloop", "--zerocopy"])]
    if importlib.util.find_spec("uvloop") is not None:
        cases.append(("uvloop (Protocol)", ["--loop", "uvloop"]))
    cases.append(("asyncio (Protocol)", ["--loop", "asyncio"]))
    results = {label: run_case(label, server_args, args) for label, server_args in cases}
    if any(v is None for v in results.values()):
        return 1
    print("\nThe Python client shares the machine with the server, so these rates mostly "
          "measure the client;\nserver CPU per request, side by side: "
          "python bench/echo_bench.py --quick")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
