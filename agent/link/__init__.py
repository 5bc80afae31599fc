"""The device's MQTT link: paho-mqtt 2, batches from the outbox, acks on PUBACK only.

One supervisor thread owns the connection: it connects (MQTT 5, falling back to 3.1.1 when
the broker refuses the protocol), runs the network loop, and after a loss waits an
exponential backoff with jitter before a fresh client reconnects. Every connection starts
with a retained ``state`` birth message (online, boot id, agent and model versions); the
retained last will says ``online: false``.

:meth:`Link.drain` (called from the agent's loop, one caller at a time) reads pending
records class by class (alerts first), packs them into :class:`~foreshock.messages.Batch`
messages bounded by ``batch_max_records`` and ``batch_max_bytes``, publishes them with
QoS 1 inside a window of ``max_inflight`` messages, and acks exactly the row ids of a
message once its PUBACK arrives. A disconnect forgets everything in flight without
acking; the next drain on the next connection sends those rows again (at-least-once; the
gateway drops duplicates by ``(device, boot_id, seq)``).

With ``require_gateway`` the link also subscribes to ``topics.gateway_presence(site)`` and
publishes nothing from the outbox until a live (not retained) ``online`` presence message
arrived after its latest CONNACK; the gate closes again after ``gateway_timeout_s``
without one or on ``online: false``. A broker's PUBACK only says the broker took a
message; the gate makes sure a gateway is subscribed to take it from there (after a broker
restart the devices are back before the gateway has resubscribed).

Modules: :mod:`~agent.link.options` (``LinkOptions``, ``LinkConfig``),
:mod:`~agent.link.connection` (supervisor, callbacks, presence gate),
:mod:`~agent.link.drain` (``Link``: batches, in-flight window, acks).
"""

from .connection import UNSUPPORTED_PROTOCOL, CommandCallback, Connection, backoff_s
from .drain import Link
from .options import BATCH_ENVELOPE_BYTES, LinkConfig, LinkOptions

__all__ = ["BATCH_ENVELOPE_BYTES", "UNSUPPORTED_PROTOCOL", "CommandCallback", "Connection",
           "Link", "LinkConfig", "LinkOptions", "backoff_s"]
