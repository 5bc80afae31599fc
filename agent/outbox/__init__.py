"""Durable store-and-forward outbox: one SQLite file in WAL mode (policies: docs/outbox.md).

Records of four classes (alert, event, health, telemetry) wait here until the broker has
acknowledged them. Every record gets ``seq``, the file's AUTOINCREMENT row id: strictly
increasing and never reused, so ``(device, boot_id, seq)`` names a record for ever. The row
id is also what :meth:`Outbox.ack` takes; nothing is ever acknowledged by time.

Durability: every write commits with ``synchronous=FULL``, so the WAL is fsynced before
:meth:`Outbox.put` returns a seq (an alert the caller holds a seq for survives ``kill -9``
and power loss) and once per :meth:`Outbox.put_many` batch. Acks commit without fsync: a
lost ack only means a resend.

Policy when a class goes over its byte budget (accept or evict, always counted):

* ``alert``: never evicted, never expired. Over budget is only logged.
* ``event``, ``health``: the oldest rows are dropped down to 90 % of the budget.
* ``telemetry``: ``downsample`` (default) deletes every other row of the oldest half until
  the class is under 90 % of its budget, so a long outage keeps a thinned history instead
  of a hole; ``drop_oldest`` deletes the oldest rows instead.

A corrupt file is moved aside as ``<name>.corrupt-<UTC time>`` (kept for salvage) and a
fresh file is started whose seq begins above the current Unix time in microseconds, so no
seq can repeat one already sent. :attr:`Outbox.recovered` and the persistent
``corrupt_recovered`` counter tell the agent to publish an ``outbox`` event. When the file
(``max_file_bytes``) or the disk is full, a write first gives up the oldest telemetry; only
then, and on any other I/O error, it raises :class:`OutboxError`.

Modules: :mod:`~agent.outbox.config` (``OutboxConfig``, ``Depth``, shared constants),
:mod:`~agent.outbox.store` (the file, transactions, corruption recovery),
:mod:`~agent.outbox.retention` (budgets, room when full, TTL expiry),
:mod:`~agent.outbox.records` (``Outbox``: put, pending, ack, counters).
"""

from .config import (
    COUNTER_NAMES,
    DAY_S,
    DRAIN_ORDER,
    KINDS,
    MIB,
    RECORD_OVERHEAD_BYTES,
    Depth,
    OutboxConfig,
)
from .records import Outbox
from .retention import EXPIRE_CHUNK
from .store import BUMP, SCHEMA

__all__ = ["BUMP", "COUNTER_NAMES", "DAY_S", "DRAIN_ORDER", "EXPIRE_CHUNK", "KINDS", "MIB",
           "RECORD_OVERHEAD_BYTES", "SCHEMA", "Depth", "Outbox", "OutboxConfig"]
