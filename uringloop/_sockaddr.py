"""Encode and decode C ``struct sockaddr`` bytes for the operations that take one."""

from __future__ import annotations

import socket
import struct
from typing import Any

__all__ = ["encode", "decode", "SOCKADDR_MAX"]

SOCKADDR_MAX = 128  # sizeof(struct sockaddr_storage)
_UNIX_PATH_MAX = 108


def encode(family: int, address: Any) -> bytes:
    """``address`` as the kernel wants it; ValueError/TypeError/OSError like connect()."""
    if family == socket.AF_INET:
        host, port = address[0], address[1]
        return struct.pack("=H", family) + struct.pack("!H", port) + socket.inet_pton(
            family, host
        ) + bytes(8)
    if family == socket.AF_INET6:
        host, port = address[0], address[1]
        flowinfo = address[2] if len(address) > 2 else 0
        scope_id = address[3] if len(address) > 3 else 0
        if "%" in host:
            host, _, scope = host.partition("%")
            scope_id = scope_id or socket.if_nametoindex(scope)
        return (
            struct.pack("=H", family)
            + struct.pack("!HI", port, flowinfo)
            + socket.inet_pton(family, host)
            + struct.pack("=I", scope_id)
        )
    if family == socket.AF_UNIX:
        path = address.encode() if isinstance(address, str) else bytes(address)
        if len(path) >= _UNIX_PATH_MAX + (1 if path[:1] == b"\0" else 0):
            raise OSError(36, "AF_UNIX path too long")
        tail = b"" if path[:1] == b"\0" else b"\0"
        return struct.pack("=H", family) + path + tail
    raise OSError(97, f"address family {family} is not supported by uringloop")


def decode(raw: bytes) -> Any:
    """The Python form of a kernel-filled sockaddr (as socket.accept would return it)."""
    (family,) = struct.unpack_from("=H", raw)
    if family == socket.AF_INET:
        (port,) = struct.unpack_from("!H", raw, 2)
        return (socket.inet_ntop(family, raw[4:8]), port)
    if family == socket.AF_INET6:
        port, flowinfo = struct.unpack_from("!HI", raw, 2)
        (scope_id,) = struct.unpack_from("=I", raw, 24)
        return (socket.inet_ntop(family, raw[8:24]), port, flowinfo, scope_id)
    if family == socket.AF_UNIX:
        path = raw[2:]
        if path[:1] == b"\0":
            return path
        return path.split(b"\0", 1)[0].decode(errors="surrogateescape")
    return raw
