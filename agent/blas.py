"""One BLAS thread while an agent loop runs: :data:`ONE_BLAS_THREAD`, entered by
:meth:`agent.service.Agent.run` (and by ``benchmarks/pipeline.py``, to measure as a device
runs).
"""

from __future__ import annotations

import threading
from typing import Any


class _OneBlasThread:
    """Limits BLAS (numpy's OpenBLAS) to one thread while any agent loop of this process
    runs, and lifts the limit when the last one ends.

    The agent's matrix products are small (a batch of windows times a vector), so extra
    BLAS threads add nothing; but after each product they spin for a while on the CPU that
    the next window (and, on a shared host, the other devices' agents) needs. Measured with
    ``benchmarks/alert_latency.py`` (six agent processes on two cores): alert p99 130 ms
    with the default two BLAS threads per process, 11 ms with one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._limit: Any = None

    def __enter__(self) -> None:
        from threadpoolctl import threadpool_limits

        with self._lock:
            if self._users == 0:
                self._limit = threadpool_limits(limits=1, user_api="blas")
            self._users += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._limit is not None:
                self._limit.restore_original_limits()
                self._limit = None


ONE_BLAS_THREAD = _OneBlasThread()
