"""Shared pieces of the integration suite: real libraries and real servers on uringloop.

Every test here carries the ``integration`` marker (deselect with ``-m "not integration"``).
Async tests run on uringloop and on the stdlib loop (the ``uringloop_loops`` ini option).
The external servers (redis-server, PostgreSQL) are started per session on free loopback
ports; a test that needs one is skipped, saying which, only when it is not installed
(``.ci/install-integration-deps.sh`` installs them).
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import os
import random
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
NEED_EXTRA = "not installed: pip install -e '.[test,integration]'"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)


def loop_module() -> str:
    """The module of the running loop's class ("uringloop.loop" or "asyncio.unix_events")."""
    return type(asyncio.get_running_loop()).__module__


def on_uringloop() -> bool:
    return loop_module().startswith("uringloop")


def rand_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for servers without port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the child may not be able to


def die_with_parent() -> None:
    """A Popen preexec_fn: the child gets SIGTERM when the test process dies, so a killed
    pytest does not leave redis-server/postgres running (PR_SET_PDEATHSIG). It runs after
    Popen's user= switch (which would clear the setting), so it imports nothing."""
    _libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


def find_tool(name: str, *extra_dirs: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in extra_dirs:
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    return None


def make_tls_cert(directory: str) -> tuple[str, str]:
    """A self-signed EC certificate for 127.0.0.1/localhost: (cert path, key path)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl (the command-line tool) not installed")
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            key,
            "-out",
            cert,
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return make_tls_cert(str(tmp_path_factory.mktemp("tls")))
