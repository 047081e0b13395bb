"""Side-by-side echo benchmark: uringloop vs uvloop vs asyncio vs a C io_uring ceiling.

One command rebuilds the C tools and reruns every case::

    python bench/echo_bench.py --quick
    python bench/echo_bench.py --loops uringloop,uvloop,asyncio,c --reps 5 \\
        --markdown bench/results.md --json bench/results.json

Method: each run starts a fresh server (examples/echo_server.py, or the C
server) pinned to CPU 0, waits for the port, primes it with a short load run
whose connections then close (glibc's malloc thresholds otherwise keep the
stdlib loop ~4x slow until the first connections go away), then runs the C
load generator pinned to CPU 1.  Server CPU time (utime+stime from
/proc/PID/stat) is sampled exactly at the start and end of the measured
window, giving server CPU microseconds per request.  Servers are interleaved
within each repetition, so drift hits all of them alike; medians and min-max
are reported.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
BUILD = BENCH / "build"
SERVER_PY = REPO / "examples" / "echo_server.py"
C_SOURCES = {"loadgen": BENCH / "loadgen.c", "uring_echo": BENCH / "uring_echo.c"}
ALL_LOOPS = ("uringloop", "uringloop-zc", "uvloop", "asyncio", "c")
C_LABEL = "c-io_uring"
CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"

_live: list[subprocess.Popen[bytes]] = []  # processes to kill on any exit path


@dataclass(frozen=True)
class Case:
    """One benchmark configuration."""

    mode: str
    size: int
    conns: int

    def label(self) -> str:
        return f"{self.mode} {self.size}B x{self.conns}"


# --------------------------------------------------------------------------- build


def build(cc: str = "gcc") -> dict[str, Path]:
    """Compile the C programs into bench/build/ when the source is newer."""
    BUILD.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, src in C_SOURCES.items():
        exe = BUILD / name
        if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
            cmd = [cc, "-O2", "-Wall", "-o", str(exe), str(src)]
            print("+", shlex.join(cmd), file=sys.stderr)
            subprocess.run(cmd, check=True, timeout=120)
        out[name] = exe
    return out


# --------------------------------------------------------------------------- processes


def kill_proc(proc: subprocess.Popen[bytes], grace: float = 3.0) -> None:
    """SIGTERM the process (group), then SIGKILL after `grace` seconds."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers in the group, if any
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(2)
    except subprocess.TimeoutExpired:
        pass
    if proc in _live:
        _live.remove(proc)


def kill_all() -> None:
    """Kill every process this script started and still tracks."""
    for proc in list(_live):
        kill_proc(proc, grace=1.0)


_port_counter = 20000 + os.getpid() % 5000


def free_port() -> int:
    """A port below the ephemeral range that is bindable right now."""
    global _port_counter
    for _ in range(1000):
        _port_counter = 20000 + (_port_counter + 1 - 20000) % 12000
        with socket.socket() as s:
            try:
                s.bind((HOST, _port_counter))
                return _port_counter
            except OSError:
                continue
    raise RuntimeError("no free port")


def cpu_ticks(pid: int) -> int:
    """utime+stime of a process (all threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)


def cpu_stat() -> dict[str, list[int]]:
    """Per-CPU counters from /proc/stat (user nice system idle iowait irq softirq steal)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                out[name] = [int(v) for v in vals[:8]]
    return out


def core_usage(before: dict[str, list[int]], after: dict[str, list[int]],
               cpu: str) -> tuple[float, float]:
    """(busy seconds incl. irq/softirq, steal fraction) of one CPU between samples."""
    d = [a - b for a, b in zip(after[cpu], before[cpu], strict=True)]
    total = sum(d)
    busy = total - d[3] - d[4] - d[7]
    return busy / CLK_TCK, (d[7] / total if total else 0.0)


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Block until the server accepts connections (or fail)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with rc={proc.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port} within {timeout}s")


def loadgen(exe: Path, port: int, conns: int, size: int, duration: float,
            warmup: float = 0.0, rate: float = 0.0, server_pid: int | None = None,
            cpu: str = "1", verify: bool = True,
            extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run the C load generator; sample server CPU at the window markers.

    `extra` adds loadgen options, e.g. ("--reconnect",) for the accept-rate case.
    """
    cmd = ["taskset", "-c", cpu, str(exe), "--markers", *extra]
    if rate > 0:
        cmd += ["--rate", str(rate)]
    if not verify:
        cmd.append("--no-verify")
    cmd += [HOST, str(port), str(conns), str(size), str(duration), str(warmup)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    _live.append(proc)
    watchdog = threading.Timer(duration + warmup + 20, lambda: kill_proc(proc, 0.5))
    watchdog.start()
    marks: dict[str, int] = {}
    gen_marks: dict[str, int] = {}
    stats: dict[str, dict[str, list[int]]] = {}
    other_err: list[str] = []
    try:
        assert proc.stderr is not None and proc.stdout is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace").strip()
            if line in ("W", "E"):
                stats[line] = cpu_stat()
                try:
                    gen_marks[line] = cpu_ticks(proc.pid)  # taskset exec()s loadgen
                except OSError:
                    pass
                if server_pid is not None:
                    try:
                        marks[line] = cpu_ticks(server_pid)
                    except OSError:
                        pass
            elif line:
                other_err.append(line)
        out = proc.stdout.read().decode()
        proc.wait(5)
    finally:
        watchdog.cancel()
        kill_proc(proc, 0.5)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"loadgen produced no result: {' | '.join(other_err)[-500:]}")
    res: dict[str, Any] = json.loads(lines[-1])
    if "W" in marks and "E" in marks:
        res["server_cpu_s"] = (marks["E"] - marks["W"]) / CLK_TCK
    secs = res.get("seconds") or 0.0
    if secs and "server_cpu_s" in res:
        res["server_cpu_pct"] = 100 * res["server_cpu_s"] / secs
    if secs and "W" in gen_marks and "E" in gen_marks:
        res["loadgen_cpu_pct"] = 100 * (gen_marks["E"] - gen_marks["W"]) / CLK_TCK / secs
    if "W" in stats and "E" in stats:
        busy0, steal0 = core_usage(stats["W"], stats["E"], "cpu0")
        _, steal1 = core_usage(stats["W"], stats["E"], "cpu" + cpu.split(",")[0])
        res["core0_busy_s"] = busy0
        res["steal_pct"] = 100 * max(steal0, steal1)
    return res


def server_cmd(name: str, case: Case, port: int, python: str,
               exes: dict[str, Path]) -> list[str]:
    """Command line for one server kind."""
    if name == "c":
        return [str(exes["uring_echo"]), "--port", str(port), "--quiet"]
    loop, _, zc = name.partition("-")
    cmd = [python, str(SERVER_PY), "--loop", loop, "--mode", case.mode,
           "--port", str(port), "--quiet"]
    if zc == "zc":
        cmd.append("--zerocopy")
    return cmd


def run_one(name: str, case: Case, opts: argparse.Namespace,
            exes: dict[str, Path], env: dict[str, str]) -> dict[str, Any]:
    """Start a fresh pinned server, prime it, measure, stop it."""
    port = free_port()
    cmd = ["taskset", "-c", "0", *server_cmd(name, case, port, opts.python, exes)]
    with tempfile.TemporaryFile() as errf:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errf, cwd=REPO,
                                env=env, start_new_session=True)
        _live.append(proc)
        try:
            wait_port(port, proc)
            if opts.prime > 0:
                loadgen(exes["loadgen"], port, case.conns, case.size, opts.prime)
            res = loadgen(exes["loadgen"], port, case.conns, case.size, opts.duration,
                          opts.warmup, opts.rate, server_pid=proc.pid,
                          verify=not opts.no_verify)
            if proc.poll() is not None:
                raise RuntimeError(f"server died during the run (rc={proc.returncode})")
        except Exception as exc:
            kill_proc(proc)
            errf.seek(0)
            tail = errf.read().decode(errors="replace")[-1500:]
            raise RuntimeError(f"{name} {case.label()}: {exc}\n{tail}") from exc
        kill_proc(proc)
    cpu = res.get("server_cpu_s")
    n = res["requests"]
    res["us_per_req"] = cpu * 1e6 / n if cpu is not None and n else None
    busy = res.get("core0_busy_s")
    res["core0_us_per_req"] = busy * 1e6 / n if busy is not None and n else None
    res.update(server=display_name(name), mode=case.mode, size=case.size, conns=case.conns)
    return res


def display_name(name: str) -> str:
    return C_LABEL if name == "c" else name


# --------------------------------------------------------------------------- report


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def fmt_n(x: float, digits: int = 0) -> str:
    if x != x:  # nan
        return "-"
    return f"{x:,.{digits}f}"


def summarize(results: list[dict[str, Any]], cases: list[Case],
              servers: list[str]) -> list[dict[str, Any]]:
    """Median/min/max per (case, server) plus the ratio to uvloop."""
    rows = []
    for case in cases:
        base = None
        group = []
        for name in servers:
            runs = [r for r in results if r["server"] == display_name(name)
                    and (r["mode"], r["size"], r["conns"]) == (case.mode, case.size, case.conns)]
            if not runs:
                continue
            rps = [r["rps"] for r in runs]
            us = [r["us_per_req"] for r in runs if r["us_per_req"] is not None]
            row = {
                "mode": case.mode, "size": case.size, "conns": case.conns,
                "server": display_name(name), "n": len(runs),
                "rps": med(rps), "rps_min": min(rps), "rps_max": max(rps),
                "us": med(us), "us_min": min(us, default=float("nan")),
                "us_max": max(us, default=float("nan")),
                "core0": med([r["core0_us_per_req"] for r in runs
                              if r.get("core0_us_per_req") is not None]),
                "srv_pct": med([r["server_cpu_pct"] for r in runs if "server_cpu_pct" in r]),
                "gen_pct": med([r["loadgen_cpu_pct"] for r in runs if "loadgen_cpu_pct" in r]),
                "steal": max((r.get("steal_pct", 0.0) for r in runs), default=0.0),
                "p50": med([r["p50_us"] for r in runs]),
                "p99": med([r["p99_us"] for r in runs]),
                "errors": sum(r["errors"] for r in runs),
            }
            if name == "uvloop":
                base = row["us"]
            group.append(row)
        for row in group:
            row["ratio"] = row["us"] / base if base else float("nan")
        rows.extend(group)
    return rows


COLUMNS = ("mode", "size", "conns", "server", "rps (median)", "rps min-max",
           "srv µs/req", "µs/req min-max", "× uvloop", "core0 µs/req", "p50 µs", "p99 µs",
           "err", "srv%", "gen%", "steal%")


def row_cells(r: dict[str, Any]) -> list[str]:
    return [
        r["mode"], str(r["size"]), str(r["conns"]), r["server"],
        fmt_n(r["rps"]), f"{fmt_n(r['rps_min'])}-{fmt_n(r['rps_max'])}",
        fmt_n(r["us"], 2), f"{fmt_n(r['us_min'], 2)}-{fmt_n(r['us_max'], 2)}",
        fmt_n(r["ratio"], 2), fmt_n(r["core0"], 2), fmt_n(r["p50"]), fmt_n(r["p99"]),
        str(r["errors"]), fmt_n(r["srv_pct"]), fmt_n(r["gen_pct"]), fmt_n(r["steal"], 1),
    ]


def text_table(rows: list[dict[str, Any]]) -> str:
    cells = [list(COLUMNS)] + [row_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    right = {1, 2, *range(4, len(COLUMNS))}
    lines = []
    prev = None
    for k, c in enumerate(cells):
        key = tuple(c[:3])
        if k > 1 and key != prev:
            lines.append("")
        prev = key
        lines.append("  ".join(v.rjust(w) if i in right else v.ljust(w)
                               for i, (v, w) in enumerate(zip(c, widths, strict=True))))
    return "\n".join(lines)


def md_table(rows: list[dict[str, Any]]) -> str:
    out = ["| " + " | ".join(COLUMNS) + " |",
           "|" + "|".join("---:" if i in (1, 2) or i > 3 else "---"
                          for i in range(len(COLUMNS))) + "|"]
    out += ["| " + " | ".join(row_cells(r)) + " |" for r in rows]
    return "\n".join(out)


def machine_facts(python: str) -> dict[str, str]:
    """Kernel, CPU, Python and loop versions for the report."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    probe = ("import sys, platform; v = {'python': sys.version.split()[0] + ' ' "
             "+ platform.python_implementation()}\n"
             "for m in ('uvloop', 'uringloop'):\n"
             "    try:\n"
             "        mod = __import__(m); v[m] = getattr(mod, '__version__', '?')\n"
             "    except Exception as e:\n"
             "        v[m] = 'unavailable (' + type(e).__name__ + ')'\n"
             "import json; print(json.dumps(v))")
    try:
        info = json.loads(subprocess.run([python, "-c", probe], capture_output=True,
                                         text=True, timeout=30, cwd=BUILD).stdout)
    except (ValueError, subprocess.SubprocessError, OSError):
        info = {}
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "kernel": platform.release(),
        "cpu": f"{cpu} ({os.cpu_count()} CPUs)",
        "python": f"{python} ({info.get('python', '?')})",
        "uvloop": info.get("uvloop", "?"),
        "uringloop": info.get("uringloop", "?"),
        "gcc": subprocess.run(["gcc", "-dumpfullversion"], capture_output=True,
                              text=True).stdout.strip(),
    }


def write_markdown(path: Path, rows: list[dict[str, Any]], facts: dict[str, str],
                   opts: argparse.Namespace, command: str) -> None:
    lines = [
        "# Echo benchmark", "",
        f"Command: `{command}`", "",
        *(f"- {k}: {v}" for k, v in facts.items()),
        f"- method: server pinned to CPU 0, C load generator (bench/loadgen.c, "
        f"epoll, one request in flight per connection) pinned to CPU 1; "
        f"{opts.reps} interleaved repetitions, fresh server each run, primed "
        f"{opts.prime}s, warmup {opts.warmup}s, measured {opts.duration}s"
        + (f", open loop at {opts.rate:g} req/s" if opts.rate else ", closed loop"),
        "- srv µs/req: server CPU time (utime+stime, /proc/PID/stat) over the "
        "measured window / requests; × uvloop: ratio of medians. "
        "Values are median and min-max over repetitions; p50/p99 are medians.",
        "- core0 µs/req: all busy time of CPU 0 (incl. irq/softirq, which the "
        "kernel does not charge to the process: e.g. loopback delivery of the "
        "server's sends) / requests. steal%: worst hypervisor steal on CPU 0/1 "
        "during any repetition (noise indicator). srv% / gen%: median CPU use of "
        "the server / load generator over the window; rps is server capacity "
        "only where srv% is ~100.",
        f"- {C_LABEL}: bench/uring_echo.c, raw io_uring (multishot accept, "
        "multishot recv with a provided buffer ring, send); protocol mode only.",
        "", md_table(rows), "",
    ]
    path.write_text("\n".join(lines))


# --------------------------------------------------------------------------- main


def csv(kind: type, text: str) -> list[Any]:
    return [kind(x) for x in text.split(",") if x.strip()]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="protocol+streams, 1024 and 102400 B, 100 conns, 3 reps, 2 s "
                        "(explicit flags still win)")
    p.add_argument("--loops", default="uringloop,uvloop,asyncio,c",
                   help=f"comma list from {','.join(ALL_LOOPS)} "
                        "(c = C io_uring ceiling, protocol mode only; "
                        "uringloop-zc = uringloop with --zerocopy)")
    p.add_argument("--modes", help="comma list of protocol,streams,buffered")
    p.add_argument("--sizes", help="comma list of message sizes (default 64,1024,10240,102400)")
    p.add_argument("--conns", help="comma list of connection counts (default 10,100)")
    p.add_argument("--reps", type=int, help="repetitions (default 5)")
    p.add_argument("--duration", type=float, help="measured seconds per run (default 3)")
    p.add_argument("--warmup", type=float, default=0.5, help="seconds before the window")
    p.add_argument("--prime", type=float, default=0.5,
                   help="seconds of priming load (connections then close); 0 = off")
    p.add_argument("--rate", type=float, default=0.0,
                   help="open-loop total req/s (latency at a fixed rate); 0 = closed loop")
    p.add_argument("--no-verify", action="store_true",
                   help="loadgen checks lengths only (cheaper client at large sizes)")
    p.add_argument("--python", default=sys.executable, help="interpreter for the servers")
    p.add_argument("--pythonpath", help="prepend to PYTHONPATH for the servers "
                                        "(e.g. the repo root for an in-place build)")
    p.add_argument("--markdown", type=Path, help="write a markdown report here")
    p.add_argument("--json", type=Path, help="write raw per-run results here")
    o = p.parse_args(argv)
    q = o.quick
    o.modes = csv(str, o.modes or ("protocol,streams" if q else "protocol,streams,buffered"))
    o.sizes = csv(int, o.sizes or ("1024,102400" if q else "64,1024,10240,102400"))
    o.conns = csv(int, o.conns or ("100" if q else "10,100"))
    o.reps = o.reps or (3 if q else 5)
    o.duration = o.duration or (2.0 if q else 3.0)
    o.loops = csv(str, o.loops)
    bad = [x for x in o.loops if x not in ALL_LOOPS]
    bad += [m for m in o.modes if m not in ("protocol", "streams", "buffered")]
    if bad:
        p.error(f"unknown loop/mode: {', '.join(bad)}")
    return o


def main(argv: list[str] | None = None) -> int:
    """Build, run all cases interleaved, print/write the report."""
    opts = parse(argv)
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    exes = build()
    env = dict(os.environ)
    if opts.pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(
            [opts.pythonpath, *filter(None, [env.get("PYTHONPATH")])])
    if any(x.startswith("uringloop") for x in opts.loops):
        chk = subprocess.run([opts.python, "-c", "import uringloop"], env=env, cwd=BUILD,
                             capture_output=True, text=True, timeout=60)
        if chk.returncode:
            print(f"cannot import uringloop with {opts.python}:\n{chk.stderr[-800:]}"
                  "install it (pip install -e .) or pass --pythonpath, "
                  "or leave it out of --loops", file=sys.stderr)
            return 2

    cases = [Case(m, s, c) for m in opts.modes for s in opts.sizes for c in opts.conns]
    total = sum(opts.reps * sum(1 for n in opts.loops if n != "c" or c.mode == "protocol")
                for c in cases)
    est = total * (opts.duration + opts.warmup + opts.prime + 0.8)
    print(f"{len(cases)} cases, {total} runs, ~{est / 60:.1f} min", file=sys.stderr)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    results: list[dict[str, Any]] = []
    failures: list[str] = []
    done = 0
    try:
        for case in cases:
            servers = [n for n in opts.loops if n != "c" or case.mode == "protocol"]
            for rep in range(opts.reps):
                k = rep % len(servers)
                for name in servers[k:] + servers[:k]:  # rotate order every rep
                    done += 1
                    try:
                        r = run_one(name, case, opts, exes, env)
                    except RuntimeError as exc:
                        failures.append(str(exc))
                        print(f"[{done}/{total}] FAILED {exc}", file=sys.stderr)
                        continue
                    r["rep"] = rep
                    results.append(r)
                    us = r["us_per_req"]
                    print(f"[{done}/{total}] {case.label():22} {r['server']:13} "
                          f"{r['rps']:>10,.0f} rps  "
                          f"{us if us is not None else float('nan'):6.2f} µs/req  "
                          f"p99 {r['p99_us']:,.0f} µs  err {r['errors']}  "
                          f"srv {r.get('server_cpu_pct', 0):.0f}% "
                          f"gen {r.get('loadgen_cpu_pct', 0):.0f}% "
                          f"steal {r.get('steal_pct', 0):.1f}%", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted; reporting what finished", file=sys.stderr)
    finally:
        kill_all()

    rows = summarize(results, cases, opts.loops)
    print()
    print(text_table(rows))
    if failures:
        print(f"\n{len(failures)} run(s) failed; first: {failures[0]}", file=sys.stderr)
    facts = machine_facts(opts.python)
    if opts.markdown:
        write_markdown(opts.markdown, rows, facts, opts, command)
        print(f"wrote {opts.markdown}", file=sys.stderr)
    if opts.json:
        opts.json.write_text(json.dumps(
            {"command": command, "facts": facts, "summary": rows, "runs": results,
             "failures": failures}, indent=1, default=str))
        print(f"wrote {opts.json}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
