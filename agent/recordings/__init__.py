"""Every recording format Foreshock reads, for ``foreshock agent replay`` and for training.

This is the one home of the file readers: ``models.datasets`` imports them, so training and
replay read a recording identically (docs/architecture.md). Only numpy, the standard library
and, lazily when a ``.mat`` is read, ``scipy.io``. ``load(path)`` picks by suffix / layout:

- CWRU ``.mat`` (``X<rec>_DE_time`` / ``_FE_time`` / ``_BA_time`` in g, channels ``DE``,
  ``FE``, ``BA``; shaft speed from ``X<rec>RPM``) and MFPT-style ``.mat`` (a ``bearing``
  struct with ``gs`` in g, ``sr`` and shaft ``rate`` in Hz; channel ``gs``). CWRU files do
  not state their sample rate: an explicit ``sample_rate_hz`` wins, then a ``12k``/``48k``
  token in the file name, then the CWRU record number (normal baselines 97-100 and the 48 kHz
  drive-end records), else 12 kHz.
- FEMTO ``.npz`` packing (``acc_mg`` int32 [snapshots, 2560, 2], ``t_s``, ``sample_rate_hz``)
  and FEMTO's original folders of ``acc_NNNNN.csv`` snapshots (hour, minute, second,
  microsecond, horizontal g, vertical g; ``,`` or ``;`` separated) given as a directory;
  channels ``horizontal``, ``vertical``; the rig's shaft speed from ``Bearing<cond>_<n>``.
- WAV (8/16/24/32-bit PCM scaled to [-1, 1) g times ``scale``; channels ``ch0``, ``ch1``...).
- CSV: one column per channel, an optional header naming them; a ``t_s``/``time`` column
  gives the rate, else ``sample_rate_hz`` must.
- ``.fsf`` / ``.frames``: a recorded frame stream (docs/protocol.md), replayed as is
  (:func:`load_frames`).

Simulator scenarios (``sim:<scenario>``) are rendered by ``models.datasets`` only: the agent
never imports ``firmware_sim``. To replay one, record it to a frame file and replay that:
``foreshock sim run --scenario NAME --transport file --out rec.fsf --max-speed`` then
``foreshock agent replay rec.fsf``.

A recording is a stack of contiguous segments (one for a continuous record, one per FEMTO
snapshot) so windows never straddle a gap. Bad input raises :class:`DataError` (exit 2).

The package holds :mod:`agent.recordings.recording` (the :class:`Recording` value),
:mod:`agent.recordings.readers` (the readers and :func:`load`) and
:mod:`agent.recordings.replay` (``foreshock agent replay``); every name is importable from
here.
"""

from agent.recordings.readers import (
    CWRU_48K_RECORDS,
    CWRU_FAULTS,
    FEMTO_RPM,
    FRAME_SUFFIXES,
    READ_ERRORS,
    SUPPORTED,
    cwru_label,
    cwru_sample_rate_hz,
    load,
    load_csv,
    load_femto_csv_dir,
    load_femto_npz,
    load_frames,
    load_mat,
    load_wav,
)
from agent.recordings.recording import EPOCH_US, FRAME_SAMPLES, Recording
from agent.recordings.replay import ReplayOptions, replay_recording

__all__ = [
    "CWRU_48K_RECORDS", "CWRU_FAULTS", "EPOCH_US", "FEMTO_RPM", "FRAME_SAMPLES",
    "FRAME_SUFFIXES", "READ_ERRORS", "SUPPORTED", "Recording", "ReplayOptions", "cwru_label",
    "cwru_sample_rate_hz", "load", "load_csv", "load_femto_csv_dir", "load_femto_npz",
    "load_frames", "load_mat", "load_wav", "replay_recording",
]
