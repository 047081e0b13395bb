"""Run one module of CPython's own asyncio tests on the stdlib loop or on uringloop.

    python tests/cpython/runner.py MODULE LOOP OUTFILE [--timeout S] [--exclude FILE]
                                   [--only PATTERN]...

MODULE is a module of the running interpreter's ``test.test_asyncio`` package (for example
``test_events``); the tests are read from the installed interpreter, never copied here.
LOOP is ``stdlib`` or ``uringloop``. For ``uringloop``, before the test module is imported,
every way those tests make a loop is pointed at uringloop: the default policy's loop
factory, ``asyncio.SelectorEventLoop`` (the test classes that build
``asyncio.SelectorEventLoop(selector)`` get a ``uringloop.Loop`` and their selector is
ignored), ``asyncio.EventLoop`` (3.13+) and the current policy
(``uringloop.EventLoopPolicy``). Since the default policy class itself makes uringloop
loops, a module's ``set_event_loop_policy(None)`` keeps them.

OUTFILE receives one JSON object a line: ``{"id": ..., "start": true}`` when a test starts,
then ``{"id": ..., "outcome": ..., "detail": ...}`` with outcome one of pass, fail, error,
skip, xfail, xpass. A test running longer than ``--timeout`` seconds makes faulthandler
dump the stacks (to OUTFILE + ".stacks") and end the process; the driver
(tests/test_cpython_asyncio.py) then records it as a timeout and runs the rest again with
``--exclude`` (a file of test ids, one a line, not to run).
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import fnmatch
import json
import logging
import os
import sys
import time
import traceback
import unittest
import warnings

PACKAGE = "test.test_asyncio"


def install_uringloop() -> None:
    import asyncio.unix_events as unix_events

    import uringloop

    class SelectorEventLoop(uringloop.Loop):
        """uringloop.Loop under the name the tests build; the selector is ignored."""

        def __init__(self, selector=None):
            super().__init__()

    SelectorEventLoop.__qualname__ = "uringloop.Loop"
    asyncio.SelectorEventLoop = SelectorEventLoop
    unix_events.SelectorEventLoop = SelectorEventLoop
    # set_event_loop_policy(None) makes a DefaultEventLoopPolicy: its loops are ours too.
    unix_events._UnixDefaultEventLoopPolicy._loop_factory = SelectorEventLoop
    if hasattr(unix_events, "EventLoop"):  # 3.13+: asyncio.EventLoop
        asyncio.EventLoop = SelectorEventLoop
        unix_events.EventLoop = SelectorEventLoop
    asyncio.set_event_loop_policy(uringloop.EventLoopPolicy())


def iter_tests(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from iter_tests(item)
        else:
            yield item


def short_id(test) -> str:
    tid = test.id()
    prefix = PACKAGE + "."
    return tid[len(prefix):] if tid.startswith(prefix) else tid


class Result(unittest.TestResult):
    def __init__(self, out, timeout, stacks):
        super().__init__()
        self.out = out
        self.timeout = timeout
        self.stacks = stacks
        self.outcome: dict[str, tuple[str, str]] = {}
        self._t0 = time.monotonic()  # 3.12+ may call stopTest() alone, for a skipped class

    def _emit(self, record):
        self.out.write(json.dumps(record) + "\n")
        self.out.flush()

    def _set(self, test, outcome, detail=""):
        tid = short_id(test)
        old = self.outcome.get(tid)
        # A failing subtest or a failing tearDown after a pass makes the test fail.
        if old is None or old[0] in ("pass", "skip"):
            self.outcome[tid] = (outcome, detail)

    def startTest(self, test):
        super().startTest(test)
        self._emit({"id": short_id(test), "start": True})
        self._t0 = time.monotonic()
        faulthandler.dump_traceback_later(self.timeout, exit=True, file=self.stacks)

    def stopTest(self, test):
        faulthandler.cancel_dump_traceback_later()
        super().stopTest(test)
        tid = short_id(test)
        outcome, detail = self.outcome.pop(tid, ("pass", ""))
        self._emit({"id": tid, "outcome": outcome, "detail": detail[-3000:],
                    "time": round(time.monotonic() - self._t0, 3)})

    def addSuccess(self, test):
        self._set(test, "pass")

    def addError(self, test, err):
        if isinstance(test, unittest.TestCase):
            self._set(test, "error", self._exc_info_to_string(err, test))
        else:  # a setUpClass / setUpModule failure (_ErrorHolder)
            self._emit({"id": str(test), "fixture_error": self._exc_info_to_string(err, test)})

    def addFailure(self, test, err):
        self._set(test, "fail", self._exc_info_to_string(err, test))

    def addSkip(self, test, reason):
        self._set(test, "skip", reason)

    def addExpectedFailure(self, test, err):
        self._set(test, "xfail")

    def addUnexpectedSuccess(self, test):
        self._set(test, "xpass")

    def addSubTest(self, test, subtest, err):
        if err is not None:
            kind = "fail" if issubclass(err[0], test.failureException) else "error"
            self._set(test, kind, f"[{subtest._subDescription()}] "
                      + self._exc_info_to_string(err, test))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("module")
    parser.add_argument("loop", choices=["stdlib", "uringloop"])
    parser.add_argument("outfile")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--exclude", help="file of test ids (or fnmatch patterns) not to run")
    parser.add_argument("--only", action="append", default=[],
                        help="run only the test ids matching this fnmatch pattern")
    args = parser.parse_args()

    # The tests' own noise (asyncio's error logs, warnings, prints) goes to a log file.
    noise = open(args.outfile + ".log", "w", buffering=1)
    os.dup2(noise.fileno(), 1)
    os.dup2(noise.fileno(), 2)
    sys.stdout = sys.stderr = noise
    logging.getLogger("asyncio").setLevel(logging.CRITICAL + 1)
    warnings.simplefilter("ignore")

    if args.loop == "uringloop":
        install_uringloop()

    import importlib

    import test.support

    test.support.verbose = False
    module = importlib.import_module(f"{PACKAGE}.{args.module}")
    suite = unittest.defaultTestLoader.loadTestsFromModule(module)
    tests = list(iter_tests(suite))

    exclude: list[str] = []
    if args.exclude:
        with open(args.exclude) as f:
            exclude = [line.strip() for line in f if line.strip()]

    def wanted(tid: str) -> bool:
        if args.only and not any(fnmatch.fnmatchcase(tid, p) for p in args.only):
            return False
        return not any(tid == p or fnmatch.fnmatchcase(tid, p) for p in exclude)

    selected = unittest.TestSuite(t for t in tests if wanted(short_id(t)))
    stacks = open(args.outfile + ".stacks", "w")
    with open(args.outfile, "a") as out:
        result = Result(out, args.timeout, stacks)
        try:
            selected.run(result)
        except BaseException:
            out.write(json.dumps({"runner_error": traceback.format_exc()}) + "\n")
            raise
        out.write(json.dumps({"done": True}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
