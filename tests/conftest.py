"""Test configuration: async tests run on uringloop and on the stdlib loop."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["uringloop.pytest_plugin"]


def open_fds() -> set[int]:
    """The fds this process has open now (for leak checks)."""
    return {int(n) for n in os.listdir("/proc/self/fd")}


@pytest.fixture
def fd_guard():
    """Fails the test if it leaves file descriptors open."""
    before = open_fds()
    yield
    import gc

    gc.collect()
    leaked = {fd for fd in open_fds() - before if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not leaked, {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in leaked}
