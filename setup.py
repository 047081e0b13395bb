"""Build hook: compiles the C ring core with cffi (see uringloop/_build.py)."""

from setuptools import setup

setup(cffi_modules=["uringloop/_build.py:ffibuilder"])
