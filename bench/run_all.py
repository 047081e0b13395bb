"""Run the whole benchmark suite and write docs/benchmarks.{md,json,png}.

One command reruns everything (about 15 minutes on 2 CPUs)::

    .venv/bin/python bench/run_all.py --reps 3 \\
        --also-python debian=.venv-debian/bin/python

Sections (servers: uringloop, uvloop, asyncio and, where it applies, the C
io_uring ceiling bench/uring_echo.c):

echo      examples/echo_server.py, Protocol / streams / BufferedProtocol x
          64 B, 1 KiB, 10 KiB, 100 KiB x 10 and 100 connections, closed loop
          (bench/loadgen.c); server CPU µs per request.
http      examples/http_server.py (asyncio.Protocol + httptools, keep-alive)
          loaded by wrk -t1 -c100; requests/s and server CPU µs per request.
accept    loadgen --reconnect: 16 connections in flight, each connect, one
          64 B echo, close; connections/s and server CPU µs per connection.
latency   open loop at a fixed total rate (default 20,000 req/s, 100 conns,
          1 KiB, Protocol); p50/p99 measured from the scheduled send time.
rss       10,000 idle connections (one echo each, so all were accepted);
          (VmRSS with them - VmRSS before) / 10,000.

The server runs pinned to CPU 0, every load generator pinned to CPU 1, all
traffic goes to 127.0.0.1; every run is bounded in time, and every process
started is killed on any exit path.  Servers are interleaved within each
repetition (rotated order), medians over repetitions are reported, and the
headline is the ratio to uvloop (and to the C ceiling where there is one).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import echo_bench as eb  # noqa: E402

REPO = eb.REPO
DOCS = REPO / "docs"
HTTP_PY = REPO / "examples" / "http_server.py"
HOST = eb.HOST
SECTIONS = ("echo", "http", "accept", "latency", "rss")
PY_LOOPS = ("uringloop", "uvloop", "asyncio")
NOFILE = 65536

WRK_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "errors": %d, "p50_us": %.1f, "p99_us": %.1f}\\n',
    summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


# --------------------------------------------------------------------------- helpers


def raise_nofile(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (n, max(n, hard)))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


def vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@contextmanager
def server(cmd: list[str], env: dict[str, str], what: str) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server pinned to CPU 0, wait for its port, always kill it."""
    port = int(cmd[cmd.index("--port") + 1])
    with tempfile.TemporaryFile() as errf:
        proc = subprocess.Popen(["taskset", "-c", "0", *cmd], stdout=subprocess.DEVNULL,
                                stderr=errf, cwd=REPO, env=env, start_new_session=True)
        eb._live.append(proc)
        try:
            eb.wait_port(port, proc)
            yield proc
            if proc.poll() is not None:
                raise RuntimeError(f"server died during the run (rc={proc.returncode})")
        except Exception as exc:
            eb.kill_proc(proc)
            errf.seek(0)
            tail = errf.read().decode(errors="replace")[-1500:]
            raise RuntimeError(f"{what}: {exc}\n{tail}") from exc
        eb.kill_proc(proc)


def echo_cmd(name: str, mode: str, port: int, python: str, exes: dict[str, Path]) -> list[str]:
    if name == "c":
        return [str(exes["uring_echo"]), "--port", str(port), "--quiet"]
    return [python, str(eb.SERVER_PY), "--loop", name, "--mode", mode, "--port", str(port),
            "--quiet", "--nofile", str(NOFILE)]


def wrk(port: int, conns: int, duration: float, server_pid: int | None,
        script: Path) -> dict[str, Any]:
    """Run wrk pinned to CPU 1; server CPU sampled around the whole run."""
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{max(1, round(duration))}s",
           "--timeout", "5s", "-s", str(script), f"http://{HOST}:{port}/"]
    t0 = eb.cpu_ticks(server_pid) if server_pid else 0
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    eb._live.append(proc)
    try:
        out, err = proc.communicate(timeout=duration + 20)
    except subprocess.TimeoutExpired:
        eb.kill_proc(proc, 0.5)
        raise RuntimeError("wrk timed out") from None
    finally:
        eb.kill_proc(proc, 0.5)
    t1 = eb.cpu_ticks(server_pid) if server_pid else 0
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"wrk gave no result: {err.decode()[-300:]} {out.decode()[-300:]}")
    r: dict[str, Any] = json.loads(lines[-1])
    r["seconds"] = r.pop("duration_us") / 1e6
    r["rps"] = r["requests"] / r["seconds"] if r["seconds"] else 0.0
    if server_pid:
        r["server_cpu_s"] = (t1 - t0) / eb.CLK_TCK
        r["server_cpu_pct"] = 100 * r["server_cpu_s"] / r["seconds"]
    return r


def per_unit(res: dict[str, Any]) -> float | None:
    cpu, n = res.get("server_cpu_s"), res.get("requests")
    return cpu * 1e6 / n if cpu is not None and n else None


def open_idle(port: int, n: int, batch: int = 50, limit_s: float = 60.0) -> list[socket.socket]:
    """Open n connections, one 1-byte echo on each (proves it was accepted)."""
    socks: list[socket.socket] = []
    deadline = time.monotonic() + limit_s
    try:
        while len(socks) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(socks)} of {n} connections in {limit_s}s")
            group = [socket.create_connection((HOST, port), timeout=10)
                     for _ in range(min(batch, n - len(socks)))]
            socks.extend(group)
            for s in group:
                s.sendall(b"x")
            for s in group:
                if s.recv(1) != b"x":
                    raise RuntimeError("idle connection: bad echo")
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


# --------------------------------------------------------------------------- cases


class Suite:
    def __init__(self, opts: argparse.Namespace, exes: dict[str, Path]) -> None:
        self.o = opts
        self.exes = exes
        self.env = dict(os.environ)
        self.lua = eb.BUILD / "wrk_json.lua"
        self.lua.write_text(WRK_LUA)

    def echo_opts(self, rate: float = 0.0, duration: float | None = None) -> argparse.Namespace:
        return argparse.Namespace(python=self.python, prime=self.o.prime,
                                  duration=duration or self.o.duration, warmup=self.o.warmup,
                                  rate=rate, no_verify=False)

    # each returns one result dict (raw numbers for one run)
    def echo(self, name: str, case: eb.Case) -> dict[str, Any]:
        r = eb.run_one(name, case, self.echo_opts(), self.exes, self.env)
        r["unit"] = r["us_per_req"]
        return r

    def latency(self, name: str, case: eb.Case) -> dict[str, Any]:
        r = eb.run_one(name, case, self.echo_opts(self.o.rate, self.o.lat_duration),
                       self.exes, self.env)
        r["unit"] = r["us_per_req"]
        return r

    def accept(self, name: str, case: eb.Case) -> dict[str, Any]:
        port = eb.free_port()
        cmd = echo_cmd(name, "protocol", port, self.python, self.exes)
        with server(cmd, self.env, f"{name} accept") as proc:
            lg = self.exes["loadgen"]
            if self.o.prime > 0:
                eb.loadgen(lg, port, case.conns, case.size, self.o.prime, extra=("--reconnect",))
            r = eb.loadgen(lg, port, case.conns, case.size, self.o.duration, self.o.warmup,
                           server_pid=proc.pid, extra=("--reconnect",))
        r["unit"] = per_unit(r)
        return r

    def http(self, name: str, case: eb.Case) -> dict[str, Any]:
        port = eb.free_port()
        cmd = [self.python, str(HTTP_PY), "--loop", name, "--port", str(port), "--quiet"]
        with server(cmd, self.env, f"{name} http") as proc:
            if self.o.prime > 0:
                wrk(port, case.conns, 1, None, self.lua)
            r = wrk(port, case.conns, self.o.http_duration, proc.pid, self.lua)
        r["unit"] = per_unit(r)
        return r

    def rss(self, name: str, case: eb.Case) -> dict[str, Any]:
        port = eb.free_port()
        # (the C server inherits the RLIMIT_NOFILE raised in main())
        cmd = echo_cmd(name, "protocol", port, self.python, self.exes)
        with server(cmd, self.env, f"{name} rss") as proc:
            # warm: a few connections come and go, so lazily created state exists
            for s in open_idle(port, 100):
                s.close()
            time.sleep(0.3)
            base = vm_rss_kib(proc.pid)
            t0 = time.monotonic()
            socks = open_idle(port, case.conns)
            try:
                setup_s = time.monotonic() - t0
                time.sleep(0.5)
                full = vm_rss_kib(proc.pid)
            finally:
                for s in socks:
                    s.close()
        per = (full - base) / case.conns
        return {"rss_base_kib": base, "rss_full_kib": full, "kib_per_conn": per,
                "setup_s": setup_s, "unit": per, "requests": case.conns, "errors": 0}


def section_cases(o: argparse.Namespace, section: str, secondary: bool) -> list[eb.Case]:
    if section == "echo":
        if secondary:
            return [eb.Case("protocol", s, 100) for s in (64, 1024, 10240)]
        return [eb.Case(m, s, c) for m in o.modes for s in o.sizes for c in o.conns]
    if section == "http":
        return [eb.Case("http", 0, 100)]
    if section == "accept":
        return [eb.Case("accept", 64, o.accept_conns)]
    if section == "latency":
        return [eb.Case("protocol", 1024, 100)]
    if section == "rss":
        return [eb.Case("idle", 1, o.idle_conns)]
    raise ValueError(section)


def servers_for(section: str, case: eb.Case, loops: list[str]) -> list[str]:
    c_ok = section in ("accept", "latency", "rss") or (section == "echo"
                                                       and case.mode == "protocol")
    return [n for n in loops if n != "c" or c_ok]


def case_label(section: str, case: eb.Case) -> str:
    if section == "echo":
        size = {64: "64 B", 1024: "1 KiB", 10240: "10 KiB", 102400: "100 KiB"}.get(
            case.size, f"{case.size} B")
        return f"{case.mode} {size} x{case.conns}"
    if section == "http":
        return f"HTTP keep-alive x{case.conns}"
    if section == "accept":
        return f"accept+echo+close x{case.conns}"
    if section == "latency":
        return "p99 @ fixed rate"
    return f"RSS {case.conns:,} idle"


# --------------------------------------------------------------------------- summary

METRIC = {  # section: (headline metric, unit, what the ratio is of)
    "echo": ("unit", "srv µs/req"),
    "http": ("unit", "srv µs/req"),
    "accept": ("unit", "srv µs/conn"),
    "latency": ("p99_us", "p99 µs"),
    "rss": ("unit", "KiB/conn"),
}


def med(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    keys: list[tuple[str, str, str]] = []
    for r in results:
        k = (r["python_label"], r["section"], r["case"])
        if k not in keys:
            keys.append(k)
    for py, section, case in keys:
        metric = METRIC[section][0]
        group = []
        for name in dict.fromkeys(r["server"] for r in results):
            runs = [r for r in results if (r["python_label"], r["section"], r["case"],
                                           r["server"]) == (py, section, case, name)]
            if not runs:
                continue
            vals = [r.get(metric) for r in runs if r.get(metric) is not None]
            group.append({
                "python": py, "section": section, "case": case, "server": name,
                "n": len(runs), "value": med(vals),
                "min": min(vals, default=float("nan")), "max": max(vals, default=float("nan")),
                "rps": med([r.get("rps") for r in runs]),
                "us": med([r.get("unit") for r in runs]),
                "p50": med([r.get("p50_us") for r in runs]),
                "p99": med([r.get("p99_us") for r in runs]),
                "srv_pct": med([r.get("server_cpu_pct") for r in runs]),
                "steal": max((r.get("steal_pct", 0.0) for r in runs), default=0.0),
                "errors": sum(r.get("errors", 0) for r in runs),
                "rss_base": med([r.get("rss_base_kib") for r in runs]),
            })
        base = {g["server"]: g["value"] for g in group}
        for g in group:
            uv, c = base.get("uvloop"), base.get(eb.C_LABEL)
            g["x_uvloop"] = g["value"] / uv if uv else float("nan")
            g["x_c"] = g["value"] / c if c else float("nan")
        rows.extend(group)
    return rows


def fmt(x: float | None, d: int = 0) -> str:
    if x is None or x != x:
        return "-"
    return f"{x:,.{d}f}"


HEAD = ("python", "section", "case", "server", "metric", "median", "min-max", "× uvloop",
        "× C", "rps / conn/s", "p50 µs", "p99 µs", "srv%", "err", "steal%")


def cells(r: dict[str, Any]) -> list[str]:
    d = 2 if r["section"] in ("echo", "http", "accept", "rss") else 0
    return [r["python"], r["section"], r["case"], r["server"], METRIC[r["section"]][1],
            fmt(r["value"], d), f"{fmt(r['min'], d)}-{fmt(r['max'], d)}",
            fmt(r["x_uvloop"], 2), fmt(r["x_c"], 2),
            fmt(r["rps"]) if r["section"] != "rss" else "-",
            fmt(r["p50"]), fmt(r["p99"]), fmt(r["srv_pct"]), str(r["errors"]),
            fmt(r["steal"], 1)]


def text_table(rows: list[dict[str, Any]]) -> str:
    cs = [list(HEAD)] + [cells(r) for r in rows]
    w = [max(len(c[i]) for c in cs) for i in range(len(HEAD))]
    out, prev = [], None
    for k, c in enumerate(cs):
        key = tuple(c[:3])
        if k > 1 and key != prev:
            out.append("")
        prev = key
        out.append("  ".join(v.rjust(w[i]) if i >= 5 else v.ljust(w[i])
                             for i, v in enumerate(c)))
    return "\n".join(out)


def md_table(rows: list[dict[str, Any]], head: tuple[str, ...] = HEAD) -> str:
    out = ["| " + " | ".join(head) + " |",
           "|" + "|".join("---:" if i >= 5 else "---" for i in range(len(head))) + "|"]
    out += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return "\n".join(out)


def headline(rows: list[dict[str, Any]], py: str) -> str:
    """One line per case: the uringloop/uvloop ratio (and the absolute values)."""
    out = ["| section | case | metric | uringloop | uvloop | asyncio | C | "
           "uringloop × uvloop | uringloop × C | asyncio × uvloop |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    keys = list(dict.fromkeys((r["section"], r["case"]) for r in rows if r["python"] == py))
    for section, case in keys:
        g = {r["server"]: r for r in rows
             if (r["python"], r["section"], r["case"]) == (py, section, case)}
        d = 2 if section != "latency" else 0

        def v(name: str, g: dict[str, Any] = g, d: int = d) -> str:
            return fmt(g[name]["value"], d) if name in g else "-"

        u = g.get("uringloop", {})
        a = g.get("asyncio", {})
        out.append(f"| {section} | {case} | {METRIC[section][1]} | {v('uringloop')} | "
                   f"{v('uvloop')} | {v('asyncio')} | {v(eb.C_LABEL)} | "
                   f"**{fmt(u.get('x_uvloop'), 2)}** | {fmt(u.get('x_c'), 2)} | "
                   f"{fmt(a.get('x_uvloop'), 2)} |")
    return "\n".join(out)


XMAX = 4.0  # chart x-axis limit (ratio to uvloop); longer bars are clipped and labelled


def chart(rows: list[dict[str, Any]], py: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys((r["section"], r["case"]) for r in rows if r["python"] == py))
    servers = ["uringloop", "uvloop", "asyncio", eb.C_LABEL]
    colors = {"uringloop": "#d62728", "uvloop": "#1f77b4", "asyncio": "#7f7f7f",
              eb.C_LABEL: "#2ca02c"}
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(keys) + 1.5))
    h = 0.8 / len(servers)
    for j, s in enumerate(servers):
        ys, xs = [], []
        for i, (section, case) in enumerate(keys):
            for r in rows:
                if (r["python"], r["section"], r["case"], r["server"]) == (py, section, case, s):
                    if r["x_uvloop"] == r["x_uvloop"]:
                        ys.append(i + (j - 1.5) * h)
                        xs.append(r["x_uvloop"])
        ax.barh(ys, [min(x, XMAX) for x in xs], height=h, label=s, color=colors[s])
        for y, x in zip(ys, xs, strict=True):
            if x > XMAX:  # clipped bar: print its value
                ax.text(XMAX, y, f" {x:.1f}x", va="center", ha="right", fontsize=6,
                        color="white")
    ax.set_xlim(0, XMAX)
    ax.set_yticks(range(len(keys)))
    ax.set_yticklabels([f"{c}  [{METRIC[s][1]}]" for s, c in keys], fontsize=7)
    ax.set_ylim(len(keys) - 0.5, -0.5)  # first case on top, no empty margins
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_xlabel("cost relative to uvloop (server CPU per request/connection, "
                  "p99 latency, RSS per idle connection); lower is better")
    ax.set_title(f"uringloop vs uvloop vs asyncio vs C io_uring ({py} Python)")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- report


def git_state() -> str:
    """HEAD commit of the repository and whether uringloop/ had local changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "uringloop"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return f"git {head or '?'}" + (" + uncommitted changes in uringloop/" if dirty else "")


def python_facts(python: str) -> str:
    probe = ("import sys, sysconfig, platform; a = sysconfig.get_config_var('CONFIG_ARGS') "
             "or ''; print(sys.version.replace(chr(10), ' '), '|', sys.executable, '|', "
             "'configure: ' + (' '.join(x for x in a.split() if 'optim' in x or 'lto' in x) "
             "or 'no --enable-optimizations/--with-lto'))")
    try:
        out = subprocess.run([python, "-c", probe], capture_output=True, text=True,
                             timeout=30, cwd=eb.BUILD).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    if "| /usr/bin/" in out or os.path.realpath(python).startswith("/usr/bin/"):
        out += (" (Debian package build: PGO + LTO per Debian's packaging; Debian keeps "
                "those flags out of sysconfig, so configure shows neither)")
    return out


def write_docs(o: argparse.Namespace, rows: list[dict[str, Any]],
               results: list[dict[str, Any]], failures: list[str], facts: dict[str, str],
               pyfacts: dict[str, str], command: str, elapsed: float) -> None:
    o.out.parent.mkdir(parents=True, exist_ok=True)
    pys = list(dict.fromkeys(r["python"] for r in rows))
    png = o.out.with_suffix(".png")
    if rows:
        chart(rows, pys[0], png)
    lines = [
        "# Benchmarks", "",
        "Rerun everything (builds the C tools, ~15 min on 2 CPUs, writes this file, "
        f"`{o.out.with_suffix('.json').name}` and `{png.name}`):", "",
        "```sh",
        "apt-get install -y wrk   # HTTP load generator",
        "python -m venv .venv && .venv/bin/pip install -e '.[bench]'",
        "# optional second interpreter (Debian's PGO/LTO python3.11):",
        "/usr/bin/python3.11 -m venv .venv-debian && .venv-debian/bin/pip install -e '.[bench]'",
        "ulimit -n 65536   # the RSS case needs > 10,000 fds (run_all.py also raises it "
        "itself, up to the hard limit)",
        ".venv/bin/python bench/run_all.py --reps 3 --also-python debian=.venv-debian/bin/python",
        "```", "",
        f"This file was produced by: `{command}`"
        + (f" (took {elapsed / 60:.1f} min)." if elapsed else "."), "",
        "Quick development run: `.venv/bin/python bench/run_all.py --quick --out /tmp/b.md`. "
        "`bench/echo_bench.py` alone reruns only the echo grid; "
        "`--sections echo,http,accept,latency,rss` picks sections; "
        "`--from-json docs/benchmarks.json` re-renders this file and the chart "
        "without running anything.", "",
        "## Machine", "",
        *(f"- {k}: {v}" for k, v in facts.items()),
        *(f"- Python `{k}`: {v}" for k, v in pyfacts.items()),
        "", "## Method", "",
        "- Every server is started fresh for each run, pinned to CPU 0 (`taskset -c 0`); "
        "every load generator is pinned to CPU 1. Traffic only to 127.0.0.1.",
        f"- {o.reps} repetitions; within a repetition the servers run interleaved in "
        "rotated order, so drift hits all of them alike. Values are medians over "
        "repetitions (min-max shown in the full table).",
        "- **srv µs/req** (and µs/conn) = server CPU time (utime+stime from /proc/PID/stat, "
        "sampled exactly at the start and end of the measured window) / completed "
        "requests. This compares the loops at equal server CPU, independent of how "
        "saturated the server was. The closed-loop rps column is server capacity only "
        "where srv% is ~100.",
        f"- echo: `bench/loadgen.c` (epoll, one request in flight per connection, "
        f"content verified), primed {o.prime}s (connections then close), warmup "
        f"{o.warmup}s, measured {o.duration}s.",
        f"- http: `examples/http_server.py` (asyncio.Protocol + httptools, keep-alive, "
        f"13-byte body), `wrk -t1 -c100 -d{max(1, round(o.http_duration))}s` after a 1 s "
        "priming run; server CPU is sampled around the whole wrk run (includes its "
        "100 connects).",
        f"- accept: `loadgen --reconnect`, {o.accept_conns} connections in flight, each "
        "does connect, one 64 B echo, close (client closes first); µs per connection.",
        f"- latency: open loop at {o.rate:,.0f} req/s total over 100 connections, 1 KiB, "
        f"Protocol, {o.lat_duration}s, repetitions: {max(o.reps, o.lat_reps)}; latency "
        "from the *scheduled* send time (no coordinated omission). Ratio column = p99 "
        "ratio.",
        f"- rss: {o.idle_conns:,} connections each doing one 1-byte echo (so all were "
        "accepted and have a protocol), then idle; (VmRSS with them - VmRSS after a "
        "100-connection warm-up) / count. Servers started with `--nofile 65536`.",
        "- C ceiling: `bench/uring_echo.c`, raw io_uring (multishot accept, multishot "
        "recv with a provided buffer ring, send), Protocol echo semantics only.",
        "",
    ]
    for py in pys:
        lines += [f"## Headline ({py} Python): ratios to uvloop (lower is better)", "",
                  headline(rows, py), ""]
    lines += [
        "## Caveats", "",
        "- Ratios, not absolute numbers, are the result: absolute µs depend on the "
        "CPU, the interpreter build (compare the two Python sections) and on load from "
        "other tenants of the machine (the steal% column only sees hypervisor steal, "
        "not other processes on the same CPUs).",
        "- Windows are short (echo 1 s) and repetitions few; ratios within ~10-15 % of "
        "1.0 are within run-to-run noise here (see the min-max column).",
        "- Where srv% is well below 100 the load generator (one CPU) was the limit and "
        "rps says nothing about server capacity; srv µs/req is still comparable.",
        "- p99 at a fixed rate is the noisiest number (single-digit-ms outliers from "
        "scheduling on a shared 2-CPU machine); look at min-max before reading a ratio.",
        "- RSS per idle connection counts user-space memory only (VmRSS); kernel "
        "socket buffers and io_uring kernel state are not included.",
        "",
        "![server cost normalised to uvloop](" + png.name + ")", "",
              "## All results", "", md_table(rows), ""]
    if failures:
        lines += ["## Failed runs", "", *(f"- `{f.splitlines()[0]}`" for f in failures), ""]
    o.out.write_text("\n".join(lines))
    o.out.with_suffix(".json").write_text(json.dumps(
        {"command": command, "elapsed_s": elapsed, "facts": facts, "pythons": pyfacts,
         "options": {k: v for k, v in vars(o).items() if k != "out"},
         "summary": rows, "runs": results, "failures": failures}, indent=1, default=str))


# --------------------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--quick", action="store_true",
                   help="development run: 1 rep, 0.5 s windows, small echo grid")
    p.add_argument("--sections", default=",".join(SECTIONS))
    p.add_argument("--loops", default="uringloop,uvloop,asyncio,c")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--lat-reps", type=int, default=7,
                   help="repetitions of the latency section (p99 is the number a noisy "
                        "neighbour moves most; default 7, or --reps when that is larger)")
    p.add_argument("--duration", type=float, default=1.0, help="echo/accept window, s")
    p.add_argument("--http-duration", type=float, default=2.0)
    p.add_argument("--lat-duration", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=0.3)
    p.add_argument("--prime", type=float, default=0.3)
    p.add_argument("--modes", default="protocol,streams,buffered")
    p.add_argument("--sizes", help="echo sizes (default 64,1024,10240,102400)")
    p.add_argument("--conns", help="echo connection counts (default 10,100)")
    p.add_argument("--rate", type=float, default=20000.0, help="latency section, req/s")
    p.add_argument("--accept-conns", type=int, default=16)
    p.add_argument("--idle-conns", type=int, default=10000)
    p.add_argument("--python", default=sys.executable, help="interpreter for the servers")
    p.add_argument("--python-label", default="pyenv", help="name of --python in the report")
    p.add_argument("--also-python", action="append", default=[], metavar="LABEL=PATH",
                   help="rerun a headline subset (echo Protocol 64 B/1 KiB/10 KiB x100, "
                        "http, accept) with another interpreter")
    p.add_argument("--out", type=Path, default=DOCS / "benchmarks.md",
                   help="markdown report (.json and .png written next to it)")
    p.add_argument("--from-json", type=Path, metavar="JSON",
                   help="run nothing: re-render the report (md, png) from a saved .json")
    o = p.parse_args(argv)
    if o.quick:
        o.reps, o.lat_reps, o.duration, o.warmup, o.prime = 1, 1, 0.5, 0.2, 0.2
        o.http_duration, o.lat_duration = 1.0, 1.0
        o.sizes, o.conns = o.sizes or "1024,102400", o.conns or "100"
        o.idle_conns = min(o.idle_conns, 2000)
    o.sizes, o.conns = o.sizes or "64,1024,10240,102400", o.conns or "10,100"
    o.sections = eb.csv(str, o.sections)
    o.loops = eb.csv(str, o.loops)
    o.modes, o.sizes, o.conns = eb.csv(str, o.modes), eb.csv(int, o.sizes), eb.csv(int, o.conns)
    bad = [s for s in o.sections if s not in SECTIONS]
    bad += [x for x in o.loops if x not in (*PY_LOOPS, "c")]
    if bad:
        p.error(f"unknown section/loop: {bad}")
    o.python = os.path.abspath(o.python)  # not resolve(): keep the venv's symlink
    o.pythons = [(o.python_label, o.python)]
    for spec in o.also_python:
        label, _, path = spec.partition("=")
        if not path:
            p.error("--also-python wants LABEL=PATH")
        o.pythons.append((label, os.path.abspath(path)))
    return o


def rerender(o: argparse.Namespace) -> int:
    """Write the markdown/PNG again from a saved JSON (no benchmark runs)."""
    data = json.loads(o.from_json.read_text())
    saved = data.get("options") or {}
    for k, v in saved.items():
        if k not in ("from_json", "out"):
            setattr(o, k, v)
    results = data["runs"]
    rows = summarize(results)
    print(text_table(rows))
    pyfacts = data["pythons"]
    if all(os.path.exists(py) for _, py in o.pythons):
        pyfacts = {label: python_facts(py) for label, py in o.pythons}
    data["facts"].setdefault("uringloop source", git_state() + " (when re-rendered)")
    write_docs(o, rows, results, data.get("failures", []), data["facts"], pyfacts,
               data["command"], data.get("elapsed_s", 0.0))
    print(f"wrote {o.out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    o = parse(argv)
    if o.from_json:
        return rerender(o)
    command = shlex.join(["python", *sys.argv])
    t_start = time.monotonic()
    raise_nofile(NOFILE)  # for the RSS client and the C server (inherited)
    exes = eb.build()
    suite = Suite(o, exes)
    if "http" in o.sections and subprocess.run(["which", "wrk"], capture_output=True).returncode:
        print("wrk not found (apt-get install -y wrk); skipping http", file=sys.stderr)
        o.sections.remove("http")

    plan: list[tuple[str, str, str, eb.Case, list[str]]] = []
    for i, (label, py) in enumerate(o.pythons):
        chk = subprocess.run([py, "-c", "import uringloop, uvloop, httptools"], cwd=eb.BUILD,
                             capture_output=True, text=True, timeout=60)
        if chk.returncode:
            print(f"{label}: cannot import the loops with {py}: {chk.stderr[-400:]}",
                  file=sys.stderr)
            if i == 0:
                return 2
            continue
        for section in o.sections:
            if i > 0 and section in ("latency", "rss"):
                continue
            for case in section_cases(o, section, secondary=i > 0):
                plan.append((label, py, section, case, servers_for(section, case, o.loops)))
    def reps_for(section: str) -> int:
        return max(o.reps, o.lat_reps) if section == "latency" else o.reps

    total = sum(len(s) * reps_for(section) for _, _, section, _, s in plan)
    print(f"{len(plan)} cases, {total} runs", file=sys.stderr)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    results: list[dict[str, Any]] = []
    failures: list[str] = []
    done = 0
    try:
        for label, py, section, case, servers in plan:
            suite.python = py
            fn: Callable[[str, eb.Case], dict[str, Any]] = getattr(suite, section)
            for rep in range(reps_for(section)):
                k = rep % len(servers)
                for name in servers[k:] + servers[:k]:
                    done += 1
                    tag = f"[{done}/{total}] {label} {case_label(section, case):26} " \
                          f"{eb.display_name(name):11}"
                    try:
                        r = fn(name, case)
                    except RuntimeError as exc:
                        failures.append(f"{label} {section} {case_label(section, case)} "
                                        f"{name}: {exc}")
                        print(f"{tag} FAILED {exc}", file=sys.stderr)
                        continue
                    r.update(python_label=label, section=section,
                             case=case_label(section, case), server=eb.display_name(name),
                             rep=rep)
                    results.append(r)
                    print(f"{tag} {fmt(r.get('rps')):>9}/s  unit {fmt(r.get('unit'), 2):>7}"
                          f"  p99 {fmt(r.get('p99_us')):>7} µs  err {r.get('errors', 0)}"
                          f"  srv {fmt(r.get('server_cpu_pct'))}%", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted; reporting what finished", file=sys.stderr)
    finally:
        eb.kill_all()

    rows = summarize(results)
    print()
    print(text_table(rows))
    for label, _ in o.pythons:
        if any(r["python"] == label for r in rows):
            print(f"\nheadline ({label}):\n{headline(rows, label)}")
    facts = eb.machine_facts(o.python)
    facts.pop("python", None)
    facts["wrk"] = subprocess.run(["wrk", "--version"], capture_output=True,
                                  text=True).stdout.split("\n")[0].strip() or "?"
    facts["uringloop source"] = git_state()
    pyfacts = {label: python_facts(py) for label, py in o.pythons}
    write_docs(o, rows, results, failures, facts, pyfacts, command,
               time.monotonic() - t_start)
    print(f"\nwrote {o.out}, {o.out.with_suffix('.json')}, {o.out.with_suffix('.png')}",
          file=sys.stderr)
    if failures:
        print(f"{len(failures)} run(s) failed; first: {failures[0]}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
