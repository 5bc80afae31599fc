"""The frame codec against the spec: firmware_sim's independent encoder, foreshock.wire.decode,
and arbitrary or damaged bytes (a Frame or FrameError, never a crash, hang or big allocation).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_sim.node import encode_frame
from foreshock.errors import FrameError
from foreshock.wire import (
    MAX_FRAME_BYTES,
    MAX_SAMPLES,
    Frame,
    SampleFormat,
    StreamDecoder,
    decode,
    encode,
)

SETTINGS = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
F32_BELOW_1E6 = float(np.nextafter(np.float32(1e6), np.float32(0)))

device_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,31}\Z")
f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    fmt = draw(st.sampled_from(SampleFormat))
    count = draw(st.integers(1, 300))
    if fmt is SampleFormat.INT16:
        raw = np.array(draw(st.lists(st.integers(-32768, 32767), min_size=count,
                                     max_size=count)), dtype=np.int16)
        scale = draw(st.floats(0.0, 1e3, width=32, exclude_min=True))
    else:
        raw = np.array(draw(st.lists(st.floats(width=32), min_size=count, max_size=count)),
                       dtype=np.float32)
        scale = 1.0
    return Frame(
        device_id=draw(device_ids), channel=draw(st.integers(0, 255)),
        seq=draw(st.integers(0, 2**32 - 1)), timestamp_us=draw(st.integers(0, 2**64 - 1)),
        sample_rate_hz=draw(st.floats(0.0, 200_000.0, width=32, exclude_min=True)), raw=raw,
        sample_format=fmt, scale=scale, rpm=draw(st.floats(0.0, F32_BELOW_1E6, width=32)),
    )


def sim_encode(frame: Frame) -> bytes:
    return encode_frame(frame.device_id, frame.channel, frame.seq, frame.timestamp_us,
                        frame.sample_rate_hz, frame.raw, frame.rpm, frame.scale)


@SETTINGS
@given(frames())
def test_decode_of_independent_encoder_roundtrips(frame: Frame) -> None:
    assert decode(sim_encode(frame)) == frame


@SETTINGS
@given(frames())
def test_both_encoders_agree_byte_for_byte(frame: Frame) -> None:
    assert encode(frame) == sim_encode(frame)


def test_spec_example_bytes() -> None:
    """The worked example in docs/protocol.md, checked field by field."""
    data = encode_frame("n1", 0, 7, 1_700_000_000_000_000, 25600.0,
                        np.array([0.5, -0.25], np.float32), 1797.0, 1.0)
    assert data.hex(" ") == ("46 53 01 01 00 02 07 00 00 00 00 40 1e 18 24 0a 06 00 00 00 c8 46 "
                             "00 a0 e0 44 00 00 80 3f 02 00 6e 31 00 00 00 3f 00 00 80 be "
                             "ce 5c 91 28")
    frame = decode(data)
    assert (frame.device_id, frame.seq, frame.rpm) == ("n1", 7, 1797.0)
    assert frame.samples.tolist() == [0.5, -0.25]


def _valid(count: int = 16) -> bytes:
    return encode_frame("dev-1", 0, 1, 2, 1000.0, np.arange(count, dtype=np.float32))


def _recrc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("mutate, why", [
    (lambda b: b[:-1], "length"),
    (lambda b: b"FX" + b[2:], "magic"),
    (lambda b: _recrc(b[:2] + b"\x02" + b[3:-4]), "version"),
    (lambda b: _recrc(b[:3] + b"\x07" + b[4:-4]), "sample_format"),
    (lambda b: b[:-4] + bytes(4), "CRC"),
    (lambda b: _recrc(b[:18] + struct.pack("<f", float("nan")) + b[22:-4]), "sample_rate"),
    (lambda b: _recrc(b[:18] + struct.pack("<f", 0.0) + b[22:-4]), "sample_rate"),
    (lambda b: _recrc(b[:22] + struct.pack("<f", float("inf")) + b[26:-4]), "rpm"),
    (lambda b: _recrc(b[:26] + struct.pack("<f", -1.0) + b[30:-4]), "scale"),
    (lambda b: _recrc(b[:32] + b"dev 1" + b[37:-4]), "device_id"),
    (lambda b: _recrc(b[:32] + b"dev\xff1" + b[37:-4]), "ASCII"),
    (lambda b: b + b"\x00", "length"),
])
def test_each_rule_rejects(mutate: object, why: str) -> None:
    with pytest.raises(FrameError):
        decode(mutate(_valid()))  # type: ignore[operator]


def test_count_limits() -> None:
    body = encode_frame("d", 0, 0, 0, 1.0, np.zeros(MAX_SAMPLES, np.int16))
    assert decode(body).count == MAX_SAMPLES
    too_many = np.zeros(MAX_SAMPLES + 1, np.int16)  # fits the byte limit but not the count
    with pytest.raises(FrameError):
        decode(encode_frame("d", 0, 0, 0, 1.0, too_many))


@SETTINGS
@given(st.binary(max_size=MAX_FRAME_BYTES + 64))
def test_arbitrary_bytes_give_frame_or_frame_error(data: bytes) -> None:
    try:
        assert isinstance(decode(data), Frame)
    except FrameError:
        pass


@SETTINGS
@given(frames(), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)),
                          max_size=4), st.integers(0, 10_000))
def test_damaged_frames_give_frame_or_frame_error(frame: Frame, flips: list[tuple[int, int]],
                                                  cut: int) -> None:
    data = bytearray(sim_encode(frame))
    for pos, value in flips:
        data[pos % len(data)] = value
    try:
        decode(bytes(data[: len(data) - cut % 8]))
    except FrameError:
        pass


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[Frame], bytes, list[int]]:
    """Valid frames with garbage (often starting with the magic) between them."""
    items = draw(st.lists(frames(), min_size=1, max_size=5))
    parts: list[bytes] = []
    for frame in items:
        junk = draw(st.binary(max_size=60))
        if draw(st.booleans()):
            junk = b"FS" + junk  # a false start
        parts += [junk, sim_encode(frame)]
    stream = b"".join(parts)
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    return items, stream, cuts


@SETTINGS
@given(streams())
def test_stream_decoder_recovers_frames_between_garbage(case: tuple[list[Frame], bytes,
                                                                    list[int]]) -> None:
    items, stream, cuts = case
    dec = StreamDecoder()
    got: list[Frame] = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += dec.push(stream[a:b])
        assert dec.pending_bytes <= MAX_FRAME_BYTES + len(stream)
    # Every intact frame is found, in order (garbage may in rare cases decode as a frame too).
    it = iter(got)
    assert all(any(g == f for g in it) for f in items)


@SETTINGS
@given(st.lists(st.binary(max_size=2000), max_size=20))
def test_stream_decoder_survives_arbitrary_chunks(chunks: list[bytes]) -> None:
    dec = StreamDecoder()
    for chunk in chunks:
        for frame in dec.push(chunk):
            assert isinstance(frame, Frame)
        assert dec.pending_bytes <= MAX_FRAME_BYTES + 2000
    assert dec.dropped_bytes >= 0 and dec.bad_frames >= 0


@pytest.mark.parametrize("field, value", [("scale", 1e39), ("scale", 1e-50),
                                          ("rpm", 999_999.99), ("sample_rate_hz", 1e-46)])
def test_frame_rejects_values_float32_cannot_carry(field: str, value: float) -> None:
    kwargs = {"scale": 1.0, "rpm": 0.0, "sample_rate_hz": 1000.0, field: value}
    try:
        frame = Frame("d", 0, 0, 0, kwargs["sample_rate_hz"], np.zeros(1, np.float32),
                      scale=kwargs["scale"], rpm=kwargs["rpm"])
    except FrameError:
        return
    assert decode(encode(frame)) == frame
