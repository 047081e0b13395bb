"""Where CPython's own asyncio tests give another result on uringloop than on the stdlib loop.

Keys are test ids without the ``test.test_asyncio.`` prefix, or fnmatch patterns over
them (``test_events.*EventLoopTests.test_foo`` covers the epoll, poll and select
variants); an entry covers the ids of every Python version it matches, unless its key
ends with " @3.11" (or " @3.11,3.12"): then it applies on those versions only. Each value
says why; "by design" and "stdlib internals" differences stay, "bug" ones go when fixed.

``KNOWN_DIFFERENCES``: the test runs on uringloop and fails (or skips itself) there while
it passes on the stdlib loop. An entry whose tests all pass on both loops in a run is
stale and fails tests/test_cpython_asyncio.py, unless its reason starts with ``flaky:``.

``NOT_RUN``: the test is not run on uringloop at all, because it would block until the
runner's per-test timeout. ``URINGLOOP_CPYTHON_RUN_ALL=1`` runs them anyway (and then
checks these entries for staleness too).
"""

from __future__ import annotations

_SIGNAL_MOCKS = (
    "stdlib internals: patches asyncio.unix_events.signal with a mock and checks the "
    "calls _UnixSelectorEventLoop makes; uringloop's signal handling (loop.py) calls the "
    "real signal module"
)
_SOCK_SENDFILE_NATIVE = (
    "stdlib internals: calls the selector loop's private _sock_sendfile_native_impl() / "
    "mocks os.sendfile, which uringloop does not have"
)

KNOWN_DIFFERENCES: dict[str, str] = {
    # test_events
    "test_events.*EventLoopTests.test_internal_fds":
        "stdlib internals: the test skips itself, 'loop is not a BaseSelectorEventLoop'",
    "test_events.*EventLoopTests.test_datagram_send_to_non_listening_address":
        "completion order (reported; the test is new in 3.13): a datagram sent by "
        "sendto() arrives inside the next select(), and datagram_received() runs before "
        "the task scheduled just before it has created the future it completes",
    # test_server
    "test_server.TestServer2.test_close_clients":
        "timing: after Server.close_clients() the test allows exactly two loop "
        "iterations for wait_closed() to finish; uringloop's close() waits for the "
        "cancelled in-flight receive to complete before connection_lost(), which takes "
        "one or two iterations more",
    "test_server.TestServer2.test_abort_clients":
        "timing: as test_close_clients, after Server.abort_clients()",
    # test_sock_lowlevel
    "test_sock_lowlevel.*EventLoopTests.test_sendto_blocking":
        "by design: passes a Mock(socket) whose sendto() raises BlockingIOError once; "
        "uringloop never calls sock.sendto() (one io_uring SENDMSG on the fd), and the "
        "mock's family attribute is a Mock, so the address cannot be encoded",
    # test_subprocess
    "test_subprocess.GenericWatcherTests.test_create_subprocess_fails_with_inactive_watcher":
        "by design: uringloop watches children with pidfds and ignores child watchers, so "
        "an inactive (mock) watcher does not make subprocess creation fail",
    # test_unix_events
    "test_unix_events.SelectorEventLoopSignalTests.test_add_signal_handler_install_error*":
        _SIGNAL_MOCKS,
    "test_unix_events.SelectorEventLoopSignalTests.test_add_signal_handler_setup_error":
        _SIGNAL_MOCKS,
    "test_unix_events.SelectorEventLoopSignalTests.test_close": _SIGNAL_MOCKS,
    "test_unix_events.SelectorEventLoopSignalTests.test_close_on_finalizing": _SIGNAL_MOCKS,
    "test_unix_events.SelectorEventLoopSignalTests.test_remove_signal_handler*": _SIGNAL_MOCKS,
    "test_unix_events.SelectorEventLoopUnixSockSendfileTests.test_sock_sendfile_*":
        _SOCK_SENDFILE_NATIVE,
    "test_unix_events.SelectorEventLoopUnixSocketTests.test_create_unix_server_bind_error":
        "stdlib internals: patches asyncio.unix_events.socket to make bind() fail; "
        "uringloop's create_unix_server makes its socket with the real socket module",
    "test_unix_events.*.test_create_unix_server_path_stream_bittype @3.11":
        "by design: uringloop unlinks a Unix server's socket file on Server.close() on "
        "every Python version (3.13's cleanup_socket=True); the test unlinks it itself "
        "afterwards and gets FileNotFoundError",
}

NOT_RUN: dict[str, str] = {
    "test_events.*EventLoopTests.test_write_pipe":
        "by design: the test writes b'1' to a write pipe transport (started at once), reads "
        "it with a blocking os.read(), then writes b'2345' and blocks in os.read() again "
        "without running the loop: the first WRITE's completion has not been reaped, so the "
        "second write waits in the queue for the loop to run (the stdlib's os.write() sends "
        "it at once) and the read never returns",
    "test_events.*EventLoopTests.test_write_pty":
        "by design: as test_write_pipe, on a pty (blocking os.read() before the loop runs)",
}
