#!/usr/bin/env bash
# Build the C core with AddressSanitizer + UndefinedBehaviorSanitizer (out of tree) and
# run the test suite against that build. Fails on any test failure or sanitizer report.
#
#   tools/sanitize.sh [pytest args...]     (default: tests/ minus the CPython suite and soak)
#
# How: the package and tests are copied to a scratch directory, the cffi extension is
# compiled there with -fsanitize=address,undefined -fno-sanitize-recover=all, and pytest
# runs from that directory (so `import uringloop` is the instrumented copy) with libasan
# preloaded into the interpreter, PYTHONMALLOC=malloc (so Python buffers are ASan-tracked
# too) and ASAN_OPTIONS=detect_leaks=0 (CPython itself "leaks" by design).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/uringloop-san.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

cp -r "$ROOT/uringloop" "$ROOT/tests" "$WORK/"
for d in bench examples; do [ -d "$ROOT/$d" ] && cp -r "$ROOT/$d" "$WORK/"; done
rm -f "$WORK"/uringloop/_uring*.so

SAN="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g -O1"
(cd "$WORK" && "$PY" - "$SAN" <<'PYEOF'
import os
import sys
from cffi import FFI
san = sys.argv[1].split()
header = open("uringloop/_uring.h").read()
ffi = FFI()
ffi.cdef("\n".join(l for l in header.splitlines() if not l.startswith("#")))
ffi.set_source(
    "uringloop._uring", '#include "_uring.h"',
    sources=[os.path.abspath("uringloop/_uring.c")],
    include_dirs=[os.path.abspath("uringloop")],
    extra_compile_args=["-std=gnu11", "-Wall", "-Wno-unused-function", *san],
    extra_link_args=san,
)
# the generated module source is also called uringloop/_uring.c: build it elsewhere
ffi.compile(tmpdir="build-san", verbose=False)
PYEOF
cp build-san/uringloop/_uring*.so uringloop/
)
ldd "$WORK"/uringloop/_uring*.so | grep -q libasan || { echo "not instrumented" >&2; exit 1; }
ls "$WORK"/uringloop/_uring*.so >/dev/null
# after the build: setuptools (used by cffi's compile) would read it as project metadata
cp "$ROOT/pyproject.toml" "$WORK/"

LIBASAN="$(gcc -print-file-name=libasan.so)"
LIBUBSAN="$(gcc -print-file-name=libubsan.so)"
export LD_PRELOAD="$LIBASAN:$LIBUBSAN"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:allocator_may_return_null=1:detect_stack_use_after_return=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export PYTHONMALLOC=malloc
export PYTHONPATH="$WORK"
LOG="$WORK/sanitize.log"

cd "$WORK"
"$PY" -c 'import uringloop, sys; assert uringloop.__file__.startswith(sys.argv[1]), uringloop.__file__' "$WORK"
if [ $# -eq 0 ]; then
    set -- tests --ignore=tests/test_cpython_asyncio.py --ignore=tests/cpython \
        --ignore=tests/test_soak.py --ignore=tests/integration
fi
set +e
"$PY" -m pytest -q -p no:cacheprovider "$@" 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}
set -e
if grep -qE "ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer|SUMMARY: (Address|UndefinedBehavior)Sanitizer" "$LOG"; then
    echo "sanitize.sh: sanitizer report found" >&2
    exit 1
fi
if [ "$status" -ne 0 ]; then
    echo "sanitize.sh: pytest failed with status $status" >&2
    exit "$status"
fi
echo "sanitize.sh: clean (ASan + UBSan, $(grep -Eo '[0-9]+ passed' "$LOG" | tail -1))"
