"""models.export / quantize / runtime: one graph in three files, the same decisions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.features import DEFAULT_SPEC
from foreshock.errors import BundleError, ConfigError
from models.build import DETECTOR_FP32, DETECTOR_INT8, DETECTOR_TFLITE
from models.build_default import BUNDLES, DEFAULT_NAME, DEFAULT_VERSION
from models.evaluate import parity_of, split_normal
from models.export import LABELS, DetectorWeights, reference_forward, save_onnx, save_tflite
from models.metrics import device_decision
from models.policy import Policy, Runners, first_kofn
from models.quantize import quantize_int8
from models.runtime import OnnxRunner, TfliteRunner
from models.simdata import random_machines
from models.tools import weights_from_onnx
from models.train import INPUT_FEATURES, MachineSet
from models.trainsets import sim_sets

SHIPPED = BUNDLES / DEFAULT_NAME / DEFAULT_VERSION


def random_weights(k: int = 23, hidden: int = 16, seed: int = 0) -> DetectorWeights:
    rng = np.random.default_rng(seed)
    f = np.float32
    return DetectorWeights(20.0, rng.normal(size=(k, hidden)).astype(f),
                           rng.normal(size=hidden).astype(f),
                           rng.normal(size=(hidden, len(LABELS))).astype(f),
                           rng.normal(size=len(LABELS)).astype(f),
                           np.abs(rng.normal(size=k)).astype(f), 0.25)


def test_onnx_and_tflite_compute_the_reference(tmp_path: Path) -> None:
    w = random_weights()
    z = np.random.default_rng(1).normal(scale=8.0, size=(64, 23)).astype(np.float32)
    save_onnx(w, tmp_path / "d.onnx", list(INPUT_FEATURES))
    save_tflite(w, tmp_path / "d.tflite")
    a_ref, p_ref = reference_forward(w, z)
    for run in (OnnxRunner(tmp_path / "d.onnx"), TfliteRunner(tmp_path / "d.tflite")):
        a, p = run(z)
        assert a.shape == (64,) and p.shape == (64, len(LABELS))
        np.testing.assert_allclose(a, a_ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(p, p_ref, rtol=1e-4, atol=1e-6)
        # batch of one and a changed batch size work on the same runner
        a1, _ = run(z[:1])
        np.testing.assert_allclose(a1, a_ref[:1], rtol=1e-5, atol=1e-5)


def test_weights_round_trip_through_onnx(tmp_path: Path) -> None:
    w = random_weights(seed=3)
    save_onnx(w, tmp_path / "d.onnx")
    back = weights_from_onnx(tmp_path / "d.onnx")
    np.testing.assert_array_equal(back.w1, w.w1)
    np.testing.assert_array_equal(back.w_anomaly, w.w_anomaly)
    assert back.b_anomaly == pytest.approx(w.b_anomaly)


def test_int8_file_is_qdq_and_smaller_in_weights(tmp_path: Path) -> None:
    import onnx

    w = random_weights(hidden=64)
    save_onnx(w, tmp_path / "d.onnx")
    z = np.random.default_rng(2).normal(scale=3.0, size=(512, 23)).astype(np.float32)
    quantize_int8(tmp_path / "d.onnx", tmp_path / "d8.onnx", z)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "d8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    a8, p8 = OnnxRunner(tmp_path / "d8.onnx")(z)
    a, p = reference_forward(w, z)
    assert np.mean(np.abs(a8 - a)) < 0.05 * np.mean(np.abs(a)) + 0.05
    assert np.mean(np.argmax(p8, 1) == np.argmax(p, 1)) > 0.9


def test_bad_weights_and_bad_calibration(tmp_path: Path) -> None:
    w = random_weights()
    with pytest.raises(ConfigError, match="w_anomaly"):
        DetectorWeights(20.0, w.w1, w.b1, w.w2, w.b2, -w.w_anomaly, 0.0)
    save_onnx(w, tmp_path / "d.onnx")
    with pytest.raises(ConfigError, match="calibration"):
        quantize_int8(tmp_path / "d.onnx", tmp_path / "d8.onnx", np.zeros((0, 23), np.float32))
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(BundleError):
        OnnxRunner(tmp_path / "junk.onnx")


def test_shipped_files_agree_on_simulated_machines() -> None:
    """Parity: fp32, int8 and TFLite give the same decision on >= 99 % of windows."""
    sets = sim_sets(random_machines(6, seed=321), DEFAULT_SPEC, seconds=3.0, seed=321)
    runners = {name: (OnnxRunner(SHIPPED / f) if f.endswith(".onnx") else
                      TfliteRunner(SHIPPED / f))
               for name, f in (("fp32", DETECTOR_FP32), ("int8", DETECTOR_INT8),
                               ("tflite", DETECTOR_TFLITE))}
    decisions: dict[str, list[np.ndarray]] = {k: [] for k in runners}
    for s in sets:
        for name, run in runners.items():
            policy = Policy(2.0)
            thr = policy.threshold(run(s.z[s.commission])[0])
            a, p = run(s.z[~s.commission])
            decisions[name].append(device_decision(a, p, thr))
    d = {k: np.concatenate(v) for k, v in decisions.items()}
    assert len(d["fp32"]) > 100
    assert np.mean(d["int8"] == d["fp32"]) >= 0.99
    assert np.mean(d["tflite"] == d["fp32"]) >= 0.99


def test_parity_on_cwru_windows(shared_data: Path) -> None:
    from models.trainsets import cwru_sets

    sets = cwru_sets(shared_data / "cwru", DEFAULT_SPEC)
    _, rest = split_normal(sets[0])
    tests = [*sets[1:], rest]
    runners = Runners.__new__(Runners)
    runners.fp32 = OnnxRunner(SHIPPED / DETECTOR_FP32)
    runners.int8 = OnnxRunner(SHIPPED / DETECTOR_INT8)
    runners.tflite = TfliteRunner(SHIPPED / DETECTOR_TFLITE)
    result = parity_of(runners, Policy(2.0), tests, {s.name: sets[0] for s in tests})
    assert result["windows"] > 1000
    assert result["int8_vs_fp32"] >= 0.99 and result["tflite_vs_fp32"] >= 0.99


def test_policy_threshold_and_debounce() -> None:
    p = Policy(floor=2.0, quantile=0.5, factor=2.0, margin=0.5)
    assert p.threshold(np.array([0.1, 0.2, 0.3], np.float32)) == 2.0
    assert p.threshold(np.array([3.0, 3.0, 3.0], np.float32)) == pytest.approx(6.5)
    mask = np.array([1, 0, 1, 0, 0, 1, 1, 1, 0], bool)
    assert first_kofn(mask, 3, 5) == 6
    assert first_kofn(mask, 4, 4) is None


def test_machine_set_split() -> None:
    s = MachineSet("m", np.zeros((6, 23), np.float32), np.zeros(6, np.int64),
                   np.arange(6.0), np.array([1, 1, 1, 0, 0, 0], bool))
    a, b = split_normal(s)
    assert len(a.z) == 3 and a.commission.all() and not b.commission.any()


def test_floor_clip_graphs_compute_the_reference(tmp_path: Path) -> None:
    """z_floor = 0: ONNX and TFLite still compute the reference, and for a graph that reads
    only relu(z) (one-hot units, zero bias) the function equals the symmetric clip's."""
    rng = np.random.default_rng(4)
    k, f = 23, np.float32
    w1 = np.zeros((k, 5), f)
    w1[[0, 3, 7, 9, 20], range(5)] = 1.0
    sym = DetectorWeights(10.0, w1, np.zeros(5, f), rng.normal(size=(5, len(LABELS))).astype(f),
                          rng.normal(size=len(LABELS)).astype(f),
                          np.abs(rng.normal(size=k)).astype(f), 0.0)
    low = DetectorWeights(10.0, sym.w1, sym.b1, sym.w2, sym.b2, sym.w_anomaly, 0.0, z_floor=0.0)
    z = rng.normal(scale=6.0, size=(64, k)).astype(f)
    a_sym, p_sym = reference_forward(sym, z)
    a_ref, p_ref = reference_forward(low, z)
    np.testing.assert_allclose(a_ref, a_sym, rtol=1e-6)
    np.testing.assert_allclose(p_ref, p_sym, rtol=1e-6)
    save_onnx(low, tmp_path / "d.onnx")
    save_tflite(low, tmp_path / "d.tflite")
    for run in (OnnxRunner(tmp_path / "d.onnx"), TfliteRunner(tmp_path / "d.tflite")):
        a, p = run(z)
        np.testing.assert_allclose(a, a_ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(p, p_ref, rtol=1e-4, atol=1e-6)
    with pytest.raises(ConfigError):
        DetectorWeights(10.0, sym.w1, sym.b1, sym.w2, sym.b2, sym.w_anomaly, 0.0, z_floor=10.0)


def test_classifier_names_shaft_faults_it_never_saw() -> None:
    """Trained without imbalance or misalignment (as on CWRU), the evidence classifier still
    names them on other machines from the physics prior (1x, 2x orders), and names the
    bearing faults it did see."""
    from models.train import TrainConfig, fit_detector

    train = sim_sets(random_machines(8, seed=31, faults=("normal", "inner_race", "outer_race",
                                                          "ball")),
                     DEFAULT_SPEC, seconds=3.0, seed=31)
    w = fit_detector(train, TrainConfig())
    assert w.b2[LABELS.index("imbalance")] > -5  # a real output, not a switched-off label
    test = sim_sets([m for m in random_machines(12, seed=77) if m.severity > 0.1],
                    DEFAULT_SPEC, seconds=3.0, seed=77)
    right = total = 0
    for s in test:
        faulty = s.labels > 0
        if not faulty.any():
            continue
        _, p = reference_forward(w, s.z[faulty])
        named = np.bincount(1 + p[:, 1:].argmax(axis=1), minlength=len(LABELS)).argmax()
        right += int(named == s.labels[faulty][0])
        total += 1
    assert total >= 4 and right >= total - 1, f"{right} of {total} named"


def test_varied_fleet_draws_defect_physics_only() -> None:
    """random_machines(varied=True): same machines (bearing, speed, rate, severity...) as
    without it, with modulation, amplitude spread, slip and resonance damping drawn within
    VARIED and DAMPING_RANGE."""
    import dataclasses

    from models.simdata import DAMPING_RANGE, VARIED

    plain = random_machines(12, seed=5)
    varied = random_machines(12, seed=5, varied=True)
    drawn = {"modulation", "amplitude_spread", "jitter", "damping"}
    for a, b in zip(plain, varied, strict=True):
        assert {k: v for k, v in dataclasses.asdict(a).items() if k not in drawn} == \
            {k: v for k, v in dataclasses.asdict(b).items() if k not in drawn}
        ranges = {**VARIED.get(b.fault, VARIED["outer_race"]), "damping": DAMPING_RANGE}
        for key in drawn:
            lo, hi = ranges[key]
            assert lo <= getattr(b, key) <= hi
    assert len({m.amplitude_spread for m in varied}) == len(varied)
    assert all(m.amplitude_spread == 0.02 and m.modulation == 0.8 and m.damping == 0.025
               for m in plain)


def test_weights_round_trip_keeps_the_floor_clip(tmp_path: Path) -> None:
    w = random_weights(seed=5)
    low = DetectorWeights(w.z_clip, w.w1, w.b1, w.w2, w.b2, w.w_anomaly, w.b_anomaly,
                          z_floor=0.0)
    save_onnx(low, tmp_path / "d.onnx")
    assert weights_from_onnx(tmp_path / "d.onnx").z_low == 0.0
    save_onnx(w, tmp_path / "s.onnx")
    assert weights_from_onnx(tmp_path / "s.onnx").z_floor is None
