"""The feature engine: one code path for training, replay and the device.

Public API (see docs/features.md for every feature and its units)::

    BearingGeometry, BEARINGS, bearing            bearing geometry -> defect orders
    FeatureSpec, DEFAULT_SPEC, SNAPSHOT_SPEC      versioned, hashable feature definition
    FeatureSpec.defect_orders, spec.orders()      custom (bpfo, bpfi, bsf, ftf) or catalogue
    extract(spec, windows, rpm)                   float32[n, F], vectorised over windows
    resample(x, from_hz, to_hz)                   FFT-based, float32
    Baseline.fit(values, names).z(values)         robust signed z-scores
    iso_zone(velocity_mm_s, machine_class)        ISO 10816 zone "A".."D"

Pure: no I/O, no clock, no scipy.signal (numpy and scipy.fft only).
"""

from agent.features.baseline import Baseline
from agent.features.extract import extract, shaft_hz
from agent.features.geometry import (
    BEARINGS,
    ISO_ZONE_LIMITS_MM_S,
    BearingGeometry,
    bearing,
    iso_zone,
)
from agent.features.resample import resample
from agent.features.spec import DEFAULT_SPEC, SNAPSHOT_SPEC, FeatureSpec

__all__ = [
    "BEARINGS",
    "DEFAULT_SPEC",
    "ISO_ZONE_LIMITS_MM_S",
    "SNAPSHOT_SPEC",
    "Baseline",
    "BearingGeometry",
    "FeatureSpec",
    "bearing",
    "extract",
    "iso_zone",
    "resample",
    "shaft_hz",
]
