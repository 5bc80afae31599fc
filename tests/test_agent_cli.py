"""`foreshock agent` commands through the real root CLI, in a subprocess-free way."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from agent.config import AgentConfig
from agent.service import Agent
from agent.sources import ReplaySource
from foreshock.cli import main
from foreshock.errors import ConfigError
from foreshock.wire import Frame

SAMPLE = Path(__file__).resolve().parent.parent / "agent" / "deploy" / "agent.toml.sample"


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


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
