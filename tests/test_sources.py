"""Each transport carries frames from the real ``foreshock sim run`` process into the
matching agent source: a recording file, a real UDP socket, real mosquitto, a real pty."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from agent.sources import Source
from agent.sources.file import FileSource
from agent.sources.mqtt import MqttSource
from agent.sources.serial import SerialSource
from agent.sources.udp import UdpSource
from firmware_sim.node import Scenario, fleet
from foreshock.errors import ConfigError
from foreshock.wire import Frame, decode

TINY = """
name = "tiny"
description = "small frames for transport tests"
sample_rate_hz = 2000.0
frame_samples = 200
sample_format = "int16"
duration_s = 2.0
seed = 3

[[faults]]
kind = "outer_race"

[fleet]
devices = 2
device_prefix = "tiny"
"""
PER_NODE = 20  # 2 s of 0.1 s frames


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def sim(scenario: Path, *args: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "foreshock.cli", "sim", "run", "--scenario", str(scenario),
           *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def collect(source: Source, proc: subprocess.Popen[str], want: int,
            timeout_s: float = 60.0) -> list[Frame]:
    got: list[Frame] = []
    deadline = time.monotonic() + timeout_s
    ended_at: float | None = None
    while len(got) < want and time.monotonic() < deadline and not source.exhausted:
        got += source.read(0.2)
        if ended_at is None and proc.poll() is not None:
            ended_at = time.monotonic()
        if ended_at is not None and time.monotonic() - ended_at > 2.0:
            break
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "sent" in out
    return got


def expected(scenario: Path) -> dict[tuple[str, int], np.ndarray]:
    """What the nodes send, generated in this process from the same file and seeds."""
    frames = {}
    for node in fleet(Scenario.load(scenario), start_time_s=0.0):
        for _ in range(PER_NODE):
            frame = decode(node.next_frame_bytes())
            frames[(frame.device_id, frame.seq)] = frame.raw
    return frames


def check(got: list[Frame], scenario: Path, min_per_node: int = PER_NODE) -> None:
    want = expected(scenario)
    for device in ("tiny-000", "tiny-001"):
        seqs = [f.seq for f in got if f.device_id == device]
        assert len(seqs) >= min_per_node, (device, seqs)
        assert seqs == list(range(seqs[0], PER_NODE))  # in order, no gaps after the first
    for frame in got:
        assert frame.rpm > 0 and frame.sample_rate_hz == 2000.0
        assert np.array_equal(frame.raw, want[(frame.device_id, frame.seq)])


def test_file_transport(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "rec.fsf"
    proc = sim(tiny, "--transport", "file", "--out", str(out), "--max-speed")
    proc.wait(60)
    source = FileSource(out)
    got = collect(source, proc, 2 * PER_NODE)
    check(got, tiny)
    assert source.exhausted and source.stats["bad_frames"] == 0
    assert out.stat().st_size == sum(f.raw.nbytes + 32 + len(f.device_id) + 4 for f in got)


def test_udp_transport(tiny: Path) -> None:
    source = UdpSource("127.0.0.1", 0)
    try:
        proc = sim(tiny, "--transport", "udp", "--port", str(source.address[1]), "--speed", "4")
        check(collect(source, proc, 2 * PER_NODE), tiny)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"FS not a frame", source.address)
        assert source.read(2.0) == []
        assert source.stats["bad_frames"] == 1 and source.stats["dropped_bytes"] == 14
    finally:
        source.close()


def test_mqtt_transport(tiny: Path, mosquitto: object) -> None:
    url = mosquitto.url  # type: ignore[attr-defined]
    sources = [MqttSource(url, "t1", f"tiny-00{i}") for i in (0, 1)]
    try:
        for s in sources:
            assert s.subscribed.wait(10)
        proc = sim(tiny, "--transport", "mqtt", "--broker", url, "--site", "t1", "--speed", "4")
        got = collect(sources[0], proc, PER_NODE) + collect_more(sources[1])
        check(got, tiny)
    finally:
        for s in sources:
            s.close()


def collect_more(source: Source) -> list[Frame]:
    got: list[Frame] = []
    deadline = time.monotonic() + 10
    while len(got) < PER_NODE and time.monotonic() < deadline:
        got += source.read(0.2)
    return got


def test_serial_transport_over_a_pty(tiny: Path) -> None:
    proc = sim(tiny, "--transport", "serial", "--speed", "2")
    assert proc.stdout is not None
    first = proc.stdout.readline().split()
    assert first[0] == "serial" and os.path.exists(first[1]), first
    source = SerialSource(first[1], baudrate=115_200)
    try:
        got = collect(source, proc, 2 * PER_NODE)
        # Opening a serial port flushes what arrived before it was opened: allow that loss.
        check(got, tiny, min_per_node=PER_NODE - 3)
        assert source.stats["bad_frames"] == 0
    finally:
        source.close()


def test_file_source_skips_and_counts_damage(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "rec.fsf"
    subprocess.run([sys.executable, "-m", "foreshock.cli", "sim", "run", "--scenario",
                    str(tiny), "--transport", "file", "--out", str(out), "--max-speed"],
                   check=True, capture_output=True)
    data = bytearray(out.read_bytes())
    size = len(data) // (2 * PER_NODE)  # every frame has the same size here
    data[5 * size + 40] ^= 0xFF  # damage frame 5
    damaged = bytes(data[: 10 * size]) + b"garbage FS junk" + bytes(data[10 * size: -7])
    out.write_bytes(damaged)
    source = FileSource(out, chunk_bytes=1000)
    frames: list[Frame] = []
    while not source.exhausted:
        frames += source.read(0.0)
    assert len(frames) == 2 * PER_NODE - 2  # the damaged and the truncated last frame
    assert source.stats["bad_frames"] >= 1
    assert source.stats["dropped_bytes"] >= len(b"garbage FS junk") + size - 7


@pytest.mark.parametrize("args, message", [
    (["--transport", "pigeon"], "--transport"),
    (["--transport", "udp"], "--port"),
    (["--transport", "file"], "--out"),
    (["--transport", "mqtt", "--broker", "http://x"], "--broker"),
    (["--transport", "file", "--out", "x.fsf", "--speed", "-1"], "--speed"),
    (["--transport", "file", "--out", "x.fsf", "--channels", "7"], "--channels"),
])
def test_cli_bad_options_one_line_exit_2(tiny: Path, tmp_path: Path, args: list[str],
                                         message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "foreshock.cli", "sim", "run", "--scenario",
                           str(tiny), *args], capture_output=True, text=True, cwd=tmp_path,
                          timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ")


def test_cli_list_names_builtin_scenarios() -> None:
    proc = subprocess.run([sys.executable, "-m", "foreshock.cli", "sim", "list"],
                          capture_output=True, text=True, timeout=60, check=True)
    assert "outer-race-growing" in proc.stdout and "healthy" in proc.stdout


@pytest.mark.parametrize("make", [
    lambda: SerialSource("/dev/does-not-exist"),
    lambda: UdpSource("127.0.0.1", 70_000),
    lambda: MqttSource("tcp://nowhere", "s", "d"),
])
def test_sources_reject_bad_settings(make: Callable[[], object]) -> None:
    with pytest.raises(ConfigError):
        make()
