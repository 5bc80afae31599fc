"""Turn MQTT messages into stored records: validate, store, count (no MQTT here).

:class:`Ingestor` is what the gateway's writer thread calls with the messages waiting
(:meth:`Ingestor.handle_group`: several messages, one store transaction). A payload
that does not match its schema (foreshock.messages), or whose site, device or kind
disagrees with its topic, is counted per device and logged at most once per
``invalid_log_interval_s`` per device; it never raises. A store failure raises
:class:`~foreshock.errors.StoreError` so the caller leaves the message unacknowledged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from foreshock import messages, topics
from foreshock.errors import MessageError, StoreError
from foreshock.messages import Record
from gateway.store import RecordRefused, Store

log = logging.getLogger(__name__)
SPLIT_FAILURES_MAX = 3
ROLLOUT_STATUSES = ("offered", "downloading", "verified", "shadow", "active", "failed",
                    "rolled_back")


@dataclass(frozen=True)
class IngestStats:
    """Counters since start. ``messages`` counts messages stored or found invalid (one
    left unacknowledged counts when it comes again), ``gaps`` sequence ranges found
    missing, ``store_errors`` messages left unacknowledged because the store failed.
    ``groups`` is the number of store transactions the ingest committed (one per group of
    messages), ``largest_group`` the most messages one of them held, ``groups_split`` the
    groups rolled back and stored again one message at a time."""

    messages: int = 0
    records_stored: int = 0
    duplicates_dropped: int = 0
    invalid: int = 0
    gaps: int = 0
    alerts_published: int = 0
    store_errors: int = 0
    invalid_by_device: dict[str, int] = field(default_factory=dict)
    groups: int = 0
    largest_group: int = 0
    groups_split: int = 0


@dataclass(frozen=True)
class Outcome:
    """The result of one message: new alerts to re-publish (with the batch's site)."""

    valid: bool
    site: str = ""
    device: str = ""
    new_alerts: tuple[Record, ...] = ()
    boot_id: str = ""


class Ingestor:
    """Validates and stores messages; thread-safe counters."""

    def __init__(self, store: Store, invalid_log_interval_s: float = 60.0) -> None:
        self.store = store
        self.invalid_log_interval_s = invalid_log_interval_s
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._invalid: Counter[str] = Counter()
        self._last_log: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()
        self._largest_group = 0
        # per thread: counts made inside a store group wait here until it commits
        self._local = threading.local()

    def handle_group(self, items: Sequence[tuple[str, bytes, float]]
                     ) -> list[Outcome | StoreError]:
        """Validate and store messages ``(topic, payload, received_ts)`` in one store
        transaction; return per message its :class:`Outcome` or the StoreError that left it
        unstored (the caller leaves that one unacknowledged).

        If a store call raises inside the group, the whole group is rolled back, its counts
        dropped, and its messages are stored again one per transaction, so one message the
        store refuses does not hold back the others; after ``SPLIT_FAILURES_MAX`` store
        failures in a row the rest are not tried (each try may wait for the store's
        timeout). A message that raises something unforeseen is counted invalid
        (``Outcome(False)``) and logged. Counts are made only for what committed.
        """
        if not items:
            return []
        if len(items) > 1:
            try:
                with self._deferred_counts(), self.store.group():
                    outcomes: list[Outcome | StoreError] = [
                        self.handle(topic, payload, ts) for topic, payload, ts in items]
            except Exception as exc:
                log.warning("store group of %d messages rolled back (%s); storing them one "
                            "by one", len(items), exc)
                self._count("groups_split")
            else:
                self._counted_group(len(items))
                return outcomes
        results: list[Outcome | StoreError] = []
        failures = 0
        for topic, payload, ts in items:
            if failures >= SPLIT_FAILURES_MAX:  # the store is down, not one message bad
                results.append(StoreError(f"not tried after {failures} store failures"))
                self._count("store_errors")
                continue
            result = self._handle_one(topic, payload, ts)
            failures = failures + 1 if isinstance(result, StoreError) else 0
            results.append(result)
        return results

    def _handle_one(self, topic: str, payload: bytes,
                    received_ts: float) -> Outcome | StoreError:
        try:
            with self._deferred_counts(), self.store.group():
                outcome = self.handle(topic, payload, received_ts)
        except RecordRefused as exc:  # its data, not the store: counted invalid, acknowledged
            if not topics.is_control(topic):
                self._count("messages")
            self._reject(_device_of(topic), f"the store refused its data: {exc}")
            return Outcome(False)
        except StoreError as exc:
            self._count("store_errors")
            return exc
        except Exception:  # a payload we did not foresee must not stop the ingest
            log.exception("unexpected error on %s; message counted invalid and dropped",
                          topic)
            if not topics.is_control(topic):
                self._count("messages")
            self.count_invalid(topic)
            return Outcome(False)
        self._counted_group(1)
        return outcome

    def _counted_group(self, size: int) -> None:
        with self._lock:
            self._counts["groups"] += 1
            self._largest_group = max(self._largest_group, size)

    @contextmanager
    def _deferred_counts(self) -> Iterator[None]:
        """Counts this thread makes inside are added when the block ends normally (after
        the store group committed) and dropped when it raises."""
        if getattr(self._local, "pending", None) is not None:
            raise RuntimeError("Ingestor groups do not nest")
        pending: tuple[Counter[str], Counter[str]] = (Counter(), Counter())
        self._local.pending = pending
        try:
            yield
        finally:
            self._local.pending = None
        with self._lock:  # reached only when the block (and its store group) succeeded
            self._counts.update(pending[0])
            self._invalid.update(pending[1])

    def _counters(self) -> tuple[Counter[str], Counter[str]]:
        """Where to count now (called with _lock held): held back inside a group."""
        pending = getattr(self._local, "pending", None)
        if pending is not None:
            return pending
        return self._counts, self._invalid

    def handle(self, topic: str, payload: bytes, received_ts: float | None = None) -> Outcome:
        """Validate and store one message. Raises StoreError only when the store fails."""
        now = time.time() if received_ts is None else received_ts
        if topics.is_control(topic):
            return Outcome(True)  # our own re-publications under <site>/_control/
        self._count("messages")
        try:
            site, device, kind = topics.parse(topic)
        except ValueError as exc:
            self._reject("?", str(exc))
            return Outcome(False)
        try:
            if kind == "state":
                return self._state(site, device, payload, now)
            if kind in topics.RECORD_KINDS:
                return self._batch(site, device, kind, payload, now)
            if kind == "model/status":
                return self._model_status(site, device, payload, now)
            if kind == "cmd/feedback":
                return self._feedback(site, device, payload, now)
            raise MessageError(f"topic kind {kind!r} is not ingested")
        except MessageError as exc:
            self._reject(device, str(exc))
            return Outcome(False, site, device)

    def _state(self, site: str, device: str, payload: bytes, now: float) -> Outcome:
        state = messages.decode_state(payload)
        if state["device"] != device or state.get("site", site) != site:
            raise MessageError(f"state for {state.get('site')}/{state['device']} "
                               f"on the topic of {site}/{device}")
        self.store.store_state({**state, "site": site}, now)
        return Outcome(True, site, device)

    def _model_status(self, site: str, device: str, payload: bytes, now: float) -> Outcome:
        """Record a device's rollout progress (the rollout manager also watches it)."""
        status = messages.loads(payload)
        if status.get("schema") != messages.MODEL_STATUS_SCHEMA:
            raise MessageError(f"schema {status.get('schema')!r} is not "
                               f"{messages.MODEL_STATUS_SCHEMA!r}")
        if not isinstance(status.get("rollout_id"), str) or \
                status.get("status") not in ROLLOUT_STATUSES:
            raise MessageError(f"model status needs rollout_id and a status in "
                               f"{ROLLOUT_STATUSES}")
        detail: dict[str, Any] = {k: status[k] for k in ("detail", "progress") if k in status}
        self.store.set_rollout_device(status["rollout_id"], site, device, status["status"],
                                      detail, now)
        return Outcome(True, site, device)

    def _feedback(self, site: str, device: str, payload: bytes, now: float) -> Outcome:
        """Record an operator's label sent to the device on ``cmd/feedback``."""
        from gateway.feedback import record_command

        record_command(self.store, site, device, payload, now)
        self._count("feedback")
        return Outcome(True, site, device)

    def _batch(self, site: str, device: str, kind: str, payload: bytes,
               now: float) -> Outcome:
        batch = messages.decode_batch(payload)
        if (batch.site, batch.device, batch.kind) != (site, device, kind):
            raise MessageError(f"batch of {batch.kind} from {batch.site}/{batch.device} "
                               f"on the {kind} topic of {site}/{device}")
        result = self.store.store_batch(batch, now)
        with self._lock:
            counts = self._counters()[0]
            counts["records_stored"] += result.inserted
            counts["duplicates_dropped"] += result.duplicates
            counts["gaps"] += len(result.opened_gaps)
        for first, last in result.opened_gaps:
            log.info("device %s boot %s: records %d..%d missing", device, batch.boot_id,
                     first, last)
        return Outcome(True, site, device, result.new_alerts, batch.boot_id)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counters()[0][key] += n

    def count_invalid(self, topic: str) -> None:
        """Count a message the service could not handle at all (logged by the caller)."""
        device = _device_of(topic)
        with self._lock:
            counts, invalid = self._counters()
            counts["invalid"] += 1
            invalid[device] += 1

    def count_published(self, n: int = 1) -> None:
        self._count("alerts_published", n)

    def _reject(self, device: str, reason: str) -> None:
        now = time.monotonic()
        with self._lock:
            counts, invalid = self._counters()
            counts["invalid"] += 1
            invalid[device] += 1
            last = self._last_log.get(device)
            if last is not None and now - last < self.invalid_log_interval_s:
                self._suppressed[device] += 1
                return
            self._last_log[device] = now
            suppressed, self._suppressed[device] = self._suppressed[device], 0
        more = f" ({suppressed} more since the last report)" if suppressed else ""
        log.warning("invalid message from device %s dropped: %s%s", device, reason, more)

    def stats(self) -> IngestStats:
        with self._lock:
            c = self._counts
            return IngestStats(c["messages"], c["records_stored"], c["duplicates_dropped"],
                               c["invalid"], c["gaps"], c["alerts_published"],
                               c["store_errors"], dict(self._invalid), c["groups"],
                               self._largest_group, c["groups_split"])


def _device_of(topic: str) -> str:
    try:
        return topics.parse(topic)[1]
    except ValueError:
        return "?"
