"""Robust per-feature baseline and signed z-scores.

The scale of each feature is, deterministically::

    spread = 1.4826 * MAD, or 1.2533 * mean |value - median| where MAD is 0
    scale  = max(spread, rel_floor * |median|, abs_floor)
    z     = clip((value - median) / scale, -z_clip, +z_clip)

1.4826 * MAD equals the standard deviation for Gaussian data and ignores run-in outliers.
The floors stop a near-constant feature from giving huge z for a tiny change: the mean
absolute deviation covers features that are mostly one value (MAD = 0; 1.2533 makes it the
standard deviation for Gaussian data), ``rel_floor`` (5 %) of the median covers
steady non-zero features, and ``abs_floor`` covers features that are exactly constant at 0
(for example order features of a machine whose speed was unknown during commissioning).
Signed z keeps the direction: drop in a level is negative, growth is positive. Non-finite
values give z = 0 ("no evidence").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from foreshock.errors import ConfigError

MAD_TO_SD = 1.4826
MEAN_AD_TO_SD = 1.2533


@dataclass(frozen=True)
class Baseline:
    """Median and robust scale per named feature."""

    names: tuple[str, ...]
    median: np.ndarray   # float64[F]
    scale: np.ndarray    # float64[F], > 0
    n_fit: int
    z_clip: float = 50.0

    @classmethod
    def fit(cls, values: np.ndarray, names: tuple[str, ...] | list[str], *,
            rel_floor: float = 0.05, abs_floor: float = 1e-6, z_clip: float = 50.0
            ) -> Baseline:
        """Fit on commissioning windows ``values`` float[n, F] (non-finite rows ignored)."""
        data = np.asarray(values, dtype=np.float64)
        if data.ndim != 2 or data.shape[1] != len(names) or data.shape[0] < 1:
            raise ConfigError(f"baseline values have shape {data.shape}; need (n >= 1, "
                              f"{len(names)}) to match the feature names")
        data = data[np.isfinite(data).all(axis=1)]
        if data.shape[0] == 0:
            raise ConfigError("baseline values have no finite row")
        median = np.median(data, axis=0)
        mad = np.median(np.abs(data - median), axis=0)
        mean_ad = np.abs(data - median).mean(axis=0)
        spread = np.where(mad > 0, MAD_TO_SD * mad, MEAN_AD_TO_SD * mean_ad)
        scale = np.maximum.reduce([spread, rel_floor * np.abs(median),
                                   np.full_like(median, abs_floor)])
        return cls(tuple(names), median, scale, int(data.shape[0]), z_clip)

    def z(self, values: np.ndarray) -> np.ndarray:
        """Signed robust z-scores float32[n, F] of values float[n, F] (or one row [F])."""
        data = np.asarray(values, dtype=np.float64)
        row = data.ndim == 1
        data = np.atleast_2d(data)
        if data.shape[-1] != len(self.names):
            raise ConfigError(f"values have {data.shape[-1]} features; the baseline has "
                              f"{len(self.names)}")
        out = np.clip((data - self.median) / self.scale, -self.z_clip, self.z_clip)
        out = np.nan_to_num(out, nan=0.0).astype(np.float32)
        return out[0] if row else out

    def select(self, names: tuple[str, ...] | list[str]) -> Baseline:
        """The baseline restricted to ``names``, in that order."""
        lookup = {n: i for i, n in enumerate(self.names)}
        missing = [n for n in names if n not in lookup]
        if missing:
            raise ConfigError(f"baseline has no feature {missing[0]!r}")
        idx = [lookup[n] for n in names]
        return Baseline(tuple(names), self.median[idx], self.scale[idx], self.n_fit, self.z_clip)

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "median": [float(v) for v in self.median],
                "scale": [float(v) for v in self.scale], "n_fit": self.n_fit,
                "z_clip": self.z_clip}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Baseline:
        """Validate and build; ConfigError naming the bad key."""
        for key in ("names", "median", "scale", "n_fit"):
            if key not in data:
                raise ConfigError(f"baseline key {key!r} is missing")
        names = data["names"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError("baseline key 'names' must be a list of strings")
        arrays = {}
        for key in ("median", "scale"):
            try:
                arr = np.asarray(data[key], dtype=np.float64)
            except (TypeError, ValueError):
                raise ConfigError(f"baseline key {key!r} must be a list of numbers") from None
            if arr.shape != (len(names),) or not np.isfinite(arr).all():
                raise ConfigError(f"baseline key {key!r} must hold {len(names)} finite numbers")
            arrays[key] = arr
        if (arrays["scale"] <= 0).any():
            raise ConfigError("baseline key 'scale' must be > 0 everywhere")
        z_clip = data.get("z_clip", 50.0)
        if isinstance(z_clip, bool) or not isinstance(z_clip, (int, float)) or z_clip <= 0:
            raise ConfigError(f"baseline key 'z_clip' = {z_clip!r} must be a number > 0")
        n_fit = data["n_fit"]
        if isinstance(n_fit, bool) or not isinstance(n_fit, int) or n_fit < 1:
            raise ConfigError(f"baseline key 'n_fit' = {n_fit!r} must be an integer >= 1")
        return cls(tuple(names), arrays["median"], arrays["scale"], n_fit, float(z_clip))
