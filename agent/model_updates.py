"""Model updates in the running agent: the over-the-air receiver wired to the loop.

The link's network thread hands ``model/offer``, ``model/chunk`` and ``cmd/rollback``
messages to :meth:`ModelUpdates._queue_ota`; the agent loop feeds them to
:class:`agent.ota.OtaReceiver` (state in ``<service.state_dir>/ota``, bundles verified with
``model.trusted_keys`` against the running feature spec), publishes what it answers on
``model/status`` (QoS 1; kept while the link is down), feeds every scored batch's z-scores
to a candidate in shadow, and switches models whenever the receiver's running model differs
from the pipeline's: to the promoted bundle, or back to last-known-good (an earlier
promoted bundle, or the configured / shipped one). At start-up ``resume()`` runs first, so
a reboot mid-update resumes the download, restarts the shadow run or keeps the promoted
model.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from agent import pipeline as pl
from agent.ota import OtaConfig, OtaReceiver
from agent.window import Windower
from foreshock import topics
from foreshock.errors import ForeshockError

if TYPE_CHECKING:
    from agent.config import AgentConfig

log = logging.getLogger(__name__)

OTA_KINDS: Final = ("model/offer", "model/chunk", "cmd/rollback")
MAX_QUEUED_OTA_BYTES: Final = 16 * 1024 * 1024
MAX_UNSENT_STATUS: Final = 256
MAX_CONFIRMED: Final = 256


class ModelUpdates:
    """Mixin of :class:`agent.service.Agent`: ``replace_model`` and the OTA wiring."""

    config: AgentConfig
    pipeline: pl.Pipeline
    windower: Windower
    queue: deque[Any]
    counters: dict[str, int]
    link: Any
    ota: OtaReceiver | None = None

    def _event(self, body: dict[str, Any]) -> None:
        raise NotImplementedError

    def _watch_drift(self) -> None:
        raise NotImplementedError

    @property
    def model_info(self) -> dict[str, str]:
        return self.pipeline.model_info

    # -- switching models -------------------------------------------------------------------
    def _load(self, path: Path | str, keys: Any, spec_hash: Any) -> Any:
        from agent.features import DEFAULT_SPEC
        from agent.inference import load_bundle

        return load_bundle(path, list(keys), spec_hash, backend=self.config.model.backend,
                           feature_names=DEFAULT_SPEC.feature_names)

    def replace_model(self, path: Path | str, trusted_keys: list[Path] | None = None) -> bool:
        """Verify and switch to another bundle; on any failure keep the running model.

        A new model scores on its own scale, so every stream commissions again (baseline
        and threshold). Emits a ``model`` event either way; returns whether it switched.
        """
        keys = list(trusted_keys if trusted_keys is not None else self.config.model.trusted_keys)
        try:
            loaded = self._load(path, keys, pl.Pipeline._spec_hashes())
            new = pl.Pipeline(self.config, bundle=loaded)
        except ForeshockError as exc:
            log.warning("model update refused, keeping %s: %s", self.model_info, exc)
            self._event({"type": "model", "detail": {
                "status": "refused", "bundle": str(path), "reason": str(exc),
                "running": self.model_info}})
            return False
        self._install(new, str(path))
        return True

    def _install(self, new: pl.Pipeline, source: str) -> None:
        old = self.model_info
        if new.spec != self.pipeline.spec:
            self.queue.clear()
            self.windower = Windower(new.spec)
        self.pipeline = new
        self._watch_drift()
        if self.link is not None:
            self.link.set_model(self.model_info)
        self._event({"type": "model", "detail": {
            "status": "loaded", "bundle": source, "previous": old, "running": self.model_info}})
        log.info("model switched from %s to %s", old, self.model_info)

    def _follow_ota(self) -> None:
        """Run the model the receiver says should run (promoted, or last-known-good)."""
        ota = self.ota
        if ota is None:
            return
        for _ in range(3):  # a promoted bundle that fails to load is rolled back, then retried
            want, have = ota.running(), self.model_info
            if (want["name"], want["version"]) == (have.get("name"), have.get("version")):
                return
            path = ota.active_bundle()
            if path is None:
                self._restore_configured()
                return
            if self.replace_model(path, list(ota.config.trusted_keys)):
                return
            active = ota.state["active"] or {}
            self._send_status(ota.on_rollback({"args": {
                "rollout_id": active.get("rollout_id", "")}}))

    def _restore_configured(self) -> None:
        try:
            self._install(pl.Pipeline(self.config), "configured")
        except ForeshockError as exc:
            log.error("configured model does not load (%s); keeping %s", exc, self.model_info)

    # -- over the air -------------------------------------------------------------------------
    def _open_ota(self) -> None:
        """Create the receiver, resume an interrupted update, run the promoted model."""
        device = self.config.device
        cfg = OtaConfig(device.site, device.device_id, self.config.service.state_dir / "ota",
                        tuple(self.config.model.trusted_keys), self.pipeline.spec.hash)
        self._ota_inbox: deque[tuple[str, bytes]] = deque()
        self._ota_inbox_bytes = 0
        self._ota_lock = threading.Lock()
        self._unsent: deque[bytes] = deque(maxlen=MAX_UNSENT_STATUS)
        self._shadow_cols: tuple[list[int], Any] | None = None
        self.counters.update(ota_messages=0, ota_dropped=0, ota_errors=0)
        self.ota = OtaReceiver(cfg, self.model_info, loader=self._load)
        try:
            resumed = self.ota.resume()
        except (KeyError, TypeError, AttributeError) as exc:  # ota.json of the wrong shape
            moved = cfg.state_dir / "ota.json.bad"
            (cfg.state_dir / "ota.json").replace(moved)
            log.error("OTA state unusable (%r), moved to %s; running the configured model",
                      exc, moved)
            self.ota = OtaReceiver(cfg, self.model_info, loader=self._load)
            resumed = []
        self._send_status(resumed)
        self._follow_ota()

    def _queue_ota(self, topic: str, payload: bytes) -> None:
        """Link thread: keep the message for the loop (bounded in bytes; a dropped chunk is
        asked for again at the next offer)."""
        with self._ota_lock:
            if self._ota_inbox_bytes + len(payload) > MAX_QUEUED_OTA_BYTES:
                self.counters["ota_dropped"] += 1
                return
            self._ota_inbox_bytes += len(payload)
            self._ota_inbox.append((topic, payload))

    def _handle_ota(self) -> None:
        """Loop: dispatch queued OTA messages, publish the answers, follow the verdict."""
        if self.ota is None:
            return
        while self._ota_inbox:
            with self._ota_lock:
                topic, payload = self._ota_inbox.popleft()
                self._ota_inbox_bytes -= len(payload)
            self.counters["ota_messages"] += 1
            try:
                out = self.ota.dispatch(topic, payload)
            except ForeshockError as exc:
                self.counters["ota_errors"] += 1
                log.error("model update message on %s: %s", topic, exc)
                continue
            if out:  # switch first: "active" goes out only once the new model runs
                self._follow_ota()
                self._send_status(out)
        self._flush_status()

    def _shadow(self, z_all: Any, out: Any = None) -> None:
        """Feed a scored batch (z over every spec feature) to the candidate in shadow, with
        the running model's alert per window (its score above its bundle floor) and whether
        the window's stream has an open incident an operator confirmed (``out``: the
        batch's :class:`agent.pipeline.StepOutput`; None: the running model's alerts are
        unknown and every candidate alert counts as extra)."""
        ota = self.ota
        if ota is None or ota.shadow is None or not len(z_all):
            return
        candidate = ota.candidate
        if self._shadow_cols is None or self._shadow_cols[1] is not candidate:
            self._shadow_cols = (self.pipeline.spec.index(list(candidate.input_features)),
                                 candidate)
        running, confirmed = self._running_alerts(len(z_all), out)
        result = ota.observe(z_all[:, self._shadow_cols[0]], running, confirmed)
        if result:
            self._follow_ota()
            self._send_status(result)

    def _running_alerts(self, n: int, out: Any) -> tuple[Any, Any]:
        """(running model alerts, on a confirmed fault) per shadow window, or (None, None)."""
        import numpy as np

        anomaly = getattr(out, "anomaly", None)
        if anomaly is None or len(anomaly) != n:
            return None, None
        running = np.nan_to_num(np.asarray(anomaly, np.float64), nan=-np.inf) > \
            self.pipeline.decider.floor
        confirmed_ids: set[str] = getattr(self, "confirmed_incidents", set())
        scored = [r for r in out.results if not r.commissioning]
        if not confirmed_ids or len(scored) != n:
            return running, None
        decider = self.pipeline.decider
        confirmed = np.zeros(n, bool)
        for i, r in enumerate(scored):
            incident = decider.stream((r.window.device_id, r.window.channel)).incident
            confirmed[i] = incident is not None and incident.id in confirmed_ids
        return running, confirmed

    def note_feedback(self, args: dict[str, Any]) -> None:
        """Remember the incidents an operator confirmed (``cmd/feedback``, signed): a
        candidate in shadow must keep flagging their windows. A later label replaces it."""
        incident = args.get("incident")
        if not isinstance(incident, str):
            return
        confirmed: set[str] = self.__dict__.setdefault("confirmed_incidents", set())
        if args.get("label") == "confirmed":
            if len(confirmed) >= MAX_CONFIRMED:
                confirmed.pop()
            confirmed.add(incident)
        else:
            confirmed.discard(incident)

    def _send_status(self, payloads: list[bytes]) -> None:
        self._unsent.extend(payloads)
        self._flush_status()

    def _flush_status(self) -> None:
        if self.link is None or not self._unsent:
            return
        device = self.config.device
        topic = topics.model_status(device.site, device.device_id)
        while self._unsent and self.link.publish(topic, self._unsent[0], 1):
            self._unsent.popleft()
