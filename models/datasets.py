"""Recordings for training and evaluation, all as one :class:`Recording`.

The file formats (CWRU and MFPT ``.mat``, FEMTO ``.npz`` and ``acc_NNNNN.csv`` folders, WAV,
CSV) are read by :mod:`agent.recordings`, the readers ``foreshock agent replay`` uses, so
training and replay read a recording identically; see that module for each format's rules.
This module adds ``sim:<scenario>``: a ``firmware_sim`` scenario rendered to a recording
(imported lazily; the agent never imports the simulator). Bad input raises
:class:`DataError`.
"""

from __future__ import annotations

from pathlib import Path

from agent.recordings import (
    CWRU_48K_RECORDS,
    CWRU_FAULTS,
    FEMTO_RPM,
    Recording,
    cwru_label,
    cwru_sample_rate_hz,
    load_csv,
    load_femto_csv_dir,
    load_femto_npz,
    load_mat,
    load_wav,
)
from agent.recordings import load as load_file

__all__ = ["CWRU_48K_RECORDS", "CWRU_FAULTS", "FEMTO_RPM", "Recording", "cwru_label",
           "cwru_sample_rate_hz", "load", "load_csv", "load_femto_csv_dir", "load_femto_npz",
           "load_mat", "load_scenario", "load_wav"]


def load(path: str | Path, *, channel: str | None = None, sample_rate_hz: float | None = None,
         rpm: float | None = None) -> Recording:
    """Read any supported recording file or folder, or ``sim:<scenario>``; ``channel``
    keeps that one channel; ``sample_rate_hz`` and ``rpm`` override the file."""
    text = str(path)
    if text.startswith("sim:"):
        return load_scenario(text[4:], rpm=rpm).override(channel=channel)
    return load_file(path, channel=channel, sample_rate_hz=sample_rate_hz, rpm=rpm)


def load_scenario(name: str, *, seconds: float | None = None, seed: int = 0,
                  rpm: float | None = None, device_id: str = "sim-0") -> Recording:
    """Render a ``firmware_sim`` scenario's frames into a recording (lazy import)."""
    from models.simdata import render_scenario

    return render_scenario(name, seconds=seconds, seed=seed, rpm=rpm, device_id=device_id)
