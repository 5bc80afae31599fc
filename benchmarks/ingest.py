"""Ingest rate of one gateway instance, into SQLite and into PostgreSQL.

Starts a private mosquitto, a publisher process that sends batched telemetry from many
simulated devices (QoS 1), and one Gateway; measures from the first to the last stored
message. Also measures the store alone (no MQTT) to show where the time goes: one
transaction per message (as the gateway did before group commit) and ``--group`` messages
per transaction (``Store.group()``, as the gateway's writer does with what is waiting).
Prints messages/s, records/s, the number of devices one instance serves at default rates,
and for MQTT the store transactions the gateway committed (mean and largest group).

    python benchmarks/ingest.py [--messages 3000] [--records 20] [--group 64]
                                [--pg "host=... user=..."] [--backends sqlite,postgres]

``--fsync-delay-ms D`` runs the whole benchmark again under ``strace`` fault injection,
which delays every fsync/fdatasync of this process (the SQLite backends) by D ms: a disk
with a slow flush, simulated honestly (PostgreSQL's fsyncs happen in the server, not here).

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




def end_to_end(db_url: str, port: int, n_messages: int,
               n_records: int) -> tuple[float, float, str]:
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
    groups = (f"{stats.groups} commits, mean group {stats.messages / stats.groups:.1f}, "
              f"largest {stats.largest_group}")
    return (n_messages - 1) / elapsed, (n_messages - 1) * n_records / elapsed, groups


def store_only(db_url: str, n_messages: int, n_records: int,
               group: int) -> tuple[float, float, str]:
    store = open_store(db_url)
    batches = [messages.decode_batch(p) for _, p in payloads("s1", n_messages, n_records)]
    t0 = time.perf_counter()
    for start in range(0, len(batches), group):
        with store.group():
            for b in batches[start:start + group]:
                store.store_batch(b, time.time())
    elapsed = time.perf_counter() - t0
    store.close()
    return n_messages / elapsed, n_messages * n_records / elapsed, ""


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
    ap.add_argument("--group", type=int, default=64,
                    help="messages per transaction in the grouped store-only run")
    ap.add_argument("--pg", default="host=127.0.0.1 port=5432 user=postgres")
    ap.add_argument("--backends", default="sqlite,sqlite-normal,postgres")
    ap.add_argument("--fsync-delay-ms", type=float, default=0.0,
                    help="run again under strace, each fsync of this process delayed so")
    args = ap.parse_args()
    if args.fsync_delay_ms > 0:
        rerun_with_slow_fsync(args)
        return
    backends = [b for b in args.backends.split(",") if b]
    unknown = set(backends) - {"sqlite", "sqlite-normal", "postgres"}
    if unknown:
        raise SystemExit(f"unknown backend {sorted(unknown)[0]!r}; "
                         "use sqlite, sqlite-normal, postgres")
    workdir = Path(tempfile.mkdtemp(prefix="fs-bench-"))
    broker, port = start_mosquitto(workdir)
    print(f"{args.messages} messages x {args.records} telemetry records, {N_DEVICES} devices; "
          f"python {sys.version.split()[0]}")
    modes = ("store 1/tx", f"store {args.group}/tx", "mqtt+store")
    try:
        for backend in backends:
            for mode in modes:
                url = (pg_database(args.pg) if backend == "postgres" else
                       f"sqlite:///{workdir / f'{uuid.uuid4().hex}.db'}"
                       + ("?synchronous=NORMAL" if backend == "sqlite-normal" else ""))
                if mode == "mqtt+store":
                    msg_s, rec_s, note = end_to_end(url, port, args.messages, args.records)
                else:
                    group = 1 if mode == "store 1/tx" else args.group
                    msg_s, rec_s, note = store_only(url, args.messages, args.records, group)
                if backend == "postgres":
                    drop_pg(args.pg, url)
                # a device batches its telemetry like the benchmark does, plus health
                device_msg_s = DEVICE_RECORDS_PER_S / args.records + HEALTH_MESSAGES_PER_S
                devices = min(rec_s / DEVICE_RECORDS_PER_S, msg_s / device_msg_s)
                print(f"{backend:13s} {mode:12s}: {msg_s:7.0f} messages/s {rec_s:8.0f} "
                      f"records/s -> ~{devices:6.0f} devices at default rates"
                      + (f"  ({note})" if note else ""), flush=True)
    finally:
        broker.terminate()
        broker.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)


def rerun_with_slow_fsync(args: argparse.Namespace) -> None:
    """This benchmark (SQLite backends only) under strace, fsync and fdatasync delayed."""
    import subprocess

    strace = shutil.which("strace")
    if strace is None:
        raise SystemExit("--fsync-delay-ms needs strace (apt-get install strace)")
    delay_us = int(args.fsync_delay_ms * 1000)
    backends = ",".join(b for b in args.backends.split(",") if b != "postgres")
    print(f"every fsync/fdatasync of the benchmark process delayed by "
          f"{args.fsync_delay_ms:g} ms (strace fault injection)", flush=True)
    cmd = [strace, "-f", "-qq", "--seccomp-bpf", "-o", "/dev/null",
           "-e", "trace=fsync,fdatasync", "-e", f"inject=fsync,fdatasync:delay_exit={delay_us}",
           sys.executable, sys.argv[0], "--messages", str(args.messages),
           "--records", str(args.records), "--group", str(args.group),
           "--backends", backends or "sqlite"]
    raise SystemExit(subprocess.call(cmd))


if __name__ == "__main__":
    main()
