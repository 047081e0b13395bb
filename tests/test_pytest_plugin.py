"""uringloop.pytest_plugin: the ``uringloop_loops`` ini option, run in a child pytest."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = textwrap.dedent(
    """
    import asyncio

    async def test_loop():
        await asyncio.sleep(0)
        print("LOOP", type(asyncio.get_running_loop()).__module__)

    def test_sync():
        pass
    """
)


def _pytest(tmp_path: Path, loops: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        f"uringloop_loops = {loops}\n"
    )
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["uringloop.pytest_plugin"]\n')
    (tmp_path / "test_child.py").write_text(TESTS)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-s", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize(
    ("loops", "says"),
    [
        ("uringloop, bogus", "unknown loop 'bogus'"),
        ("uring", "unknown loop 'uring'"),
        (",", "names no loop"),
    ],
)
def test_bad_uringloop_loops_is_a_usage_error(tmp_path: Path, loops: str, says: str) -> None:
    """A clean pytest usage error (exit status 4) naming the valid values, not a
    collection traceback."""
    proc = _pytest(tmp_path, loops)
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert "ERROR: uringloop_loops" in proc.stderr and says in proc.stderr
    assert "valid values (comma separated): uringloop, asyncio, uvloop" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "during collection" not in proc.stdout


def test_uringloop_loops_runs_each_async_test_on_each_loop(tmp_path: Path) -> None:
    proc = _pytest(tmp_path, " uringloop , asyncio ")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed" in proc.stdout
    assert "LOOP uringloop.loop" in proc.stdout and "LOOP asyncio.unix_events" in proc.stdout
