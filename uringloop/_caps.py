"""What this kernel's io_uring can do: opcode probe, setup flags, and trial sends."""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass
from typing import Any

from ._ring import F_MORE, F_NOTIF, Ring
from ._uring import ffi, lib

__all__ = ["Capabilities", "capabilities", "features"]

OP_NAMES = {
    6: "POLL_ADD", 9: "SENDMSG", 10: "RECVMSG", 13: "ACCEPT", 14: "ASYNC_CANCEL",
    15: "LINK_TIMEOUT", 16: "CONNECT", 19: "CLOSE", 22: "READ", 23: "WRITE", 26: "SEND",
    27: "RECV", 30: "SPLICE", 34: "SHUTDOWN", 40: "MSG_RING", 45: "SOCKET", 47: "SEND_ZC",
    48: "SENDMSG_ZC", 49: "READ_MULTISHOT", 50: "WAITID", 56: "BIND", 57: "LISTEN",
    58: "RECV_ZC",
}
FEATURE_NAMES = [
    "SINGLE_MMAP", "NODROP", "SUBMIT_STABLE", "RW_CUR_POS", "CUR_PERSONALITY", "FAST_POLL",
    "POLL_32BITS", "SQPOLL_NONFIXED", "EXT_ARG", "NATIVE_WORKERS", "RSRC_TAGS", "CQE_SKIP",
    "LINKED_FILE", "REG_REG_RING", "RECVSEND_BUNDLE", "MIN_TIMEOUT", "RW_ATTR", "NO_IOWAIT",
]
_SEND_ZC, _SENDMSG_ZC = 47, 48
_REPORT_USAGE = 1 << 3
_TRIAL_UD = 2  # the multishot receive trial (the zero-copy trial uses 1)


@dataclass(frozen=True)
class Capabilities:
    """The io_uring abilities the loop adapts to."""

    ops: frozenset[int]
    send_zc: bool
    sendmsg_zc: bool
    send_zc_report_usage: bool
    #: multishot receive (Linux 6.0), which every loop needs: probed, not inferred
    recv_multishot: bool = True


_cached: Capabilities | None = None


def _kernel_at_least(major: int, minor: int) -> bool:
    """Whether the running kernel's release (``uname -r``) is at least major.minor."""
    parts = []
    for piece in os.uname().release.split(".")[:2]:
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        parts.append(int(digits) if digits else 0)
    while len(parts) < 2:
        parts.append(0)
    return (parts[0], parts[1]) >= (major, minor)


def _trial_report_usage(ring: Any) -> bool:
    """Send one byte with SEND_ZC + REPORT_USAGE on a loopback UDP pair (EINVAL: no)."""
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        try:
            b.bind(("127.0.0.1", 0))
            a.connect(b.getsockname())
        except OSError:
            # No usable loopback (e.g. a fresh network namespace whose lo is down): go by
            # the kernel version, as the usage report came with Linux 6.2.
            return _kernel_at_least(6, 2)
        buf = ffi.new("char[1]", b"x")
        ud = ffi.new("uint64_t[4]")
        res = ffi.new("int32_t[4]")
        flags = ffi.new("uint64_t[4]")
        if lib.ul_prep_send_zc(ring, a.fileno(), 1, buf, 1, 0, _REPORT_USAGE, 0) < 0:
            return False
        ok: bool | None = None
        for _ in range(8):
            n = lib.ul_run(ring, 1, 1_000_000_000, ud, res, flags, 4)
            for i in range(max(n, 0)):
                if flags[i] & F_NOTIF:
                    return bool(ok)
                ok = res[i] >= 0
                if not flags[i] & F_MORE:
                    return bool(ok)
            if n < 0:
                return False
        return bool(ok)
    finally:
        a.close()
        b.close()


def _trial_recv_multishot(ring: Any) -> int:
    """Queue a multishot receive on an idle socket: 0 if the kernel takes it, else the
    errno (EINVAL before Linux 6.0, which knows no ``IORING_RECV_MULTISHOT``).

    This ring has no provided buffers, so a kernel that takes the request answers it at
    once with ENOBUFS (or leaves it armed until the ring is destroyed): no waiting.
    """
    a, b = socket.socketpair()
    try:
        rc = lib.ul_prep_recv_multishot(ring, a.fileno(), _TRIAL_UD, 0)
        if rc < 0:
            return int(-rc)
        ud = ffi.new("uint64_t[4]")
        res = ffi.new("int32_t[4]")
        flags = ffi.new("uint64_t[4]")
        n = lib.ul_run(ring, 0, 0, ud, res, flags, 4)
        if n < 0:
            return int(-n)
        for i in range(n):
            if ud[i] == _TRIAL_UD and res[i] == -errno.EINVAL:
                return errno.EINVAL
        return 0
    finally:
        a.close()
        b.close()


def capabilities(ring: Ring | None = None) -> Capabilities:
    """Probe once per process (a throwaway ring), then answer from the cache.

    Raises :class:`~uringloop.errors.UnsupportedError` (and caches nothing) when this
    process cannot run a loop: ``io_uring_setup`` fails, or the kernel has no multishot
    receive.
    """
    global _cached
    if _cached is not None:
        return _cached
    from .errors import RECV_MULTISHOT, fake_errno, fake_setup_errno, unsupported_from_errno

    if fake_setup_errno():  # test hook: io_uring_setup "fails"
        raise unsupported_from_errno(fake_setup_errno())
    err = ffi.new("int *")
    ptr = lib.ul_ring_create(8, 16, err)
    if ptr == ffi.NULL:
        raise unsupported_from_errno(err[0])
    try:
        sup = ffi.new("unsigned char[256]")
        lib.ul_probe_ops(ptr, sup, 256)
        ops = frozenset(i for i in range(256) if sup[i])
        usage = _SEND_ZC in ops and _trial_report_usage(ptr)
        # test hook: the probe "fails" as on a kernel without multishot receive
        recv_err = fake_errno(RECV_MULTISHOT) or _trial_recv_multishot(ptr)
    finally:
        lib.ul_ring_destroy(ptr)
    if recv_err:
        raise unsupported_from_errno(recv_err, RECV_MULTISHOT)
    _cached = Capabilities(ops, _SEND_ZC in ops, _SENDMSG_ZC in ops, usage)
    return _cached


def features() -> dict[str, Any]:
    """What this kernel's io_uring supports, as uringloop sees it."""
    caps = capabilities()
    ring = Ring(entries=8, cq_entries=16, recv_buffers=1, recv_buffer_size=4096)
    try:
        setup = ring.setup_flag_names()
        feats = [name for i, name in enumerate(FEATURE_NAMES) if ring.features & (1 << i)]
    finally:
        ring.close()
    return {
        "kernel": os.uname().release,
        "setup_flags": setup,
        "features": feats,
        "ops": {name: op in caps.ops for op, name in sorted(OP_NAMES.items())},
        "send_zc": caps.send_zc,
        "sendmsg_zc": caps.sendmsg_zc,
        "send_zc_report_usage": caps.send_zc_report_usage,
        "recv_multishot": caps.recv_multishot,  # probed (a loop cannot run without it)
    }
