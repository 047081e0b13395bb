"""Smoke test of bench/zerocopy_udp_bench.py: one tiny run of every case.

Needs root and network namespaces (the benchmark makes its own veth sink); skipped
otherwise, naming what is missing. No timing thresholds: it checks that every case sent
bytes and that the zero-copy cases were really zero-copy on the drop sink (0 % copied).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "zerocopy_udp_bench.py"
ZC_CASES = ("uring-zc-bytes", "uring-zc-pool", "uring-zc-many", "c-zc", "c-zcreg")


def missing_capability() -> str | None:
    if not sys.platform.startswith("linux"):
        return "Linux only"
    if os.geteuid() != 0:
        return "needs root (creates network namespaces and a veth pair)"
    for tool in ("ip", "tc", "gcc"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found"
    name = f"ulzcprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True,
                       timeout=20)
    if r.returncode:
        return f"network namespaces unavailable: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)
    return None


@pytest.mark.timeout(300)
def test_udp_zerocopy_bench_smoke(tmp_path):
    why = missing_capability()
    if why:
        pytest.skip(why)
    out = tmp_path / "udp.json"
    cmd = [sys.executable, str(SCRIPT), "--seconds", "0.2", "--warmup", "0.05", "--reps", "1",
           "--sizes", "65507", "--retries", "0", "--no-docs", "--json", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO)
    try:
        _, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()  # its atexit cleanup does not run then: remove its namespaces here
        proc.communicate()
        for ns in (f"ulzc{proc.pid}s", f"ulzc{proc.pid}d"):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        raise
    if proc.returncode == 2:
        pytest.skip(f"the benchmark cannot run here: {err.strip()[-300:]}")
    assert proc.returncode == 0, err[-3000:]
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                          timeout=20).stdout
    assert f"ulzc{proc.pid}" not in left, "the benchmark left its network namespaces behind"
    data = json.loads(out.read_text())
    assert not data["failures"]
    runs = {x["case"]: x for x in data["runs"]}
    assert set(runs) == {"uvloop", "asyncio", "uring", "uring-zc-bytes", "uring-zc-pool",
                         "uring-zc-many", "c-send", "c-usend", "c-zc", "c-zcreg"}
    for case, run in runs.items():
        assert run["bytes"] > 0, case
        assert run["errors"] == 0, (case, run.get("last_error"))
        assert run["sink_drops"] > 0, case  # the datagrams reached the drop sink
    for case in ZC_CASES:
        assert runs[case]["notifications"] > 0, case
        assert runs[case]["copied"] == 0, case
        assert runs[case]["copied_pct"] == 0.0, case
