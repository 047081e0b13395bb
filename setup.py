"""Build hook: compiles the C ring core with cffi (see uringloop/_build.py)."""

from setuptools import setup

setup(
    cffi_modules=["uringloop/_build.py:ffibuilder"],
    # cffi builds the core against the stable ABI (_uring.abi3.so): one wheel serves
    # every CPython from 3.11 on
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
