"""python -m uringloop info / echo."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest


def test_info_reports_usable_ring():
    out = subprocess.run([sys.executable, "-m", "uringloop", "info"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "io_uring: usable" in out.stdout
    assert "SEND_ZC" in out.stdout


@pytest.mark.parametrize(
    ("fake", "says"),
    [
        ("EPERM", "io_uring_setup failed with EPERM"),
        ("pbuf:EINVAL", "IORING_REGISTER_PBUF_RING) failed with EINVAL"),
        ("recv_multishot:EINVAL", "IORING_RECV_MULTISHOT) failed with EINVAL"),
    ],
)
def test_info_reports_unusable_io_uring(fake, says):
    """``info`` says NOT usable whenever a loop could not be created, whichever step fails."""
    env = dict(os.environ, URINGLOOP_FAKE_SETUP_ERRNO=fake)
    out = subprocess.run([sys.executable, "-m", "uringloop", "info"], capture_output=True,
                         text=True, timeout=60, env=env)
    assert out.returncode == 1, out.stderr
    assert "io_uring: NOT usable" in out.stdout and says in out.stdout
    assert "Linux 6.0 or newer" in out.stdout or fake == "EPERM"


def test_unknown_command_fails():
    out = subprocess.run([sys.executable, "-m", "uringloop", "bogus"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2
    assert "unknown command" in out.stderr


def test_echo_command_serves():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "uringloop", "echo", "--port", str(port)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert "listening" in proc.stdout.readline()
        deadline = time.monotonic() + 10
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(b"ping" * 1000)
            got = b""
            while len(got) < 4000 and time.monotonic() < deadline:
                got += c.recv(65536)
        assert got == b"ping" * 1000
    finally:
        proc.terminate()
        proc.wait(timeout=10)
