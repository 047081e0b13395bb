"""Datagram chains (plain sendto() chains and zero-copy pool batches) go out unlinked
when the send buffer has room for the whole chain, hard-linked otherwise, and in order
either way (transports/datagram.py, ``_UNLINKED``)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import uringloop

aio = pytest.mark.asyncio(loop_factories=["uringloop"])
T = 10
HELPER = Path(__file__).with_name("_udp_order_netns.py")
needs_zc = pytest.mark.skipif(not uringloop.features()["send_zc"], reason="no SEND_ZC")


def _can_netns() -> bool:
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("tc")
                                 and shutil.which("ip")):
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


needs_netns = pytest.mark.skipif(not _can_netns(), reason="needs root, unshare -n, tc")


def _run_helper(kind: str, sndbuf: int, mode: str) -> dict[str, int]:
    out = subprocess.run(["unshare", "-n", sys.executable, str(HELPER), kind, str(sndbuf), mode],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@needs_netns
@pytest.mark.parametrize("kind", ["plain", pytest.param("zc", marks=needs_zc)])
def test_order_holds_when_the_send_buffer_fills(kind):
    """A tbf qdisc keeps the skbs charged, so a small SO_SNDBUF really fills: every chain
    stays linked and what arrives is in order; with a larger one, chains go unlinked
    while there is room (and linked once there is not), still in order. The receiver
    reads only at the end (UDP may drop): the order of what arrived is checked."""
    small = _run_helper(kind, 32768, "auto")
    assert small["got"] > 0 and small["max_outq"] > 0  # SIOCOUTQ sees the queued skbs
    assert small["inversions"] == 0 and small["unlinked"] == 0, small
    large = _run_helper(kind, 1_000_000, "auto")
    assert large["got"] > 0 and large["inversions"] == 0, large
    assert large["unlinked"] > 0, large


@needs_netns
@pytest.mark.parametrize("kind", ["plain", pytest.param("zc", marks=needs_zc)])
def test_control_unlinked_chains_reorder_when_the_buffer_is_full(kind):
    """The control: bypass the room check and unlinked chains on a full send buffer do
    reorder (a send that hits EAGAIN is parked while later ones go out): the check above
    is what keeps the order."""
    forced = _run_helper(kind, 32768, "force")
    assert forced["unlinked"] == forced["chains"]
    assert forced["inversions"] > 0, forced


async def _pair(sndbuf: int | None):
    loop = asyncio.get_running_loop()
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # read after, outside the loop
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    rx.bind(("127.0.0.1", 0))
    ct, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                remote_addr=rx.getsockname())
    if sndbuf is not None:
        ct.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    return rx, ct


def _received(rx: socket.socket) -> list[int]:
    rx.setblocking(False)
    got = []
    try:
        while True:
            got.append(int.from_bytes(rx.recv(65536)[:4], "big"))
    except BlockingIOError:
        pass
    rx.close()
    return got


async def _drain(ct) -> None:
    for _ in range(T * 100):
        if not ct.get_write_buffer_size():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("write buffer not drained")


@aio
@pytest.mark.parametrize("sndbuf", [None, 4096])
async def test_plain_chains_unlinked_with_room(sndbuf, fd_guard):
    """Default SO_SNDBUF: the chains take the unlinked path; a tiny one: linked."""
    rx, ct = await _pair(sndbuf)
    for c in range(10):
        for j in range(32):
            ct.sendto((c * 32 + j).to_bytes(4, "big") * 250)
        await asyncio.sleep(0)
    await _drain(ct)
    if sndbuf is None:
        assert ct._unlinked_chains == 10
    else:
        assert ct._unlinked_chains == 0
    got = _received(rx)
    assert got == sorted(got) and len(got) > 0
    if sndbuf is None:
        assert got == list(range(320))
    ct.close()


@needs_zc
@aio
@pytest.mark.parametrize("sndbuf", [1 << 20, 4096])
async def test_pool_batches_unlinked_with_room(sndbuf, fd_guard):
    """Zero-copy datagrams count two pages more each: 32 of them need a larger
    SO_SNDBUF than the default to go unlinked."""
    loop = asyncio.get_running_loop()
    pool = loop.zerocopy_buffers(64, 1000)
    rx, ct = await _pair(sndbuf)
    ct.set_zerocopy_mode("always")
    for c in range(10):
        bufs = pool.acquire_many(32, 1000)
        for j, b in enumerate(bufs):
            b.buffer[:4] = (c * 32 + j).to_bytes(4, "big")
        await asyncio.wait_for(ct.sendto_zerocopy_many(bufs), T)
    if sndbuf > 4096:
        assert ct._unlinked_chains == 10
    else:
        assert ct._unlinked_chains == 0
    got = _received(rx)
    assert got == sorted(got) and len(got) > 0
    if sndbuf > 4096:
        assert got == list(range(320))
    ct.close()
    await asyncio.sleep(0.01)
    pool.close()


@aio
async def test_unix_datagram_chains_stay_linked(fd_guard):
    """AF_UNIX datagram sends also block on the peer's receive queue, which SIOCOUTQ and
    SO_SNDBUF do not show: those chains are always linked."""
    loop = asyncio.get_running_loop()
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "rx")
    b = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    b.bind(path)
    ct, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                family=socket.AF_UNIX, remote_addr=path)
    b.setblocking(False)
    got: list[int] = []
    # chains of 8: within net.unix.max_dgram_qlen (10 by default), so no send is retried
    # from poll (a retried AF_UNIX SENDMSG arrives empty: a separate problem)
    for c in range(3):
        for j in range(8):
            ct.sendto((c * 8 + j).to_bytes(4, "big") * 10)
        for _ in range(T * 100):
            try:
                got.append(int.from_bytes(b.recv(100)[:4], "big"))
            except BlockingIOError:
                if len(got) == 8 * (c + 1):
                    break
                await asyncio.sleep(0.005)
    assert got == list(range(24)), str(got)
    assert ct._unlinked_chains == 0
    b.close()
    ct.close()
    await asyncio.sleep(0.01)
    shutil.rmtree(tmp)
