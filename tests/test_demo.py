"""End to end: `foreshock demo` against a real mosquitto, and the README quick start as a
new user runs it (fresh virtualenv, `pip install .`, `foreshock demo`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from foreshock import topics

ROOT = Path(__file__).resolve().parent.parent


def run_demo(*args: str, timeout_s: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "foreshock.cli", "demo", *args],
                          capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)


def test_demo_end_to_end_on_real_mosquitto(mosquitto, tmp_path: Path) -> None:
    import paho.mqtt.client as mqtt

    seen: list[str] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.on_message = lambda c, u, m: seen.append(m.topic)
    sub.connect(mosquitto.host, mosquitto.port)
    sub.subscribe(f"{topics.ROOT}/demo/#", qos=1)
    sub.loop_start()
    summary_path = tmp_path / "summary.json"
    try:
        result = run_demo("--duration-s", "30", "--devices", "2", "--no-live",
                          "--broker", mosquitto.url, "--state-dir", str(tmp_path / "state"),
                          "--summary-json", str(summary_path))
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    summary = json.loads(summary_path.read_text())
    assert summary["ok"] is True and summary["lost"] == 0
    healthy, faulty = summary["devices"]
    assert (healthy["faulty"], faulty["faulty"]) == (False, True)
    assert healthy["alerts_raised"] == 0 and faulty["alerts_raised"] >= 1
    for device in summary["devices"]:
        assert device["windows"] > 50
        assert device["model"]["name"] == "foreshock-default"
        assert device["records_stored"] == device["records_written"] > device["windows"] // 2
        assert device["stored_by_kind"]["telemetry"] > 0
    # The incident names the fault by the time it is updated (a weak early fault may be
    # raised as "unknown" first).
    assert "outer_race" in faulty["alert_faults"], faulty
    # A control-room subscriber sees every topic kind on the real broker.
    kinds = {t.split("/", 4)[4] for t in seen}
    assert {"state", "telemetry", "alert", "health"} <= kinds
    assert any(t.endswith("/_control/alert") for t in seen)
    # The gateway's store on disk holds the alert with its explanation.
    from gateway.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 'state' / 'gateway.sqlite'}")
    alerts = [a for a in store.alerts(device=faulty["device"]) if a["status"] == "raised"]
    assert alerts and alerts[0]["explanation"]["top_features"]
    assert store.alerts(device=healthy["device"]) == []
    store.close()


def test_demo_rejects_bad_options_in_one_line() -> None:
    result = run_demo("--devices", "1", timeout_s=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert re.search(r"^error: --devices 1 is out of range", result.stderr, re.M)


@pytest.mark.slow
def test_readme_quick_start_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    """`pip install .` then `foreshock demo`, exactly as the README's first screen says."""
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("```", 2)[1]
    assert "pip install ." in quick and "foreshock demo" in quick
    src = tmp_path / "foreshock-src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache",
        ".mypy_cache", ".ruff_cache", ".hypothesis"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bindir = env_dir / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    install = subprocess.run([str(bindir / "pip"), "install", "-q", "."], cwd=src, env=env,
                             capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    home = tmp_path / "home"  # a user's directory, not the source tree
    home.mkdir()
    demo = subprocess.run([str(bindir / "foreshock"), "demo", "--duration-s", "20"], cwd=home,
                          env=env, capture_output=True, text=True, timeout=300)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "messages lost: 0" in demo.stdout
    assert "PASS" in demo.stdout
