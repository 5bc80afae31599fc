"""Ingest rate of one gateway instance, into SQLite and into PostgreSQL.

Starts a private mosquitto, a publisher process that sends batched telemetry from many
simulated devices (QoS 1), and one Gateway; measures from the first to the last stored
message. Also measures the store alone (no MQTT) to show where the time goes. Prints
messages/s, records/s and the number of devices one instance serves at default rates.

    python benchmarks/ingest.py [--messages 3000] [--records 20] [--pg "host=... user=..."]

Default device load assumed for the device count: 2 channels x 2 windows/s = 4 telemetry
records/s, batched like the benchmark (``--records`` per message: every 5 s with the
default 20), plus one health message a minute.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from _mosquitto import start_mosquitto  # benchmarks/ is first on sys.path

from foreshock import messages, topics
from foreshock.messages import Batch, Record
from gateway.config import GatewayConfig
from gateway.service import Gateway
from gateway.store import open_store

DEVICE_RECORDS_PER_S = 4.0
HEALTH_MESSAGES_PER_S = 1 / 60
N_DEVICES = 50


def payloads(site: str, n_messages: int, n_records: int) -> list[tuple[str, bytes]]:
    out = []
    for m in range(n_messages):
        device = f"dev-{m % N_DEVICES:03d}"
        seq0 = (m // N_DEVICES) * n_records
        recs = tuple(Record(seq0 + i, 1.7e9 + seq0 + i, {
            "channel": i % 2, "window_ts": 1.7e9 + seq0 + i, "anomaly_score": 0.12,
            "fault": "normal", "fault_probability": 0.93, "rms_g": 0.21,
            "velocity_rms_mm_s": 1.4, "zone": "A", "features": {"bpfo_env": 1.1}})
            for i in range(n_records))
        batch = Batch(site, device, "boot-1", "telemetry", recs, 1.7e9)
        out.append((topics.record(site, device, "telemetry"), messages.encode_batch(batch)))
    return out


def publish(port: int, site: str, n_messages: int, n_records: int) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    items = payloads(site, n_messages, n_records)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(100)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(t, p, qos=1) for t, p in items]
    for info in infos:
        info.wait_for_publish(120)
    client.loop_stop()
    client.disconnect()




def end_to_end(db_url: str, port: int, n_messages: int, n_records: int) -> tuple[float, float]:
    site = f"b{uuid.uuid4().hex[:6]}"
    gw = Gateway(GatewayConfig.for_site(f"mqtt://127.0.0.1:{port}", site, db_url,
                                        client_id=f"bench-{site}", session_expiry_s=0))
    gw.start()
    pub = mp.get_context("spawn").Process(target=publish, args=(port, site, n_messages,
                                                                n_records))
    pub.start()
    while gw.stats().messages == 0:
        time.sleep(0.001)
    t0 = time.perf_counter()
    deadline = time.monotonic() + 600
    while gw.stats().records_stored < n_messages * n_records and time.monotonic() < deadline:
        time.sleep(0.005)
    elapsed = time.perf_counter() - t0
    pub.join()
    stats = gw.stats()
    gw.stop()
    if stats.records_stored != n_messages * n_records:
        raise SystemExit(f"lost records: {stats}")
    return (n_messages - 1) / elapsed, (n_messages - 1) * n_records / elapsed


def store_only(db_url: str, n_messages: int, n_records: int) -> tuple[float, float]:
    store = open_store(db_url)
    batches = [messages.decode_batch(p) for _, p in payloads("s1", n_messages, n_records)]
    t0 = time.perf_counter()
    for b in batches:
        store.store_batch(b, time.time())
    elapsed = time.perf_counter() - t0
    store.close()
    return n_messages / elapsed, n_messages * n_records / elapsed


def pg_database(base: str) -> str:
    name = f"fs_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{base} dbname=postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{base} dbname={name}"


def drop_pg(base: str, dsn: str) -> None:
    name = dsn.rsplit("dbname=", 1)[1]
    with psycopg.connect(f"{base} dbname=postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--records", type=int, default=20, help="telemetry records per message")
    ap.add_argument("--pg", default="host=127.0.0.1 port=5432 user=postgres")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="fs-bench-"))
    broker, port = start_mosquitto(workdir)
    print(f"{args.messages} messages x {args.records} telemetry records, {N_DEVICES} devices; "
          f"python {sys.version.split()[0]}")
    try:
        for backend in ("sqlite", "sqlite-normal", "postgres"):
            for mode in ("store only", "mqtt+store"):
                url = (pg_database(args.pg) if backend == "postgres" else
                       f"sqlite:///{workdir / f'{uuid.uuid4().hex}.db'}"
                       + ("?synchronous=NORMAL" if backend == "sqlite-normal" else ""))
                if mode == "store only":
                    msg_s, rec_s = store_only(url, args.messages, args.records)
                else:
                    msg_s, rec_s = end_to_end(url, port, args.messages, args.records)
                if backend == "postgres":
                    drop_pg(args.pg, url)
                # a device batches its telemetry like the benchmark does, plus health
                device_msg_s = DEVICE_RECORDS_PER_S / args.records + HEALTH_MESSAGES_PER_S
                devices = min(rec_s / DEVICE_RECORDS_PER_S, msg_s / device_msg_s)
                print(f"{backend:13s} {mode:10s}: {msg_s:8.0f} messages/s {rec_s:9.0f} "
                      f"records/s  -> ~{devices:6.0f} devices at default rates")
    finally:
        broker.terminate()
        broker.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
