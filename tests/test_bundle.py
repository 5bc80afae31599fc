"""The shipped default bundle: signed by the committed dev key, loadable by the agent,
tamper-evident, re-signable with a site key; the model CLI around it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from agent.features import DEFAULT_SPEC
from foreshock import bundle as fb
from foreshock.errors import BundleError
from models.build import DETECTOR_INT8, DETECTOR_TFLITE
from models.build_default import BUNDLES, DEFAULT_NAME, DEFAULT_VERSION, DEV_PUBLIC_KEY

SHIPPED = BUNDLES / DEFAULT_NAME / DEFAULT_VERSION


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(SHIPPED, dst)
    return dst


def test_shipped_bundle_verifies_with_committed_key() -> None:
    m = fb.verify(SHIPPED, [fb.load_public_key(DEV_PUBLIC_KEY)])
    det = m.data["models"]["detector"]
    assert m.feature_spec_hash == DEFAULT_SPEC.hash, "rebuild: python -m models.build_default"
    assert det["file"] == DETECTOR_INT8 and det["tflite_file"] == DETECTOR_TFLITE
    assert det["labels"] == ["normal", "inner_race", "outer_race", "ball", "imbalance",
                             "misalignment"]
    assert set(det["input_features"]) <= set(DEFAULT_SPEC.feature_names)
    assert set(m.data["training"]["feature_stats"]) == set(det["input_features"])
    assert m.data["thresholds"]["anomaly"]["value"] > 0
    total = sum(p.stat().st_size for p in SHIPPED.iterdir())
    assert total < 300_000


def test_agent_loads_the_shipped_bundle_with_both_runtimes() -> None:
    from agent.inference import load_bundle

    for backend in ("onnx", "tflite"):
        b = load_bundle(SHIPPED, [DEV_PUBLIC_KEY], DEFAULT_SPEC.hash, backend=backend,
                        feature_names=DEFAULT_SPEC.feature_names)
        z = np.zeros((4, len(b.input_features)), np.float32)
        scores = b.detector.score(z)
        assert scores.anomaly.shape == (4,)
        assert np.all(scores.anomaly < b.anomaly_floor)


@pytest.mark.parametrize("target", [DETECTOR_INT8, DETECTOR_TFLITE, "manifest.json"])
def test_one_flipped_byte_is_refused(bundle: Path, target: str) -> None:
    path = bundle / target
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError):
        fb.verify(bundle, [fb.load_public_key(DEV_PUBLIC_KEY)])


def test_extra_file_is_refused(bundle: Path) -> None:
    (bundle / "extra.onnx").write_bytes(b"x")
    with pytest.raises(BundleError, match="not in the manifest"):
        fb.verify(bundle, [fb.load_public_key(DEV_PUBLIC_KEY)])


def test_site_resigns_with_its_own_key(bundle: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "site.key"
    assert run_cli(["model", "keygen", str(key)], capsys)[0] == 0
    assert (key.stat().st_mode & 0o777) == 0o600
    assert run_cli(["model", "sign", str(bundle), "--key", str(key)], capsys)[0] == 0
    fb.verify(bundle, [fb.load_public_key(key.with_suffix(".pub"))])
    with pytest.raises(BundleError, match="trusted"):
        fb.verify(bundle, [fb.load_public_key(DEV_PUBLIC_KEY)])
    code, out, _ = run_cli(["model", "verify", str(bundle), "--trusted",
                            str(key.with_suffix(".pub"))], capsys)
    assert code == 0 and out.startswith("ok foreshock-default")


def test_requantize_and_reexport_keep_the_bundle_valid(bundle: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "k.key"
    run_cli(["model", "keygen", str(key)], capsys)
    before = (bundle / DETECTOR_INT8).stat().st_mtime_ns
    assert run_cli(["model", "quantize", str(bundle), "--key", str(key)], capsys)[0] == 0
    assert run_cli(["model", "export-tflite", str(bundle), "--key", str(key)], capsys)[0] == 0
    m = fb.verify(bundle, [fb.load_public_key(key.with_suffix(".pub"))])
    assert (bundle / DETECTOR_INT8).stat().st_mtime_ns != before   # rewritten (same seed and
    # calibration as the build, so the bytes may well be identical)
    assert m.data["files"][DETECTOR_INT8] == fb.sha256_file(bundle / DETECTOR_INT8)


@pytest.mark.parametrize(("args", "code", "message"), [
    (["model", "build"], 2, "give --default or --out"),
    (["model", "verify", "/nonexistent/bundle"], 1, "not a bundle"),
    (["model", "sign", "/nonexistent/bundle", "--key", "/nonexistent.key"], 1, "not a bundle"),
    (["model", "evaluate", "--data-dir", "/nonexistent"], 2, "no cwru/ folder"),
    (["model", "build", "--out", "/tmp/x", "--data-dir", "/nonexistent"], 2, "no cwru/"),
])
def test_cli_errors_are_one_line(args: list[str], code: int, message: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    got, _, err = run_cli(args, capsys)
    assert got == code
    assert message in err
    assert "Traceback" not in err and err.count("error:") == 1


def test_cli_bad_key_and_bad_calibration(bundle: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("not a key")
    code, _, err = run_cli(["model", "sign", str(bundle), "--key", str(bad)], capsys)
    assert code == 1 and "cannot load signing key" in err
    key = tmp_path / "k.key"
    run_cli(["model", "keygen", str(key)], capsys)
    code, _, err = run_cli(["model", "keygen", str(key)], capsys)
    assert code == 1 and "refusing to overwrite" in err
    calib = tmp_path / "c.npy"
    np.save(calib, np.zeros((10, 3), np.float32))
    code, _, err = run_cli(["model", "quantize", str(bundle), "--key", str(key),
                            "--calibration", str(calib)], capsys)
    assert code == 2 and "shape" in err
