"""FeatureSpec: the versioned, hashable definition of a feature vector.

Two kinds of field:

* **definition fields** decide what every number in the vector means (spec rate, window,
  bands, envelope settings, version). They go into :attr:`FeatureSpec.hash`; a model bundle
  records that hash and the agent refuses a bundle whose hash differs from its own spec.
* **machine fields** (``bearing``, ``defect_orders``, ``machine_class``, ``nominal_rpm``,
  ``overlap``) describe
  the machine or the streaming, not the meaning of a feature: defect features are in
  bearing-defect units and normalised to the local noise floor, so a model trained on one
  bearing runs on another (``dataclasses.replace(spec, bearing="SKF-6203")``) with the same
  hash. That transfer across machines is the point of those features. ``defect_orders``
  (BPFO, BPFI, BSF, FTF as multiples of shaft speed) overrides the catalogue geometry of
  ``bearing`` for a bearing that is not in the catalogue; it is equally excluded from the hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Final

import numpy as np

from agent.features.geometry import ISO_ZONE_LIMITS_MM_S, bearing
from foreshock.config import from_table
from foreshock.errors import ConfigError

MACHINE_FIELDS: Final = frozenset({"bearing", "defect_orders", "machine_class", "nominal_rpm",
                                   "overlap"})
DEFECT_ORDER_KEYS: Final = ("bpfo", "bpfi", "bsf", "ftf")
MAX_DEFECT_ORDER: Final = 1000.0

TIME_FEATURES: Final = ("rms_g", "peak_g", "p2p_g", "crest_factor", "kurtosis", "skewness",
                        "shape_factor", "impulse_factor", "clearance_factor")
SHAPE_FEATURES: Final = ("vel_rms_mm_s", "spectral_centroid_hz", "spectral_kurtosis")
ORDER_FEATURES: Final = ("order_1x_g", "order_2x_g", "order_3x_g")
ENV_FAMILIES: Final = ("bpfo", "bpfi", "2bsf", "ftf")
ENV_HARMONICS: Final = 3


def _fmt(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class FeatureSpec:
    """What :func:`agent.features.extract` computes; validated on construction.

    Frequencies in Hz at the spec rate ``sample_rate_hz`` (windows are resampled to it).
    ``envelope_band_hz = None`` picks the envelope band per window by spectral kurtosis among
    bands of ``envelope_bandwidth_hz`` stepped by half a bandwidth from ``envelope_min_hz``.
    ``defect_orders = (bpfo, bpfi, bsf, ftf)`` in multiples of shaft speed replaces the orders
    of ``bearing`` (a machine field, like ``bearing``: not part of :attr:`hash`).
    """

    version: int = 1
    sample_rate_hz: float = 12800.0
    window_samples: int = 4096
    overlap: float = 0.5
    bearing: str = "SKF-6205"
    defect_orders: tuple[float, float, float, float] | None = None
    machine_class: str = "group2-rigid"
    nominal_rpm: float = 0.0
    band_min_hz: float = 10.0
    n_log_bands: int = 8
    order_bands: tuple[tuple[float, float], ...] = (
        (0.5, 1.5), (1.5, 2.5), (2.5, 3.5), (3.5, 6.5), (6.5, 12.5), (12.5, 25.5))
    velocity_band_hz: tuple[float, float] = (10.0, 1000.0)
    order_search_tol: float = 0.02
    envelope_band_hz: tuple[float, float] | None = None
    envelope_bandwidth_hz: float = 1600.0
    envelope_min_hz: float = 500.0
    envelope_search_tol: float = 0.02
    envelope_floor_bins: int = 20

    def __post_init__(self) -> None:
        self._check_scalars()
        self._check_bands()
        bearing(self.bearing)
        self._check_defect_orders()
        if self.machine_class not in ISO_ZONE_LIMITS_MM_S:
            raise ConfigError(f"machine_class = {self.machine_class!r} is not allowed; use one "
                              f"of {', '.join(ISO_ZONE_LIMITS_MM_S)}")

    def _check_scalars(self) -> None:
        nyq = self.sample_rate_hz / 2.0
        checks: list[tuple[str, bool, str]] = [
            ("version", self.version >= 1, ">= 1"),
            ("sample_rate_hz", math.isfinite(self.sample_rate_hz)
             and 1000.0 <= self.sample_rate_hz <= 1e6, "in 1000..1e6"),
            ("window_samples", 256 <= self.window_samples <= 1 << 20
             and self.window_samples % 2 == 0, "even, in 256..1048576"),
            ("overlap", 0.0 <= self.overlap < 1.0, "in 0..1 (1 excluded)"),
            ("nominal_rpm", 0.0 <= self.nominal_rpm <= 1e6, "in 0..1e6 (0 = none)"),
            ("band_min_hz", 0.0 < self.band_min_hz < nyq / 2, "in 0..sample_rate_hz/4"),
            ("n_log_bands", 1 <= self.n_log_bands <= 64, "in 1..64"),
            ("order_search_tol", 0.0 <= self.order_search_tol <= 0.2, "in 0..0.2"),
            ("envelope_bandwidth_hz", 0 < self.envelope_bandwidth_hz <= nyq - self.envelope_min_hz,
             "in 0..sample_rate_hz/2 - envelope_min_hz"),
            ("envelope_min_hz", 0.0 <= self.envelope_min_hz < nyq, "in 0..sample_rate_hz/2"),
            ("envelope_search_tol", 0.0 <= self.envelope_search_tol <= 0.2, "in 0..0.2"),
            ("envelope_floor_bins", 4 <= self.envelope_floor_bins <= 1000, "in 4..1000"),
        ]
        for key, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"feature spec {key} = {getattr(self, key)!r} is out of "
                                  f"range; allowed {allowed}")

    def _check_defect_orders(self) -> None:
        orders = self.defect_orders
        if orders is None:
            return
        if not isinstance(orders, tuple) or len(orders) != len(DEFECT_ORDER_KEYS) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool)
                and math.isfinite(v) and 0 < v <= MAX_DEFECT_ORDER for v in orders):
            raise ConfigError(f"feature spec defect_orders = {orders!r} must be four numbers "
                              f"[bpfo, bpfi, bsf, ftf], each in (0, {MAX_DEFECT_ORDER:g}] "
                              "(multiples of shaft speed)")

    def orders(self) -> dict[str, float]:
        """Defect orders ``bpfo``, ``bpfi``, ``bsf``, ``ftf`` (multiples of shaft speed):
        ``defect_orders`` when set, else the catalogue geometry of ``bearing``."""
        if self.defect_orders is not None:
            return {k: float(v) for k, v in zip(DEFECT_ORDER_KEYS, self.defect_orders,
                                                 strict=True)}
        return bearing(self.bearing).orders()

    def _check_bands(self) -> None:
        nyq = self.sample_rate_hz / 2.0
        pairs = [("velocity_band_hz", self.velocity_band_hz)]
        pairs += [(f"order_bands[{i}]", band) for i, band in enumerate(self.order_bands)]
        if self.envelope_band_hz is not None:
            pairs.append(("envelope_band_hz", self.envelope_band_hz))
        for key, pair in pairs:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise ConfigError(f"feature spec {key} = {pair!r} must be a pair [low, high]")
        if not self.order_bands:
            raise ConfigError("feature spec order_bands must hold at least one [low, high] pair")
        lo, hi = self.velocity_band_hz
        if not 0 < lo < hi <= nyq:
            raise ConfigError(f"feature spec velocity_band_hz = {self.velocity_band_hz!r} "
                              f"must satisfy 0 < low < high <= {nyq:g}")
        for i, (olo, ohi) in enumerate(self.order_bands):
            if not 0 < olo < ohi <= 1000:
                raise ConfigError(f"feature spec order_bands[{i}] = {(olo, ohi)!r} must "
                                  "satisfy 0 < low < high <= 1000")
        if self.envelope_band_hz is not None:
            elo, ehi = self.envelope_band_hz
            if not 0 <= elo < ehi <= nyq or (ehi - elo) * self.window_samples < \
                    8 * self.sample_rate_hz:
                raise ConfigError(f"feature spec envelope_band_hz = {self.envelope_band_hz!r}"
                                  f" must satisfy 0 <= low < high <= {nyq:g} and span >= 8 bins")

    # -- derived ------------------------------------------------------------------------
    @property
    def bin_hz(self) -> float:
        """Frequency resolution of the window spectrum."""
        return self.sample_rate_hz / self.window_samples

    @property
    def window_s(self) -> float:
        return self.window_samples / self.sample_rate_hz

    @property
    def hop_samples(self) -> int:
        return max(1, round(self.window_samples * (1.0 - self.overlap)))

    def log_band_edges_hz(self) -> np.ndarray:
        """Edges of the log-spaced bands, from ``band_min_hz`` to the Nyquist frequency."""
        return np.geomspace(self.band_min_hz, self.sample_rate_hz / 2.0, self.n_log_bands + 1)

    @cached_property
    def feature_names(self) -> tuple[str, ...]:
        """Stable, readable names, in the column order of :func:`extract`."""
        edges = self.log_band_edges_hz()
        names = list(TIME_FEATURES) + list(SHAPE_FEATURES)
        names += [f"band_{edges[i]:.0f}_{edges[i + 1]:.0f}hz_rms_g"
                  for i in range(self.n_log_bands)]
        names += [f"order_{_fmt(lo)}_{_fmt(hi)}x_rms_g" for lo, hi in self.order_bands]
        names += list(ORDER_FEATURES)
        names += ["env_band_center_hz", "env_band_kurtosis"]
        for fam in ENV_FAMILIES:
            names += [f"env_{fam}_snr", f"env_{fam}_h2_snr", f"env_{fam}_h3_snr",
                      f"env_{fam}_harm_snr"]
        names.append("env_bpfi_sb_snr")
        return tuple(names)

    def index(self, names: tuple[str, ...] | list[str]) -> list[int]:
        """Column indices of ``names``; ConfigError naming the first unknown one."""
        lookup = {n: i for i, n in enumerate(self.feature_names)}
        for name in names:
            if name not in lookup:
                raise ConfigError(f"unknown feature {name!r} for feature spec {self.hash}")
        return [lookup[n] for n in names]

    @cached_property
    def hash(self) -> str:
        """Hex digest of the definition fields (machine fields excluded, see module doc)."""
        body = {k: v for k, v in self.to_dict().items() if k not in MACHINE_FIELDS}
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists); ``from_dict(to_dict())`` gives an equal spec.

        ``defect_orders`` is left out when None, so a spec without custom orders writes the
        same dict as before the field existed (readers of older bundles keep working)."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            if field.name == "defect_orders" and self.defect_orders is None:
                continue
            out[field.name] = _jsonable(getattr(self, field.name))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        """Validate and build; ConfigError naming the bad key (unknown keys are errors)."""
        return from_table(cls, dict(data), "feature_spec")


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


#: For continuous streams: 0.32 s windows at 12.8 kHz, 3.125 Hz resolution (CWRU 12 kHz and
#: 48 kHz records, simulated nodes).
DEFAULT_SPEC: Final = FeatureSpec()

#: For 0.1 s snapshots such as FEMTO (2560 samples at 25.6 kHz): one window per snapshot,
#: 10 Hz resolution. DEFAULT_SPEC's 0.32 s window cannot be filled by such a snapshot.
SNAPSHOT_SPEC: Final = FeatureSpec(sample_rate_hz=25600.0, window_samples=2560, overlap=0.0,
                                   bearing="FEMTO", envelope_bandwidth_hz=3200.0,
                                   envelope_min_hz=1000.0, envelope_floor_bins=12)
