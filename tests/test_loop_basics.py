"""Scheduling, lifecycle, policy, signals and introspection of the loop itself.

Async tests run on uringloop and on the stdlib loop (see conftest); sync tests that build
loops by hand take the ``make_loop`` fixture, parametrized the same way.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest

import uringloop

from .conftest import open_fds

LOOPS = {"uringloop": uringloop.new_event_loop, "asyncio": asyncio.new_event_loop}


@pytest.fixture(params=list(LOOPS))
def make_loop(request):
    """A loop factory; every loop it made is closed at teardown."""
    made = []

    def factory():
        loop = LOOPS[request.param]()
        made.append(loop)
        return loop

    yield factory
    for loop in made:
        if not loop.is_closed():
            loop.close()


# -- scheduling ----------------------------------------------------------------------


async def test_call_soon_runs_in_fifo_order():
    loop = asyncio.get_running_loop()
    order = []
    done = loop.create_future()
    for i in range(100):
        loop.call_soon(order.append, i)
    loop.call_soon(done.set_result, None)
    await asyncio.wait_for(done, 5)
    assert order == list(range(100))


async def test_call_soon_with_args_and_cancelled_handle():
    loop = asyncio.get_running_loop()
    got = []
    h = loop.call_soon(got.append, "cancelled")
    loop.call_soon(got.append, "kept")
    h.cancel()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert got == ["kept"]


async def test_call_later_fires_in_deadline_order():
    loop = asyncio.get_running_loop()
    order = []
    done = loop.create_future()
    # scheduled out of order; must fire sorted by delay
    for delay in (0.05, 0.01, 0.04, 0.0, 0.02, 0.03):
        loop.call_later(delay, order.append, delay)
    loop.call_later(0.06, done.set_result, None)
    await asyncio.wait_for(done, 5)
    assert order == [0.0, 0.01, 0.02, 0.03, 0.04, 0.05]


async def test_call_at_fires_in_order_and_not_early():
    loop = asyncio.get_running_loop()
    fired = []
    done = loop.create_future()
    start = loop.time()
    for off in (0.03, 0.01, 0.02):
        loop.call_at(start + off, lambda o=off: fired.append((o, loop.time())))
    loop.call_at(start + 0.04, done.set_result, None)
    await asyncio.wait_for(done, 5)
    assert [o for o, _ in fired] == [0.01, 0.02, 0.03]
    for off, t in fired:
        # asyncio fires timers within clock_resolution of their deadline, never before
        assert t >= start + off - loop._clock_resolution


async def test_50ms_timer_does_not_fire_early():
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    start = loop.time()
    loop.call_later(0.05, lambda: fut.set_result(loop.time()))
    fired_at = await asyncio.wait_for(fut, 5)
    assert fired_at - start >= 0.05 - loop._clock_resolution
    # the wall clock agrees as well
    assert loop.time() - start >= 0.05 - loop._clock_resolution


async def test_timer_handle_cancel():
    loop = asyncio.get_running_loop()
    got = []
    h = loop.call_later(0.01, got.append, 1)
    loop.call_later(0.02, got.append, 2)
    h.cancel()
    await asyncio.sleep(0.05)
    assert got == [2]


async def test_sleep_ordering_between_tasks():
    order = []

    async def sleeper(d):
        await asyncio.sleep(d)
        order.append(d)

    await asyncio.wait_for(asyncio.gather(*(sleeper(d) for d in (0.03, 0.01, 0.02))), 5)
    assert order == [0.01, 0.02, 0.03]


def test_call_soon_threadsafe_wakes_blocked_loop(make_loop):
    """A loop blocked on a 10 s timer must wake for a cross-thread callback."""
    loop = make_loop()
    got = loop.create_future()
    long_timer = loop.call_later(10, lambda: None)

    def poke():
        time.sleep(0.1)
        loop.call_soon_threadsafe(lambda: got.set_result(time.monotonic()) if not got.done()
                                  else None)

    t = threading.Thread(target=poke)
    start = time.monotonic()
    t.start()
    try:
        woke = loop.run_until_complete(asyncio.wait_for(got, 5))
    finally:
        t.join(5)
        long_timer.cancel()
    assert woke - start < 5  # well before the 10 s timer
    assert not t.is_alive()


def test_call_soon_threadsafe_many_threads(make_loop):
    loop = make_loop()
    n_threads, per_thread = 4, 200
    got = []
    done = loop.create_future()

    def add(v):
        got.append(v)
        if len(got) == n_threads * per_thread and not done.done():
            done.set_result(None)

    def worker(k):
        for i in range(per_thread):
            loop.call_soon_threadsafe(add, (k, i))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    try:
        loop.run_until_complete(asyncio.wait_for(done, 10))
    finally:
        for t in threads:
            t.join(5)
    assert sorted(got) == sorted((k, i) for k in range(n_threads) for i in range(per_thread))
    # each thread's callbacks run in the order that thread scheduled them
    for k in range(n_threads):
        assert [i for kk, i in got if kk == k] == list(range(per_thread))


async def test_run_in_executor():
    loop = asyncio.get_running_loop()
    main = threading.get_ident()
    res = await asyncio.wait_for(
        loop.run_in_executor(None, lambda a, b: (a + b, threading.get_ident()), 2, 3), 5
    )
    assert res[0] == 5
    assert res[1] != main


async def test_run_in_executor_exception_propagates():
    loop = asyncio.get_running_loop()

    def boom():
        raise ValueError("from thread")

    with pytest.raises(ValueError, match="from thread"):
        await asyncio.wait_for(loop.run_in_executor(None, boom), 5)


async def test_run_in_executor_many_concurrent():
    loop = asyncio.get_running_loop()
    results = await asyncio.wait_for(
        asyncio.gather(*(loop.run_in_executor(None, pow, i, 2) for i in range(50))), 10
    )
    assert results == [i * i for i in range(50)]


# -- running and lifecycle -----------------------------------------------------------


def test_uringloop_run_returns_value_and_closes_loop(fd_guard):
    seen = {}

    async def main():
        loop = asyncio.get_running_loop()
        seen["loop"] = loop
        await asyncio.sleep(0.001)
        return "value"

    assert uringloop.run(main()) == "value"
    assert isinstance(seen["loop"], uringloop.Loop)
    assert seen["loop"].is_closed()


def test_uringloop_run_propagates_exception_and_closes():
    seen = {}

    async def main():
        seen["loop"] = asyncio.get_running_loop()
        raise KeyError("inner")

    with pytest.raises(KeyError, match="inner"):
        uringloop.run(main())
    assert seen["loop"].is_closed()


def test_uringloop_run_debug_flag():
    async def main():
        return asyncio.get_running_loop().get_debug()

    assert uringloop.run(main(), debug=True) is True
    assert uringloop.run(main(), debug=False) is False


async def test_uringloop_run_inside_a_running_loop_raises(monkeypatch):
    """Like asyncio.run: RuntimeError at once, before any loop is made, with no warning
    (no "never awaited" coroutine, no unclosed loop), on whichever loop is running."""
    import inspect
    import warnings

    from uringloop import policy

    made = []
    monkeypatch.setattr(policy, "new_event_loop", lambda **kw: made.append(kw))

    async def inner():
        return 1

    coro = inner()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError, match=r"^uringloop\.run\(\) cannot be called "
                                               r"from a running event loop$"):
            uringloop.run(coro)
    assert made == []
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
    assert [str(w.message) for w in caught] == []


def test_uringloop_run_rejects_non_coroutine():
    with pytest.raises(ValueError):
        uringloop.run(lambda: None)  # type: ignore[arg-type]


def test_asyncio_runner_with_loop_factory():
    async def main(x):
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0)
        return x * 2, loop

    with asyncio.Runner(loop_factory=uringloop.new_event_loop) as runner:
        a, loop1 = runner.run(main(1))
        b, loop2 = runner.run(main(2))
    assert (a, b) == (2, 4)
    assert loop1 is loop2
    assert isinstance(loop1, uringloop.Loop)
    assert loop1.is_closed()


def test_event_loop_policy_and_install():
    old = asyncio.get_event_loop_policy()
    try:
        asyncio.set_event_loop_policy(uringloop.EventLoopPolicy())
        loop = asyncio.new_event_loop()
        try:
            assert isinstance(loop, uringloop.Loop)
        finally:
            loop.close()

        asyncio.set_event_loop_policy(None)
        uringloop.install()
        assert isinstance(asyncio.get_event_loop_policy(), uringloop.EventLoopPolicy)

        async def main():
            return type(asyncio.get_running_loop())

        assert asyncio.run(main()) is uringloop.Loop
    finally:
        asyncio.set_event_loop_policy(old)
    assert asyncio.get_event_loop_policy() is old


def test_new_event_loop_is_a_uringloop():
    loop = uringloop.new_event_loop()
    try:
        assert isinstance(loop, uringloop.Loop)
        assert isinstance(loop, asyncio.AbstractEventLoop)
        assert not loop.is_running() and not loop.is_closed()
    finally:
        loop.close()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ring_entries": 16385}, r"ring_entries must be a power of two from 1 to 32768"),
        ({"ring_entries": 0}, r"ring_entries must be a power of two from 1 to 32768, got 0"),
        ({"ring_entries": 1000}, r"ring_entries must be a power of two"),
        ({"ring_entries": -1}, r"ring_entries must be a power of two"),
        ({"ring_entries": 65536, "cq_entries": 65536}, r"ring_entries .* to 32768"),
        ({"cq_entries": 1024}, r"cq_entries must be a power of two from ring_entries \(4096\) "
                               r"to 65536, got 1024"),
        ({"ring_entries": 8, "cq_entries": 4}, r"from ring_entries \(8\) to 65536"),
        ({"cq_entries": 100000}, r"cq_entries must be a power of two"),
        ({"cq_entries": 0}, r"cq_entries must be a power of two"),
        ({"recv_buffers": 0}, r"recv_buffers must be a power of two from 1 to 32768"),
        ({"recv_buffers": 3}, r"recv_buffers must be a power of two"),
        ({"recv_buffers": 65536}, r"recv_buffers must be a power of two from 1 to 32768"),
        ({"recv_buffer_size": 0}, r"recv_buffer_size must be from 1 to 2147483647, got 0"),
        ({"recv_buffer_size": -5}, r"recv_buffer_size must be from 1 to 2147483647"),
        ({"recv_buffer_size": 1 << 31}, r"recv_buffer_size must be from 1 to 2147483647"),
        ({"recv_buffers": 32768, "recv_buffer_size": 1 << 17},
         r"recv_buffers x recv_buffer_size must be below 4 GiB, got 32768 x 131072"),
    ],
)
def test_loop_rejects_bad_sizes_with_value_error(kwargs, match, fd_guard):
    """Sizes out of range are the caller's mistake, not io_uring missing: ValueError with
    the allowed range (UnsupportedError would make fallback=True hide the bug)."""
    with pytest.raises(ValueError, match=match) as ei:
        uringloop.Loop(**kwargs)
    assert not isinstance(ei.value, OSError)
    import gc

    gc.collect()  # the half-built loop is collected quietly


def test_loop_rejects_non_int_sizes():
    with pytest.raises(TypeError, match="ring_entries must be an int, not float"):
        uringloop.Loop(ring_entries=4096.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="recv_buffer_size must be an int, not str"):
        uringloop.Loop(recv_buffer_size="64k")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ring_entries": 1, "cq_entries": 1, "recv_buffers": 1, "recv_buffer_size": 1},
        {"ring_entries": 32768, "cq_entries": 65536, "recv_buffers": 32768,
         "recv_buffer_size": 4096},
    ],
)
def test_loop_accepts_sizes_at_the_limits(kwargs):
    loop = uringloop.Loop(**kwargs)
    try:
        assert loop.run_until_complete(asyncio.sleep(0.001, "ok")) == "ok"
    finally:
        loop.close()


def test_closed_loop_raises(make_loop):
    loop = make_loop()
    loop.close()
    assert loop.is_closed()
    loop.close()  # idempotent
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        loop.run_until_complete(coro)
    coro.close()
    with pytest.raises(RuntimeError):
        loop.call_soon(lambda: None)
    with pytest.raises(RuntimeError):
        loop.call_later(1, lambda: None)
    with pytest.raises(RuntimeError):
        loop.call_soon_threadsafe(lambda: None)
    with pytest.raises(RuntimeError):
        loop.run_forever()


def test_close_while_running_raises(make_loop):
    loop = make_loop()
    errors = []

    def try_close():
        try:
            loop.close()
        except RuntimeError as exc:
            errors.append(exc)
        loop.stop()

    loop.call_soon(try_close)
    loop.run_forever()
    assert len(errors) == 1
    assert not loop.is_closed()
    # still usable after the failed close
    assert loop.run_until_complete(asyncio.sleep(0, "ok")) == "ok"
    loop.close()
    assert loop.is_closed()


def test_run_until_complete_while_running_raises(make_loop):
    loop = make_loop()

    async def main():
        coro = asyncio.sleep(0)
        try:
            with pytest.raises(RuntimeError):
                loop.run_until_complete(coro)
        finally:
            coro.close()
        return True

    assert loop.run_until_complete(main())


def test_stop_and_restart(make_loop):
    loop = make_loop()
    got = []
    loop.call_soon(got.append, 1)
    loop.call_soon(loop.stop)
    loop.call_soon(got.append, 2)
    loop.run_forever()
    assert got == [1, 2]
    loop.call_soon(got.append, 3)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert got == [1, 2, 3]


def test_close_releases_fds():
    # warm the capability cache (it opens and closes a throwaway ring once per process)
    uringloop.features()
    for _ in range(3):
        before = open_fds()
        loop = uringloop.new_event_loop()
        assert len(open_fds() - before) >= 1  # the ring (and self-pipe) are fds
        loop.run_until_complete(asyncio.sleep(0.001))
        loop.close()
        after = open_fds()
        assert after == before, after - before


def test_many_loops_created_and_closed(fd_guard):
    for _ in range(20):
        loop = uringloop.new_event_loop()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()


# -- errors in callbacks -------------------------------------------------------------


def test_callback_exception_goes_to_handler(make_loop):
    loop = make_loop()
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append((lp, ctx)))
    after = []

    def bad():
        raise ZeroDivisionError("boom")

    loop.call_soon(bad)
    loop.call_soon(after.append, "still running")
    loop.run_until_complete(asyncio.sleep(0.01))
    assert after == ["still running"]
    assert len(contexts) == 1
    lp, ctx = contexts[0]
    assert lp is loop
    assert isinstance(ctx["exception"], ZeroDivisionError)
    assert "message" in ctx


def test_timer_exception_goes_to_handler(make_loop):
    loop = make_loop()
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    loop.call_later(0.001, lambda: 1 / 0)
    loop.run_until_complete(asyncio.sleep(0.02))
    assert [type(c["exception"]) for c in contexts] == [ZeroDivisionError]


def test_default_exception_handler_logs(make_loop, caplog):
    loop = make_loop()
    loop.call_soon(lambda: 1 / 0)
    with caplog.at_level("ERROR", logger="asyncio"):
        loop.run_until_complete(asyncio.sleep(0.01))
    assert any("ZeroDivisionError" in (r.exc_text or "") or r.exc_info for r in caplog.records)


# -- signals ---------------------------------------------------------------------------


async def test_add_and_remove_signal_handler():
    loop = asyncio.get_running_loop()
    got = loop.create_future()
    calls = []

    def handler(tag):
        calls.append(tag)
        if not got.done():
            got.set_result(tag)

    loop.add_signal_handler(signal.SIGUSR1, handler, "usr1")
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert await asyncio.wait_for(got, 5) == "usr1"
        # a second signal also arrives
        got = loop.create_future()
        os.kill(os.getpid(), signal.SIGUSR1)
        await asyncio.wait_for(got, 5)
        assert calls == ["usr1", "usr1"]
    finally:
        assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert loop.remove_signal_handler(signal.SIGUSR1) is False
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


async def test_signal_handler_while_blocked_on_timer():
    """A signal must wake a loop whose only pending work is a long timer."""
    loop = asyncio.get_running_loop()
    got = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR2, lambda: got.done() or got.set_result(True))
    timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR2))
    try:
        timer.start()
        assert await asyncio.wait_for(got, 5) is True
    finally:
        timer.join(5)
        loop.remove_signal_handler(signal.SIGUSR2)


async def test_add_signal_handler_rejects_bad_input():
    loop = asyncio.get_running_loop()

    async def coro_fn():
        pass

    with pytest.raises(TypeError):
        loop.add_signal_handler(signal.SIGUSR1, coro_fn)
    with pytest.raises((ValueError, TypeError)):
        loop.add_signal_handler(100000, lambda: None)
    with pytest.raises(RuntimeError):
        loop.add_signal_handler(signal.SIGKILL, lambda: None)
    assert not loop.remove_signal_handler(signal.SIGUSR1)


def test_close_removes_signal_handlers(make_loop):
    loop = make_loop()
    loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, None)
    loop.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


# -- introspection (uringloop only) ----------------------------------------------------


def test_features_shape():
    f = uringloop.features()
    assert isinstance(f, dict)
    for key in ("kernel", "setup_flags", "features", "ops", "send_zc",
                "send_zc_report_usage"):
        assert key in f, key
    assert f["kernel"] == os.uname().release
    assert isinstance(f["setup_flags"], list)
    assert all(isinstance(s, str) for s in f["setup_flags"])
    assert isinstance(f["features"], list)
    assert isinstance(f["ops"], dict) and f["ops"]
    assert all(isinstance(k, str) and isinstance(v, bool) for k, v in f["ops"].items())
    # the loop cannot work without these
    for op in ("SEND", "RECV", "ACCEPT", "CONNECT", "ASYNC_CANCEL"):
        assert f["ops"][op] is True, op
    assert isinstance(f["send_zc"], bool)
    assert isinstance(f["send_zc_report_usage"], bool)
    assert f["send_zc"] == f["ops"]["SEND_ZC"]
    if f["send_zc_report_usage"]:
        assert f["send_zc"]
    # a second call is stable
    assert uringloop.features()["ops"] == f["ops"]


@pytest.mark.asyncio(loop_factories=["uringloop"])
async def test_stats_shape_and_counters_increase():
    loop = asyncio.get_running_loop()
    s0 = loop.stats()
    for key in ("enters", "submitted", "completions", "inflight", "zerocopy_sends",
                "zerocopy_notifications", "copied_sends", "zerocopy_fallback_sends",
                "setup_flags", "recv_buffers_in_use"):
        assert key in s0, key
    assert s0["recv_buffers_in_use"] == 512 // 8  # an eighth of the default at first
    for key in ("enters", "submitted", "completions", "inflight", "zerocopy_sends",
                "zerocopy_notifications", "copied_sends", "zerocopy_fallback_sends"):
        assert isinstance(s0[key], int) and s0[key] >= 0, key
    assert isinstance(s0["setup_flags"], list)

    # do some real I/O so the ring is used
    async def echo(r, w):
        w.write(await r.read(100))
        await w.drain()
        w.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"ping")
    assert await asyncio.wait_for(r.read(100), 5) == b"ping"
    w.close()
    await w.wait_closed()
    server.close()
    await server.wait_closed()

    s1 = loop.stats()
    assert s1["enters"] > s0["enters"]
    assert s1["submitted"] > s0["submitted"]
    assert s1["completions"] > s0["completions"]
    assert s1["completions"] >= s0["completions"] + 4  # accept, connect, sends, recvs


@pytest.mark.asyncio(loop_factories=["uringloop"])
async def test_running_loop_is_uringloop():
    loop = asyncio.get_running_loop()
    assert isinstance(loop, uringloop.Loop)


def _can_make_netns() -> str | None:
    """None if this process may create network namespaces, else what is missing."""
    import shutil

    if os.geteuid() != 0:
        return "root (to create a network namespace)"
    if shutil.which("ip") is None:
        return "the ip tool (iproute2)"
    return None


@pytest.mark.skipif(_can_make_netns() is not None, reason=f"needs {_can_make_netns()}")
def test_loop_starts_in_a_network_namespace_without_loopback():
    """A fresh namespace has lo down: the capability probe must not need 127.0.0.1."""
    import subprocess
    import sys

    name = f"ultest{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"needs network namespaces: {made.stderr.decode().strip()}")
    try:
        code = (
            "import asyncio, uringloop\n"
            "async def plain():\n"
            "    await asyncio.sleep(0)\n"
            "    return 7\n"
            "print(uringloop.run(plain()))\n"
        )
        out = subprocess.run(
            ["ip", "netns", "exec", name, sys.executable, "-c", code],
            capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "7"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
