"""Dependency rules of docs/architecture.md, checked on the source (a forbidden import fails)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "agent": {"gateway", "firmware_sim", "models"},
    "gateway": {"agent", "firmware_sim", "models"},
    "firmware_sim": {"agent", "gateway", "models"},
    "models": {"gateway"},
}
# Contract modules of foreshock/ import nothing of ours; only the composition roots do.
COMPOSITION_ROOTS = {"foreshock/cli.py", "foreshock/demo.py"}
DEVICE_PATH_FORBIDDEN = {"scipy.signal", "sklearn"}
# The agent modules models may import: training computes exactly the device's features and
# reads a recording exactly as replay does.
MODELS_MAY_IMPORT_FROM_AGENT = ("agent.features", "agent.recordings")


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_keep_to_their_dependency_rules(package: str) -> None:
    bad = []
    for path in sources(package):
        for name in imports_of(path):
            top = name.split(".")[0]
            if top in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
            if package == "models" and top == "agent" and not any(
                    name == m or name.startswith(m + ".") for m in MODELS_MAY_IMPORT_FROM_AGENT):
                bad.append(f"{path.relative_to(ROOT)} imports {name} (models may import "
                           f"{' and '.join(MODELS_MAY_IMPORT_FROM_AGENT)} only)")
    assert not bad, "\n".join(bad)


def test_contract_modules_import_nothing_of_ours() -> None:
    bad = []
    for path in sources("foreshock"):
        rel = path.relative_to(ROOT).as_posix()
        if rel in COMPOSITION_ROOTS:
            continue
        for name in imports_of(path):
            if name.split(".")[0] in {"agent", "gateway", "models", "firmware_sim"}:
                bad.append(f"{rel} imports {name}")
    assert not bad, "\n".join(bad)


def test_device_path_avoids_heavy_imports() -> None:
    bad = []
    for path in sources("agent"):
        for name in imports_of(path):
            if any(name == f or name.startswith(f + ".") for f in DEVICE_PATH_FORBIDDEN):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_recordings_load_scipy_only_for_mat_files() -> None:
    """Importing the readers (and reading a non-.mat file) pulls in no scipy module."""
    import subprocess
    import sys

    code = ("import sys, tempfile, pathlib; import agent.recordings as r, models.datasets; "
            "p = pathlib.Path(tempfile.mkdtemp()) / 'a.csv'; p.write_text('t_s,x\\n0,1\\n"
            "0.001,2\\n'); r.load(p); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'scipy'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
