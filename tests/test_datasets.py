"""models.datasets: every recording format, on real shared data and on files made here."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from foreshock.errors import DataError
from models.datasets import cwru_label, cwru_sample_rate_hz, load, load_scenario
from models.train import windows_of


def test_cwru_fault_record(shared_data: Path) -> None:
    rec = load(shared_data / "cwru" / "12k_Drive_End_IR007_0_105.mat")
    assert rec.sample_rate_hz == 12_000.0
    assert rec.rpm == 1797.0
    assert rec.label == "inner_race"
    assert rec.channels == ("DE", "FE", "BA")
    assert rec.data.shape[0] == 1 and 9.5 < rec.duration_s < 11.0
    de = rec.channel("de")
    assert de.dtype == np.float32 and 0.05 < float(np.std(de)) < 5.0


def test_cwru_normal_record_is_48k(shared_data: Path) -> None:
    rec = load(shared_data / "cwru" / "normal_0_97.mat", channel="FE")
    assert rec.sample_rate_hz == 48_000.0
    assert rec.channels == ("FE",)
    assert rec.label == "normal"
    assert 4.9 < rec.duration_s < 5.2


def test_cwru_rate_override_and_missing_channel(shared_data: Path) -> None:
    path = shared_data / "cwru" / "normal_0_97.mat"
    assert load(path, sample_rate_hz=24_000.0).sample_rate_hz == 24_000.0
    with pytest.raises(DataError, match="no channel 'BA'"):
        load(path, channel="BA")


def test_cwru_name_rules() -> None:
    assert cwru_label("12k_Drive_End_OR021@6_1_235.mat") == "outer_race"
    assert cwru_label("12k_Drive_End_B014_0_185.mat") == "ball"
    assert cwru_sample_rate_hz("48k_Drive_End_B007_0_122.mat", 122) == 48_000.0
    assert cwru_sample_rate_hz("normal_1_98.mat", 98) == 48_000.0
    assert cwru_sample_rate_hz("some_record.mat", None) == 12_000.0


def test_mfpt_struct(tmp_path: Path) -> None:
    gs = np.sin(np.arange(48_828) / 10.0)
    path = tmp_path / "baseline_1.mat"
    scipy.io.savemat(path, {"bearing": {"gs": gs[:, None], "sr": 97_656.0, "rate": 25.0,
                                        "load": 270.0}})
    rec = load(path)
    assert rec.sample_rate_hz == 97_656.0
    assert rec.rpm == 1500.0
    np.testing.assert_allclose(rec.channel("gs")[0], gs, rtol=1e-6)


def test_mat_without_known_variables(tmp_path: Path) -> None:
    path = tmp_path / "other.mat"
    scipy.io.savemat(path, {"x": np.zeros(10)})
    with pytest.raises(DataError, match="no CWRU"):
        load(path)


def test_femto_npz(shared_data: Path) -> None:
    rec = load(shared_data / "femto" / "Bearing3_1.npz")
    assert rec.channels == ("horizontal", "vertical")
    assert rec.data.shape[1:] == (2560, 2)
    assert rec.rpm == 1500.0 and rec.sample_rate_hz == 25_600.0
    assert rec.t_s[1] - rec.t_s[0] == pytest.approx(10.0)


def _femto_csv(folder: Path, index: int, sep: str, second: int) -> None:
    rows = [sep.join([str(9), str(39), str(second), str(65664 + i), f"{0.001 * i:.3f}",
                      f"{-0.002 * i:.3f}"]) for i in range(2560)]
    (folder / f"acc_{index:05d}.csv").write_text("\n".join(rows) + "\n")


def test_femto_csv_folder(tmp_path: Path) -> None:
    folder = tmp_path / "Bearing1_3"
    folder.mkdir()
    for i, sep in enumerate([",", ";", ","], start=1):
        _femto_csv(folder, i, sep, 10 * i)
    rec = load(folder)
    assert rec.data.shape == (3, 2560, 2)
    np.testing.assert_allclose(rec.t_s, [0.0, 10.0, 20.0])
    assert rec.rpm == 1800.0
    assert rec.channel("vertical")[0, 10] == pytest.approx(-0.02)


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no acc_NNNNN\.csv"):
        load(tmp_path)


def test_wav_16bit_stereo(tmp_path: Path) -> None:
    path = tmp_path / "rec.wav"
    x = (np.sin(np.arange(8000) / 5.0) * 16000).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.stack([x, -x], axis=1).tobytes())
    rec = load(path)
    assert rec.channels == ("ch0", "ch1") and rec.sample_rate_hz == 8000.0
    np.testing.assert_allclose(rec.channel("ch1")[0], -x / 32768.0, atol=1e-6)


def test_csv_with_time_column(tmp_path: Path) -> None:
    path = tmp_path / "rec.csv"
    t = np.arange(2000) / 5000.0
    lines = ["t_s,accel_x"] + [f"{a:.6f},{np.sin(a * 300):.5f}" for a in t]
    path.write_text("\n".join(lines))
    rec = load(path)
    assert rec.channels == ("accel_x",)
    assert rec.sample_rate_hz == pytest.approx(5000.0, rel=1e-3)


def test_csv_without_rate_needs_one(tmp_path: Path) -> None:
    path = tmp_path / "rec.csv"
    path.write_text("0.1\n0.2\n0.3\n")
    with pytest.raises(DataError, match="sample rate"):
        load(path)
    assert load(path, sample_rate_hz=1000.0).data.shape == (1, 3, 1)


@pytest.mark.parametrize("name", ["rec.xyz", "missing.wav"])
def test_unknown_or_missing(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if name.endswith(".xyz"):
        path.write_text("1")
    with pytest.raises(DataError):
        load(path)


def test_absurd_override(shared_data: Path) -> None:
    with pytest.raises(DataError, match="absurd"):
        load(shared_data / "cwru" / "normal_0_97.mat", rpm=-5.0)


def test_simulator_scenario_and_windows() -> None:
    from agent.features import DEFAULT_SPEC

    rec = load_scenario("outer-race-growing", seconds=2.0)
    assert rec.sample_rate_hz == 25_600.0 and rec.label == "outer_race"
    assert 1700 < rec.rpm < 1900
    windows, t_s = windows_of(rec, DEFAULT_SPEC)
    assert windows.shape[1] == DEFAULT_SPEC.window_samples
    assert len(windows) == 1 + (int(2.0 * 12_800) - 4096) // DEFAULT_SPEC.hop_samples
    assert np.all(np.diff(t_s) > 0)


def test_femto_snapshot_windows(shared_data: Path) -> None:
    from agent.features import SNAPSHOT_SPEC

    rec = load(shared_data / "femto" / "Bearing3_1.npz")
    windows, t_s = windows_of(rec, SNAPSHOT_SPEC, "horizontal")
    assert windows.shape == (rec.data.shape[0], 2560)
    np.testing.assert_allclose(t_s, rec.t_s)


def test_training_and_replay_share_one_reader() -> None:
    import agent.recordings
    import models.datasets

    assert models.datasets.Recording is agent.recordings.Recording
    for name in ("load_mat", "load_femto_npz", "load_femto_csv_dir", "load_wav", "load_csv",
                 "cwru_label"):
        assert getattr(models.datasets, name) is getattr(agent.recordings, name), name


def test_wav_24bit_mono(tmp_path: Path) -> None:
    path = tmp_path / "rec24.wav"
    v = np.array([0, 1, -1, 2**23 - 1, -(2**23), 4096], dtype=np.int32)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(3)
        w.setframerate(25_600)
        w.writeframes(b"".join(int(a).to_bytes(3, "little", signed=True) for a in v))
    rec = load(path)
    np.testing.assert_allclose(rec.channel()[0], v / 2.0**23, rtol=1e-6)


@pytest.mark.parametrize("name,raw,needle", [
    ("bad.mat", b"MATLAB 5.0 MAT-file" + b"\x00" * 40, "MATLAB"),
    ("bad.npz", b"PK\x03\x04garbage", "cannot read|FEMTO"),
    ("head.csv", b"t_s,acc\n", "data rows"),
    ("ragged.csv", b"a,b\n1,2,3\n", "data rows|non-numeric"),
    ("only_time.csv", b"t_s\n0\n0.001\n", "no channel column"),
    ("half.wav", b"RIFF\x10\x00\x00\x00WAVEfmt ", "WAV|cannot read"),
])
def test_damaged_files_are_data_errors(tmp_path: Path, name: str, raw: bytes,
                                       needle: str) -> None:
    path = tmp_path / name
    path.write_bytes(raw)
    with pytest.raises(DataError, match=needle):
        load(path)


def test_scenario_channel_choice() -> None:
    rec = load("sim:healthy", channel=load_scenario("healthy", seconds=0.5).channels[0])
    assert rec.data.shape[2] == 1
    with pytest.raises(DataError, match="no channel"):
        load("sim:healthy", channel="nope")
