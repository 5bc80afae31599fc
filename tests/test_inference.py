"""Detectors on real onnxruntime / LiteRT and bundle verification with real signatures.

``build_bundle`` makes a tiny real ONNX model with onnx.helper and signs it; other agent
tests import it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent.features import DEFAULT_SPEC
from agent.inference import LABELS, OnnxDetector, TfliteDetector, load_bundle
from foreshock import bundle as fb
from foreshock.errors import BundleError

INPUTS = ("rms_g", "kurtosis", "crest_factor", "env_bpfo_snr", "env_bpfi_snr", "vel_rms_mm_s")


def make_onnx(path: Path, k: int, seed: int = 0) -> np.ndarray:
    """anomaly = sqrt(mean(z^2)); probabilities = softmax(z @ W). Returns W."""
    w = np.random.default_rng(seed).normal(size=(k, len(LABELS))).astype(np.float32)
    nodes = [
        helper.make_node("Mul", ["z", "z"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["ms"], axes=[1], keepdims=0),
        helper.make_node("Sqrt", ["ms"], ["anomaly_score"]),
        helper.make_node("MatMul", ["z", "W"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["fault_probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", k])],
        [helper.make_tensor_value_info("anomaly_score", TensorProto.FLOAT, ["N"]),
         helper.make_tensor_value_info("fault_probabilities", TensorProto.FLOAT,
                                       ["N", len(LABELS)])],
        [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return w


def build_bundle(root: Path, *, inputs: tuple[str, ...] = INPUTS, floor: float = 0.5,
                 spec: Any = DEFAULT_SPEC) -> tuple[Path, Path]:
    """A signed bundle in root/bundle and its public key file root/key.pub."""
    out = root / "bundle"
    out.mkdir(parents=True)
    make_onnx(out / "detector.onnx", len(inputs))
    fb.write_manifest(out, {
        "name": "tiny", "version": "1.2.3", "created": "2026-01-01T00:00:00Z",
        "feature_spec": spec.to_dict(), "feature_spec_hash": spec.hash,
        "models": {"detector": {
            "file": "detector.onnx", "input": "z", "input_features": list(inputs),
            "outputs": {"anomaly_score": {"name": "anomaly_score"},
                        "fault_probabilities": {"name": "fault_probabilities"}},
            "labels": list(LABELS)}},
        "thresholds": {"anomaly": {"value": floor, "adapt": {
            "quantile": 0.99, "factor": 1.2, "margin": 0.5}},
            "fault": {"min_probability": 0.4}},
    })
    key = fb.generate_signing_key()
    fb.sign(out, key)
    pub = root / "key.pub"
    pub.write_bytes(fb.public_key_pem(key.public_key()))
    return out, pub


def test_onnx_detector_batches(tmp_path: Path) -> None:
    w = make_onnx(tmp_path / "m.onnx", 4)
    det = OnnxDetector(tmp_path / "m.onnx")
    z = np.random.default_rng(1).normal(size=(7, 4)).astype(np.float32)
    s = det.score(z)
    assert s.anomaly.shape == (7,) and s.probabilities.shape == (7, len(LABELS))
    np.testing.assert_allclose(s.anomaly, np.sqrt((z * z).mean(axis=1)), rtol=1e-5)
    logits = z @ w
    p = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(s.probabilities, p / p.sum(1, keepdims=True), rtol=1e-4)
    assert "CPUExecutionProvider" in det.providers
    assert det.score(np.zeros((0, 4), np.float32)).anomaly.shape == (0,)


def test_tflite_detector_matches_reference(tmp_path: Path) -> None:
    from models import export
    rng = np.random.default_rng(2)
    k, h = 5, 8
    weights = export.DetectorWeights(
        10.0, rng.normal(size=(k, h)).astype(np.float32), np.zeros(h, np.float32),
        rng.normal(size=(h, len(LABELS))).astype(np.float32), np.zeros(len(LABELS), np.float32),
        np.abs(rng.normal(size=k)).astype(np.float32), 0.1)
    path = tmp_path / "d.tflite"
    export.save_tflite(weights, path)
    det = TfliteDetector(path)
    z = rng.normal(size=(6, k)).astype(np.float32)
    s = det.score(z)
    a, p = export.reference_forward(weights, z)
    np.testing.assert_allclose(s.anomaly, a, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s.probabilities, p, rtol=1e-4, atol=1e-5)
    assert det.score(z[:2]).anomaly.shape == (2,)   # resizes for another batch


def test_load_bundle_verifies(tmp_path: Path) -> None:
    path, pub = build_bundle(tmp_path)
    b = load_bundle(path, [pub], DEFAULT_SPEC.hash, feature_names=DEFAULT_SPEC.feature_names)
    assert b.model_info == {"name": "tiny", "version": "1.2.3"}
    assert b.input_features == INPUTS and b.anomaly_floor == 0.5
    assert b.adapt == {"quantile": 0.99, "factor": 1.2, "margin": 0.5}
    assert b.fault_min_probability == 0.4
    assert b.detector.score(np.zeros((3, len(INPUTS)), np.float32)).anomaly.tolist() == [0] * 3


def test_bundle_refusals(tmp_path: Path) -> None:
    path, pub = build_bundle(tmp_path)
    other = tmp_path / "other.pub"
    other.write_bytes(fb.public_key_pem(fb.generate_signing_key().public_key()))
    with pytest.raises(BundleError, match="trusted"):
        load_bundle(path, [other], DEFAULT_SPEC.hash)
    with pytest.raises(BundleError, match="feature spec"):
        load_bundle(path, [pub], "0" * 16)
    with pytest.raises(BundleError, match="input_features"):
        load_bundle(path, [pub], DEFAULT_SPEC.hash, feature_names=("rms_g",))
    data = bytearray((path / "detector.onnx").read_bytes())
    data[-1] ^= 1
    (path / "detector.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="SHA-256"):
        load_bundle(path, [pub], DEFAULT_SPEC.hash)


def test_bundle_without_detector_section(tmp_path: Path) -> None:
    path, _pub = build_bundle(tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["models"] = {}
    key = fb.generate_signing_key()
    fb.write_manifest(path, manifest)
    fb.sign(path, key)
    (tmp_path / "k2.pub").write_bytes(fb.public_key_pem(key.public_key()))
    with pytest.raises(BundleError, match=r"models\.detector"):
        load_bundle(path, [tmp_path / "k2.pub"], DEFAULT_SPEC.hash)
