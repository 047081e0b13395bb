"""Exceptions raised by uringloop."""

from __future__ import annotations

import errno
import os

__all__ = [
    "MIN_KERNEL", "UnsupportedError", "fake_errno", "fake_setup_errno",
    "unsupported_from_errno",
]

#: The oldest Linux that can run a loop: the loop's wake-up socket and its stream sockets
#: receive with multishot ``IORING_OP_RECV`` (6.0) into a provided-buffer ring (5.19).
MIN_KERNEL = "6.0"

# The steps of creating a loop that fail when this kernel or process cannot use io_uring.
SETUP = "io_uring_setup"
PBUF_RING = "io_uring_register(IORING_REGISTER_PBUF_RING)"
RECV_MULTISHOT = "a multishot receive (IORING_OP_RECV with IORING_RECV_MULTISHOT)"


class UnsupportedError(OSError):
    """io_uring cannot be used in this process: the message names the cause and the remedy."""


_NEW_KERNEL = f"run on Linux {MIN_KERNEL} or newer"
_SECCOMP_REGISTER = (
    "a seccomp profile blocks io_uring_register",
    "allow the io_uring_setup, io_uring_enter and io_uring_register syscalls in the "
    "container's seccomp profile",
)

_CAUSES = {
    (SETUP, errno.ENOSYS): (
        "the kernel has no io_uring (built without CONFIG_IO_URING, older than 5.1), "
        "or a seccomp profile (podman, CRI-O) answers io_uring_setup with ENOSYS",
        f"{_NEW_KERNEL} with io_uring enabled, or allow the io_uring_setup, "
        "io_uring_enter and io_uring_register syscalls in the container's seccomp profile",
    ),
    (SETUP, errno.EPERM): (
        "io_uring is switched off: sysctl kernel.io_uring_disabled is 2 (or 1 and this "
        "process lacks CAP_SYS_ADMIN and is not in kernel.io_uring_group), or a seccomp "
        "profile (Docker 25+ default) blocks io_uring_setup",
        "set 'sysctl kernel.io_uring_disabled=0', add the user to kernel.io_uring_group, "
        "or run the container with a seccomp profile that allows io_uring_setup, "
        "io_uring_enter and io_uring_register",
    ),
    (SETUP, errno.ENOMEM): (
        "the kernel could not allocate the ring (out of memory; kernels up to 5.11 also "
        "charged rings to RLIMIT_MEMLOCK)",
        "free memory or create the loop with smaller ring_entries and cq_entries",
    ),
    (SETUP, errno.EINVAL): (
        "the kernel rejected every ring setup uringloop knows: it is too old "
        f"(uringloop needs Linux {MIN_KERNEL} or newer)",
        _NEW_KERNEL,
    ),
    (PBUF_RING, errno.EINVAL): (
        "the kernel has no provided-buffer rings (Linux 5.19), which the loop's receives "
        f"need (uringloop needs Linux {MIN_KERNEL} or newer)",
        _NEW_KERNEL,
    ),
    (PBUF_RING, errno.EPERM): _SECCOMP_REGISTER,
    (PBUF_RING, errno.ENOSYS): _SECCOMP_REGISTER,
    (RECV_MULTISHOT, errno.EINVAL): (
        "the kernel has no multishot receive (Linux 6.0), which the loop's wake-up socket "
        f"and its stream sockets need (uringloop needs Linux {MIN_KERNEL} or newer)",
        _NEW_KERNEL,
    ),
}

_FAKE_STEPS = {"setup": SETUP, "pbuf": PBUF_RING, "recv_multishot": RECV_MULTISHOT}


def fake_errno(step: str = SETUP) -> int:
    """Test hook: ``URINGLOOP_FAKE_SETUP_ERRNO=[STEP:]ERRNO`` makes one step of creating a
    loop fail with ``ERRNO`` (``EPERM``, ``ENOSYS``, ``EINVAL``, case-insensitive, or a
    number). ``STEP`` is ``setup`` (the default: every ``io_uring_setup``), ``pbuf`` (the
    provided-buffer ring registration, as on kernels before 5.19) or ``recv_multishot``
    (the multishot receive probe, as on kernels before 6.0). Returns the errno if the
    variable names ``step``, else 0; a malformed value raises ``ValueError``."""
    value = os.environ.get("URINGLOOP_FAKE_SETUP_ERRNO", "").strip()
    if not value:
        return 0
    name, sep, errtext = value.rpartition(":")
    key = name.strip().lower() if sep else "setup"
    if key not in _FAKE_STEPS:
        raise ValueError(
            f"URINGLOOP_FAKE_SETUP_ERRNO={value!r}: unknown step {name!r}; "
            f"expected one of {', '.join(_FAKE_STEPS)}"
        )
    errtext = errtext.strip()
    err = int(errtext) if errtext.isdigit() else getattr(errno, errtext.upper(), 0)
    if not isinstance(err, int) or err <= 0:
        raise ValueError(f"URINGLOOP_FAKE_SETUP_ERRNO={value!r} is not an errno")
    return err if _FAKE_STEPS[key] == step else 0


def fake_setup_errno() -> int:
    """Test hook: the errno ``URINGLOOP_FAKE_SETUP_ERRNO`` gives ``io_uring_setup``, or 0
    (see :func:`fake_errno`)."""
    return fake_errno(SETUP)


def unsupported_from_errno(err: int, step: str = SETUP) -> UnsupportedError:
    """Build the one clear error for a failed step of creating a loop (by default
    ``io_uring_setup``; see the step names in this module)."""
    cause, remedy = _CAUSES.get(
        (step, err), (f"{step} failed unexpectedly", "check the kernel log and limits")
    )
    msg = (
        f"io_uring is unavailable: {step} failed with {errno.errorcode.get(err, err)} "
        f"({os.strerror(err)}). Likely cause: {cause}. Remedy: {remedy}. "
        "Until then, use the stdlib loop (asyncio.new_event_loop, or fallback=True)."
    )
    return UnsupportedError(err, msg)
