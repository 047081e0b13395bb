"""Pipe transports and subprocesses, on uringloop and asyncio."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys

import pytest

T = 15  # seconds: the bound on every wait in this file
PIPE = asyncio.subprocess.PIPE


def rand_bytes(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


# -- subprocesses ----------------------------------------------------------------------


async def test_cat_echo_communicate(fd_guard):
    proc = await asyncio.create_subprocess_exec("cat", stdin=PIPE, stdout=PIPE)
    payload = rand_bytes(100_000, 1)
    out, err = await asyncio.wait_for(proc.communicate(payload), T)
    assert out == payload
    assert err is None
    assert proc.returncode == 0


async def test_large_output_exact(fd_guard):
    size = 6 * 1024 * 1024
    code = (
        "import random, sys;"
        f"sys.stdout.buffer.write(random.Random(5).randbytes({size}))"
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdout=PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), T)
    assert out == rand_bytes(size, 5)
    assert proc.returncode == 0


async def test_large_input_and_output_through_cat(fd_guard):
    payload = rand_bytes(4 * 1024 * 1024, 9)
    proc = await asyncio.create_subprocess_exec("cat", stdin=PIPE, stdout=PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(payload), T)
    assert out == payload
    assert proc.returncode == 0


async def test_returncode_of_exit_7(fd_guard):
    proc = await asyncio.create_subprocess_exec("sh", "-c", "exit 7")
    assert await asyncio.wait_for(proc.wait(), T) == 7
    assert proc.returncode == 7


async def test_shell_with_stdout_and_stderr(fd_guard):
    proc = await asyncio.create_subprocess_shell(
        "echo out; echo err >&2; exit 3", stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), T)
    assert (out, err, proc.returncode) == (b"out\n", b"err\n", 3)


async def test_stderr_to_stdout(fd_guard):
    proc = await asyncio.create_subprocess_shell(
        "echo a; echo b >&2", stdout=PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), T)
    assert sorted(out.split()) == [b"a", b"b"]


async def test_kill(fd_guard):
    proc = await asyncio.create_subprocess_exec("sleep", "30")
    await asyncio.sleep(0.05)
    proc.kill()
    assert await asyncio.wait_for(proc.wait(), T) == -signal.SIGKILL


async def test_terminate_with_pipes(fd_guard):
    proc = await asyncio.create_subprocess_exec("cat", stdin=PIPE, stdout=PIPE)
    proc.terminate()
    assert await asyncio.wait_for(proc.wait(), T) == -signal.SIGTERM
    assert await asyncio.wait_for(proc.stdout.read(), T) == b""
    proc.stdin.close()
    await proc.stdin.wait_closed()


async def test_send_signal(fd_guard):
    proc = await asyncio.create_subprocess_exec("sleep", "30")
    proc.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(proc.wait(), T) == -signal.SIGINT


async def test_stdin_only(tmp_path, fd_guard):
    target = tmp_path / "out.bin"
    proc = await asyncio.create_subprocess_exec(
        "sh", "-c", f"cat > {target}", stdin=PIPE
    )
    payload = rand_bytes(300_000, 2)
    proc.stdin.write(payload)
    await asyncio.wait_for(proc.stdin.drain(), T)
    proc.stdin.close()
    await asyncio.wait_for(proc.stdin.wait_closed(), T)
    assert await asyncio.wait_for(proc.wait(), T) == 0
    assert target.read_bytes() == payload


async def test_streams_line_by_line(fd_guard):
    proc = await asyncio.create_subprocess_exec("cat", stdin=PIPE, stdout=PIPE)
    for i in range(20):
        proc.stdin.write(f"line {i}\n".encode())
        await proc.stdin.drain()
        assert await asyncio.wait_for(proc.stdout.readline(), T) == f"line {i}\n".encode()
    proc.stdin.close()
    assert await asyncio.wait_for(proc.stdout.read(), T) == b""
    assert await asyncio.wait_for(proc.wait(), T) == 0


async def test_child_exits_before_reading_stdin(fd_guard):
    proc = await asyncio.create_subprocess_exec("true", stdin=PIPE)
    # writing a lot to a pipe nobody reads: communicate() swallows BrokenPipeError
    await asyncio.wait_for(proc.communicate(rand_bytes(1 << 20)), T)
    assert proc.returncode == 0


async def test_many_concurrent_processes(fd_guard):
    async def one(i):
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", f"echo {i}; exit {i % 5}", stdout=PIPE
        )
        out, _ = await proc.communicate()
        return out, proc.returncode

    results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(20))), T)
    assert results == [(f"{i}\n".encode(), i % 5) for i in range(20)]


async def test_subprocess_protocol_low_level(fd_guard):
    loop = asyncio.get_running_loop()
    events = []
    exited = loop.create_future()

    class Proto(asyncio.SubprocessProtocol):
        def pipe_data_received(self, fd, data):
            events.append((fd, data))

        def process_exited(self):
            events.append("exited")

        def connection_lost(self, exc):  # after the exit and every pipe closed
            exited.set_result(exc)

    transport, _ = await loop.subprocess_exec(Proto, "sh", "-c", "printf hi; exit 4",
                                              stdin=None, stderr=None)
    assert await asyncio.wait_for(exited, T) is None
    assert transport.get_returncode() == 4
    assert "exited" in events
    transport.close()
    assert b"".join(e[1] for e in events if e != "exited" and e[0] == 1) == b"hi"


async def test_exec_missing_program_raises(fd_guard):
    with pytest.raises(FileNotFoundError):
        await asyncio.create_subprocess_exec("/nonexistent/program-xyz")


# -- pipes -----------------------------------------------------------------------------


class ReadCollector(asyncio.Protocol):
    def __init__(self, loop):
        self.data = bytearray()
        self.eof = loop.create_future()
        self.lost = loop.create_future()
        self.lost_calls = 0
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        assert not self.eof.done()
        self.data += data

    def eof_received(self):
        self.eof.set_result(None)

    def connection_lost(self, exc):
        self.lost_calls += 1
        if not self.lost.done():
            self.lost.set_result(exc)


class WriteProto(asyncio.Protocol):
    def __init__(self, loop):
        self.lost = loop.create_future()
        self.lost_calls = 0
        self.paused = 0
        self.resumed = 0
        self.resume_fut = None

    def connection_made(self, transport):
        self.transport = transport

    def pause_writing(self):
        self.paused += 1

    def resume_writing(self):
        self.resumed += 1

    def connection_lost(self, exc):
        self.lost_calls += 1
        if not self.lost.done():
            self.lost.set_result(exc)


async def test_read_pipe_byte_exact(fd_guard):
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    rf = os.fdopen(r, "rb", buffering=0)
    tr, proto = await loop.connect_read_pipe(lambda: ReadCollector(loop), rf)
    payload = rand_bytes(2_000_000, 4)

    def writer():
        with os.fdopen(w, "wb") as f:
            f.write(payload)

    await asyncio.wait_for(loop.run_in_executor(None, writer), T)
    await asyncio.wait_for(proto.eof, T)
    assert await asyncio.wait_for(proto.lost, T) is None
    assert bytes(proto.data) == payload
    await asyncio.sleep(0)
    assert proto.lost_calls == 1
    assert rf.closed


async def test_write_pipe_byte_exact_and_flow_control(fd_guard):
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    wf = os.fdopen(w, "wb", buffering=0)
    tr, proto = await loop.connect_write_pipe(lambda: WriteProto(loop), wf)
    tr.set_write_buffer_limits(high=64 * 1024)
    payload = rand_bytes(3_000_000, 6)
    for i in range(0, len(payload), 100_000):
        tr.write(payload[i : i + 100_000])
    assert proto.paused == 1
    assert 0 < tr.get_write_buffer_size() <= len(payload)  # the stdlib writes some at once

    def reader():
        chunks = []
        with os.fdopen(r, "rb") as f:
            while chunk := f.read(1 << 16):
                chunks.append(chunk)
        return b"".join(chunks)

    fut = loop.run_in_executor(None, reader)
    tr.close()
    assert await asyncio.wait_for(proto.lost, T) is None
    assert await asyncio.wait_for(fut, T) == payload
    assert proto.resumed == 1
    assert proto.lost_calls == 1
    assert wf.closed


async def test_read_pipe_pause_resume(fd_guard):
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    tr, proto = await loop.connect_read_pipe(lambda: ReadCollector(loop), os.fdopen(r, "rb"))
    os.write(w, b"first")
    while len(proto.data) < 5:
        await asyncio.sleep(0.001)
    tr.pause_reading()
    assert not tr.is_reading()
    os.write(w, b"second")
    await asyncio.sleep(0.05)
    assert bytes(proto.data) == b"first"
    tr.resume_reading()
    assert tr.is_reading()

    async def until(n):
        while len(proto.data) < n:
            await asyncio.sleep(0.001)

    await asyncio.wait_for(until(11), T)
    assert bytes(proto.data) == b"firstsecond"
    os.close(w)
    await asyncio.wait_for(proto.eof, T)
    await asyncio.wait_for(proto.lost, T)


async def test_read_pipe_close_while_reading(fd_guard):
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    tr, proto = await loop.connect_read_pipe(lambda: ReadCollector(loop), os.fdopen(r, "rb"))
    await asyncio.sleep(0.01)
    tr.close()
    assert tr.is_closing()
    assert await asyncio.wait_for(proto.lost, T) is None
    tr.close()
    await asyncio.sleep(0.02)
    assert proto.lost_calls == 1
    assert not proto.eof.done()
    # the writer now sees a pipe without readers
    with pytest.raises(BrokenPipeError):
        for _ in range(100):
            os.write(w, b"x" * 65536)
    os.close(w)


async def test_write_pipe_peer_closed(fd_guard):
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    tr, proto = await loop.connect_write_pipe(lambda: WriteProto(loop), os.fdopen(w, "wb"))
    await asyncio.sleep(0.01)
    os.close(r)  # idle transport: learns it from the peer poll
    assert await asyncio.wait_for(proto.lost, T) is None
    assert proto.lost_calls == 1
    tr.write(b"ignored")  # writes after loss are dropped, not raised


async def test_write_pipe_broken_with_pending_data(fd_guard):
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    tr, proto = await loop.connect_write_pipe(lambda: WriteProto(loop), os.fdopen(w, "wb"))
    tr.write(b"y" * 2_000_000)  # more than a pipe holds
    await asyncio.sleep(0.02)
    os.close(r)
    exc = await asyncio.wait_for(proto.lost, T)
    assert isinstance(exc, BrokenPipeError)
    assert proto.lost_calls == 1


async def test_write_pipe_abort(fd_guard):
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    tr, proto = await loop.connect_write_pipe(lambda: WriteProto(loop), os.fdopen(w, "wb"))
    tr.write(b"z" * 1_000_000)
    await asyncio.sleep(0.01)
    tr.abort()
    assert tr.get_write_buffer_size() == 0
    assert await asyncio.wait_for(proto.lost, T) is None
    assert proto.lost_calls == 1
    os.close(r)


async def test_write_eof(fd_guard):
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    tr, proto = await loop.connect_write_pipe(lambda: WriteProto(loop), os.fdopen(w, "wb"))
    assert tr.can_write_eof()
    tr.write(b"before eof")
    tr.write_eof()
    assert tr.is_closing()
    await asyncio.wait_for(proto.lost, T)
    with os.fdopen(r, "rb") as f:
        assert f.read() == b"before eof"


async def test_pipe_transports_reject_regular_files(tmp_path, fd_guard):
    loop = asyncio.get_running_loop()
    path = tmp_path / "f"
    path.write_bytes(b"x")
    with open(path, "rb") as f:
        with pytest.raises(ValueError):
            await loop.connect_read_pipe(asyncio.Protocol, f)
    with open(path, "wb") as f:
        with pytest.raises(ValueError):
            await loop.connect_write_pipe(asyncio.Protocol, f)


async def test_streams_over_pipes(fd_guard):
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    reader = asyncio.StreamReader()
    rtr, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(r, "rb")
    )
    wtr, wproto = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(w, "wb"))
    wtr.write(b"hello\nworld\n")
    assert await asyncio.wait_for(reader.readline(), T) == b"hello\n"
    assert await asyncio.wait_for(reader.readline(), T) == b"world\n"
    wtr.close()
    assert await asyncio.wait_for(reader.read(), T) == b""
    await asyncio.sleep(0.01)
    rtr.close()
    await asyncio.sleep(0.01)


# -- uringloop's child watching --------------------------------------------------------


@pytest.mark.asyncio(loop_factories=["uringloop"])
async def test_thread_fallback_without_pidfd(monkeypatch, fd_guard):
    loop = asyncio.get_running_loop()
    monkeypatch.delattr(os, "pidfd_open", raising=False)
    proc = await asyncio.create_subprocess_exec("sh", "-c", "echo fb; exit 9", stdout=PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), T)
    assert (out, proc.returncode) == (b"fb\n", 9)
    assert not loop._pidfd_watches


@pytest.mark.asyncio(loop_factories=["uringloop"])
async def test_pidfd_watch_released(fd_guard):
    loop = asyncio.get_running_loop()
    base = loop.stats()["inflight"]
    proc = await asyncio.create_subprocess_exec("sleep", "30")
    assert len(loop._pidfd_watches) == 1
    proc.kill()
    await asyncio.wait_for(proc.wait(), T)
    assert not loop._pidfd_watches
    await asyncio.sleep(0)
    assert loop.stats()["inflight"] == base


def test_loop_close_with_running_child_releases_pidfd(fd_guard):
    import uringloop

    from .conftest import open_fds

    loop = uringloop.new_event_loop()
    before = open_fds()
    proc = loop.run_until_complete(asyncio.create_subprocess_exec("sleep", "30"))
    assert len(open_fds() - before) == 1  # the pidfd
    popen = proc._transport._proc
    proc.kill()
    proc._transport.close()
    loop.close()
    assert open_fds() - before == set()
    popen.wait(T)  # reap it unless Popen.poll() in close() already did


@pytest.mark.asyncio(loop_factories=["uringloop"])
async def test_read_pipe_eagain_falls_back_to_poll(fd_guard):
    """Kernels that honour O_NONBLOCK end a pipe READ with -EAGAIN: poll, then read."""
    import errno

    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    tr, proto = await loop.connect_read_pipe(lambda: ReadCollector(loop), os.fdopen(r, "rb"))
    tr.pause_reading()  # cancels the READ in flight
    while tr._inflight:
        await asyncio.sleep(0.001)
    tr._paused = False
    tr._on_read(-errno.EAGAIN, 0)  # as if the kernel said EAGAIN
    assert tr._inflight and tr._poll_ud
    await asyncio.sleep(0.01)
    os.write(w, b"after eagain")
    os.close(w)
    await asyncio.wait_for(proto.eof, T)
    assert bytes(proto.data) == b"after eagain"
    await asyncio.wait_for(proto.lost, T)


@pytest.mark.asyncio(loop_factories=["uringloop"])
async def test_write_pipe_eagain_falls_back_to_poll(fd_guard):
    import errno

    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    tr, proto = await loop.connect_write_pipe(lambda: WriteProto(loop), os.fdopen(w, "wb"))
    tr._queue.append(b"queued")
    tr._size += 6
    tr._send_len = 6
    tr._on_write(-errno.EAGAIN, 0)  # as if the kernel said EAGAIN
    assert tr._inflight and tr._poll_ud
    tr.close()
    await asyncio.wait_for(proto.lost, T)
    with os.fdopen(r, "rb") as f:
        assert f.read() == b"queued"
