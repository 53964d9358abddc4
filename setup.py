"""Build the C ring (csrc/) with cffi; everything else is in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["taskmw/_build_ring.py:ffibuilder"])
