"""Commands in the running agent: checked on the link's thread, run by the loop.

:class:`CommandHandling` is mixed into :class:`agent.service.Agent`. The link's network
thread hands every command to :meth:`CommandHandling._on_command`: OTA messages go to the
model-update queue (agent/model_updates.py); ``cmd/rebaseline``, ``cmd/feedback`` and
``cmd/rollback`` change state, so they are queued only when signed (``sig``, ed25519) by a
``model.command_keys`` key (default ``model.trusted_keys``), with ``ts`` within 600 s of
the device clock and an ``id`` not among the last 256 accepted (replay guard); anything
else is logged and counted in ``bad_commands``, never executed. ``ping`` and ``snapshot``
may be unsigned. The loop runs the queued commands (:meth:`CommandHandling._command`):
``rebaseline``, and ``feedback`` (a confirmed fault binds a model in shadow; maintenance
done rebaselines the incident's channel).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent import pipeline as pl
from agent.model_updates import OTA_KINDS
from agent.ota import OtaReceiver
from foreshock import bundle as fsbundle
from foreshock import messages, topics
from foreshock.errors import ForeshockError

if TYPE_CHECKING:
    from agent.config import AgentConfig

log = logging.getLogger(__name__)


class CommandHandling:
    """Mixin of :class:`agent.service.Agent` (the attributes below are the agent's)."""

    config: AgentConfig
    pipeline: pl.Pipeline
    counters: dict[str, int]
    ota: OtaReceiver | None
    _commands: deque[tuple[str, dict[str, Any]]]
    _command_keys: list[Ed25519PublicKey] | None
    _command_ids: messages.CommandReplayGuard

    if TYPE_CHECKING:  # the agent's and agent.model_updates.ModelUpdates' methods
        def _event(self, body: dict[str, Any]) -> None: ...
        def _queue_ota(self, topic: str, payload: bytes) -> None: ...
        def note_feedback(self, args: dict[str, Any]) -> None: ...
        def rebaseline_parked(self, channel: int | None, *, who: str, why: str,
                              at_s: float) -> int: ...

    def _on_command(self, topic: str, payload: bytes) -> None:
        """Called from the link's thread: parse, check a state-changing command's signature
        and freshness, and queue it for the loop."""
        try:
            _, _, kind = topics.parse(topic)
            ota = kind in OTA_KINDS and self.ota is not None
            if ota and kind.startswith("model/"):
                self._queue_ota(topic, payload)   # validated by the receiver (counted there)
                return
            command = messages.decode_command(payload)
            if kind.startswith("cmd/") and kind[4:] in messages.SIGNED_COMMANDS:
                self._verify_command(command)
        except (ValueError, ForeshockError) as exc:
            self.counters["bad_commands"] += 1
            log.warning("ignoring message on %s: %s", topic, exc)
            return
        if ota:
            self._queue_ota(topic, payload)
        elif kind.startswith("cmd/"):
            by = str(command.get("issued_by") or "gateway")
            self._commands.append((kind[4:], {**command["args"], "issued_by": by}))

    def _verify_command(self, command: dict[str, Any]) -> None:
        """Signed by a ``model.command_keys`` key, ``ts`` within 600 s of our clock, and an
        id not among the last 256 accepted; else MessageError (docs/config.md)."""
        if self._command_keys is None:
            self._command_keys = []
            for path in self.config.model.command_key_files:
                try:
                    self._command_keys.append(fsbundle.load_public_key(Path(path)))
                except ForeshockError as exc:
                    log.error("command key not usable, skipped: %s", exc)
        messages.verify_command(command, self._command_keys)
        self._command_ids.check(command)

    def _command(self, name: str, args: dict[str, Any]) -> None:
        self.counters["commands"] += 1
        if name == "feedback":
            self.note_feedback(args)       # a confirmed fault binds a model in shadow
        channel = args.get("channel")
        if name == "rebaseline" or (name == "feedback" and args.get("label")
                                    == "maintenance_done"):
            why = str(args.get("why") or ("maintenance done" if name == "feedback"
                                          else "rebaseline command"))
            if name == "feedback":
                channel = self._incident_channel(args.get("incident"))
            channel = channel if isinstance(channel, int) else None
            who, at_s = f"command:{args['issued_by']}", time.time()
            self.pipeline.rebaseline(channel, who=who, why=why, at_s=at_s)
            self.rebaseline_parked(channel, who=who, why=why, at_s=at_s)
            self._event({"type": "baseline", "detail": {"status": "rebaseline", **args}})
        else:
            log.info("command %s ignored by the agent loop", name)

    def _incident_channel(self, incident: Any) -> int | None:
        """The channel of an open or last incident with this id (None: all channels)."""
        for key, s in self.pipeline.decider._streams.items():
            last = s.last_alert or {}
            if incident in ((s.incident.id if s.incident else None), last.get("incident")):
                return int(key[1]) if isinstance(key, tuple) else None
        return None
