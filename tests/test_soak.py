"""CI version of the soak test: bench/soak.py for UL_SOAK_SECONDS (default 20) seconds.

The reliability issue asks for 60 s; CI runs the suite on three Pythons, so the default
here is 20 s. Set UL_SOAK_SECONDS=60 (or more) to run the full version.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

SOAK = pathlib.Path(__file__).resolve().parent.parent / "bench" / "soak.py"
SECONDS = float(os.environ.get("UL_SOAK_SECONDS", "20"))


@pytest.mark.timeout(SECONDS + 120)
def test_soak_no_leaks_no_mismatches() -> None:
    proc = subprocess.run(
        [sys.executable, str(SOAK), "--seconds", str(SECONDS), "--sample", "2",
         "--clients", "16"],
        capture_output=True, text=True, timeout=SECONDS + 100,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["failures"] == []
    assert report["connections_served"] > 0
    assert report["bytes_verified"] > 0
    assert report["client"]["mismatches"] == 0
    assert report["client"]["bytes"] == report["bytes_verified"]
    assert report["fds"][1] <= report["fds"][0]
    assert report["inflight"][1] <= report["inflight"][0]
