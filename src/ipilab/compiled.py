"""Whether numba's on-disk cache holds a compiled function, so a first run can say it is compiling.

numba compiles a `cache=True` function on its first call and keeps the machine code beside the module's
source in __pycache__ (or under NUMBA_CACHE_DIR); its index there is stamped with the source file's
modification time and size, so a reinstall or an edit voids it and the next run compiles again.
"""

from __future__ import annotations

from typing import Any


def in_cache(function: Any) -> bool:
    """Whether numba's cache holds a compiled version of `function` (a numba dispatcher) for its current
    source: the next first call loads it instead of compiling. False when unsure."""
    try:
        return bool(function._cache._cache_file._load_index())  # numba keeps no public way to ask
    except Exception:  # a numba without these internals: say it is not cached, so the notice shows
        return False
