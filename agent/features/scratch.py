"""Per-thread scratch arrays, reused across :func:`agent.features.extract` calls.

A fresh megabyte-sized temporary costs page faults on every call (the allocator hands such
blocks back to the operating system when they are freed), which on a batch of windows costs
as much as the FFT itself. One buffer per purpose and thread, grown as needed, keeps the hot
path in memory that is already mapped and warm in cache. The contents are undefined on
return and results never alias a scratch array, so extraction stays a pure function.
"""

from __future__ import annotations

import math
import threading
from typing import Final

import numpy as np

MAX_CACHED_BYTES: Final = 64 << 20   # larger requests get a fresh array, not kept

_LOCAL = threading.local()


def scratch(key: str, shape: tuple[int, ...], dtype: type[np.generic], zeroed: bool = False
            ) -> np.ndarray:
    """A C-contiguous array of ``shape`` and ``dtype`` owned by this thread under ``key``;
    valid until the next request for ``key`` on the same thread.

    ``zeroed``: a new buffer starts as zeros, and elements that no caller of ``key`` ever
    writes stay zero across calls (the caller keys by row length, so that the rows of any
    leading size fall on the same elements)."""
    bufs: dict[str, np.ndarray] = _LOCAL.__dict__.setdefault("bufs", {})
    size = math.prod(shape)
    wanted = np.dtype(dtype)
    buf = bufs.get(key)
    if buf is None or buf.dtype != wanted or buf.size < size:
        buf = np.zeros(size, wanted) if zeroed else np.empty(size, wanted)
        if buf.nbytes <= MAX_CACHED_BYTES:
            bufs[key] = buf
    return buf[:size].reshape(shape)
