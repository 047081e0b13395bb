"""Exceptions raised by uringloop."""

from __future__ import annotations

import errno
import os

__all__ = ["UnsupportedError", "fake_setup_errno", "unsupported_from_errno"]


class UnsupportedError(OSError):
    """io_uring cannot be used in this process: the message names the cause and the remedy."""


_CAUSES = {
    errno.ENOSYS: (
        "the kernel has no io_uring (built without CONFIG_IO_URING, older than 5.1), "
        "or a seccomp profile (podman, CRI-O) answers io_uring_setup with ENOSYS",
        "run on Linux 5.19 or newer with io_uring enabled, or allow the io_uring_setup, "
        "io_uring_enter and io_uring_register syscalls in the container's seccomp profile",
    ),
    errno.EPERM: (
        "io_uring is switched off: sysctl kernel.io_uring_disabled is 2 (or 1 and this "
        "process lacks CAP_SYS_ADMIN and is not in kernel.io_uring_group), or a seccomp "
        "profile (Docker 25+ default) blocks io_uring_setup",
        "set 'sysctl kernel.io_uring_disabled=0', add the user to kernel.io_uring_group, "
        "or run the container with a seccomp profile that allows io_uring_setup, "
        "io_uring_enter and io_uring_register",
    ),
    errno.ENOMEM: (
        "the kernel could not allocate the ring (on kernels up to 5.11 rings are charged "
        "to RLIMIT_MEMLOCK)",
        "raise 'ulimit -l' or use a newer kernel",
    ),
    errno.EINVAL: (
        "the kernel rejected every ring setup uringloop knows (kernel older than 5.19?)",
        "run on Linux 5.19 or newer",
    ),
}


def fake_setup_errno() -> int:
    """Test hook: the errno named by ``URINGLOOP_FAKE_SETUP_ERRNO`` (``EPERM``, ``ENOSYS``,
    or a number), or 0. When set, every ring creation fails as if ``io_uring_setup`` had
    failed with it, so the unavailable-io_uring paths can be tested on any kernel."""
    value = os.environ.get("URINGLOOP_FAKE_SETUP_ERRNO", "").strip()
    if not value:
        return 0
    err = int(value) if value.isdigit() else getattr(errno, value.upper(), 0)
    if not isinstance(err, int) or err <= 0:
        raise ValueError(f"URINGLOOP_FAKE_SETUP_ERRNO={value!r} is not an errno")
    return err


def unsupported_from_errno(err: int) -> UnsupportedError:
    """Build the one clear error for a failed ``io_uring_setup``."""
    cause, remedy = _CAUSES.get(
        err, ("io_uring_setup failed unexpectedly", "check the kernel log and limits")
    )
    msg = (
        f"io_uring is unavailable: io_uring_setup failed with {errno.errorcode.get(err, err)} "
        f"({os.strerror(err)}). Likely cause: {cause}. Remedy: {remedy}. "
        "Until then, use the stdlib loop (asyncio.new_event_loop)."
    )
    return UnsupportedError(err, msg)
