"""Serve one large file to many clients at once with io_uring reads and zero-copy sends.

Each connection streams the whole file: a registered pool buffer is filled with an
io_uring ``READ_FIXED`` (``buf.read_from``), then handed to ``write_zerocopy(buf[:n])``
(``SEND_ZC`` with ``IORING_RECVSEND_FIXED_BUF``). The buffer goes back to the pool by
itself when the kernel's notification arrives, so a connection keeps up to ``--window``
buffers in flight and never touches a buffer the kernel still holds. The protocol is
trivial: the server sends an 8-byte length, then the file, then closes.

    python examples/zerocopy_file_server.py FILE --port 9000
    python examples/zerocopy_client.py ...            # or examples/zerocopy_file_client.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct

import uringloop

CHUNK = 256 * 1024


async def serve_file(path: str, host: str = "127.0.0.1", port: int = 0, *,
                     chunk: int = CHUNK, window: int = 4, pool_buffers: int = 64,
                     mode: str | None = None) -> asyncio.AbstractServer:
    """Start serving ``path``; returns the server (its pool is ``server.zc_pool``)."""
    loop = asyncio.get_running_loop()
    pool = loop.zerocopy_buffers(pool_buffers, chunk)  # grows when many clients are busy
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tr = writer.transport
        if mode is not None:
            tr.set_zerocopy_mode(mode)  # type: ignore[attr-defined]
        try:
            writer.write(struct.pack("!Q", size))
            inflight: set[asyncio.Future] = set()
            off = 0
            while off < size:
                buf = await pool.acquire_wait()
                n = await buf.read_from(fd, off, min(chunk, size - off))
                if n <= 0:
                    buf.release()
                    raise OSError("short read")
                inflight.add(tr.write_zerocopy(buf[:n]))  # type: ignore[attr-defined]
                off += n
                if len(inflight) >= window:
                    done, inflight = await asyncio.wait(inflight,
                                                        return_when=asyncio.FIRST_COMPLETED)
                    for f in done:
                        f.result()
            for f in inflight:
                await f
            writer.close()
            await writer.wait_closed()
        except (ConnectionError, OSError):
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    server.zc_pool = pool  # type: ignore[attr-defined]
    server.zc_fd = fd  # type: ignore[attr-defined]
    return server


async def close_file_server(server: asyncio.AbstractServer) -> None:
    server.close()
    await server.wait_closed()
    server.zc_pool.close()  # type: ignore[attr-defined]
    os.close(server.zc_fd)  # type: ignore[attr-defined]


async def _main(args: argparse.Namespace) -> None:
    server = await serve_file(args.file, args.host, args.port, chunk=args.chunk_kib * 1024,
                              window=args.window)
    print("serving", args.file, "on", server.sockets[0].getsockname())
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--chunk-kib", type=int, default=256)
    p.add_argument("--window", type=int, default=4)
    uringloop.run(_main(p.parse_args()))
