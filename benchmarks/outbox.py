"""Outbox and link throughput: records/s written, and drained to mosquitto after an outage.

Measures, in one run against a private mosquitto on loopback:

1. telemetry written with ``put_many`` (one fsynced transaction per batch), and alerts
   written one by one with ``put`` (one fsync each);
2. drain after an outage: a backlog of telemetry sits in the outbox while the link is down,
   then the link comes up and drains it in batches (QoS 1, acks on PUBACK, rows deleted)
   until a subscriber has every record; target 20,000 records/s;
3. the same records sent one MQTT message per record by a plain paho QoS 1 loop (no
   outbox), and by the link with ``batch_max_records=1``, for comparison.

Also prints the stored bytes per telemetry record and the week-offline projection at the
default rate (4 records/s: 2 channels x 2 windows/s) against the default budget.

    python benchmarks/outbox.py [--records 50000] [--single 5000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from _mosquitto import start_mosquitto  # benchmarks/ is first on sys.path
from paho.mqtt.enums import CallbackAPIVersion

from agent.link import Link, LinkConfig
from agent.outbox import Outbox, OutboxConfig
from foreshock import messages, topics

SITE = "bench"
WEEK_S = 7 * 86_400
DEFAULT_RECORDS_PER_S = 4.0
BODY = {"channel": 0, "window_ts": 1.7e9, "anomaly_score": 0.1234, "fault": "normal",
        "fault_probability": 0.93, "rms_g": 0.2113, "velocity_rms_mm_s": 1.412, "zone": "A",
        "features": {"bpfo_env": 1.1, "bpfi_env": 0.9, "kurtosis": 3.1, "crest": 3.9}}
ALERT = {"incident": "i1", "status": "raised", "severity": "alarm", "channel": 0,
         "anomaly_score": 3.2, "threshold": 2.0, "fault": "outer_race", "zone": "C",
         "explanation": {"top": [["bpfo_env", 6.2]]}, "model": {"name": "m", "version": "1"}}
CONF = """per_listener_settings false
listener {port} 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 0
max_inflight_messages 100
max_packet_size 8388608
"""


class Broker:
    def __init__(self, workdir: Path) -> None:
        self.proc, self.port = start_mosquitto(workdir, CONF, tries=200)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


SUBSCRIBER = """
import sys, time
import paho.mqtt.client as mqtt
port, topic, target, raw = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4] == "raw"
n = 0
def on_message(_c, _u, msg):
    global n
    n += 1 if raw else msg.payload.count(b'{"seq":')
    if n >= target:
        print("done", time.time(), n, flush=True)
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
c.on_message = on_message
c.on_subscribe = lambda *_: print("ready", flush=True)
c.connect("127.0.0.1", port)
c.subscribe(topic, qos=1)
c.loop_forever()
"""


class Counter:
    """A subscriber in its own process (no GIL shared with the link) that says when it
    has ``target`` records (or raw messages)."""

    def __init__(self, port: int, topic: str, target: int, *, raw: bool = False) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SUBSCRIBER, str(port), topic, str(target),
             "raw" if raw else "records"], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit("subscriber did not start")

    def wait_done(self) -> tuple[float, int]:
        """Wall time when the last record arrived, and the count."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        self.proc.kill()
        self.proc.wait(5)
        if not line or line[0] != "done":
            raise SystemExit("subscriber did not receive everything")
        return float(line[1]), int(line[2])


def bench_writes(workdir: Path, n: int) -> None:
    for batch in (100, 1000):
        ob = Outbox(workdir / f"w{batch}.db")
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            ob.put_many("telemetry", [(BODY, 1.7e9 + start + i) for i in range(batch)])
        dt = time.perf_counter() - t0
        print(f"write telemetry put_many({batch:>4}): {n / dt:10,.0f} records/s")
        ob.close()
    ob = Outbox(workdir / "alerts.db")
    t0 = time.perf_counter()
    for i in range(500):
        ob.put("alert", ALERT, 1.7e9 + i)
    print(f"write alert put (fsync each):     {500 / (time.perf_counter() - t0):10,.0f} "
          "records/s")
    ob.close()


def bench_drain(workdir: Path, broker: Broker, n: int, batch_max_records: int) -> float:
    device = f"d{uuid.uuid4().hex[:8]}"
    ob = Outbox(workdir / f"drain-{device}.db", OutboxConfig())
    for start in range(0, n, 1000):  # the backlog built up during the outage
        ob.put_many("telemetry", [(BODY, 1.7e9 + start + i) for i in range(min(1000, n - start))])
    sub = Counter(broker.port, topics.record(SITE, device, "telemetry"), n)
    link = Link(LinkConfig(broker.url, SITE, device, batch_max_records=batch_max_records),
                boot_id=ob.boot_id)
    link.start()  # the outage ends
    if not link.wait_connected(10):
        raise SystemExit("link did not connect")
    t0, wall0 = time.perf_counter(), time.time()
    acked = link.drain(ob, timeout_s=300)
    t_acked = time.perf_counter() - t0
    done_at, received = sub.wait_done()
    t_all = done_at - wall0
    assert acked == n and received >= n, (acked, received)
    link.stop()
    ob.close()
    print(f"  drain acked {acked} records in {t_acked:.2f} s, subscriber had all after "
          f"{t_all:.2f} s ({link.stats()['published_msgs']} messages)")
    return n / t_all


def bench_plain_loop(broker: Broker, n: int) -> float:
    """One MQTT message per record, QoS 1, plain paho loop (no outbox), window 16."""
    device = f"d{uuid.uuid4().hex[:8]}"
    topic = topics.record(SITE, device, "telemetry")
    sub = Counter(broker.port, topic, n, raw=True)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(16)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    wall0 = time.time()
    infos = []
    for i in range(n):
        batch = messages.Batch(SITE, device, "boot", "telemetry",
                               (messages.Record(i + 1, 1.7e9 + i, BODY),), time.time())
        infos.append(client.publish(topic, messages.dumps(batch.to_json()), qos=1))
    for info in infos:
        info.wait_for_publish(60)
    done_at, _ = sub.wait_done()
    dt = done_at - wall0
    client.disconnect()
    client.loop_stop()
    return n / dt


def storage(workdir: Path) -> None:
    ob = Outbox(workdir / "size.db")
    for start in range(0, 20_000, 1000):
        ob.put_many("telemetry", [(BODY, 1.7e9 + start + i) for i in range(1000)])
    logical = ob.depth()["telemetry"].size_bytes / 20_000
    ob.close()
    on_disk = (workdir / "size.db").stat().st_size / 20_000
    week = DEFAULT_RECORDS_PER_S * WEEK_S
    budget = OutboxConfig().telemetry_budget_bytes
    print(f"telemetry record: {logical:.0f} logical bytes, {on_disk:.0f} bytes on disk; "
          f"a week at {DEFAULT_RECORDS_PER_S:g}/s = {week:,.0f} records = "
          f"{week * logical / 2**20:,.0f} MiB logical ({week * on_disk / 2**20:,.0f} MiB on "
          f"disk) vs budget {budget / 2**20:,.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--single", type=int, default=5_000,
                        help="records for the one-message-per-record comparisons")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        bench_writes(workdir, args.records)
        storage(workdir)
        broker = Broker(workdir)
        try:
            print(f"drain after outage, batched ({args.records} records):")
            batched = bench_drain(workdir, broker, args.records, 1000)
            print(f"  -> {batched:,.0f} records/s (target 20,000)")
            print(f"link with batch_max_records=1 ({args.single} records):")
            single = bench_drain(workdir, broker, args.single, 1)
            print(f"  -> {single:,.0f} records/s")
            plain = bench_plain_loop(broker, args.single)
            print(f"plain paho QoS 1 loop, one message per record: {plain:,.0f} records/s")
            print(f"batched drain / plain loop: {batched / plain:.1f}x")
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
