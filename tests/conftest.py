"""Shared fixtures: a real mosquitto broker, real PostgreSQL, and the shared bearing data.

Nothing here mocks Foreshock code. When a required component is missing the fixture fails
the test (it never skips), except for ``shared_data`` outside CI.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
CONF_TEMPLATE = Path(__file__).with_name("mosquitto.conf.in")
IN_CI = os.environ.get("CI", "").lower() == "true"

# CI runs the same examples on every run (a failure there reproduces, and a rare random
# counterexample cannot block a submission; development runs keep exploring new examples)
# and prints the reproduction blob of any failure. No deadline: the machine is shared.
settings.register_profile("ci", derandomize=True, print_blob=True, deadline=None)
if IN_CI:
    settings.load_profile("ci")


def pytest_report_header(config: pytest.Config) -> str:
    """Free space where the tests write: a full shared disk otherwise shows up only as an
    internal error in the middle of a run."""
    tmp = tempfile.gettempdir()
    free_gb = shutil.disk_usage(tmp).free / 1e9
    note = "  (LOW: the end-to-end tests need about 1 GB)" if free_gb < 1 else ""
    return f"free disk in {tmp}: {free_gb:.1f} GB{note}"


_internal_errors: list[str] = []


def pytest_internalerror(excrepr: object, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    _internal_errors.append(f"{excinfo.typename}: {excinfo.value}")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Repeat an internal error just above the final counts, where a log cut to its last
    lines still shows it."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for line in _internal_errors:
        if reporter is not None:
            reporter.write_line(f"pytest internal error: {line}", red=True)


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    """Commands run in-process (``main([...])``) give the root logger a handler on the stderr
    pytest captured for that test; threads still logging after it would write to a closed
    stream. pytest's own capture handlers are subclasses and stay."""
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if type(h) is logging.StreamHandler and h not in before:
            root.removeHandler(h)
    root.setLevel(level)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s}s")


class Mosquitto:
    """A real mosquitto process on a free loopback port that tests may stop and restart."""

    def __init__(self, workdir: Path, conf_text: str | None = None) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            pytest.fail("mosquitto is not installed: the tests need a real broker "
                        "(apt-get install mosquitto mosquitto-clients)")
        self.exe = exe
        self.host = "127.0.0.1"
        self.port = free_port()
        self.workdir = workdir
        self.conf = workdir / f"mosquitto-{self.port}.conf"
        text = conf_text if conf_text is not None else CONF_TEMPLATE.read_text()
        self.conf.write_text(text.format(port=self.port, workdir=workdir))
        self.log = workdir / f"mosquitto-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> None:
        if self.proc and self.proc.poll() is None:
            return
        logf = open(self.log, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=logf, stderr=logf)
        try:
            wait_port(self.port)
        except TimeoutError:
            self.stop()
            pytest.fail(f"mosquitto did not start; log: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One broker for the session. Tests that cut the broker use ``mosquitto_private``."""
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def mosquitto_private(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker of the test's own, free to stop, kill and restart."""
    broker = Mosquitto(tmp_path)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def make_mosquitto(tmp_path: Path) -> Iterator[object]:
    """Factory for a broker from a custom config text (``{port}`` and ``{workdir}`` filled)."""
    brokers: list[Mosquitto] = []

    def make(conf_text: str) -> Mosquitto:
        broker = Mosquitto(tmp_path, conf_text)
        broker.start()
        brokers.append(broker)
        return broker

    yield make
    for b in brokers:
        b.stop()


@pytest.fixture
def postgres_dsn() -> Iterator[str]:
    """A fresh PostgreSQL database on the local server, dropped afterwards."""
    import psycopg  # the postgres extra is part of the test extras: fail, never skip
    base = os.environ.get("FORESHOCK_TEST_PG", "host=127.0.0.1 port=5432 user=postgres")
    name = f"fs_test_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(f"{base} dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable ({base}): {exc}")
    yield f"{base} dbname={name}"
    with psycopg.connect(f"{base} dbname=postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``. Skips outside CI when absent (a public clone); fails in CI."""
    if not (SHARED_DATA / "cwru").is_dir():
        if IN_CI:
            pytest.fail(f"shared data not found at {SHARED_DATA} (required when CI=true)")
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``foreshock ARGS`` in this process: (exit code, stdout, stderr)."""
    from foreshock.cli import main

    with pytest.raises(SystemExit) as exc:
        main([*args])
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def evaluate_learning_module() -> ModuleType:
    """``scripts/evaluate_learning.py`` loaded as a module (it is a script, not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "scripts" / "evaluate_learning.py"
    spec = importlib.util.spec_from_file_location("evaluate_learning", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
