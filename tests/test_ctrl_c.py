"""Ctrl-C under uringloop.run behaves as under asyncio.run: main is cancelled, then
KeyboardInterrupt propagates."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

SCRIPT = textwrap.dedent(
    """
    import asyncio, sys, uringloop

    async def main():
        print("ready", flush=True)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            print("main cancelled", flush=True)
            raise

    try:
        RUNNER(main())
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
        sys.exit(130)
    """
)


@pytest.mark.parametrize("runner", ["uringloop.run", "asyncio.run"])
def test_ctrl_c_cancels_main_then_raises(runner):
    code = SCRIPT.replace("RUNNER", runner)
    if runner == "asyncio.run":
        code = code.replace("import asyncio, sys, uringloop", "import asyncio, sys, uringloop\n"
                            "uringloop.install()")
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert out.splitlines() == ["main cancelled", "KeyboardInterrupt"]
    assert proc.returncode == 130
