# Type stub for the cffi extension built from csrc/ by taskmw/_build_ring.py.
from typing import Any

ffi: Any
lib: Any
