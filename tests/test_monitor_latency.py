"""Stage timing percentiles, health body, and the loopback Prometheus endpoint over real HTTP."""

from __future__ import annotations

import json
import math
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.monitor import (
    STAGES,
    Metric,
    Monitor,
    MonitorConfig,
    PrometheusExporter,
    StageTimer,
    WindowMeta,
    render,
)
from foreshock.errors import ConfigError
from foreshock.messages import dumps, validate_record

durations = st.lists(st.floats(0.0, 10.0, allow_nan=False), min_size=1, max_size=300)


@settings(max_examples=60, deadline=None)
@given(durations, st.integers(8, 128))
def test_percentiles_match_numpy_over_the_recent_ring(values: list[float], capacity: int) -> None:
    timer = StageTimer(capacity)
    for v in values:
        timer.record("features", v)
    recent = np.asarray(values[-capacity:])
    got = timer.percentiles_s("features")
    want = np.percentile(recent, [50, 90, 99])
    assert [got["p50"], got["p90"], got["p99"]] == pytest.approx(list(want), rel=1e-12, abs=0)
    st_ = timer.stats()["features"]
    assert st_["count"] == len(values)
    assert st_["max_ms"] == pytest.approx(1e3 * max(values), abs=1e-4)
    assert st_["mean_ms"] == pytest.approx(1e3 * np.mean(values), abs=1e-3)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 10.0, allow_nan=False), st.integers(1, 300)),
                min_size=1, max_size=40), st.integers(8, 128))
def test_batched_percentiles_match_numpy_per_window(batches: list[tuple[float, int]],
                                                    capacity: int) -> None:
    """``record(stage, s, count=n)`` is n windows of s / n each: percentiles over the last
    ``capacity`` windows, count, mean and max over all of them, as numpy computes them."""
    timer = StageTimer(capacity)
    for seconds, n in batches:
        timer.record("quality", seconds, count=n)
    per_window = np.concatenate([np.full(n, s / n) for s, n in batches])
    got = timer.percentiles_s("quality")
    want = np.percentile(per_window[-capacity:], [50, 90, 99])
    assert [got["p50"], got["p90"], got["p99"]] == pytest.approx(list(want), rel=1e-12, abs=0)
    st_ = timer.stats()["quality"]
    assert st_["count"] == per_window.size
    assert st_["mean_ms"] == pytest.approx(1e3 * per_window.mean(), abs=1e-3)
    assert st_["max_ms"] == pytest.approx(1e3 * per_window.max(), abs=1e-4)


def test_batched_records_and_bad_durations() -> None:
    timer = StageTimer(64)
    timer.record("inference", 0.064, count=64)
    assert timer.percentiles_s("inference")["p50"] == pytest.approx(0.001)
    timer.record("inference", 1.0, count=1000)
    assert timer.stats()["inference"]["count"] == 1064
    for bad in (-1.0, math.nan, math.inf):
        timer.record("link", bad)
    assert timer.dropped == 3
    assert "link" not in timer.stats()
    with timer.measure("outbox"):
        time.sleep(0.002)
    assert timer.percentiles_s("outbox")["p50"] >= 0.002
    assert set(STAGES) >= {"source", "window", "features", "inference", "decision", "outbox"}


def test_stage_count_is_bounded() -> None:
    timer = StageTimer(16, max_stages=len(STAGES) + 1)
    for k in range(5):
        timer.record(f"extra{k}", 0.1)
    assert len(timer.stats()) == 1 and timer.dropped == 4


def busy_monitor() -> Monitor:
    mon = Monitor(MonitorConfig(latency_capacity=64))
    rng = np.random.default_rng(0)
    for stage in ("features", "inference"):
        for v in rng.exponential(0.002, 100):
            mon.timer.record(stage, float(v))
    mon.quality.check(np.zeros(256, np.float32), WindowMeta('pump "1"\n', 2, 1.0, 1000.0))
    mon.count("windows_dropped", 3)
    mon.set_gauge("outbox_depth", 17)
    return mon


def test_health_body_is_a_valid_health_record() -> None:
    body = busy_monitor().health_body(12.5, extra={"window": {"seq_gaps": 2}})
    validate_record("health", {"seq": 3, "ts": 1.0, "body": json.loads(dumps(body))})
    assert body["counters"]["windows_dropped"] == 3
    assert body["counters"]["window.seq_gaps"] == 2
    assert body["counters"]["windows_checked"] == 1
    assert body["gauges"] == {"outbox_depth": 17.0}
    assert set(body["latency_ms"]) == {"features", "inference"}
    assert body["latency_ms"]["features"]["count"] == 100


SAMPLE_RE = re.compile(
    r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)'
    r'(?:\{(?P<labels>(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*)\})?'
    r' (?P<value>[-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|NaN|Inf))(?: -?\d+)?$')


def parse_exposition(text: str) -> dict[str, list[tuple[str, float]]]:
    """A strict reader of text format 0.0.4: family -> [(sample line, value)]."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    out: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in ("counter", "gauge", "summary", "histogram", "untyped")
            assert name not in types, f"family {name} declared twice"
            types[name] = kind
            continue
        if line.startswith("#") or not line:
            continue
        m = SAMPLE_RE.match(line)
        assert m, f"not a valid sample line: {line!r}"
        name = m["name"]
        family = next((f for f in (name, re.sub(r"_(sum|count)$", "", name)) if f in types),
                      None)
        assert family is not None, f"sample {name} has no TYPE line before it"
        out.setdefault(family, []).append((line, float(m["value"].replace("Inf", "inf"))))
    return out


@pytest.fixture
def exporter() -> Iterator[PrometheusExporter]:
    mon = busy_monitor()
    exp = PrometheusExporter(lambda: mon.metrics(42.0, extra={"link": {"published": 5}}),
                             host="127.0.0.1", port=0)
    yield exp
    exp.close()


def test_scrape_over_http_returns_parseable_text(exporter: PrometheusExporter) -> None:
    with urllib.request.urlopen(exporter.url, timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        families = parse_exposition(resp.read().decode())
    assert all(name.startswith("foreshock_") for name in families)
    assert families["foreshock_uptime_seconds"][0][1] == 42.0
    assert families["foreshock_windows_dropped_total"][0][1] == 3
    assert families["foreshock_link_published_total"][0][1] == 5
    assert families["foreshock_outbox_depth"][0][1] == 17
    lat = dict(families["foreshock_stage_latency_seconds"])
    assert 'foreshock_stage_latency_seconds_count{stage="features"} 100' in lat
    assert any('quantile="0.99"' in line for line in lat)
    bad = families["foreshock_channel_bad"]
    assert bad[0][0].startswith('foreshock_channel_bad{channel="pump \\"1\\"\\n/2"}')


def test_other_paths_404_and_failing_registry_500() -> None:
    def broken() -> list[Metric]:
        raise RuntimeError("registry broke")

    exp = PrometheusExporter(broken, port=0)
    try:
        for path, code in (("/nope", 404), ("/metrics", 500)):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(exp.url.replace("/metrics", path), timeout=5)
            assert err.value.code == code
        assert exp.scrape_errors == 1
    finally:
        exp.close()
        exp.close()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "example.com",
                                  ""])
def test_non_loopback_bind_is_refused(host: str) -> None:
    with pytest.raises(ConfigError, match="prometheus_host"):
        PrometheusExporter(lambda: [], host=host, port=0)


def test_render_escapes_and_special_values() -> None:
    text = render([Metric("foreshock_x", "gauge", "a\\b\nc",
                          (("", (("k", 'q"\\'),), math.nan), ("", (), math.inf),
                           ("", (), -math.inf), ("", (), 0.25)))])
    assert '# HELP foreshock_x a\\\\b\\nc' in text
    values = [v for _, v in parse_exposition(text)["foreshock_x"]]
    assert math.isnan(values[0]) and values[1:] == [math.inf, -math.inf, 0.25]


def test_monitor_config_from_toml(tmp_path: Path) -> None:
    from foreshock.config import from_table, read_toml

    path = tmp_path / "agent.toml"
    path.write_text('[monitor]\nprometheus_port = 9464\n[monitor.quality]\nbad_after = 4\n'
                    '[monitor.drift]\nwindow = 300\nmin_windows = 100\n')
    cfg = from_table(MonitorConfig, read_toml(path)["monitor"], "monitor")
    assert (cfg.quality.bad_after, cfg.drift.window, cfg.prometheus_port) == (4, 300, 9464)
    for table, key in (({"prometheus_host": "0.0.0.0", "prometheus_port": 9464},
                        "prometheus_host"),
                       ({"quality": {"spike_sigma": -1.0}}, "spike_sigma"),
                       ({"drift": {"min_windows": 900}}, "min_windows"),
                       ({"latency_capacity": 2}, "latency_capacity")):
        with pytest.raises(ConfigError, match=key):
            from_table(MonitorConfig, table, "monitor")


def test_scrapes_while_the_loop_writes() -> None:
    """The exporter thread reads while the service thread adds streams and stages."""
    import threading

    mon = Monitor()
    exp = PrometheusExporter(lambda: mon.metrics(1.0), port=0)
    stop = threading.Event()

    def loop() -> None:
        k = 0
        while not stop.is_set():
            mon.quality.check(np.ones(64, np.float32), WindowMeta("d", k % 200, 0.0, 100.0))
            mon.timer.record(f"stage{k % 20}", 0.001)
            mon.count(f"c{k % 50}")
            k += 1

    writer = threading.Thread(target=loop)
    writer.start()
    try:
        for _ in range(20):
            with urllib.request.urlopen(exp.url, timeout=5) as resp:
                parse_exposition(resp.read().decode())
    finally:
        stop.set()
        writer.join()
        exp.close()
    assert exp.scrape_errors == 0
