"""One operating state's baseline record (:class:`StateBaseline`) and stream naming.

A :class:`StateBaseline` is what the bank keeps per stream and state: learning rows, the
robust statistics and the adaptation bookkeeping; it is saved as it stands (``asdict``).
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np

from agent.features import Baseline


@dataclass
class StateBaseline:
    """One operating state of one stream."""

    status: str = "learning"
    rows: list[list[float]] = field(default_factory=list)
    median: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    fitted_scale: list[float] = field(default_factory=list)
    n_fit: int = 0
    first_s: float = math.nan
    day: int = -1
    day_updates: int = 0
    day_logged: int = 0
    hour: int = -1
    hour_updates: int = 0
    adapted_total: int = 0
    day_shift_sd: float = 0.0

    def baseline(self, names: tuple[str, ...]) -> Baseline:
        """The state's :class:`Baseline`, built once per change of its statistics (seed,
        adaptation and load assign new ``median`` / ``scale`` lists; a reset or a load
        makes a new state object), not on every call."""
        cached = self.__dict__.get("_cached")
        if (cached is not None and cached[0] is self.median and cached[1] is self.scale
                and cached[2] == self.n_fit and cached[3].names == names):
            return cached[3]
        base = Baseline(names, np.asarray(self.median), np.asarray(self.scale),
                        max(self.n_fit, 1))
        self.__dict__["_cached"] = (self.median, self.scale, self.n_fit, base)
        return base


def stream_name(key: Hashable) -> str:
    """A stream key as the bank names it: ``device/channel``."""
    if isinstance(key, tuple):
        return "/".join(str(k) for k in key)
    return str(key)
