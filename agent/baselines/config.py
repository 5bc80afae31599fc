"""The learning configuration: operating-state binning and adaptation limits.

``[learning]`` in the agent's config file (docs/learning.md, docs/config.md); validated on
construction. :data:`SPEED_EDGES_RPM` are the default speed bins and
:data:`DAMAGE_FEATURES` the features whose baselines adapt upward only slowly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from foreshock.errors import ConfigError

#: Features whose rise means damage (level, impulsiveness, shaft orders, defect envelopes).
DAMAGE_FEATURES: tuple[str, ...] = (
    "rms_g", "peak_g", "p2p_g", "crest_factor", "kurtosis", "impulse_factor",
    "clearance_factor", "vel_rms_mm_s", "order_1x_g", "order_2x_g", "order_3x_g",
    "env_band_kurtosis", "env_bpfo_snr", "env_bpfo_harm_snr", "env_bpfi_snr",
    "env_bpfi_harm_snr", "env_2bsf_snr", "env_2bsf_harm_snr", "env_bpfi_sb_snr")


#: Speed bins 25 % wide (geometric), 300..9000 rpm: a state's spectrum stays comparable.
SPEED_EDGES_RPM: tuple[float, ...] = tuple(round(300.0 * 1.25 ** k) for k in range(16))


@dataclass(frozen=True)
class LearningConfig:
    """Operating-state binning and adaptation limits (docs/learning.md)."""

    speed_edges_rpm: tuple[float, ...] = SPEED_EDGES_RPM
    load_feature: str = ""
    load_edges: tuple[float, ...] = ()
    min_state_windows: int = 32
    adapt: bool = True
    eta: float = 0.01
    up_ratio: float = 0.1
    healthy_fraction: float = 0.5
    max_updates_per_day: int = 200
    scale_min_ratio: float = 1.0
    scale_max_ratio: float = 2.0
    damage_features: tuple[str, ...] = DAMAGE_FEATURES

    def __post_init__(self) -> None:
        for name in ("speed_edges_rpm", "load_edges"):
            edges = getattr(self, name)
            if list(edges) != sorted(edges) or len(set(edges)) != len(edges):
                raise ConfigError(f"learning.{name} must be strictly increasing")
        if self.load_feature and not self.load_edges:
            raise ConfigError("learning.load_feature needs learning.load_edges")
        if self.min_state_windows < 4:
            raise ConfigError("learning.min_state_windows must be >= 4")
        if not (0 < self.eta <= 0.5 and 0 <= self.up_ratio <= 1
                and 0 < self.healthy_fraction < 1 and self.max_updates_per_day >= 0):
            raise ConfigError("learning: need 0 < eta <= 0.5, 0 <= up_ratio <= 1, "
                              "0 < healthy_fraction < 1, max_updates_per_day >= 0")

    @classmethod
    def from_dict(cls, table: dict[str, Any]) -> LearningConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(table) - known)
        if unknown:
            raise ConfigError(f"learning key {unknown[0]!r} is unknown")
        kw: dict[str, Any] = {
            k: tuple(float(e) for e in v) if k.endswith(("edges", "edges_rpm")) else v
            for k, v in table.items()}
        if "damage_features" in kw:
            kw["damage_features"] = tuple(kw["damage_features"])
        return cls(**kw)
