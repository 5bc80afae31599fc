"""The root CLI: lazy sub-commands, one-line errors, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from foreshock.cli import SUBCOMMANDS


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "foreshock.cli", *args],
                          capture_output=True, text=True, timeout=120)


def test_help_imports_neither_onnxruntime_nor_scipy() -> None:
    code = (
        "import sys, json\n"
        "from foreshock.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted(m for m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    modules = json.loads(out.strip().splitlines()[-1])
    heavy = [m for m in modules if m.split(".")[0] in
             {"onnxruntime", "scipy", "paho", "sqlite_utils", "amqtt", "agent", "gateway"}]
    assert heavy == []
    help_text = run("--help").stdout
    for name in SUBCOMMANDS:
        assert name in help_text


def test_version() -> None:
    from foreshock import __version__

    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"foreshock {__version__}"


def test_unknown_command_is_a_usage_error() -> None:
    result = run("no-such-command")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_subcommand_has_help(name: str) -> None:
    result = run(name, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout
