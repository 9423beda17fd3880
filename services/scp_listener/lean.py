"""Keep the SCP process small: some libraries get imported only because they are installed,
for work the SCP never does. Marking them absent before anything imports them saves resident
memory in every SCP process (measured at import, docs/scp_performance.md "Memory"):

* numpy, and through it Pillow's plugins: pydicom 3 imports them at ``import pydicom`` for
  pixel handling; the SCP stores pixel data as it arrives and never decodes it (about 40 MB).
* rich and pygments: structlog imports them for pretty tracebacks in console output, and falls
  back to plain ones without them (4.3 MB).
* requests and tqdm: pydicom imports them to download its test files, with urllib as the
  fallback; the SCP downloads nothing (5.3 MB).

* glibc's malloc gives each thread that allocates its own arena (up to 8 per core), and an
  SCP process runs two threads per association: ``keep_lean`` caps the arenas at two.

Call ``keep_lean()`` first thing in an SCP process's entry point, before anything imports
pydicom or structlog; never in a process that decodes pixels (tests, benchmarks building images).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_ARENA_MAX = -8  # glibc's malloc.h
_ARENAS = 2
_PIXEL_LIBRARIES = ("numpy", "PIL")
_UNUSED_IN_THE_SCP = ("rich", "pygments", "requests", "tqdm")


def keep_lean() -> bool:
    """Make ``import numpy``, ``import PIL`` and the libraries above fail in this process (their
    importers treat them as not installed). Returns False when one was imported already, in
    which case nothing changes."""
    names = _PIXEL_LIBRARIES + _UNUSED_IN_THE_SCP
    if any(name in sys.modules for name in names):
        return False
    for name in names:
        sys.modules[name] = None  # type: ignore[assignment]
    _cap_malloc_arenas()
    return True


def _cap_malloc_arenas() -> None:
    libc_name = ctypes.util.find_library("c")
    if not sys.platform.startswith("linux") or libc_name is None:
        return
    try:
        ctypes.CDLL(libc_name).mallopt(_M_ARENA_MAX, _ARENAS)
    except (OSError, AttributeError):  # not glibc (musl has no mallopt arenas)
        return
