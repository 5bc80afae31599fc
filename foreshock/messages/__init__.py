"""Versioned JSON payloads on the MQTT topics (spec: docs/topics.md).

Every name is importable from here (``from foreshock import messages``); the payloads live
in one module per family:

- :mod:`foreshock.messages.codec`: the JSON framing they share (``dumps``, ``loads``, field
  checks naming the first problem in a ``MessageError``);
- :mod:`foreshock.messages.records`: the record batches devices send (telemetry, alert,
  event, health), ``(device, boot_id, seq)`` identifying each record for ever;
- :mod:`foreshock.messages.presence`: the device's retained ``state`` (also its last will)
  and the gateway's presence message;
- :mod:`foreshock.messages.commands`: signed commands to a device and the replay guard;
- :mod:`foreshock.messages.rollout`: model offer, chunk and status, and the fleet summary.
"""

from foreshock.messages.codec import MAX_PAYLOAD_BYTES, NUM, dumps, loads
from foreshock.messages.commands import (
    COMMAND_MAX_AGE_S,
    COMMAND_REPLAY_IDS,
    COMMAND_SCHEMA,
    SIGNED_COMMANDS,
    CommandReplayGuard,
    command_message,
    command_signed_bytes,
    decode_command,
    verify_command,
)
from foreshock.messages.presence import (
    GATEWAY_PRESENCE_SCHEMA,
    STATE_SCHEMA,
    decode_gateway_presence,
    decode_state,
    gateway_presence_message,
    state_message,
)
from foreshock.messages.records import (
    ALERT_STATUSES,
    BATCH_SCHEMA,
    BODY_FIELDS,
    EVENT_TYPES,
    MAX_RECORDS,
    SEVERITIES,
    ZONES,
    Batch,
    Record,
    decode_batch,
    encode_batch,
    validate_batch,
    validate_record,
)
from foreshock.messages.rollout import (
    FILE_NAME_RE,
    FLEET_SCHEMA,
    MAX_BUNDLE_BYTES,
    MIN_CHUNK_BYTES,
    MODEL_CHUNK_SCHEMA,
    MODEL_OFFER_SCHEMA,
    MODEL_STATUS_SCHEMA,
    MODEL_STATUSES,
    ROLLOUT_ID_RE,
    SHA256_RE,
    chunk_data,
    decode_fleet,
    decode_model_chunk,
    decode_model_offer,
    decode_model_status,
    fleet_message,
    model_chunk_message,
    model_offer_message,
    model_status_message,
)

__all__ = [
    "ALERT_STATUSES", "BATCH_SCHEMA", "BODY_FIELDS", "COMMAND_MAX_AGE_S", "COMMAND_REPLAY_IDS",
    "COMMAND_SCHEMA", "EVENT_TYPES", "FILE_NAME_RE", "FLEET_SCHEMA", "GATEWAY_PRESENCE_SCHEMA",
    "MAX_BUNDLE_BYTES", "MAX_PAYLOAD_BYTES", "MAX_RECORDS", "MIN_CHUNK_BYTES",
    "MODEL_CHUNK_SCHEMA", "MODEL_OFFER_SCHEMA", "MODEL_STATUSES", "MODEL_STATUS_SCHEMA", "NUM",
    "ROLLOUT_ID_RE", "SEVERITIES", "SHA256_RE", "SIGNED_COMMANDS", "STATE_SCHEMA", "ZONES",
    "Batch", "CommandReplayGuard", "Record", "chunk_data", "command_message",
    "command_signed_bytes", "decode_batch", "decode_command", "decode_fleet",
    "decode_gateway_presence", "decode_model_chunk", "decode_model_offer", "decode_model_status",
    "decode_state", "dumps", "encode_batch", "fleet_message", "gateway_presence_message",
    "loads", "model_chunk_message", "model_offer_message", "model_status_message",
    "state_message", "validate_batch", "validate_record", "verify_command",
]
