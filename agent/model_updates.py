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

A switch never learns the machine again from the windows arriving now (they may carry a
developing fault): with the same feature spec every stream keeps its baseline, its
operating-state baselines, its debounce state and its open incident, and gets a threshold
on the new model's scale from its commissioning reference windows (docs/learning.md,
"Model switch"). Only a different feature spec commissions again, and says so.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from agent import pipeline as pl
from agent.baselines import StateBank, stream_name
from agent.confirmed import ConfirmedIncidents
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
SWITCH_WHO: Final = "model switch"
SPEC_CHANGED: Final = "feature spec changed"


class ModelUpdates:
    """Mixin of :class:`agent.service.Agent`: ``replace_model`` and the OTA wiring."""

    config: AgentConfig
    pipeline: pl.Pipeline
    windower: Windower
    queue: deque[Any]
    counters: dict[str, int]
    link: Any
    ota: OtaReceiver | None = None
    learning: StateBank | None = None

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

        With the same feature spec every stream keeps its baseline and open incident and
        gets a threshold on the new model's scale (:meth:`_install`). Emits a ``model``
        event either way; returns whether it switched.
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
        """Run ``new`` from the next batch on. Same feature spec: every stream carries over
        (:meth:`_carry_streams`); another spec: every stream commissions again
        (:meth:`_commission_again`). The ``model`` event lists what happened per stream."""
        old_pipeline, old = self.pipeline, self.model_info
        if new.spec != old_pipeline.spec:
            self.queue.clear()
            self.windower = Windower(new.spec)
            streams = self._commission_again(old_pipeline, new, source)
            baselines = "commissioning: " + SPEC_CHANGED
        else:
            streams = self._carry_streams(old_pipeline, new, source)
            baselines = "kept"
        self.pipeline = new
        self._watch_drift()
        if self.link is not None:
            self.link.set_model(self.model_info)
        self._event({"type": "model", "detail": {
            "status": "loaded", "bundle": source, "previous": old, "running": self.model_info,
            "baselines": baselines, "streams": streams}})
        log.info("model switched from %s to %s (baselines %s)", old, self.model_info, baselines)

    def _carry_streams(self, old_pipeline: pl.Pipeline, new: pl.Pipeline,
                       source: str) -> dict[str, dict[str, Any]]:
        """Same feature spec: each stream keeps its baseline(s), reference, debounce state
        and open incident; the operating-state bank stays attached (set here, before the new
        pipeline runs); each threshold is re-derived by the new decider's own rule from the
        stream's commissioning reference (the bundle floor without one), unless the model
        is the one the threshold is already for. Every changed threshold is audited."""
        bank = self.learning
        new.learning = bank
        old_model, model = old_pipeline.model_info, new.model_info
        at_s = time.time()
        why = (f"model switch {old_model.get('name')} {old_model.get('version')} -> "
               f"{model.get('name')} {model.get('version')} ({source})")
        detail = {"previous_model": old_model, "model": model}
        out: dict[str, dict[str, Any]] = {}
        for key, s in old_pipeline.decider._streams.items():
            reference = s.reference or (bank.reference(key) if bank is not None else None)
            name = stream_name(key)
            if s.baseline is None:
                new.decider.carry(key, s, 0.0, reference)
                out[name] = {"baseline": "commissioning", "windows": len(s.rows)}
                continue
            if model == old_model:
                threshold, how = s.threshold, "kept"
            else:
                threshold, how = new.decider.rethreshold(reference)
            new.decider.carry(key, s, threshold, reference)
            out[name] = {"baseline": "kept", "old_threshold": s.threshold,
                         "threshold": threshold, "threshold_source": how,
                         "incident": s.incident.id if s.incident is not None else None}
            if bank is not None and how != "kept":
                bank.set_threshold(key, threshold, who=SWITCH_WHO, why=why, at_s=at_s,
                                   threshold_source=how, **detail)
        if bank is not None:
            out.update(self._rescale_bank(bank, new, set(out), why, detail))
        return out

    def _rescale_bank(self, bank: StateBank, new: pl.Pipeline, done: set[str], why: str,
                      detail: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Thresholds saved in the bank for streams not seen since the start (a switch at
        start-up): kept when the bank says they are on ``new``'s scale already, else
        re-derived from the saved reference (the bundle floor without one). Tags the bank
        with ``new``'s model and saves it."""
        out: dict[str, dict[str, Any]] = {}
        model = new.model_info
        if bank.model is None or bank.model != model:
            at_s = time.time()
            for name in [n for n in bank.thresholds if n not in done]:
                old_threshold = bank.thresholds[name]
                threshold, how = new.decider.rethreshold(bank.references.get(name))
                bank.set_threshold(name, threshold, who=SWITCH_WHO, why=why, at_s=at_s,
                                   threshold_source=how, **detail)
                out[name] = {"baseline": "kept", "old_threshold": old_threshold,
                             "threshold": threshold, "threshold_source": how,
                             "incident": None}
        bank.model = dict(model)
        self._save_bank(bank)
        return out

    def _commission_again(self, old_pipeline: pl.Pipeline, new: pl.Pipeline,
                          source: str) -> dict[str, dict[str, Any]]:
        """Another feature spec: no baseline carries over (other features), so every stream
        commissions again, with the reason in health and in its ``commissioned`` event.
        The operating-state bank (baselines of the old spec) is parked untouched, neither
        seeded nor adapted: a switch back to that spec (or a restart on the configured model)
        resumes it; meanwhile the stream keeps one commissioning baseline. Open incidents
        end with the old model (listed, never cleared)."""
        at_s = time.time()
        parked = self._parked_banks
        bank = self.learning
        keys = list(old_pipeline.decider._streams)
        if bank is not None:
            for key in dict.fromkeys([*keys, *bank.thresholds]):
                bank.audit.append({"ts": at_s, "who": SWITCH_WHO, "why": SPEC_CHANGED,
                                   "stream": stream_name(key), "state": "*",
                                   "change": "commissioning", "previous_model":
                                   old_pipeline.model_info, "model": new.model_info,
                                   "bundle": source})
            self._save_bank(bank)
            parked[old_pipeline.spec.hash] = bank
        self.learning = parked.pop(new.spec.hash, None)
        new.learning = self.learning
        if self.learning is not None:       # back to a spec with saved baselines
            self._rescale_bank(self.learning, new, set(), SPEC_CHANGED + " (back)", {
                "previous_model": old_pipeline.model_info, "model": new.model_info})
        out: dict[str, dict[str, Any]] = {}
        for key, s in old_pipeline.decider._streams.items():
            new.decider.commission_again(key, SPEC_CHANGED)
            out[stream_name(key)] = {
                "baseline": "commissioning", "reason": SPEC_CHANGED,
                "incident_ended": s.incident.id if s.incident is not None else None}
            if s.incident is not None:
                log.warning("incident %s on %s ends with the feature spec change",
                            s.incident.id, stream_name(key))
        return out

    @functools.cached_property
    def _parked_banks(self) -> dict[str, StateBank]:
        """Operating-state banks of other feature specs, by spec hash (see
        :meth:`_commission_again`)."""
        return {}

    def rebaseline_parked(self, channel: int | None, *, who: str, why: str,
                          at_s: float) -> int:
        """Reset the streams on ``channel`` (None: every stream) in the banks parked by a
        feature-spec switch too, so switching back does not resume baselines an operator
        asked to forget; returns how many states were reset."""
        n = 0
        for bank in self._parked_banks.values():
            for stream in list(bank.streams):
                if channel is None or stream.rsplit("/", 1)[-1] == str(channel):
                    n += bank.rebaseline(stream, who=who, why=why, at_s=at_s)
            if self.learning is None:   # the state dir's bank file is the parked one
                self._save_bank(bank)
        return n

    @staticmethod
    def _save_bank(bank: StateBank) -> None:
        if bank.state_dir is None:
            return
        try:
            bank.save()
        except OSError as exc:
            log.error("baselines not saved: %s", exc)

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
        bank = self.learning
        if bank is not None and bank.model is None and not bank.thresholds:
            bank.model = dict(self.model_info)  # its thresholds are this model's until a switch
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
        bank = self.learning
        if bank is not None and bank.model is not None and bank.model != self.model_info:
            # saved under another model (the configured one changed between runs)
            streams = self._rescale_bank(bank, self.pipeline, set(), "configured model changed",
                                         {"previous_model": bank.model,
                                          "model": self.model_info})
            self._event({"type": "baseline", "detail": {
                "status": "thresholds_rederived", "reason": "configured model changed",
                "model": self.model_info, "streams": streams}})

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
        confirmed_ids = self.confirmed_incidents
        scored = [r for r in out.results if not r.commissioning]
        if not confirmed_ids or len(scored) != n:
            return running, None
        decider = self.pipeline.decider
        confirmed = np.zeros(n, bool)
        for i, r in enumerate(scored):
            incident = decider.stream((r.window.device_id, r.window.channel)).incident
            confirmed[i] = incident is not None and incident.id in confirmed_ids
        return running, confirmed

    @functools.cached_property
    def confirmed_incidents(self) -> ConfirmedIncidents:
        """The incidents operators confirmed (``<service.state_dir>/confirmed_incidents.json``,
        read at first use, kept across restarts)."""
        path = self.config.service.state_dir / "confirmed_incidents.json"
        return ConfirmedIncidents(path, MAX_CONFIRMED)

    def note_feedback(self, args: dict[str, Any]) -> None:
        """Remember the incidents an operator confirmed (``cmd/feedback``, signed): a
        candidate in shadow must keep flagging their windows. A later label replaces it."""
        incident = args.get("incident")
        if isinstance(incident, str):
            try:
                self.confirmed_incidents.note(incident, str(args.get("label")))
            except OSError as exc:      # kept in memory; the disk is the health report's
                log.error("confirmed incident %s not saved: %s", incident, exc)

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
