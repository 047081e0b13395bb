"""Run by test_udp_unlinked.py inside ``unshare -n`` (root): loopback behind a tbf qdisc,
so the sender's send buffer really fills and a send can hit EAGAIN. Sends many chains
(plain sendto() or zero-copy pool batches) to a receiver that reads only afterwards and
prints a JSON line: datagrams received, order inversions among them, chains prepped
unlinked, the largest SIOCOUTQ seen, SO_SNDBUF. ``force`` makes every chain unlinked
(the send-buffer room check bypassed): the control that shows the links are needed."""

from __future__ import annotations

import asyncio
import fcntl
import json
import socket
import struct
import subprocess
import sys
import termios

import uringloop
from uringloop.transports import datagram as dg

KIND, SNDBUF, FORCE = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "force"
subprocess.run("ip link set lo up && tc qdisc add dev lo root tbf rate 200mbit burst 64k "
               "latency 400ms", shell=True, check=True)
if FORCE:
    real = dg.lib

    class _Lib:
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def ul_sock_send_room(self, fd: int) -> int:
            return 1 << 40

    dg.lib = _Lib()


async def main() -> None:
    loop = asyncio.get_running_loop()
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
    rx.bind(("127.0.0.1", 0))
    ct, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                remote_addr=rx.getsockname())
    sock = ct.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
    fd = sock.fileno()
    outq = 0
    n, size = 2048, 1200
    pool = None
    if KIND == "zc":
        ct.set_zerocopy_mode("always")
        pool = loop.zerocopy_buffers(256, size)
    futs = []
    for c in range(n // 32):
        if pool is None:
            for j in range(32):
                ct.sendto((c * 32 + j).to_bytes(4, "big") * (size // 4))
        else:
            bufs = pool.acquire_many(32, size)
            for j, b in enumerate(bufs):
                b.buffer[:4] = (c * 32 + j).to_bytes(4, "big")
            futs.append(ct.sendto_zerocopy_many(bufs))
        await asyncio.sleep(0)
        outq = max(outq, struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0" * 4))[0])
        if pool is not None and len(futs) >= 6:
            await futs.pop(0)
    for f in futs:
        await f
    while ct.get_write_buffer_size():
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)
    rx.setblocking(False)
    got = []
    try:
        while True:
            got.append(int.from_bytes(rx.recv(65536)[:4], "big"))
    except BlockingIOError:
        pass
    inv = sum(1 for a, b in zip(got, got[1:], strict=False) if b < a)
    print(json.dumps({"got": len(got), "inversions": inv, "unlinked": ct._unlinked_chains,
                      "chains": n // 32, "max_outq": outq,
                      "sndbuf": sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)}))
    ct.close()
    if pool is not None:
        await asyncio.sleep(0.05)
        pool.close()


uringloop.run(main())
