"""Evaluation report (docs/evaluation.md); see run_all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from foreshock.errors import DataError


def run_all(data_dir: Path | None, report: Path, *, quick: bool = False) -> dict[str, Any]:
    raise DataError("evaluation is not built yet")
