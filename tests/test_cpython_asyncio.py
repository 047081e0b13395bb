"""CPython's own asyncio tests, run against uringloop.

For each module below, ``tests/cpython/runner.py`` runs the running interpreter's
installed ``test.test_asyncio.<module>`` twice, in subprocesses: once on the stdlib loop
and once with every loop those tests make replaced by ``uringloop.Loop``. Every test that
passes on the stdlib loop must pass on uringloop too, except those listed, with their
reason, in ``tests/cpython/known_differences.py``.

Run by hand, for a summary table:  python tests/test_cpython_asyncio.py [MODULE...]
Set ``URINGLOOP_CPYTHON_TESTS=0`` to skip these tests.
"""

from __future__ import annotations

import concurrent.futures
import fnmatch
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
RUNNER = HERE / "cpython" / "runner.py"
sys.path.insert(0, str(HERE / "cpython"))
import known_differences  # noqa: E402

sys.path.remove(str(HERE / "cpython"))


def _for_this_python(entries: dict[str, str]) -> dict[str, str]:
    """The entries that apply here: a key "PATTERN @3.11,3.12" only on those versions."""
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    out = {}
    for key, reason in entries.items():
        pattern, _, versions = key.partition(" @")
        if not versions or here in versions.replace(" ", "").split(","):
            out[pattern] = reason
    return out


KNOWN_DIFFERENCES = _for_this_python(known_differences.KNOWN_DIFFERENCES)
NOT_RUN = _for_this_python(known_differences.NOT_RUN)

PER_TEST_TIMEOUT = 30.0  # seconds, inside the runner
MODULE_TIMEOUT = 300.0  # seconds, for all the runs of one module on one loop
MAX_RESTARTS = 20
RUN_ALL = os.environ.get("URINGLOOP_CPYTHON_RUN_ALL") == "1"  # run the NOT_RUN tests too

# module -> fnmatch patterns of the test ids to run (None: all of them), and why not all.
MODULES: dict[str, list[str] | None] = {
    "test_events": None,
    "test_sock_lowlevel": None,
    "test_sendfile": None,
    "test_server": None,
    "test_streams": None,
    "test_subprocess": None,
    "test_ssl": None,
    "test_sslproto": None,
    "test_buffered_proto": None,
    "test_context": None,
    "test_taskgroups": None,
    "test_timeouts": None,
    "test_runners": None,
    "test_unix_events": None,
}

OK = ("pass",)


def _matches(tid: str, pattern: str) -> bool:
    return tid == pattern or fnmatch.fnmatchcase(tid, pattern)


def _read(path: Path) -> tuple[dict[str, tuple[str, str]], str | None, bool, list[str]]:
    """results, the test started but not finished (if any), done, fixture errors."""
    results: dict[str, tuple[str, str]] = {}
    running = None
    done = False
    fixture_errors = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by the process' end
            if rec.get("start"):
                running = rec["id"]
            elif "outcome" in rec:
                results[rec["id"]] = (rec["outcome"], rec.get("detail", ""))
                running = None
            elif "fixture_error" in rec:
                fixture_errors.append(f"{rec['id']}: {rec['fixture_error']}")
            elif rec.get("done"):
                done = True
    return results, running, done, fixture_errors


def run_module(module: str, loop: str, workdir: Path) -> dict[str, tuple[str, str]]:
    """{test id: (outcome, detail)} of one module on one loop, restarting after a timeout."""
    out = workdir / f"{module}-{loop}.jsonl"
    for suffix in ("", ".log", ".stacks"):
        Path(str(out) + suffix).unlink(missing_ok=True)
    exclude_file = workdir / f"{module}-{loop}.exclude"
    excluded = list(NOT_RUN) if loop == "uringloop" and not RUN_ALL else []
    results: dict[str, tuple[str, str]] = {}
    deadline = time.monotonic() + MODULE_TIMEOUT
    cmd = [sys.executable, str(RUNNER), module, loop, str(out),
           "--timeout", str(PER_TEST_TIMEOUT), "--exclude", str(exclude_file)]
    for pattern in MODULES.get(module) or []:
        cmd += ["--only", pattern]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONFAULTHANDLER="1")
    env.pop("PYTHONWARNINGS", None)
    for _ in range(MAX_RESTARTS):
        exclude_file.write_text("\n".join(excluded + list(results)) + "\n")
        left = deadline - time.monotonic()
        try:
            proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  timeout=max(left, 1.0), cwd=str(workdir))
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = None
        results, running, done, fixture_errors = _read(out)
        for err in fixture_errors:
            results.setdefault("<fixture> " + err.split(":", 1)[0], ("error", err))
        if done:
            break
        if running is None or rc is None:
            stacks = Path(str(out) + ".log")
            tail = stacks.read_text()[-2000:] if stacks.exists() else ""
            results[f"<runner {module}>"] = (
                "error", f"runner ended (rc={rc}) outside a test; log tail:\n{tail}")
            if running is not None:
                results[running] = ("timeout", "module time limit reached")
            break
        stacks = Path(str(out) + ".stacks")
        dump = stacks.read_text() if stacks.exists() else ""
        detail = f"no result after {PER_TEST_TIMEOUT:g}s (rc={rc}); stacks:\n{dump[-3000:]}"
        with out.open("a") as f:  # the next run appends to the same file
            f.write("\n" + json.dumps({"id": running, "outcome": "timeout", "detail": detail})
                    + "\n")
        results[running] = ("timeout", detail)
    return results


def run_both(module: str, workdir: Path):
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        std = pool.submit(run_module, module, "stdlib", workdir)
        uring = pool.submit(run_module, module, "uringloop", workdir)
        return std.result(), uring.result()


def compare(module: str, std: dict, uring: dict):
    """(unexpected differences, listed differences seen, stale entries)."""
    known = dict(KNOWN_DIFFERENCES, **NOT_RUN) if RUN_ALL else KNOWN_DIFFERENCES
    unexpected, listed = [], []
    for tid, (outcome, _) in sorted(std.items()):
        if outcome not in OK or tid.startswith("<"):
            continue
        if not RUN_ALL and any(_matches(tid, p) for p in NOT_RUN):
            listed.append((tid, "not run"))
            continue
        got, detail = uring.get(tid, ("missing", "not run on uringloop"))
        if got in OK:
            continue
        reasons = [r for p, r in known.items() if _matches(tid, p)]
        if reasons:
            listed.append((tid, got))
        else:
            unexpected.append((tid, got, detail))
    for tid, (outcome, detail) in uring.items():
        if tid.startswith("<"):
            unexpected.append((tid, outcome, detail))
    stale = []
    for pattern, reason in known.items():
        if reason.startswith("flaky:"):
            continue
        hits = [t for t in std if _matches(t, pattern)]
        if hits and all(std[t][0] in OK and uring.get(t, ("",))[0] in OK for t in hits):
            stale.append(pattern)
    return unexpected, listed, stale


def _first_lines(detail: str, n: int = 6) -> str:
    lines = [ln for ln in detail.strip().splitlines() if ln.strip()]
    if len(lines) > n:  # the exception line is the last one: keep it, and the frames before
        lines = lines[:2] + ["..."] + lines[-(n - 3):]
    return "\n      ".join(lines)


def counts(results: dict) -> tuple[int, int]:
    ids = [t for t in results if not t.startswith("<")]
    return len(ids), sum(results[t][0] in OK for t in ids)


@pytest.mark.skipif(os.environ.get("URINGLOOP_CPYTHON_TESTS") == "0",
                    reason="URINGLOOP_CPYTHON_TESTS=0")
@pytest.mark.timeout(2 * MODULE_TIMEOUT + 60)
@pytest.mark.parametrize("module", list(MODULES))
def test_cpython_asyncio(module: str, tmp_path: Path) -> None:
    pytest.importorskip(f"test.test_asyncio.{module}")
    std, uring = run_both(module, tmp_path)
    unexpected, listed, stale = compare(module, std, uring)
    problems = []
    if unexpected:
        problems.append(
            f"{len(unexpected)} test(s) of test.test_asyncio.{module} that pass on the stdlib "
            "loop do not pass on uringloop and are not in tests/cpython/known_differences.py:\n"
            + "\n".join(f"  {tid}: {outcome}\n      {_first_lines(detail)}"
                        for tid, outcome, detail in unexpected))
    if stale:
        problems.append("stale entries in tests/cpython/known_differences.py (their tests now "
                        "pass on uringloop): " + ", ".join(stale))
    assert not problems, "\n\n".join(problems)


def main(argv: list[str]) -> int:
    modules = argv or list(MODULES)
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for module in modules:
            t0 = time.monotonic()
            std, uring = run_both(module, Path(tmp))
            unexpected, listed, stale = compare(module, std, uring)
            n, std_ok = counts(std)
            _, uring_ok = counts(uring)
            std_pass = {t for t, (o, _) in std.items() if o in OK}
            both = sum(1 for t in std_pass if uring.get(t, ("",))[0] in OK)
            print(f"{module:22} tests {n:4}  stdlib pass {std_ok:4}  uringloop pass {uring_ok:4}"
                  f"  (of stdlib's: {both})  listed {len(listed):3}  unexpected "
                  f"{len(unexpected):3}  {time.monotonic() - t0:5.1f}s", flush=True)
            for tid, outcome, detail in unexpected:
                print(f"    {tid}: {outcome}\n      {_first_lines(detail)}")
            for pattern in stale:
                print(f"    stale: {pattern}")
            bad += bool(unexpected or stale)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
