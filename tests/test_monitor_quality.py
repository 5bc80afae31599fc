"""Data integrity checks of agent.monitor.quality on synthetic, fuzzed and real windows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from agent.monitor import DataQualityMonitor, Quality, QualityConfig, WindowMeta
from foreshock.messages import validate_record
from foreshock.wire import Frame, SampleFormat

RATE_HZ = 12800.0
N = 4096


def clean(seed: int = 0, amp_g: float = 1.0, noise: float = 0.3, f_hz: float = 49.0
          ) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(N) / RATE_HZ
    x = amp_g * np.sin(2 * np.pi * f_hz * t) + noise * amp_g * rng.standard_normal(N)
    return x.astype(np.float32)


@dataclass(frozen=True)
class WindowSpec:
    """What agent.window.Windower reads of a feature spec."""

    sample_rate_hz: float = RATE_HZ
    window_samples: int = N
    overlap: float = 0.5


def meta(channel: int = 0, at_s: float = 0.0) -> WindowMeta:
    return WindowMeta("pump-1", channel, at_s, RATE_HZ)


def verdict(x: np.ndarray) -> Quality:
    return DataQualityMonitor().check(x, meta())


@settings(max_examples=150, deadline=None)
@given(hnp.arrays(np.float32, st.integers(0, 600),
                  elements=st.floats(width=32, allow_nan=True, allow_infinity=True)))
def test_arbitrary_windows_never_crash(x: np.ndarray) -> None:
    q = verdict(x)
    assert isinstance(q, Quality)
    if x.size == 0 or not np.all(np.isfinite(x)):
        assert not q.scoreable
    for issue in q.issues:
        issue.to_json()


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(0, 64)),
                  elements=st.floats(allow_nan=True, allow_infinity=True)))
def test_arbitrary_batches_never_crash(x: np.ndarray) -> None:
    metas = [meta(channel=i) for i in range(x.shape[0])]
    out = DataQualityMonitor().check_batch(x, metas)
    assert [q.channel for q in out] == list(range(x.shape[0]))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31), st.floats(0.01, 20.0), st.floats(0.05, 2.0),
       st.floats(5.0, 3000.0))
def test_clean_sine_plus_noise_is_ok(seed: int, amp_g: float, noise: float, f_hz: float) -> None:
    q = verdict(clean(seed, amp_g, noise, f_hz))
    assert q.ok, q.issues
    assert q.scoreable


def test_bearing_impacts_are_not_spikes() -> None:
    """Decaying resonance bursts at a defect rate are vibration, not glitches."""
    rng = np.random.default_rng(3)
    t = np.arange(N) / RATE_HZ
    x = 0.05 * rng.standard_normal(N)
    for start in np.arange(0.0, t[-1], 1 / 107.0):
        tau = t - start
        burst = np.where(tau >= 0, np.exp(-tau * 900) * np.sin(2 * np.pi * 3100 * tau), 0.0)
        x += 3.0 * burst
    assert verdict(x.astype(np.float32)).ok


def test_clipped_window_is_flagged() -> None:
    q = verdict(np.clip(clean(1), -0.9, 0.9))
    assert q.checks == ("clipping",)
    assert not q.scoreable


def test_one_sided_clipping_is_flagged() -> None:
    assert "clipping" in verdict(np.minimum(clean(2), 1.1)).checks


@pytest.mark.parametrize("x", [np.full(N, 0.25, np.float32), np.zeros(N, np.float32),
                               np.repeat(clean(4)[::64], 64)])
def test_flatlined_window_is_flagged(x: np.ndarray) -> None:
    q = verdict(x)
    assert q.checks == ("flatline",)
    assert not q.scoreable


@pytest.mark.parametrize("where", [0, 1000, N - 1])
def test_isolated_spike_is_flagged(where: int) -> None:
    x = clean(5)
    x[where] = 40.0
    q = verdict(x)
    assert q.checks == ("spikes",)
    assert q.issues[0].value == 1
    assert not q.scoreable


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_window_is_flagged(bad: float) -> None:
    x = clean(6)
    x[[3, 700]] = bad
    q = verdict(x)
    assert q.checks == ("non_finite",)
    assert q.issues[0].value == 2
    assert not q.scoreable


def test_batch_matches_single_checks() -> None:
    rows = [clean(7), np.clip(clean(8), -0.8, 0.8), np.zeros(N, np.float32), clean(9)]
    rows[3][50] = np.nan
    batch = DataQualityMonitor().check_batch(np.stack(rows), [meta(i) for i in range(4)])
    assert [q.checks for q in batch] == [(), ("clipping",), ("flatline",), ("non_finite",)]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["clean", "plateau", "spike", "impacts", "quantized", "stuck"]),
                min_size=1, max_size=12), st.integers(0, 2**16))
def test_batch_screens_agree_with_each_window_alone(kinds: list[str], seed: int) -> None:
    """The screens run over the whole batch (counts summed over rows, per-side masks);
    every row must get the verdict it gets alone, whatever its neighbours in the batch."""
    rng = np.random.default_rng(seed)
    rows = []
    for k, kind in enumerate(kinds):
        x = clean(seed + k, amp_g=float(rng.uniform(0.05, 3.0)))
        if kind == "plateau":  # a few samples exactly at the top: near the plateau limit
            x[rng.choice(N, int(rng.integers(2, 14)), replace=False)] = x.max()
        elif kind == "spike":
            x[int(rng.integers(0, N))] += float(rng.choice([-1, 1]) * rng.uniform(5, 50))
        elif kind == "impacts":
            hits = np.zeros(N)
            hits[int(rng.integers(0, 60))::int(rng.integers(60, 200))] = rng.uniform(2, 20)
            ring = np.exp(-np.arange(40) / 6.0) * np.sin(np.arange(40) * 1.4)
            x += np.convolve(hits, ring)[:N].astype(np.float32)
        elif kind == "quantized":
            x = np.round(x * 20) / np.float32(20)
        elif kind == "stuck":
            x = np.repeat(x[::40], 40)[:N]
        rows.append(x.astype(np.float32))
    mon = DataQualityMonitor()
    batch = [q.checks for q in mon.check_batch(np.stack(rows), [meta(i) for i in range(len(rows))])]
    alone = [DataQualityMonitor().check(x, meta(i)).checks for i, x in enumerate(rows)]
    assert batch == alone


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([4096, 1000, 64, 9, 3]), st.integers(1, 10), st.integers(2, 12),
       st.integers(0, 2**16), st.booleans())
def test_grouped_clip_screen_flags_the_rows_a_full_count_flags(
        width: int, rows: int, min_samples: int, seed: int, quantized: bool) -> None:
    """The plateau screen counts samples only in rows with enough groups at the extreme
    (pigeonhole over checks._extreme_groups); it must flag exactly the rows a count of
    every sample flags, at every width (group sizes 8, 4, 2 or none) and limit."""
    from agent.monitor import checks

    rng = np.random.default_rng(seed)
    cfg = QualityConfig(clip_min_samples=min_samples)
    x = rng.standard_normal((rows, width)).astype(np.float32)
    if quantized:
        x = np.round(x * 4) / np.float32(4)
    # plateaus of 1 to 2x the limit at the top, the bottom or both; scattered, or packed
    # into as few groups as possible (every g-th sample of a stride: the pigeonhole's edge)
    packed = np.arange(width).reshape(-1, width // 8 if width % 8 == 0 else 1).T.ravel()
    for row in x:
        k = int(rng.integers(1, 2 * max(min_samples, int(0.002 * width) + 1) + 1))
        if rng.integers(0, 2):
            at = rng.choice(width, min(k, width), replace=False)
        else:
            at = np.roll(packed, -8 * int(rng.integers(0, max(1, width // 8))))[:k]
        side = rng.integers(0, 3)
        if side != 1:
            row[at[: len(at) // 2 + 1]] = row.max()
        if side != 0:
            row[at[len(at) // 2:]] = row.min()
    top, bottom = x.max(axis=1).astype(np.float64), x.min(axis=1).astype(np.float64)
    full = np.zeros(rows)
    groups = checks._extreme_groups(x, checks._clip_need(width, cfg))
    if width % 2 == 0 and checks._clip_need(width, cfg) > 2:
        assert groups is not None           # the grouped path is the one under test
    grouped = checks._clip_screen(x, top, bottom, full, cfg, groups)
    counted = checks._clip_screen(x, top, bottom, full, cfg, None)
    assert grouped.tolist() == counted.tolist()
    assert counted.any() == bool(  # the case is not vacuous: plateaus do reach the limit
        np.any([(r >= r.max()).sum() >= checks._clip_need(width, cfg)
                or (r <= r.min()).sum() >= checks._clip_need(width, cfg) for r in x])
    ) or quantized


def frames(x: np.ndarray, *, rate_hz: float = RATE_HZ, true_rate_hz: float = RATE_HZ,
           seqs: list[int] | None = None, fmt: SampleFormat = SampleFormat.FLOAT32,
           scale: float = 1.0, t0_s: float = 1.7e9) -> list[Frame]:
    """Frames of 256 samples; timestamps follow ``true_rate_hz``, headers say ``rate_hz``."""
    out = []
    for k, start in enumerate(range(0, len(x), 256)):
        seq = seqs[k] if seqs else k
        ts_us = round((t0_s + start / true_rate_hz) * 1e6)
        out.append(Frame.from_samples("pump-1", 0, seq, ts_us, rate_hz, x[start:start + 256],
                                      sample_format=fmt, scale=scale))
    return out


def observe_then_check(mon: DataQualityMonitor, fs: list[Frame], x: np.ndarray) -> Quality:
    for f in fs:
        mon.observe_frame(f)
    return mon.check(x, WindowMeta("pump-1", 0, fs[-1].timestamp_us / 1e6, fs[0].sample_rate_hz))


def test_raw_nan_in_frames_is_flagged_even_if_window_was_cleaned() -> None:
    x = np.tile(clean(10), 4)
    dirty = x.copy()
    dirty[300] = np.nan
    q = observe_then_check(DataQualityMonitor(), frames(dirty), np.nan_to_num(dirty[-N:]))
    assert q.checks == ("non_finite",)


def test_int16_full_scale_saturation_from_frames() -> None:
    x = np.tile(clean(11), 4) * 2.0
    mon = DataQualityMonitor()
    q = observe_then_check(mon, frames(x, fmt=SampleFormat.INT16, scale=1.5 / 32767), x[-N:])
    assert "clipping" in q.checks
    ok = observe_then_check(DataQualityMonitor(),
                            frames(x, fmt=SampleFormat.INT16, scale=8.0 / 32767), x[-N:])
    assert ok.ok, ok.issues


def test_sample_rate_drift_from_timestamps() -> None:
    x = np.tile(clean(12), 8)
    off = observe_then_check(DataQualityMonitor(), frames(x, true_rate_hz=RATE_HZ * 1.05), x[-N:])
    assert off.checks == ("rate_drift",)
    assert off.issues[0].value == pytest.approx(0.05, abs=0.002)
    same = observe_then_check(DataQualityMonitor(), frames(x), x[-N:])
    assert same.ok


def test_clock_step_is_not_rate_drift() -> None:
    x = np.tile(clean(13), 8)
    fs = frames(x)
    stepped = [Frame(f.device_id, f.channel, f.seq, f.timestamp_us + (3_600_000_000 if k >= 40
                     else 0), f.sample_rate_hz, f.raw) for k, f in enumerate(fs)]
    mon = DataQualityMonitor()
    assert observe_then_check(mon, stepped, x[-N:]).ok
    assert mon.counters["time_steps"] == 1


def test_sequence_gaps_are_reported_but_scoreable() -> None:
    x = np.tile(clean(14), 4)
    seqs = [k if k < 20 else k + 3 for k in range(len(x) // 256)]
    q = observe_then_check(DataQualityMonitor(), frames(x, seqs=seqs), x[-N:])
    assert q.checks == ("seq_gaps",)
    assert q.issues[0].value == 3
    assert q.scoreable


def test_events_only_on_transitions_and_valid_records() -> None:
    mon = DataQualityMonitor(QualityConfig(bad_after=2, good_after=3))
    seq = [clean(1)] * 3 + [np.zeros(N, np.float32)] * 10 + [clean(2)] * 6 + [np.zeros(N)] * 1
    events = []
    for k, x in enumerate(seq):
        q = mon.check(x, meta(at_s=100.0 + k))
        events += [(k, e) for e in q.events]
    assert [(k, e["detail"]["state"]) for k, e in events] == [(4, "bad"), (15, "ok")]
    bad, ok = events[0][1], events[1][1]
    assert bad["detail"]["issues"][0]["check"] == "flatline"
    assert ok["detail"]["bad_since_ts"] == 104.0
    assert ok["detail"]["bad_windows"] == 10
    for _, body in events:
        validate_record("event", {"seq": 1, "ts": 1.0, "body": body})
    assert mon.states() == {"pump-1/0": "ok"}
    assert mon.counters["dq_events"] == 2


def test_shared_data_windows_are_clean(shared_data: Path) -> None:
    """Real faulty bearings (CWRU, FEMTO run-to-failure) are vibration, not bad data."""
    import scipy.io as scipy_io
    mon = DataQualityMonitor()
    rows = []
    for path in sorted((shared_data / "cwru").glob("*_1_*.mat"))[:9]:
        for key, value in scipy_io.loadmat(path).items():
            if key.endswith("DE_time"):
                x = value.ravel()[: 8 * N]
                rows += list(x.reshape(-1, N))
    femto = np.load(shared_data / "femto" / "Bearing1_1.npz")["acc_mg"][::10, :, 0] / 1000.0
    bad = [q.checks for q in mon.check_batch(np.stack(rows), [meta()] * len(rows))]
    bad += [q.checks for q in mon.check_batch(femto, [meta(1)] * len(femto))]
    assert sum(1 for c in bad if c) == 0, [c for c in bad if c]


def test_with_the_real_windower() -> None:
    """Frames -> observe_frame -> Windower -> check: a NaN the windower zeroed still counts."""
    from agent.window import Windower

    x = np.tile(clean(15), 6)
    x[5 * N + 100] = np.nan
    mon, windower = DataQualityMonitor(), Windower(WindowSpec())
    verdicts = []
    for frame in frames(x):
        mon.observe_frame(frame)
        for win in windower.push(frame):
            assert np.all(np.isfinite(win.samples))
            verdicts.append(mon.check(win.samples, WindowMeta.of(win)).checks)
    assert verdicts[:9] == [()] * 9
    assert verdicts[9] == ("non_finite",)


def test_duplicate_and_late_frames_are_not_rate_drift() -> None:
    """firmware_sim duplicates and reorders frames: the rate estimate ignores frames whose
    sequence number does not advance, so the channel never turns bad for ``rate_drift``."""
    from agent.window import Windower
    from firmware_sim.node import SimNode
    from firmware_sim.scenario import Scenario, SensorFaultSpec
    from foreshock.wire import decode

    faults = (SensorFaultSpec("duplicate", rate=0.3), SensorFaultSpec("reorder", rate=0.02))
    scenario = Scenario("dup-reorder", sample_rate_hz=RATE_HZ, frame_samples=512,
                        sample_format="float32", sensor_faults=faults)
    node = SimNode(scenario, "pump-1", seed=3, start_time_s=1.7e9)
    mon, windower = DataQualityMonitor(), Windower(WindowSpec())
    verdicts: list[Quality] = []
    rates_hz = []
    for _ in range(600):  # 24 s of stream
        frame = decode(node.next_frame_bytes())
        mon.observe_frame(frame)
        rates_hz.append(mon.observed_rate_hz("pump-1", 0))
        windows = windower.push(frame)
        if windows:
            verdicts += mon.check_batch(np.stack([w.samples for w in windows]),
                                        [WindowMeta.of(w) for w in windows])
    assert windower.counters["duplicates"] > 20 and windower.counters["out_of_order"] > 3
    assert mon.counters["frames_ignored"] == (windower.counters["duplicates"]
                                              + windower.counters["out_of_order"])
    assert len(verdicts) > 10
    estimated = np.array([r for r in rates_hz if r > 0])
    assert estimated.size > 100  # gaps restart the estimate, but it runs most of the time
    assert np.all(np.abs(estimated / RATE_HZ - 1) < 0.002), estimated.max()
    assert not any("rate_drift" in q.checks for q in verdicts)
    assert all(q.scoreable for q in verdicts), [q.checks for q in verdicts if not q.scoreable]
    assert mon.states() == {"pump-1/0": "ok"}


def test_one_duplicated_frame_leaves_rate_and_sequence_alone() -> None:
    x = np.tile(clean(16), 8)
    fs = frames(x)
    mon = DataQualityMonitor()
    for f in [*fs[:60], fs[59], fs[58], *fs[60:]]:  # a duplicate, then a late repeat
        mon.observe_frame(f)
    assert mon.counters["frames_ignored"] == 2
    assert mon.observed_rate_hz("pump-1", 0) == pytest.approx(RATE_HZ, rel=1e-6)
    assert mon.check(x[-N:], meta()).ok
