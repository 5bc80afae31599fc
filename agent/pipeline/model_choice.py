"""Which model and feature spec a pipeline runs (the model choice of :mod:`agent.pipeline`).

An explicit ``detector`` (with ``input_features``, default all features), else a verified
``bundle`` (:class:`agent.inference.LoadedBundle`), else the bundle configured in
``model.bundle`` (verified with ``model.trusted_keys``), else the newest bundle shipped
under ``models/bundles/foreshock-default/`` (verified with the key shipped beside it; unless
``model.default_bundle = false``), else the model-free :class:`agent.inference.ZScoreDetector`.
The feature spec is the bundle's when it ships one, else ``features.spec``, with the
configured bearing, defect orders, machine class and nominal speed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from agent import features as fx
from agent.config import AgentConfig
from agent.inference import Detector, LoadedBundle, ZScoreDetector, load_bundle
from foreshock.bundle import parse_semver
from foreshock.errors import BundleError

log = logging.getLogger(__name__)
SHIPPED_NAME = "foreshock-default"
SHIPPED_KEY = "foreshock-dev.pub"


def configured_bundle(config: AgentConfig) -> LoadedBundle | None:
    """The verified bundle of ``model.bundle``, else the shipped default (None: none, or
    ``model.default_bundle = false``, or the shipped one is refused)."""
    m = config.model
    if m.bundle is not None:
        return load_bundle(m.bundle, list(m.trusted_keys), spec_hashes(),
                           backend=m.backend, feature_names=fx.DEFAULT_SPEC.feature_names)
    shipped = shipped_bundle() if m.default_bundle else None
    if shipped is None:
        return None
    try:
        return load_bundle(shipped[0], [shipped[1], *m.trusted_keys], spec_hashes(),
                           backend=m.backend, feature_names=fx.DEFAULT_SPEC.feature_names)
    except BundleError as exc:
        log.warning("shipped bundle refused, using the z-score detector: %s", exc)
        return None


def spec_hashes() -> list[str]:
    """The feature-spec hashes a bundle may be built on."""
    return [fx.DEFAULT_SPEC.hash, fx.SNAPSHOT_SPEC.hash]


def make_spec(config: AgentConfig, bundle: LoadedBundle | None) -> fx.FeatureSpec:
    """The bundle's feature spec (else ``features.spec``) with the configured machine."""
    base = fx.SNAPSHOT_SPEC if config.features.spec == "snapshot" else fx.DEFAULT_SPEC
    if bundle is not None and bundle.feature_spec:
        base = fx.FeatureSpec.from_dict(bundle.feature_spec)
    f = config.features
    orders = (f.bpfo, f.bpfi, f.bsf, f.ftf) if f.bpfo > 0 else None
    return dataclasses.replace(base, bearing=f.bearing, defect_orders=orders,
                               machine_class=f.machine_class, nominal_rpm=f.rpm)


def make_detector(bundle: LoadedBundle | None, detector: Detector | None,
                  inputs: Sequence[str] | None, names: tuple[str, ...]
                  ) -> tuple[Detector, tuple[str, ...]]:
    """The detector and the feature names it reads."""
    if detector is not None:
        chosen = tuple(inputs or getattr(detector, "input_features", None) or names)
        return detector, chosen
    if bundle is not None:
        return bundle.detector, bundle.input_features
    return ZScoreDetector(len(names)), names


def shipped_bundle() -> tuple[Path, Path] | None:
    """(newest default bundle directory, its public key) shipped in the package, if any."""
    root = Path(__file__).resolve().parent.parent.parent / "models" / "bundles"
    key = root / SHIPPED_KEY
    versions = []
    for manifest in (root / SHIPPED_NAME).glob("*/manifest.json"):
        try:
            versions.append((parse_semver(manifest.parent.name), manifest.parent))
        except BundleError:
            continue
    if not versions or not key.is_file():
        return None
    return max(versions)[1], key
