"""``uringloop.Loop``: an asyncio event loop whose I/O is io_uring.

The loop is a :class:`asyncio.BaseEventLoop`. Its ``_run_once`` calls
``self._selector.select(timeout)`` once per iteration; here that call queues the sends of
every transport written to during the iteration, then submits and waits in one
``io_uring_enter`` and dispatches the completions straight to their handlers (bound
methods of transports and operations), so nothing is left for ``_process_events``.
"""

from __future__ import annotations

import asyncio
import errno
import os
import selectors
import signal
import socket
from asyncio import base_events, constants, events, sslproto
from asyncio.log import logger
from typing import TYPE_CHECKING, Any

from . import _caps
from ._accept import Acceptor
from ._datagram import DatagramMixin
from ._readiness import ReadinessMixin
from ._ring import DATA_SHIFT, F_MORE, Ring
from ._sendfile import SendfileMixin
from ._sockops import SockOpsMixin
from ._subprocess import SubprocessMixin
from ._unix import UnixMixin
from ._uring import ffi, lib
from .transports.stream import StreamTransport
from .zcpool import ZeroCopyLoopMixin

if TYPE_CHECKING:
    from collections.abc import Callable

    from typing_extensions import TypeVarTuple, Unpack

    from .transports.datagram import DatagramTransport

    _Ts = TypeVarTuple("_Ts")

__all__ = ["Loop"]


class _UringSelector:
    """The object ``BaseEventLoop._run_once`` polls: flush writes, enter, dispatch."""

    __slots__ = ("_loop", "_ring")

    def __init__(self, loop: Loop) -> None:
        self._loop = loop
        self._ring = loop._ring

    def select(self, timeout: float | None) -> tuple[()]:
        loop = self._loop
        dirty = loop._dirty
        if dirty:
            loop._dirty = []
            for transport in dirty:
                transport._flush()
        ring = self._ring
        if ring.reap(timeout):
            # Completions are dispatched here, before the callbacks already in the ready
            # queue (the stdlib queues I/O events behind them). Deferring them behind the
            # queue was tried: it delays connection_lost() by one iteration, which keeps
            # closed transports (and their SSL contexts) alive when the loop stops right
            # after a close (CPython's test_ssl memory-leak tests caught it).
            ring.dispatch()
        return ()

    def close(self) -> None:
        pass


_malloc_primed = False
_MALLOC_PRIME_BYTES = (32 << 20) - (64 << 10)
_RAW_ALLOC = ffi.new_allocator(should_clear_after_alloc=False)


def _prime_malloc() -> None:
    """Let glibc's malloc adapt to large buffers before the first request, not after.

    Received data becomes ``bytes`` of up to a receive buffer (256 KiB) and coalesced
    writes can be larger. With glibc's start-up thresholds (mmap 128 KiB, trim 128 KiB)
    every burst of such objects frees memory at the heap top, which glibc trims and the
    next request faults back in (the cliff that makes the stdlib loop slow until its first
    connection closes). Freeing one mmapped chunk just under glibc's ceiling for dynamic
    thresholds raises them to about 32 MiB (mmap) and 64 MiB (trim); no mallopt() call,
    so glibc's own tuning stays on. The chunk is never touched, so it costs no RSS.

    The price is that up to ~64 MiB of freed heap may stay mapped instead of going back
    to the system at once. ``URINGLOOP_MALLOC_PRIME=0`` turns this off; a number sets the
    chunk size in bytes (larger than 32 MiB has no effect with glibc).
    """
    global _malloc_primed
    if _malloc_primed:
        return
    _malloc_primed = True
    setting = os.environ.get("URINGLOOP_MALLOC_PRIME", "")
    try:
        size = int(setting) if setting else _MALLOC_PRIME_BYTES
    except ValueError:
        size = _MALLOC_PRIME_BYTES
    if size > 0:
        chunk = _RAW_ALLOC("char[]", size)  # malloc() without clearing: no page is touched
        del chunk


class Loop(
    SockOpsMixin, SendfileMixin, UnixMixin, ReadinessMixin, DatagramMixin, SubprocessMixin,
    ZeroCopyLoopMixin, base_events.BaseEventLoop,
):
    """An asyncio event loop on io_uring. Create it with :func:`uringloop.new_event_loop`."""

    if TYPE_CHECKING:
        # BaseEventLoop internals used here that typeshed does not declare.
        _debug: bool
        _internal_fds: int

        def _check_closed(self) -> None: ...
        def _add_callback_signalsafe(self, handle: events.Handle) -> None: ...

    def __init__(
        self, *, recv_buffers: int = 512, recv_buffer_size: int = 262144,
        ring_entries: int = 4096, cq_entries: int = 16384,
    ) -> None:
        super().__init__()
        _prime_malloc()
        try:
            # Sizes first: the kernel's own EINVAL for them would read as io_uring missing.
            for name, value, low, high in (
                ("ring_entries", ring_entries, 1, 32768),  # IORING_MAX_ENTRIES
                ("cq_entries", cq_entries, ring_entries, 65536),  # IORING_MAX_CQ_ENTRIES
                ("recv_buffers", recv_buffers, 1, 32768),  # provided-buffer ring limit
                ("recv_buffer_size", recv_buffer_size, 1, (1 << 31) - 1),  # int32 result
            ):
                if not isinstance(value, int):
                    raise TypeError(f"{name} must be an int, not {type(value).__name__}")
                if name == "recv_buffer_size":
                    if not low <= value <= high:
                        raise ValueError(f"{name} must be from {low} to {high}, got {value}")
                elif not low <= value <= high or value & (value - 1):
                    at_least = f"ring_entries ({low})" if name == "cq_entries" else low
                    raise ValueError(
                        f"{name} must be a power of two from {at_least} to {high}, got {value}"
                    )
            if recv_buffers * recv_buffer_size > 0xFFFFFFFF:  # offsets are 32-bit
                raise ValueError(
                    f"recv_buffers x recv_buffer_size must be below 4 GiB, got "
                    f"{recv_buffers} x {recv_buffer_size}"
                )
            # UnsupportedError if this process cannot run a loop: io_uring_setup fails, no
            # multishot receive (probed once per process), no provided-buffer ring
            self._caps = _caps.capabilities()
            self._ring = Ring(entries=ring_entries, cq_entries=cq_entries,
                              recv_buffers=recv_buffers, recv_buffer_size=recv_buffer_size)
        except BaseException:
            self._closed = True  # half-built: BaseEventLoop.__del__ must not call close()
            raise
        self._ring.on_error = self._on_handler_error
        self._dirty: list[StreamTransport | DatagramTransport] = []
        self._selector = _UringSelector(self)
        self._acceptors: dict[int, Acceptor] = {}
        #: fd -> socket transport using it (add_reader & co. refuse those fds, as asyncio)
        self._transports: dict[int, Any] = {}  # entries leave in _call_connection_lost
        self._signal_handlers: dict[int, events.Handle] = {}
        self._zc_counters = [0, 0, 0, 0]  # sends, notifications, copied, plain fallbacks
        self._make_self_pipe()

    # -- self-pipe: call_soon_threadsafe wake-ups and signal numbers -------------------

    def _make_self_pipe(self) -> None:
        self._ssock, self._csock = socket.socketpair()
        self._ssock.setblocking(False)
        self._csock.setblocking(False)
        self._internal_fds += 1
        self._self_ud = self._ring.register(self._on_self_pipe)
        self._self_armed = False
        self._arm_self_pipe()

    def _arm_self_pipe(self) -> None:
        lib.ul_prep_recv_multishot(self._ring.ptr, self._ssock.fileno(), self._self_ud, 0)
        self._self_armed = True

    def _on_self_pipe(self, res: int, flags: int) -> None:
        if not flags & F_MORE:
            self._self_armed = False
        if res > 0:
            off = flags >> DATA_SHIFT
            for signum in self._ring.pbuf[off : off + res].tobytes():
                if signum:
                    self._handle_signal(signum)
        if not self._self_armed and self._ssock is not None and res != 0:
            self._arm_self_pipe()

    def _write_to_self(self) -> None:
        csock = self._csock
        if csock is None:
            return
        try:
            csock.send(b"\0")
        except OSError:
            if self._debug:
                logger.debug("Fail to write a null byte into the self-pipe socket",
                             exc_info=True)

    def _close_self_pipe(self) -> None:
        for sock in (self._ssock, self._csock):
            if sock is not None:
                sock.close()
        self._ssock = self._csock = None  # type: ignore[assignment]
        self._internal_fds -= 1

    def _ensure_fd_no_transport(self, fd: Any) -> None:
        fileno = fd if isinstance(fd, int) else selectors._fileobj_to_fd(fd)  # type: ignore[attr-defined]
        transport = self._transports.get(fileno)
        if transport is not None and not transport.is_closing():
            raise RuntimeError(f"File descriptor {fd!r} is used by transport {transport!r}")

    def _process_events(self, event_list: Any) -> None:
        pass  # completions were dispatched inside select()

    def _on_handler_error(self, exc: BaseException, handler: Any) -> None:
        self.call_exception_handler(
            {"message": f"Exception in io_uring completion handler {handler!r}",
             "exception": exc}
        )

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        for sig in list(self._signal_handlers):
            self.remove_signal_handler(sig)
        super().close()
        self._close_self_pipe()
        for acceptor in self._acceptors.values():
            acceptor.stop()
        self._acceptors.clear()
        self._close_zc_pools()
        self._ring.close()

    def stats(self) -> dict[str, Any]:
        """Counters for this loop: ring calls, completions, zero-copy activity."""
        c = self._ring.counters()
        zc = self._zc_counters
        return {
            **c,
            "inflight": len(self._ring.handlers),
            "recv_buffers_in_use": self._ring.recv_buffers_in_use,
            "zerocopy_sends": zc[0],
            "zerocopy_notifications": zc[1],
            "copied_sends": zc[2],
            "zerocopy_fallback_sends": zc[3],
            "setup_flags": self._ring.setup_flag_names(),
        }

    # -- transports --------------------------------------------------------------------

    def _make_socket_transport(
        self, sock: socket.socket, protocol: Any, waiter: Any = None, *,
        extra: Any = None, server: Any = None,
    ) -> StreamTransport:
        return StreamTransport(self, sock, protocol, waiter, extra, server)

    def _make_ssl_transport(
        self, rawsock: socket.socket, protocol: Any, sslcontext: Any, waiter: Any = None, *,
        server_side: bool = False, server_hostname: str | None = None, extra: Any = None,
        server: Any = None, ssl_handshake_timeout: float | None = constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout: float | None = constants.SSL_SHUTDOWN_TIMEOUT,
        call_connection_made: bool = True,
    ) -> Any:
        ssl_protocol = sslproto.SSLProtocol(
            self, protocol, sslcontext, waiter, server_side, server_hostname,
            # typeshed has int | None; asyncio's own default is the float constant
            ssl_handshake_timeout=ssl_handshake_timeout,  # type: ignore[arg-type]
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        StreamTransport(self, rawsock, ssl_protocol, extra=extra, server=server)
        return ssl_protocol._app_transport

    def _start_serving(
        self, protocol_factory: Any, sock: socket.socket, sslcontext: Any = None,
        server: Any = None, backlog: int = 100,
        ssl_handshake_timeout: float | None = constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout: float | None = constants.SSL_SHUTDOWN_TIMEOUT,
    ) -> None:
        fd = sock.fileno()
        old = self._acceptors.pop(fd, None)
        if old is not None:
            old.stop()
        acceptor = Acceptor(self, protocol_factory, sock, sslcontext, server,
                            ssl_handshake_timeout, ssl_shutdown_timeout)
        self._acceptors[fd] = acceptor
        acceptor.start()

    def _stop_serving(self, sock: socket.socket) -> None:
        acceptor = self._acceptors.pop(sock.fileno(), None)
        if acceptor is not None:
            acceptor.stop()
            # The pending accept holds a reference to the socket until its cancellation
            # completes; shutting the listener down refuses new connections right now.
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        sock.close()

    async def start_tls(self, transport: Any, protocol: Any, sslcontext: Any,
                        **kwargs: Any) -> Any:
        """Upgrade a connection to TLS, as asyncio's, once queued plain writes are sent.

        The stdlib's transport has sent what it could by the time ``start_tls`` is
        called; a uringloop transport may still hold this iteration's writes (and have
        paused the old protocol for them). Draining first keeps the protocol swap clean.
        """
        if (isinstance(transport, StreamTransport) and not transport.is_closing()
                and (transport._queue or transport._send_inflight)):
            waiter = transport._make_empty_waiter()
            try:
                await waiter
            finally:
                transport._reset_empty_waiter()
        return await super().start_tls(transport, protocol, sslcontext, **kwargs)

    async def _accept_connection2(
        self, protocol_factory: Any, conn: socket.socket, extra: Any, sslcontext: Any = None,
        server: Any = None, ssl_handshake_timeout: float | None = constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout: float | None = constants.SSL_SHUTDOWN_TIMEOUT,
    ) -> None:
        protocol = transport = None
        try:
            protocol = protocol_factory()
            waiter = self.create_future()
            transport = self._make_ssl_transport(
                conn, protocol, sslcontext, waiter=waiter, server_side=True, extra=extra,
                server=server, ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout,
            )
            try:
                await waiter
            except BaseException:
                transport.close()
                raise
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            if self._debug:
                context = {"message": "Error on transport creation for incoming connection",
                           "exception": exc}
                if protocol is not None:
                    context["protocol"] = protocol
                if transport is not None:
                    context["transport"] = transport
                self.call_exception_handler(context)

    # -- signals -----------------------------------------------------------------------

    def _check_signal(self, sig: int) -> None:
        if not isinstance(sig, int):
            raise TypeError(f"sig must be an int, not {sig!r}")
        if sig not in signal.valid_signals():
            raise ValueError(f"invalid signal number {sig}")

    def add_signal_handler(
        self, sig: int, callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts]
    ) -> None:
        """Run ``callback(*args)`` in the loop when signal ``sig`` arrives."""
        if asyncio.iscoroutine(callback) or asyncio.iscoroutinefunction(callback):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        self._check_signal(sig)
        self._check_closed()
        try:
            # set_wakeup_fd raises ValueError outside the main thread.
            signal.set_wakeup_fd(self._csock.fileno())
        except (ValueError, OSError) as exc:
            raise RuntimeError(str(exc)) from None
        handle = events.Handle(callback, args, self, None)
        self._signal_handlers[sig] = handle
        try:
            signal.signal(sig, _sighandler_noop)
            signal.siginterrupt(sig, False)
        except OSError as exc:
            del self._signal_handlers[sig]
            if not self._signal_handlers:
                try:
                    signal.set_wakeup_fd(-1)
                except (ValueError, OSError):
                    pass
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught") from None
            raise

    def _handle_signal(self, sig: int) -> None:
        handle = self._signal_handlers.get(sig)
        if handle is None:
            return
        if handle._cancelled:
            self.remove_signal_handler(sig)
        else:
            self._add_callback_signalsafe(handle)

    def remove_signal_handler(self, sig: int) -> bool:
        """Remove the handler for ``sig``; True if one was installed."""
        self._check_signal(sig)
        try:
            del self._signal_handlers[sig]
        except KeyError:
            return False
        handler: Any = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(sig, handler)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught") from None
            raise
        if not self._signal_handlers:
            try:
                signal.set_wakeup_fd(-1)
            except (ValueError, OSError) as exc:
                logger.info("set_wakeup_fd(-1) failed: %s", exc)
        return True


def _sighandler_noop(signum: int, frame: Any) -> None:
    """The real work happens in the loop, woken through set_wakeup_fd."""

