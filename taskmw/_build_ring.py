"""cffi build script for the C ring (API mode, out of line).

``setup.py`` names it in ``cffi_modules``; running it directly builds the
extension in place for development: ``python taskmw/_build_ring.py``.
"""

from __future__ import annotations

import pathlib
import re

from cffi import FFI

_ROOT = pathlib.Path(__file__).resolve().parent.parent
_CSRC = _ROOT / "csrc"


def _cdef_from_header() -> str:
    """The declarations cffi needs, read from csrc/ring.h (the contract)."""
    text = (_CSRC / "ring.h").read_text()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    keep = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#define TMW_"):
            name = s.split()[1]
            keep.append(f"#define {name} ...")
        elif s.startswith("#"):
            continue
        else:
            keep.append(line)
    return "\n".join(keep)


ffibuilder = FFI()
ffibuilder.cdef(_cdef_from_header())
ffibuilder.set_source(
    "taskmw._ring",
    '#include "ring.h"',
    sources=[str((_CSRC / "ring.c").relative_to(_ROOT))],
    include_dirs=[str(_CSRC.relative_to(_ROOT))],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    libraries=["pthread"],
)

if __name__ == "__main__":
    import os

    os.chdir(_ROOT)
    ffibuilder.compile(verbose=True)
