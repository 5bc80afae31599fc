"""Bearing geometry, defect frequencies and ISO 10816-3 severity zones.

Defect frequencies are returned as multiples of shaft speed ("orders"), so they hold for any
speed. Formulas (stationary outer race, rotating inner race, contact angle ``a``)::

    FTF  = 1/2 (1 - d/D cos a)             cage (fundamental train)
    BPFO = n/2 (1 - d/D cos a)             ball pass, outer race
    BPFI = n/2 (1 + d/D cos a)             ball pass, inner race
    BSF  = D/(2d) (1 - (d/D cos a)^2)      ball spin (a ball defect hits at 2 x BSF)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from foreshock.errors import ConfigError

INCH_MM: Final = 25.4


@dataclass(frozen=True)
class BearingGeometry:
    """Rolling-element bearing geometry; validated on construction."""

    name: str
    n_balls: int
    ball_diameter_mm: float
    pitch_diameter_mm: float
    contact_angle_deg: float = 0.0

    def __post_init__(self) -> None:
        if self.n_balls < 3:
            raise ConfigError(f"bearing {self.name}: n_balls = {self.n_balls!r} must be >= 3")
        if not 0 < self.ball_diameter_mm < self.pitch_diameter_mm:
            raise ConfigError(
                f"bearing {self.name}: ball_diameter_mm = {self.ball_diameter_mm!r} must be "
                f"> 0 and < pitch_diameter_mm = {self.pitch_diameter_mm!r}")
        if not 0 <= self.contact_angle_deg < 90:
            raise ConfigError(f"bearing {self.name}: contact_angle_deg = "
                              f"{self.contact_angle_deg!r} must be in 0..90")

    def orders(self) -> dict[str, float]:
        """Defect frequencies as multiples of shaft speed: ``bpfo``, ``bpfi``, ``bsf``, ``ftf``."""
        ratio = self.ball_diameter_mm / self.pitch_diameter_mm
        ratio *= math.cos(math.radians(self.contact_angle_deg))
        half_n = self.n_balls / 2.0
        return {
            "bpfo": half_n * (1.0 - ratio),
            "bpfi": half_n * (1.0 + ratio),
            "bsf": self.pitch_diameter_mm / (2.0 * self.ball_diameter_mm) * (1.0 - ratio**2),
            "ftf": 0.5 * (1.0 - ratio),
        }


def _inch(name: str, n: int, d_in: float, pitch_in: float, angle: float = 0.0) -> BearingGeometry:
    return BearingGeometry(name, n, d_in * INCH_MM, pitch_in * INCH_MM, angle)


#: Known bearings. CWRU drive end (6205) and fan end (6203) from the CWRU Bearing Data Center;
#: FEMTO from the PRONOSTIA paper; ZA-2115 is the IMS/NASA run-to-failure bearing; SKF-6204
#: uses typical catalogue dimensions (check the datasheet of your exact bearing).
BEARINGS: Final[dict[str, BearingGeometry]] = {
    b.name: b
    for b in (
        _inch("SKF-6205", 9, 0.3126, 1.537),
        _inch("SKF-6203", 8, 0.2656, 1.122),
        BearingGeometry("FEMTO", 13, 3.5, 25.6),
        BearingGeometry("SKF-6204", 8, 7.938, 33.5),
        _inch("REXNORD-ZA-2115", 16, 0.331, 2.815, 15.17),
    )
}


def bearing(name: str) -> BearingGeometry:
    """The catalogue entry ``name``; ConfigError listing the known names otherwise."""
    try:
        return BEARINGS[name]
    except KeyError:
        raise ConfigError(
            f"unknown bearing {name!r}; known bearings: {', '.join(sorted(BEARINGS))}") from None


#: ISO 10816-3 (groups) and ISO 10816-1 (classes) zone boundaries A/B, B/C, C/D in mm/s RMS.
ISO_ZONE_LIMITS_MM_S: Final[dict[str, tuple[float, float, float]]] = {
    "group1-rigid": (2.3, 4.5, 7.1),
    "group1-flexible": (3.5, 7.1, 11.0),
    "group2-rigid": (1.4, 2.8, 4.5),
    "group2-flexible": (2.3, 4.5, 7.1),
    "class-I": (0.71, 1.8, 4.5),
    "class-II": (1.12, 2.8, 7.1),
    "class-III": (1.8, 4.5, 11.2),
    "class-IV": (2.8, 7.1, 18.0),
}


def iso_zone(velocity_mm_s: float, machine_class: str) -> str:
    """ISO 10816 severity zone "A" | "B" | "C" | "D" of a velocity RMS in mm/s.

    A: newly commissioned; B: unrestricted long-term operation; C: restricted, plan action;
    D: severe enough to cause damage. A value on a boundary belongs to the higher zone.
    """
    try:
        limits = ISO_ZONE_LIMITS_MM_S[machine_class]
    except KeyError:
        raise ConfigError(
            f"unknown machine_class {machine_class!r}; allowed: "
            f"{', '.join(ISO_ZONE_LIMITS_MM_S)}") from None
    if not math.isfinite(velocity_mm_s) or velocity_mm_s < 0:
        raise ConfigError(f"velocity_mm_s = {velocity_mm_s!r} must be a finite number >= 0")
    zone = sum(velocity_mm_s >= limit for limit in limits)
    return "ABCD"[zone]
