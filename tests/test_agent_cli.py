"""`foreshock agent` commands through the real root CLI, in a subprocess-free way."""

from __future__ import annotations

import json
import threading
import wave
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from agent.config import AgentConfig
from agent.service import Agent
from agent.sources import ReplaySource
from foreshock.errors import ConfigError
from foreshock.wire import Frame

SAMPLE = Path(__file__).resolve().parent.parent / "agent" / "deploy" / "agent.toml.sample"


def test_sample_config_loads_and_bad_key_is_one_error(tmp_path: Path) -> None:
    cfg = AgentConfig.load(SAMPLE)
    assert cfg.device.device_id == "pump-07" and cfg.source.type == "serial"
    bad = tmp_path / "bad.toml"
    bad.write_text(SAMPLE.read_text().replace("k = 3", "k = 9"))
    with pytest.raises(ConfigError, match=r"decision\.k = 9"):
        AgentConfig.load(bad)
    bad.write_text("[decision]\nkk = 1\n")
    with pytest.raises(ConfigError, match=r"unknown key decision\.kk"):
        AgentConfig.load(bad)


def test_replay_cwru(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = shared_data / "cwru" / "12k_Drive_End_OR007@6_0_130.mat"
    code, out, err = run_cli(["agent", "replay", str(path), "--channel", "DE",
                              "--commission-s", "2"], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) > 50
    for key in ("t_s", "channel", "anomaly_score", "alert", "severity", "fault",
                "fault_probability", "explanation"):
        assert key in rows[0]
    assert rows[0]["anomaly_score"] is None and rows[-1]["anomaly_score"] is not None
    import scipy.io

    n = next(v.size for k, v in scipy.io.loadmat(str(path)).items() if k.endswith("_DE_time"))
    assert len(rows) == (n - 3840) // 1920 + 1     # 0.32 s windows at 12 kHz, none dropped
    assert all(r["channel"] == rows[0]["channel"] for r in rows)


def test_replay_femto_snapshots(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = shared_data / "femto" / "Bearing1_1.npz"
    code, out, err = run_cli(["agent", "replay", str(path), "--channel", "horizontal",
                              "--commission-s", "600"], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == np.load(path)["acc_mg"].shape[0]   # one window per snapshot
    first = next(r for r in rows if r["alert"])
    assert first["t_s"] > 600 and first["incident"] == "raised"
    assert first["explanation"]["top_features"]


@pytest.mark.parametrize("args,needle", [
    (["agent", "replay", "{tmp}/x.xyz"], "unknown recording format"),
    (["agent", "replay", "{tmp}/missing.mat"], "does not exist"),
    (["agent", "replay", "{tmp}/a.csv", "--rpm", "-5"], "--rpm"),
    (["agent", "replay", "{tmp}/a.csv", "--channel", "nope"], "no channel"),
    (["agent", "replay", "{tmp}/a.csv", "--bpfo", "3"], "all four"),
    (["agent", "replay", "{tmp}/a.csv", "--sample-rate-hz", "1e9"], "--sample-rate-hz"),
    (["agent", "replay", "{tmp}/a.csv", "--commission-s", "nan"], "--commission-s"),
    (["agent", "replay", "{tmp}"], "no acc_NNNNN.csv"),
    (["agent", "replay", "sim:healthy"], "simulator scenarios are not files"),
])
def test_replay_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  args: list[str], needle: str) -> None:
    (tmp_path / "x.xyz").write_text("?")
    rng = np.random.default_rng(0)
    rows = "\n".join(f"{i / 12800:.6f},{v:.5f}" for i, v in enumerate(rng.normal(size=20000)))
    (tmp_path / "a.csv").write_text("t_s,acc\n" + rows + "\n")
    code, _out, err = run_cli([a.format(tmp=tmp_path) for a in args], capsys)
    assert code == 2
    assert needle in err and len(err.strip().splitlines()) <= 2 and "Traceback" not in err


def test_replay_csv_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    rows = "\n".join(f"{i / 12800:.6f},{v:.5f}" for i, v in enumerate(rng.normal(size=40000)))
    (tmp_path / "a.csv").write_text("t_s,acc\n" + rows + "\n")
    code, out, err = run_cli(["agent", "replay", str(tmp_path / "a.csv"), "--format", "table",
                              "--commission-s", "1"], capsys)
    assert code == 0, err
    assert out.splitlines()[0].split()[0] == "t_s" and len(out.splitlines()) > 10


def test_status_reads_the_running_agents_file(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    cfg = AgentConfig.for_device("pump-9", "plant1", "mqtt://user:secret@127.0.0.1:1", tmp_path,
                                 link={"backoff_min_s": 5.0}, model={"default_bundle": False})
    frames = [Frame.from_samples("n", 0, s, s * 80_000, 12800.0, np.zeros(1024)) for s in range(8)]
    Agent(cfg, ReplaySource(frames)).run(threading.Event())
    code, out, _ = run_cli(["agent", "status", "--state-dir", str(tmp_path)], capsys)
    assert code == 0
    assert "plant1/pump-9" in out and "outbox" in out and "secret" not in out
    # all-zero samples: a flatlined sensor, reported per channel and never scored
    assert "quality  n/0 bad" in out and "(3 windows not scored)" in out
    assert "drift    off" in out          # the z-score detector ships no training_stats
    latency = [line for line in out.splitlines() if line.startswith("latency  quality")]
    assert latency and "p50" in latency[0] and "p99" in latency[0]
    code, out, _ = run_cli(["agent", "status", "--state-dir", str(tmp_path), "--json"], capsys)
    data = json.loads(out)
    assert data["device"] == "pump-9" and "secret" not in out
    assert data["link"]["broker"] == "mqtt://[REDACTED]@127.0.0.1:1"
    assert data["channels"] == {"n/0": "bad"} and data["counters"]["dq_flatline"] == 3
    code, _, err = run_cli(["agent", "status", "--state-dir", str(tmp_path / "none")], capsys)
    assert code == 2 and "no status file" in err


def _rows(args: list[str], capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    code, out, err = run_cli(["agent", "replay", *args], capsys)
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def test_replay_femto_csv_folder_reads_like_the_npz(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """FEMTO's original acc_NNNNN.csv folder and its .npz packing replay identically."""
    rng = np.random.default_rng(3)
    acc_mg = (rng.normal(size=(24, 2560, 2)) * 400).astype(np.int32)
    acc_mg[16:] *= 6                                  # the bearing degrades
    t_s = np.arange(24) * 10.0
    np.savez(tmp_path / "Bearing2_9.npz", acc_mg=acc_mg, t_s=t_s, sample_rate_hz=25_600.0,
             source="Bearing2_9")
    folder = tmp_path / "Bearing2_9"
    folder.mkdir()
    for i, snap in enumerate(acc_mg):
        sep = ";" if i % 2 else ","                   # FEMTO's files use both
        lines = [sep.join([str(9 + i // 360), str(i // 6 % 60), str(i % 6 * 10), str(j * 39),
                           f"{h / 1000:.3f}", f"{v / 1000:.3f}"])
                 for j, (h, v) in enumerate(snap)]
        (folder / f"acc_{i + 1:05d}.csv").write_text("\n".join(lines) + "\n")
    args = ["--channel", "vertical", "--commission-s", "100"]
    rows = _rows([str(folder), *args], capsys)
    assert len(rows) == 24                            # one window per snapshot
    assert rows == _rows([str(tmp_path / "Bearing2_9.npz"), *args], capsys)
    assert not any(r["alert"] for r in rows[:16]) and rows[-1]["alert"]
    assert rows[0]["channel"] == 1                    # vertical is the second channel


def _wav(path: Path, x: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(x.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(x.astype("<i2").tobytes())


def test_replay_wav_reads_like_the_same_csv(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(4)
    x = np.clip(rng.normal(size=(40_000, 2)) * 3000, -32768, 32767).astype(np.int16)
    _wav(tmp_path / "rec.wav", x, 12_800)
    lines = [f"{i / 12_800!r},{a / 32768!r}" for i, a in enumerate(x[:, 1].tolist())]
    (tmp_path / "rec.csv").write_text("t_s,ch1\n" + "\n".join(lines) + "\n")
    rows = _rows([str(tmp_path / "rec.wav"), "--channel", "ch1", "--commission-s", "1"], capsys)
    assert len(rows) == (40_000 - 4096) // 2048 + 1   # 0.32 s windows, 0.16 s hop
    csv_rows = _rows([str(tmp_path / "rec.csv"), "--commission-s", "1"], capsys)
    assert [r["anomaly_score"] for r in rows] == [r["anomaly_score"] for r in csv_rows]
    code, _, err = run_cli(["agent", "replay", str(tmp_path / "rec.wav"), "--channel", "ch2"],
                           capsys)
    assert code == 2 and "no channel 'ch2'" in err and "ch0, ch1" in err


def test_replay_mfpt_mat(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import scipy.io

    rng = np.random.default_rng(5)
    gs = rng.normal(size=48_828 * 3) * 0.5
    scipy.io.savemat(tmp_path / "OuterRaceFault_vload_1.mat",
                     {"bearing": {"gs": gs[:, None], "sr": 48_828.0, "rate": 25.0}})
    rows = _rows([str(tmp_path / "OuterRaceFault_vload_1.mat"), "--channel", "gs",
                  "--commission-s", "1"], capsys)
    assert len(rows) == int((3.0 - 0.32) / 0.16) + 1
    assert rows[0]["anomaly_score"] is None and rows[-1]["anomaly_score"] is not None
    code, _, err = run_cli(["agent", "replay", str(tmp_path / "OuterRaceFault_vload_1.mat"),
                            "--channel", "DE"], capsys)
    assert code == 2 and "no channel 'DE'" in err


def test_replay_cwru_fan_end_channel(shared_data: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = shared_data / "cwru" / "normal_0_97.mat"      # 48 kHz, no rate in the file
    rows = _rows([str(path), "--channel", "fe", "--commission-s", "1"], capsys)
    assert {r["channel"] for r in rows} == {1}          # DE, FE: FE is the second
    import scipy.io

    n = next(v.size for k, v in scipy.io.loadmat(str(path)).items() if k.endswith("_FE_time"))
    assert len(rows) == (n - 15_360) // 7_680 + 1         # 0.32 s windows at 48 kHz


def test_replay_frame_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from foreshock.wire import encode

    rng = np.random.default_rng(6)
    frames = [Frame.from_samples("node-1", ch, s, 1_000_000 + s * 80_000, 12_800.0,
                                 rng.normal(size=1024) * 0.2)
              for s in range(40) for ch in (0, 3)]
    path = tmp_path / "rec.fsf"
    path.write_bytes(b"".join(encode(f) for f in frames))
    rows = _rows([str(path), "--channel", "3", "--commission-s", "1"], capsys)
    assert {r["channel"] for r in rows} == {3}
    assert len(rows) == (40 * 1024 - 4096) // 2048 + 1
    assert len(_rows([str(path), "--commission-s", "1"], capsys)) == 2 * len(rows)
    code, _, err = run_cli(["agent", "replay", str(path), "--channel", "1"], capsys)
    assert code == 2 and "no channel '1'" in err and "0, 3" in err
