"""UDP to a drop sink: uvloop / asyncio / uringloop ``sendto`` vs uringloop zero-copy vs C.

One command (root; about 3-4 minutes with the defaults)::

    .venv/bin/python bench/zerocopy_udp_bench.py            # --seconds 1 --reps 3

The sink: two network namespaces made for the run (``ulzc<pid>s`` for the sender,
``ulzc<pid>d`` for the peer) joined by a veth pair, 10.213.0.1/30 and 10.213.0.2/30,
MTU 65535 (a 65507-byte payload is one 65535-byte IP packet, never fragmented), a
permanent neighbour entry (no ARP), IPv6 off, and a ``blackhole`` qdisc as the root
qdisc of the sending veth. Every datagram is dropped at the qdisc, before any socket
sees it, so nothing copies the pages: every zero-copy notification must say
"not copied" (``IORING_SEND_ZC_REPORT_USAGE``), and the script checks that (copied %
column) and that the qdisc dropped as many packets as were sent (sink column). Nothing
touches the root namespace's network; both namespaces are deleted at exit, also on
error, Ctrl-C or SIGTERM (try/finally plus atexit). The peer namespace only exists to
make the veth pair; a ``--sink peerdown`` alternative (peer end down, dropped in
``veth_xmit``) is also zero-copy.

Each run is a fresh subprocess pinned to one CPU (``--cpu``, default 0; the script
itself moves to another CPU) that joins the sender namespace, sends to 10.213.0.2:9 on
a connected UDP socket for ``--warmup`` + ``--seconds`` and reports the bytes sent in
the measured window, GB/s (1e9 bytes/s), sender CPU seconds per GB (utime+stime of the
whole process over the window, from getrusage) and the zero-copy counters. Cases
(``--cases``; the sweep sizes run only those marked *):

    uvloop           uvloop transport.sendto(bytes)
    asyncio          stdlib selector loop transport.sendto(bytes)
    uring *          uringloop transport.sendto(bytes) (queued, SENDMSG chains of 32)
    uring-zc-bytes   uringloop sendto_zerocopy(bytes), one call per datagram
    uring-zc-pool    uringloop sendto_zerocopy(pool_buf[:n]), one call per datagram
    uring-zc-many *  uringloop sendto_zerocopy_many(pool.acquire_many(32, n)) (FIXED_BUF)
    c-send           C: send() loop (bench/udp_zc_ref.c)
    c-usend *        C: io_uring SEND (copying), ``--inflight`` requests in flight
    c-zc             C: io_uring SEND_ZC, unregistered page-aligned buffers
    c-zcreg *        C: io_uring SEND_ZC + registered buffers (FIXED_BUF): the reference

How each Python sender keeps the pipe full (the idiomatic way for its API):

- ``sendto`` (uvloop, asyncio, uringloop): ``set_write_buffer_limits(high=2 * inflight
  datagrams, low=high/4)``; call ``sendto`` 32 times, then ``await`` the protocol's
  ``resume_writing`` if ``pause_writing`` was called, else ``await asyncio.sleep(0)``
  (one loop iteration, so a loop that queues, like uringloop, submits). uvloop and
  asyncio send inside ``sendto`` when nothing is queued, so they are never paused here.
- zero-copy: at most ``2 * inflight`` (default 64) datagrams queued or in flight, in
  calls of 32 datagrams (``sendto_zerocopy_many``) or 32 single calls; when the window
  is full the sender awaits the oldest future (which resolves when the kernel released
  its buffer). Pool buffers come from ``loop.zerocopy_buffers(2 * inflight, size)``
  (page-aligned, registered) and are filled once at start; the C reference keeps
  ``inflight`` SEND_ZC requests in flight from ``inflight`` page-aligned buffers.
  No case rewrites its payload per datagram.

Sizes (``--sizes``, payload bytes): every case runs at the largest size; the starred
cases also run at every other size, which finds the size below which zero-copy does not
pay: ``uring-zc-many`` vs ``uring`` and ``c-zcreg`` vs ``c-usend``, each pair on the
same submission path, so only the copy differs. Repetitions are
interleaved (every case once per rep, order rotated); the table shows medians with the
min-max spread, ratios to uvloop's ``sendto`` and to C SEND_ZC with registered buffers,
and "others %": the share of the pinned CPU used by *other* processes during the run
(this machine is shared; runs with a high value are slow for reasons outside the test).

Output: a terminal table; ``--json`` (default docs/zerocopy_udp_bench.json) and the
section "Measured: UDP to a drop sink" of ``--doc`` (default docs/zerocopy.md, replaced
in place), unless ``--no-docs``. Exit codes: 0 ok, 1 a run failed or copied, 2 cannot run
here (not root, no network namespaces, no veth or blackhole qdisc).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import ctypes
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
BUILD = BENCH / "build"
C_SRC = BENCH / "udp_zc_ref.c"
C_EXE = BUILD / "udp_zc_ref"
DOCS = REPO / "docs"
SECTION = "## Measured: UDP to a drop sink"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CLONE_NEWNET = 0x40000000

SRC_IP, DST_IP, PREFIX, PORT = "10.213.0.1", "10.213.0.2", 30, 9
MAX_UDP = 65507
BATCH = 32  # datagrams per sendto burst / per sendto_zerocopy_many call (= MAX_BATCH)

CASES: dict[str, str] = {
    "uvloop": "uvloop sendto",
    "asyncio": "asyncio sendto",
    "uring": "uringloop sendto",
    "uring-zc-bytes": "uringloop sendto_zerocopy(bytes)",
    "uring-zc-pool": "uringloop sendto_zerocopy(pool)",
    "uring-zc-many": "uringloop sendto_zerocopy_many(pool)",
    "c-send": "C send()",
    "c-usend": "C io_uring SEND",
    "c-zc": "C SEND_ZC",
    "c-zcreg": "C SEND_ZC + registered bufs",
}
SWEEP_CASES = ("uring", "uring-zc-many", "c-usend", "c-zcreg")
#: (zero-copy case, the copying case on the same submission path) for "does it pay"
PAIRS = (("uring-zc-many", "uring"), ("c-zcreg", "c-usend"))
ZC_CASES = ("uring-zc-bytes", "uring-zc-pool", "uring-zc-many", "c-zc", "c-zcreg")
BASE, REF = "uvloop", "c-zcreg"


# =========================================================================== the sender


class Clock:
    """Warm-up, then the measured window; counts bytes handed to the kernel/transport."""

    def __init__(self, warmup: float, seconds: float) -> None:
        self.t0 = time.perf_counter()
        self.t_meas = self.t0 + warmup
        self.t_end = self.t_meas + seconds
        self.measuring = False
        self.done = False
        self.dgrams = self.nbytes = 0
        self.m_dgrams = self.m_bytes = 0
        self.c0 = self.c1 = self.w0 = self.w1 = 0.0

    def count(self, n: int, nbytes: int) -> None:
        self.dgrams += n
        self.nbytes += nbytes

    def running(self) -> bool:
        t = time.perf_counter()
        if not self.measuring:
            if t >= self.t_meas:
                self.measuring = True
                self.m_dgrams, self.m_bytes = self.dgrams, self.nbytes
                self.c0, self.w0 = cpu_self(), time.perf_counter()
            return True
        if t >= self.t_end:
            self.c1, self.w1 = cpu_self(), time.perf_counter()
            self.m_dgrams = self.dgrams - self.m_dgrams
            self.m_bytes = self.nbytes - self.m_bytes
            self.done = True
            return False
        return True

    def result(self) -> dict[str, Any]:
        return {"seconds": self.w1 - self.w0, "datagrams": self.m_dgrams,
                "bytes": self.m_bytes, "cpu_s": self.c1 - self.c0,
                "total_datagrams": self.dgrams}


def cpu_self() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Proto(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.resumed: asyncio.Future[None] | None = None
        self.errors = 0
        self.last_error = ""

    def pause_writing(self) -> None:
        self.resumed = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        fut, self.resumed = self.resumed, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    def error_received(self, exc: Exception) -> None:
        self.errors += 1
        self.last_error = repr(exc)


async def drain(tr: Any, limit: float = 5.0) -> None:
    end = time.monotonic() + limit
    while tr.get_write_buffer_size() and time.monotonic() < end:
        await asyncio.sleep(0.001)


async def send_copy(tr: Any, proto: Proto, data: bytes, clock: Clock, window: int) -> dict:
    high = window * len(data)
    tr.set_write_buffer_limits(high=high, low=high // 4)
    n = len(data)
    sendto = tr.sendto
    while clock.running():
        for _ in range(BATCH):
            sendto(data)
        clock.count(BATCH, BATCH * n)
        if proto.resumed is not None:
            await proto.resumed
        else:
            await asyncio.sleep(0)
    await drain(tr)
    return {}


class ZcTally:
    def __init__(self) -> None:
        self.nbytes = self.sends = self.notifications = self.copied = self.errors = 0
        self.last_error = ""

    def add(self, fut: asyncio.Future) -> None:
        try:
            r = fut.result()
        except OSError as exc:
            self.errors += 1
            self.last_error = repr(exc)
            return
        self.nbytes += r.nbytes
        self.sends += r.sends
        self.notifications += r.notifications
        self.copied += r.copied_sends

    def result(self) -> dict[str, Any]:
        return {"zc_result_bytes": self.nbytes, "zc_result_sends": self.sends,
                "zc_result_copied": self.copied, "zc_errors": self.errors,
                "zc_last_error": self.last_error}


async def send_zc(tr: Any, loop: Any, data: bytes, clock: Clock, window: int,
                  how: str) -> dict:
    """how: "bytes" (sendto_zerocopy(bytes)), "pool" (sendto_zerocopy(pool slice)),
    "many" (sendto_zerocopy_many([BATCH pool slices]))."""
    n = len(data)
    tally = ZcTally()
    pending: deque[asyncio.Future] = deque()
    pool = None
    if how != "bytes":
        pool = loop.zerocopy_buffers(window, n, max_count=window)
        bufs = [pool.acquire() for _ in range(window)]
        for b in bufs:
            b[:n] = data
        for b in bufs:
            b.release()
        if not pool.registered:
            raise RuntimeError("the zero-copy pool could not be registered")
    zc = tr.sendto_zerocopy
    acquire = pool.acquire if pool is not None else None
    acquire_many = pool.acquire_many if pool is not None else None
    # futures outstanding when the window is full: datagrams / (datagrams per future)
    per_fut = BATCH if how == "many" else 1
    max_pending = window // per_fut - BATCH // per_fut
    while clock.running():
        if how == "bytes":
            for _ in range(BATCH):
                pending.append(zc(data))
        elif how == "pool":
            for _ in range(BATCH):
                pending.append(zc(acquire()[:n]))  # type: ignore[misc]
        else:
            pending.append(tr.sendto_zerocopy_many(acquire_many(BATCH, n)))  # type: ignore[misc]
        clock.count(BATCH, BATCH * n)
        while len(pending) > max_pending:
            fut = pending.popleft()
            if not fut.done():
                try:
                    await fut
                except OSError:
                    pass  # counted by tally.add
            tally.add(fut)
    for fut in pending:
        if not fut.done():
            await asyncio.wait((fut,), timeout=5)
        if fut.done():
            tally.add(fut)
        else:
            tally.errors += 1
            tally.last_error = "a zero-copy future did not resolve within 5 s"
    if pool is not None:
        pool.close()
    return tally.result()


async def sender(o: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    data = (bytes(range(256)) * (o.size // 256 + 1))[: o.size]
    tr, proto = await loop.create_datagram_endpoint(Proto, remote_addr=(DST_IP, PORT))
    sock = tr.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    stats0 = loop.stats() if hasattr(loop, "stats") else None
    clock = Clock(o.warmup, o.seconds)
    if o.child.startswith("uring-zc-"):
        extra = await send_zc(tr, loop, data, clock, o.window, o.child[len("uring-zc-"):])
    else:
        extra = await send_copy(tr, proto, data, clock, o.window)
    out = clock.result()
    out.update(extra)
    out["errors"] = proto.errors + extra.get("zc_errors", 0)
    out["last_error"] = proto.last_error or extra.get("zc_last_error", "")
    if stats0 is not None:
        s = loop.stats()
        out["zerocopy_sends"] = s["zerocopy_sends"] - stats0["zerocopy_sends"]
        out["notifications"] = s["zerocopy_notifications"] - stats0["zerocopy_notifications"]
        out["copied"] = s["copied_sends"] - stats0["copied_sends"]
        out["fallback_sends"] = (s["zerocopy_fallback_sends"]
                                 - stats0["zerocopy_fallback_sends"])
        out["enters"] = s["enters"] - stats0["enters"]
    tr.close()
    await asyncio.sleep(0.01)
    return out


def child_main(o: argparse.Namespace) -> int:
    signal.alarm(int(o.warmup + o.seconds) + 15)  # safety net: the run is bounded
    if o.child == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    elif o.child == "asyncio":
        loop = asyncio.SelectorEventLoop()
    else:
        import uringloop

        loop = uringloop.new_event_loop()
    try:
        out = loop.run_until_complete(sender(o))
    finally:
        loop.close()
    print(json.dumps(out), flush=True)
    return 0


# =========================================================================== the sink


def sh(*cmd: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode:
        raise RuntimeError(f"{shlex.join(cmd)}: {(r.stderr or r.stdout).strip()}")
    return r


class Sink:
    """Sender netns + peer netns joined by a veth pair whose sending end drops all."""

    def __init__(self, method: str) -> None:
        tag = f"ulzc{os.getpid()}"
        self.ns_s, self.ns_d = tag + "s", tag + "d"
        self.dev_s, self.dev_d = tag + "a", tag + "b"
        self.method = method
        self.made: list[str] = []

    def create(self) -> None:
        atexit.register(self.destroy)
        for ns in (self.ns_s, self.ns_d):
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
        sh("ip", "link", "add", self.dev_s, "netns", self.ns_s, "type", "veth",
           "peer", "name", self.dev_d, "netns", self.ns_d)
        for ns, dev, ip in ((self.ns_s, self.dev_s, SRC_IP), (self.ns_d, self.dev_d, DST_IP)):
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
               check=False)
            sh("ip", "-n", ns, "addr", "add", f"{ip}/{PREFIX}", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "mtu", "65535", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        mac = json.loads(sh("ip", "-n", self.ns_d, "-j", "link", "show", self.dev_d).stdout)
        sh("ip", "-n", self.ns_s, "neigh", "replace", DST_IP, "lladdr", mac[0]["address"],
           "dev", self.dev_s, "nud", "permanent")
        if self.method == "blackhole":
            sh("tc", "-n", self.ns_s, "qdisc", "add", "dev", self.dev_s, "root", "blackhole")
        else:
            sh("ip", "-n", self.ns_d, "link", "set", self.dev_d, "down")

    def drops(self) -> int:
        """Packets the sink dropped so far."""
        if self.method == "blackhole":
            r = sh("tc", "-n", self.ns_s, "-s", "-j", "qdisc", "show", "dev", self.dev_s)
            return sum(int(q.get("drops", 0)) for q in json.loads(r.stdout)
                       if q.get("kind") == "blackhole")
        r = sh("ip", "-n", self.ns_s, "-s", "-j", "link", "show", self.dev_s)
        return int(json.loads(r.stdout)[0]["stats64"]["tx"]["dropped"])

    def destroy(self) -> None:
        while self.made:
            ns = self.made.pop()
            sh("ip", "netns", "del", ns, check=False)

    def describe(self) -> str:
        if self.method == "blackhole":
            return (f"veth {self.dev_s} (netns {self.ns_s}, {SRC_IP}/{PREFIX}) -> {self.dev_d} "
                    f"(netns {self.ns_d}, {DST_IP}/{PREFIX}), MTU 65535, permanent neighbour, "
                    f"root qdisc blackhole on {self.dev_s}")
        return (f"veth {self.dev_s} -> {self.dev_d} (peer end down), MTU 65535, "
                "permanent neighbour")


def preflight(method: str) -> str | None:
    """Why this machine cannot run the benchmark, or None."""
    if sys.platform != "linux":
        return "Linux only"
    if os.geteuid() != 0:
        return "needs root (it creates network namespaces, a veth pair and a qdisc)"
    for tool in ("ip", "tc") if method == "blackhole" else ("ip",):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) not found"
    if not os.path.exists("/proc/self/ns/net"):
        return "network namespaces are not available in this kernel"
    return None


# =========================================================================== running


_live: list[subprocess.Popen] = []


def kill_live() -> None:
    for p in list(_live):
        if p.poll() is None:
            p.kill()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        _live.remove(p)


def cpu_busy_ticks(cpu: int) -> tuple[int, int]:
    """(busy, total) ticks of one CPU from /proc/stat (busy includes steal)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                idle = v[3] + v[4]
                return sum(v[:8]) - idle, sum(v[:8])
    return 0, 0


def child_cmd(o: argparse.Namespace, case: str, size: int) -> list[str]:
    common = ["--size", str(size), "--seconds", str(o.seconds), "--warmup", str(o.warmup)]
    if case.startswith("c-"):
        mode = {"c-send": "send", "c-usend": "usend", "c-zc": "zc", "c-zcreg": "zcreg"}[case]
        return [str(C_EXE), "--mode", mode, "--host", DST_IP, "--port", str(PORT),
                "--inflight", str(o.inflight), *common]
    return [sys.executable, str(Path(__file__).resolve()), "--child", case,
            "--window", str(2 * o.inflight), *common]


def run_case(o: argparse.Namespace, sink: Sink, case: str, size: int) -> dict[str, Any]:
    nsfile = f"/run/netns/{sink.ns_s}"
    cpu = o.cpu

    def enter() -> None:  # in the child, before exec: pin, join the sender namespace
        os.sched_setaffinity(0, {cpu})
        fd = os.open(nsfile, os.O_RDONLY)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            os._exit(97)
        os.close(fd)

    cmd = child_cmd(o, case, size)
    drops0 = sink.drops()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    b0, _ = cpu_busy_ticks(cpu)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=enter, cwd=REPO)
    _live.append(proc)
    try:
        out, err = proc.communicate(timeout=o.warmup + o.seconds + 30)
    except subprocess.TimeoutExpired:
        kill_live()
        raise RuntimeError(f"{case} {size} B: timed out") from None
    finally:
        if proc in _live:
            _live.remove(proc)
    elapsed = time.monotonic() - t0
    b1, _ = cpu_busy_ticks(cpu)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    drops = sink.drops() - drops0
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{case} {size} B: rc={proc.returncode} "
                           f"{err.decode(errors='replace')[-800:]}")
    r: dict[str, Any] = json.loads(lines[-1])
    child_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    r["others_pct"] = max(0.0, 100 * ((b1 - b0) / CLK_TCK - child_cpu) / elapsed)
    r["sink_drops"] = drops
    r["sink_ratio"] = drops / r["total_datagrams"] if r["total_datagrams"] else 0.0
    r["gbps"] = r["bytes"] / r["seconds"] / 1e9 if r["seconds"] > 0 else 0.0
    r["cpu_s_per_gb"] = r["cpu_s"] / (r["bytes"] / 1e9) if r["bytes"] else float("nan")
    r["cpu_share"] = r["cpu_s"] / r["seconds"] if r["seconds"] > 0 else 0.0
    notifs = r.get("notifications")
    r["copied_pct"] = (100.0 * r["copied"] / notifs) if notifs else None
    r.update(case=case, size=size)
    return r


# =========================================================================== reporting


def med(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None and x == x]
    return statistics.median(xs) if xs else float("nan")


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    keys = sorted({(r["size"], r["case"]) for r in results},
                  key=lambda k: (-k[0], list(CASES).index(k[1])))
    for size, case in keys:
        runs = [r for r in results if (r["size"], r["case"]) == (size, case)]
        g = [r["gbps"] for r in runs]
        copied = [r["copied_pct"] for r in runs if r.get("copied_pct") is not None]
        rows.append({
            "size": size, "case": case, "label": CASES[case], "n": len(runs),
            "gbps": med(g), "gbps_min": min(g), "gbps_max": max(g),
            "cpu_s_per_gb": med([r["cpu_s_per_gb"] for r in runs]),
            # GB per CPU-second: the throughput of one fully used CPU; unlike GB/s it does
            # not drop when other processes take turns on the sender's CPU
            "gb_per_cpu_s": med([1 / r["cpu_s_per_gb"] for r in runs if r["cpu_s_per_gb"]]),
            "cpu_share": med([r["cpu_share"] for r in runs]),
            "others_pct": med([r["others_pct"] for r in runs]),
            "copied_pct": max(copied) if copied else None,
            "notifications": sum(r.get("notifications") or 0 for r in runs),
            "errors": sum(r.get("errors", 0) for r in runs),
            "sink_ratio": min(r["sink_ratio"] for r in runs),
            "kdgram_s": med([r["datagrams"] / r["seconds"] / 1e3 for r in runs]),
        })
    for row in rows:
        same = {x["case"]: x for x in rows if x["size"] == row["size"]}
        base, ref = same.get(BASE), same.get(REF)
        for key, other in (("x_uvloop", base), ("x_c", ref)):
            row[key] = row["gbps"] / other["gbps"] if other and other["gbps"] else None
            row[key + "_cpu"] = (row["gb_per_cpu_s"] / other["gb_per_cpu_s"]
                                 if other and other["gb_per_cpu_s"] else None)
        plain = same.get("uring" if row["case"].startswith("uring") else "c-usend")
        zc = row["case"] in ZC_CASES and plain is not None
        row["x_copy"] = row["gbps"] / plain["gbps"] if zc and plain["gbps"] else None
        row["x_copy_cpu"] = (row["gb_per_cpu_s"] / plain["gb_per_cpu_s"]
                             if zc and plain["gb_per_cpu_s"] else None)
    return rows


def breakeven(rows: list[dict[str, Any]], zc: str, plain: str) -> dict[str, Any]:
    """Sizes where the zero-copy case beat the copying one. Decided on GB per CPU-second
    (every sender here is CPU-bound, and that figure is immune to other processes taking
    turns on the CPU); the wall-clock GB/s ratio is reported next to it."""
    pts = []
    for size in sorted({r["size"] for r in rows}):
        d = {r["case"]: r for r in rows if r["size"] == size}
        if zc in d and plain in d:
            pts.append({"size": size, "x_gbps": d[zc]["gbps"] / d[plain]["gbps"],
                        "x_per_cpu": d[zc]["gb_per_cpu_s"] / d[plain]["gb_per_cpu_s"]})
    pays = [p["size"] for p in pts if p["x_per_cpu"] > 1.0]
    # smallest size from which zero-copy wins at every larger size measured
    from_size = None
    for p in reversed(pts):
        if p["x_per_cpu"] > 1.0:
            from_size = p["size"]
        else:
            break
    below = max((p["size"] for p in pts if from_size is None or p["size"] < from_size),
                default=None)
    return {"zc": zc, "plain": plain, "points": pts, "pays_at": pays,
            "pays_from": from_size, "no_gain_at_or_below": below}


def fmt(x: Any, d: int = 2) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "-"
    return f"{x:,.{d}f}"


def size_label(n: int) -> str:
    return f"{n // 1024} KiB" if n % 1024 == 0 else f"{n} B"


HEAD = ("size", "case", "GB/s", "min-max", "x uvloop", "x C zc+reg", "x copy", "CPU s/GB",
        "GB/CPU-s", "x uvloop /CPU", "x C /CPU", "x copy /CPU", "copied %", "sink", "CPU %",
        "others %", "err")


def cells(r: dict[str, Any]) -> list[str]:
    copied = r["copied_pct"]
    return [size_label(r["size"]), r["label"], fmt(r["gbps"]),
            f"{fmt(r['gbps_min'])}-{fmt(r['gbps_max'])}", fmt(r["x_uvloop"]), fmt(r["x_c"]),
            fmt(r["x_copy"]), fmt(r["cpu_s_per_gb"], 3), fmt(r["gb_per_cpu_s"], 1),
            fmt(r["x_uvloop_cpu"]), fmt(r["x_c_cpu"]), fmt(r["x_copy_cpu"]),
            "-" if copied is None else f"{copied:.1f}",
            fmt(r["sink_ratio"], 2), fmt(100 * r["cpu_share"], 0), fmt(r["others_pct"], 0),
            str(r["errors"])]


def text_table(rows: list[dict[str, Any]]) -> str:
    cs = [list(HEAD)] + [cells(r) for r in rows]
    w = [max(len(c[i]) for c in cs) for i in range(len(HEAD))]
    out, prev = [], None
    for k, c in enumerate(cs):
        if k > 1 and c[0] != prev:
            out.append("")
        prev = c[0]
        out.append("  ".join(v.ljust(w[i]) if i < 2 else v.rjust(w[i])
                             for i, v in enumerate(c)))
    return "\n".join(out)


def md_table(rows: list[dict[str, Any]]) -> str:
    out = ["| " + " | ".join(HEAD) + " |",
           "|" + "|".join("---" if i < 2 else "---:" for i in range(len(HEAD))) + "|"]
    for r in rows:
        c = cells(r)
        if r["case"] in ("uring-zc-pool", "uring-zc-many", REF):
            c[1] = f"**{c[1]}**"
        out.append("| " + " | ".join(c) + " |")
    return "\n".join(out)


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    top = max(r["size"] for r in rows)
    d = {r["case"]: r for r in rows if r["size"] == top}
    for case in ("uring-zc-pool", "uring-zc-many"):
        r = d.get(case)
        if r and r["x_uvloop"] is not None and r["x_c"] is not None:
            ok1 = r["x_uvloop"] >= 1.5 and r["x_uvloop_cpu"] >= 1.5
            ok2 = r["x_c"] >= 0.6 and r["x_c_cpu"] >= 0.6
            out.append(f"{CASES[case]} at {size_label(top)}: {r['x_uvloop']:.2f}x uvloop "
                       f"sendto in GB/s, {r['x_uvloop_cpu']:.2f}x per CPU-second "
                       f"(target >= 1.5: {'met' if ok1 else 'MISSED'}); "
                       f"{100 * r['x_c']:.0f} % of C SEND_ZC + registered buffers in GB/s, "
                       f"{100 * r['x_c_cpu']:.0f} % per CPU-second "
                       f"(target >= 60 %: {'met' if ok2 else 'MISSED'})")
    return out


def breakeven_lines(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for zc, plain in PAIRS:
        b = breakeven(rows, zc, plain)
        if len(b["points"]) < 2:
            continue
        pts = ", ".join(f"{size_label(p['size'])} {p['x_per_cpu']:.2f}x ({p['x_gbps']:.2f}x)"
                        for p in b["points"])
        if b["pays_from"] is None:
            verdict = "zero-copy did not pay at any size measured"
        elif b["no_gain_at_or_below"] is None:
            verdict = f"zero-copy paid at every size measured (from {size_label(b['pays_from'])})"
        else:
            verdict = (f"zero-copy pays from {size_label(b['pays_from'])}; it does not pay at "
                       f"{size_label(b['no_gain_at_or_below'])} and below")
        out.append(f"{CASES[zc]} vs {CASES[plain]}: {verdict} [zero-copy / copy in GB per "
                   f"CPU-second (in wall-clock GB/s): {pts}]")
    return out


def machine_facts(o: argparse.Namespace, sink: Sink | None) -> dict[str, str]:
    cpu, vm = "unknown", False
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                vm = vm or " hypervisor" in line
    except OSError:
        pass
    try:
        import uvloop

        uv = uvloop.__version__
    except ImportError:
        uv = "not installed"
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "uringloop"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} CPUs{' (VM)' if vm else ''}, {cpu}",
        "kernel": platform.release(),
        "python": sys.version.split()[0] + " " + platform.python_implementation(),
        "uvloop": uv,
        "gcc": subprocess.run(["gcc", "-dumpfullversion"], capture_output=True,
                              text=True).stdout.strip(),
        "uringloop": f"git {head or '?'}"
                     + (" + uncommitted changes in uringloop/" if dirty else ""),
        "sink": sink.describe() if sink else "-",
        "sender CPU": f"pinned to CPU {o.cpu} (this script on another CPU)",
    }


def write_docs(o: argparse.Namespace, rows: list[dict[str, Any]],
               results: list[dict[str, Any]], failures: list[str], facts: dict[str, str],
               command: str, elapsed: float) -> None:
    if o.json:
        o.json.parent.mkdir(parents=True, exist_ok=True)
        o.json.write_text(json.dumps(
            {"command": command, "elapsed_s": elapsed, "facts": facts,
             "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(o).items()},
             "verdicts": verdicts(rows) if rows else [],
             "breakeven": [breakeven(rows, z, p) for z, p in PAIRS],
             "summary": rows, "runs": results, "failures": failures}, indent=1, default=str))
    if o.no_docs or not o.doc:
        return
    lines = [
        SECTION, "",
        f"`{command}` ({elapsed / 60:.1f} min; raw numbers in `{o.json.name if o.json else '-'}`"
        "; the script and its method are described in its docstring).", "",
        *(f"- {k}: {v}" for k, v in facts.items()), "",
        "Method: every run is a fresh process pinned to one CPU, sending 64 KiB (65507 B "
        "payload) datagrams on a connected UDP socket into a veth whose root qdisc is "
        "`blackhole`: the packets are dropped before any socket, so no copy is made and "
        f"every zero-copy notification reports \"not copied\". Repetitions: {o.reps}, interleaved, "
        f"each {o.seconds} s after {o.warmup} s of warm-up; medians, min-max over "
        "repetitions. GB/s = 1e9 bytes/s of UDP payload. CPU s/GB = the sender's "
        "utime+stime (all threads, kernel send path included) per 1e9 bytes; GB/CPU-s = its "
        "inverse, the rate one fully used CPU sustains. Every sender here is CPU-bound "
        "(CPU % = sender CPU time / wall time, 100 when it had the CPU to itself), so the "
        "/CPU ratios are the same comparison as the GB/s ratios, minus the noise of other "
        "processes taking turns on this shared machine's CPU. x copy = against the copying "
        "send on the same path (uringloop sendto; C io_uring SEND). copied % = "
        "notifications reporting IORING_NOTIF_USAGE_ZC_COPIED. sink = packets dropped by the "
        "qdisc / datagrams sent (1.00 = every datagram left the socket). others % = CPU "
        "time used on the pinned CPU by other processes during the run (the machine is "
        "shared; a high value depresses that run).", "",
        md_table(rows), "",
    ]
    v = verdicts(rows)
    if v:
        lines += ["Targets:", "", *(f"- {x}" for x in v), ""]
    b = breakeven_lines(rows)
    if b:
        lines += ["Message size below which zero-copy does not pay on this sink:", "",
                  *(f"- {x}" for x in b), ""]
    if failures:
        lines += ["Failed runs:", "", *(f"- `{f.splitlines()[0]}`" for f in failures), ""]
    section = "\n".join(lines).rstrip() + "\n"
    text = o.doc.read_text() if o.doc.exists() else ""
    start = text.find(SECTION + "\n")
    if start >= 0:
        nxt = re.search(r"^## ", text[start + len(SECTION):], re.M)
        end = start + len(SECTION) + nxt.start() if nxt else len(text)
        text = text[:start] + section + ("\n" + text[end:] if nxt else "")
    else:
        text = text.rstrip() + "\n\n" + section
    o.doc.write_text(text)


# =========================================================================== main


def build() -> None:
    BUILD.mkdir(parents=True, exist_ok=True)
    if not C_EXE.exists() or C_EXE.stat().st_mtime < C_SRC.stat().st_mtime:
        cmd = ["gcc", "-O2", "-Wall", "-o", str(C_EXE), str(C_SRC)]
        print("+", shlex.join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True, timeout=120)


def parse(argv: list[str] | None) -> argparse.Namespace:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(description=doc.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=doc.split("\n", 2)[2])
    p.add_argument("--seconds", type=float, default=1.0, help="measured window per run")
    p.add_argument("--warmup", type=float, default=0.2)
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    p.add_argument("--sizes", default="1024,4096,8192,16384,32768,65507",
                   help="payload sizes in bytes (all cases at the largest)")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--inflight", type=int, default=32,
                   help="C: requests in flight; Python zero-copy: 2x this many datagrams")
    p.add_argument("--cpu", type=int, default=0, help="CPU the sender is pinned to")
    p.add_argument("--sink", choices=("blackhole", "peerdown"), default="blackhole")
    p.add_argument("--retry-busy", type=float, default=25.0, metavar="PCT",
                   help="rerun a run (keeping the quieter one) when other processes used "
                        "more than PCT %% of the sender's CPU during it")
    p.add_argument("--retries", type=int, default=2, help="at most this many reruns")
    p.add_argument("--json", type=Path, default=DOCS / "zerocopy_udp_bench.json")
    p.add_argument("--doc", type=Path, default=DOCS / "zerocopy.md")
    p.add_argument("--no-docs", action="store_true", help="do not touch --doc")
    # internal: run one sender
    p.add_argument("--child", choices=[c for c in CASES if not c.startswith("c-")],
                   help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=MAX_UDP, help=argparse.SUPPRESS)
    p.add_argument("--window", type=int, default=64, help=argparse.SUPPRESS)
    o = p.parse_args(argv)
    if o.child:
        return o
    try:
        o.sizes = sorted({int(x) for x in o.sizes.split(",") if x.strip()})
    except ValueError:
        p.error("--sizes: comma-separated byte counts")
    o.cases = [c.strip() for c in o.cases.split(",") if c.strip()]
    bad = [c for c in o.cases if c not in CASES]
    if bad or not o.cases:
        p.error(f"unknown case(s) {bad}; choose from {', '.join(CASES)}")
    if not o.sizes or o.sizes[0] < 1 or o.sizes[-1] > MAX_UDP:
        p.error(f"--sizes must be within 1..{MAX_UDP}")
    if o.seconds <= 0 or o.seconds > 60 or o.reps < 1 or o.reps > 50:
        p.error("--seconds must be in (0, 60] and --reps in 1..50")
    if o.inflight < BATCH or o.inflight > 256:
        p.error(f"--inflight must be in {BATCH}..256")
    ncpu = os.cpu_count() or 1
    if not 0 <= o.cpu < ncpu:
        p.error(f"--cpu must be in 0..{ncpu - 1}")
    return o


def main(argv: list[str] | None = None) -> int:
    o = parse(argv)
    if o.child:
        return child_main(o)
    why = preflight(o.sink)
    if why:
        print(f"zerocopy_udp_bench: cannot run here: {why}", file=sys.stderr)
        return 2
    command = shlex.join(["python", "bench/zerocopy_udp_bench.py",
                          *(sys.argv[1:] if argv is None else argv)])
    build()
    others = [c for c in range(os.cpu_count() or 1) if c != o.cpu]
    if others:
        os.sched_setaffinity(0, set(others))  # keep this script off the sender's CPU

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    sink = Sink(o.sink)
    t_start = time.monotonic()
    results: list[dict[str, Any]] = []
    failures: list[str] = []
    top = o.sizes[-1]
    plan = [(top, c) for c in o.cases]
    plan += [(s, c) for s in reversed(o.sizes[:-1]) for c in o.cases if c in SWEEP_CASES]
    try:
        try:
            sink.create()
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            print(f"zerocopy_udp_bench: cannot run here: cannot make the network namespace "
                  f"sink ({exc})", file=sys.stderr)
            return 2
        total = len(plan) * o.reps
        est = total * (o.seconds + o.warmup + 0.5)
        print(f"{len(plan)} cases x {o.reps} reps = {total} runs, about {est / 60:.1f} min; "
              f"sink: {sink.describe()}", file=sys.stderr)
        done = 0
        for rep in range(o.reps):
            k = (rep * 3) % len(plan)
            for size, case in plan[k:] + plan[:k]:
                done += 1
                tag = f"[{done}/{total}] {size_label(size):>8} {CASES[case]:38}"
                try:
                    r = run_case(o, sink, case, size)
                    for _ in range(o.retries):  # the CPU was busy with others: once more
                        if r["others_pct"] <= o.retry_busy:
                            break
                        print(f"{tag} others used {r['others_pct']:.0f} % of CPU {o.cpu}; "
                              "again", file=sys.stderr)
                        time.sleep(1.0)
                        r2 = run_case(o, sink, case, size)
                        if r2["others_pct"] < r["others_pct"]:
                            r = r2
                except RuntimeError as exc:
                    failures.append(f"{case} {size}: {exc}")
                    print(f"{tag} FAILED {exc}", file=sys.stderr)
                    continue
                r["rep"] = rep
                results.append(r)
                copied = r.get("copied_pct")
                print(f"{tag} {r['gbps']:6.2f} GB/s  {r['cpu_s_per_gb']:6.3f} CPU s/GB  "
                      f"cpu {100 * r['cpu_share']:3.0f}%  others {r['others_pct']:3.0f}%  "
                      f"sink {r['sink_ratio']:.2f}"
                      + (f"  copied {copied:.1f}%" if copied is not None else "")
                      + (f"  errors {r['errors']} {r.get('last_error', '')}"
                         if r.get("errors") else ""), file=sys.stderr)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: the table shows what finished; nothing is written",
              file=sys.stderr)
    else:
        interrupted = False
    finally:
        kill_live()
        sink.destroy()

    if not results:
        print("no results", file=sys.stderr)
        return 130 if interrupted else 1
    rows = summarize(results)
    print()
    print(text_table(rows))
    for line in verdicts(rows) + breakeven_lines(rows):
        print("\n" + line)
    if interrupted:
        return 130
    facts = machine_facts(o, sink)
    write_docs(o, rows, results, failures, facts, command, time.monotonic() - t_start)
    if o.json:
        print(f"\nwrote {o.json}" + ("" if o.no_docs else f" and the section of {o.doc}"),
              file=sys.stderr)
    bad_copy = [r for r in results if r["case"] in ZC_CASES and (r.get("copied_pct") or 0) > 0]
    if bad_copy:
        print(f"{len(bad_copy)} zero-copy run(s) reported copied datagrams: the sink is not "
              "a zero-copy path", file=sys.stderr)
    return 1 if failures or bad_copy else 0


if __name__ == "__main__":
    sys.exit(main())
