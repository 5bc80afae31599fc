"""Telemetry store schema, shared by SQLite and PostgreSQL, as numbered migrations.

Each migration is a list of DDL statements written once with three placeholders that the
dialect fills: ``{id}`` (auto-increment primary key), ``{json}`` (TEXT in SQLite, JSONB in
PostgreSQL) and ``{real}`` (double precision). Applied versions are kept in
``schema_migrations``; a store opens by applying the missing ones in order, in one
transaction each. Never edit a released migration: append a new one.

Tables::

    records          every record of every kind, once: UNIQUE (device, boot_id, seq)
    alerts           alert records with their explanation, one row per alert record
    boots            per device boot: lowest and highest seq seen (for gap detection)
    gaps             per device boot: seq ranges still missing between those bounds
    devices          fleet registry: online state, versions, outbox depth, last alert, quality
    rollouts         model rollouts (bundle, target, canary, abort threshold, state)
    rollout_devices  per-device status within a rollout
    feedback         operator labels of alerts (confirmed / false_alarm / maintenance_done)
                     with the alert's features (baseline z-scores, never raw waveforms)
"""

from __future__ import annotations

from typing import Final

MIGRATIONS: Final[tuple[tuple[int, tuple[str, ...]], ...]] = (
    (1, (
        """CREATE TABLE records (
            id {id}, site TEXT NOT NULL, device TEXT NOT NULL, boot_id TEXT NOT NULL,
            seq BIGINT NOT NULL, kind TEXT NOT NULL, ts {real} NOT NULL,
            received_ts {real} NOT NULL, body {json} NOT NULL,
            UNIQUE (device, boot_id, seq))""",
        "CREATE INDEX records_device_kind_ts ON records (device, kind, ts)",
        """CREATE TABLE alerts (
            id {id}, site TEXT NOT NULL, device TEXT NOT NULL, boot_id TEXT NOT NULL,
            seq BIGINT NOT NULL, ts {real} NOT NULL, received_ts {real} NOT NULL,
            incident TEXT NOT NULL, status TEXT NOT NULL, severity TEXT NOT NULL,
            channel INTEGER NOT NULL, anomaly_score {real}, threshold {real},
            fault TEXT NOT NULL, zone TEXT NOT NULL, explanation {json} NOT NULL,
            model {json} NOT NULL, UNIQUE (device, boot_id, seq))""",
        "CREATE INDEX alerts_device_ts ON alerts (device, ts)",
        """CREATE TABLE boots (
            site TEXT NOT NULL, device TEXT NOT NULL, boot_id TEXT NOT NULL,
            first_seq BIGINT, max_seq BIGINT, gap_count INTEGER NOT NULL DEFAULT 0,
            first_seen_ts {real} NOT NULL, last_seen_ts {real} NOT NULL,
            PRIMARY KEY (device, boot_id))""",
        """CREATE TABLE gaps (
            site TEXT NOT NULL, device TEXT NOT NULL, boot_id TEXT NOT NULL,
            first_seq BIGINT NOT NULL, last_seq BIGINT NOT NULL, detected_ts {real} NOT NULL,
            PRIMARY KEY (device, boot_id, first_seq))""",
        """CREATE TABLE devices (
            site TEXT NOT NULL, device TEXT NOT NULL, online BOOLEAN, boot_id TEXT,
            state_ts {real}, last_seen_ts {real}, agent_version TEXT, model_name TEXT,
            model_version TEXT, outbox_depth BIGINT, health_ts {real},
            last_alert_ts {real}, last_alert_incident TEXT, last_alert_status TEXT,
            last_alert_severity TEXT, data_quality TEXT, data_quality_ts {real},
            PRIMARY KEY (site, device))""",
        """CREATE TABLE rollouts (
            rollout_id TEXT PRIMARY KEY, bundle_name TEXT NOT NULL,
            bundle_version TEXT NOT NULL, target TEXT NOT NULL, canary INTEGER NOT NULL,
            abort_on_pct {real} NOT NULL, state TEXT NOT NULL, created_ts {real} NOT NULL,
            updated_ts {real} NOT NULL, detail {json} NOT NULL)""",
        """CREATE TABLE rollout_devices (
            rollout_id TEXT NOT NULL, site TEXT NOT NULL, device TEXT NOT NULL,
            status TEXT NOT NULL, detail {json} NOT NULL, updated_ts {real} NOT NULL,
            PRIMARY KEY (rollout_id, site, device))""",
    )),
    (2, (
        """CREATE TABLE feedback (
            id {id}, site TEXT NOT NULL, device TEXT NOT NULL, incident TEXT NOT NULL,
            alert_id BIGINT, channel INTEGER NOT NULL, label TEXT NOT NULL,
            ts {real} NOT NULL, source TEXT NOT NULL, operator TEXT NOT NULL,
            note TEXT NOT NULL, fault TEXT NOT NULL, anomaly_score {real},
            threshold {real}, alert_ts {real}, features {json} NOT NULL,
            model {json} NOT NULL)""",
        "CREATE INDEX feedback_device_ts ON feedback (device, ts)",
        "CREATE INDEX feedback_incident ON feedback (incident)",
    )),
)

LATEST_VERSION: Final = MIGRATIONS[-1][0]

MIGRATIONS_TABLE: Final = (
    "CREATE TABLE IF NOT EXISTS schema_migrations "
    "(version INTEGER PRIMARY KEY, applied_ts {real} NOT NULL)"
)
