"""io_uring unavailable: the error names cause and remedy; ``fallback=True`` falls back.

io_uring_setup failing is simulated in a child process with the documented test hook
``URINGLOOP_FAKE_SETUP_ERRNO`` (read by every ring creation), for EPERM (sysctl
``kernel.io_uring_disabled``, Docker's seccomp profile) and ENOSYS (no io_uring in the
kernel, podman/CRI-O seccomp); its ``pbuf:`` and ``recv_multishot:`` forms fail the later
steps of creating a loop as kernels before 5.19 and 6.0 would.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap

import pytest

import uringloop

CHILD = textwrap.dedent(
    """
    import asyncio, json, sys, warnings
    import uringloop
    out = {}

    async def which():
        return type(asyncio.get_running_loop()).__module__

    def report(caught):
        return [(w.category.__name__, str(w.message), w.filename) for w in caught]

    try:
        uringloop.new_event_loop().close()
        out["strict"] = "no error"
    except uringloop.UnsupportedError as exc:
        out["strict"] = {"errno": exc.errno, "message": str(exc),
                         "is_oserror": isinstance(exc, OSError)}
    try:
        uringloop.run(which())
        out["run_strict"] = "no error"
    except uringloop.UnsupportedError as exc:
        out["run_strict"] = exc.errno
    try:
        uringloop.features()
        out["features"] = "no error"
    except uringloop.UnsupportedError as exc:
        out["features"] = exc.errno

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loop = uringloop.new_event_loop(fallback=True)
        out["fallback_loop"] = type(loop).__module__
        out["fallback_works"] = loop.run_until_complete(asyncio.sleep(0, "ok"))
        loop.close()
        out["new_event_loop_warnings"] = report(caught)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out["run_fallback"] = uringloop.run(which(), fallback=True)
        out["run_warnings"] = report(caught)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        uringloop.install(fallback=True)
        out["install_fallback"] = asyncio.run(which())
        out["install_fallback_2"] = asyncio.run(which())
        out["install_warnings"] = report(caught)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.set_event_loop_policy(uringloop.EventLoopPolicy(fallback=True))
        out["policy_fallback"] = asyncio.run(which())
        out["policy_fallback_2"] = asyncio.run(which())
        asyncio.new_event_loop().close()
        out["policy_warnings"] = report(caught)
    print(json.dumps(out))
    """
)


def _run_child(fake: str | None) -> dict:
    env = dict(os.environ)
    env.pop("URINGLOOP_FAKE_SETUP_ERRNO", None)
    if fake is not None:
        env["URINGLOOP_FAKE_SETUP_ERRNO"] = fake
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("name", "errno_value", "step", "cause", "remedy"),
    [
        ("EPERM", 1, "io_uring_setup", "io_uring_disabled", "sysctl kernel.io_uring_disabled=0"),
        ("ENOSYS", 38, "io_uring_setup", "CONFIG_IO_URING", "seccomp profile"),
        ("38", 38, "io_uring_setup", "without CONFIG_IO_URING", "Linux 6.0 or newer"),
        # the ring is created, but registering its provided-buffer ring fails (< 5.19)
        ("pbuf:EINVAL", 22, "IORING_REGISTER_PBUF_RING", "no provided-buffer rings",
         "Linux 6.0 or newer"),
        ("pbuf:EPERM", 1, "IORING_REGISTER_PBUF_RING", "seccomp", "io_uring_register"),
        # the ring works, but multishot receive, which the loop's wake-up socket needs (< 6.0)
        ("recv_multishot:EINVAL", 22, "IORING_RECV_MULTISHOT", "no multishot receive",
         "Linux 6.0 or newer"),
    ],
)
def test_unavailable_error_and_fallback(name: str, errno_value: int, step: str, cause: str,
                                        remedy: str) -> None:
    out = _run_child(name)
    strict = out["strict"]
    assert strict["errno"] == errno_value and strict["is_oserror"]
    msg = strict["message"]
    errname = {1: "EPERM", 22: "EINVAL", 38: "ENOSYS"}[errno_value]
    assert step in msg and f"failed with {errname}" in msg  # the step and errno ...
    assert "Likely cause:" in msg and cause in msg  # ... the cause ...
    assert "Remedy:" in msg and remedy in msg  # ... and the remedy
    assert out["run_strict"] == errno_value
    assert out["features"] == errno_value
    # fallback=True: a working stdlib loop and exactly one RuntimeWarning with the reason
    assert out["fallback_loop"] == "asyncio.unix_events"
    assert out["fallback_works"] == "ok"
    # every entry point warns the same way, once, blaming the caller's line (here: the
    # child's "<string>"), not uringloop's or asyncio's files
    for key in ("new_event_loop_warnings", "run_warnings", "install_warnings",
                "policy_warnings"):
        warns = out[key]
        assert len(warns) == 1, (key, warns)
        category, text, filename = warns[0]
        assert category == "RuntimeWarning"
        assert "falling back to the stdlib asyncio event loop" in text
        assert errname in text and "Remedy:" in text
        assert filename == "<string>", (key, filename)
    assert out["run_fallback"] == "asyncio.unix_events"
    assert out["install_fallback"] == out["install_fallback_2"] == "asyncio.unix_events"
    assert out["policy_fallback"] == out["policy_fallback_2"] == "asyncio.unix_events"


def test_available_fallback_is_a_no_op() -> None:
    out = _run_child(None)
    assert out["strict"] == "no error" and out["run_strict"] == "no error"
    assert out["fallback_loop"] == "uringloop.loop"
    assert out["run_fallback"] == out["install_fallback"] == "uringloop.loop"
    assert out["new_event_loop_warnings"] == out["run_warnings"] == []
    assert out["install_warnings"] == out["policy_warnings"] == []
    assert out["policy_fallback"] == "uringloop.loop"


@pytest.mark.parametrize("value", ["NOT_AN_ERRNO", "pbuf:NOT_AN_ERRNO", "bogus:EINVAL"])
def test_bad_hook_value_is_an_error(value: str) -> None:
    env = dict(os.environ, URINGLOOP_FAKE_SETUP_ERRNO=value)
    proc = subprocess.run(
        [sys.executable, "-c", "import uringloop; uringloop.new_event_loop()"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0 and "URINGLOOP_FAKE_SETUP_ERRNO" in proc.stderr


# -- in this process: where the fallback warning points ---------------------------------


@pytest.fixture
def io_uring_blocked(monkeypatch):
    """io_uring_setup "fails" with EPERM; the process's policy is restored afterwards."""
    monkeypatch.setenv("URINGLOOP_FAKE_SETUP_ERRNO", "EPERM")
    old = asyncio.get_event_loop_policy()
    yield
    asyncio.set_event_loop_policy(old)


async def _which() -> str:
    return type(asyncio.get_running_loop()).__module__


def _fallback_with_run() -> None:
    assert uringloop.run(_which(), fallback=True) == "asyncio.unix_events"


def _fallback_with_new_event_loop() -> None:
    loop = uringloop.new_event_loop(fallback=True)
    assert type(loop).__module__ == "asyncio.unix_events"
    loop.close()


def _fallback_with_install() -> None:
    uringloop.install(fallback=True)
    assert asyncio.run(_which()) == "asyncio.unix_events"


def _fallback_with_policy_and_asyncio_run() -> None:
    asyncio.set_event_loop_policy(uringloop.EventLoopPolicy(fallback=True))
    assert asyncio.run(_which()) == "asyncio.unix_events"
    assert asyncio.run(_which()) == "asyncio.unix_events"  # no second warning


def _fallback_with_policy_and_new_event_loop() -> None:
    asyncio.set_event_loop_policy(uringloop.EventLoopPolicy(fallback=True))
    for _ in range(2):
        loop = asyncio.new_event_loop()
        assert type(loop).__module__ == "asyncio.unix_events"
        loop.close()


@pytest.mark.parametrize(
    "entry",
    [_fallback_with_run, _fallback_with_new_event_loop, _fallback_with_install,
     _fallback_with_policy_and_asyncio_run, _fallback_with_policy_and_new_event_loop],
)
def test_fallback_warning_blames_the_callers_line(io_uring_blocked, entry) -> None:
    """Every entry point gives one RuntimeWarning naming the reason, attributed to the
    caller's file (this one), not to uringloop/policy.py or asyncio's modules."""
    with pytest.warns(RuntimeWarning) as record:
        entry()
    assert len(record) == 1, [str(w.message) for w in record]
    warning = record[0]
    assert "falling back to the stdlib asyncio event loop" in str(warning.message)
    assert "EPERM" in str(warning.message)
    assert warning.filename == __file__, warning.filename
