"""cffi builder for the C ring core (``uringloop._uring``)."""

from __future__ import annotations

import pathlib

from cffi import FFI

HERE = pathlib.Path(__file__).parent

ffibuilder = FFI()
_header = (HERE / "_uring.h").read_text()
# cffi's cdef does not run the preprocessor: drop the include guard and #includes.
ffibuilder.cdef("\n".join(line for line in _header.splitlines() if not line.startswith("#")))
ffibuilder.set_source(
    "uringloop._uring",
    '#include "_uring.h"',
    sources=[str((HERE / "_uring.c").relative_to(HERE.parent))],
    include_dirs=[str(HERE.relative_to(HERE.parent))],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wno-unused-function"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
