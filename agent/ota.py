"""Over-the-air model updates on the device: download, verify, shadow, promote or roll back.

The gateway offers a bundle (``model/offer``, docs/schemas/model-offer.json) and sends the
chunks this device reports missing (``model/chunk``). :class:`OtaReceiver` keeps chunks on
disk, so a download resumes after a link drop or a reboot. With every chunk present it
assembles the files, checks their sizes and SHA-256 against the offer, then loads the
bundle with :func:`agent.inference.load_bundle` (signature, manifest hashes, feature spec,
model load). Until then — and during the shadow run — the running model is untouched.

The candidate then runs in shadow beside the running model for the offer's
``shadow_windows`` windows (else ``shadow.windows``) and is promoted, or refused and deleted,
by :class:`agent.shadow.ShadowCheck` (docs/gateway.md, "Shadow check").

Promotion keeps the previous bundle as last-known-good; a ``rollback``
command, or a failed shadow run, returns to it. Everything the receiver decides is written
atomically to ``<state_dir>/ota.json`` first, so a reboot mid-update resumes the download,
restarts the shadow run, or keeps whatever model was last promoted.

Refused: unsigned, tampered, incompatible feature spec, an offer whose bundle is not what
it claims, and any version not newer than the running one (no downgrades over the air; a
rollback only ever returns to the local last-known-good).

Each ``on_*`` method returns the ``model/status`` payloads to publish
(docs/schemas/model-status.json); the agent's link publishes them (wiring:
agent/model_updates.py). Payloads are parsed and built by ``foreshock.messages``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from agent.shadow import ShadowCheck, ShadowPolicy, Verdict
from foreshock import messages
from foreshock.bundle import parse_semver
from foreshock.errors import BundleError, MessageError
from foreshock.files import atomic_write

__all__ = ["CHUNK_SCHEMA", "OFFER_SCHEMA", "Loader", "OtaConfig", "OtaReceiver", "ShadowCheck",
           "ShadowPolicy", "Verdict", "parse_chunk", "parse_offer"]

log = logging.getLogger(__name__)
OFFER_SCHEMA: Final = messages.MODEL_OFFER_SCHEMA
CHUNK_SCHEMA: Final = messages.MODEL_CHUNK_SCHEMA


@dataclass(frozen=True)
class OtaConfig:
    site: str
    device: str
    state_dir: Path
    trusted_keys: tuple[Any, ...]
    spec_hash: str
    shadow: ShadowPolicy = field(default_factory=ShadowPolicy)


Loader = Callable[[Path, Sequence[Any], str], Any]


def _default_loader(path: Path, keys: Sequence[Any], spec_hash: str) -> Any:
    from agent.inference import load_bundle

    return load_bundle(path, keys, spec_hash)


class OtaReceiver:
    """The device's OTA state machine, persisted in ``state_dir``."""

    def __init__(self, config: OtaConfig, running: dict[str, str],
                 loader: Loader = _default_loader) -> None:
        self.config = config
        self.loader = loader
        self.dir = Path(config.state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state: dict[str, Any] = self._load_state()
        self.state.setdefault("active", None)
        self.state.setdefault("previous", None)
        self.state.setdefault("pending", None)
        self.shipped = dict(running)
        self.shadow: ShadowCheck | None = None
        self.candidate: Any = None
        self.refused = 0
        self.invalid = 0
        self.io_errors = 0

    # --- persistent state ------------------------------------------------------------------
    def _load_state(self) -> dict[str, Any]:
        path = self.dir / "ota.json"
        try:
            data = json.loads(path.read_text())
            return data if isinstance(data, dict) else {}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("OTA state %s unreadable (%s); keeping the shipped model", path, exc)
            return {}

    def _save(self) -> None:
        atomic_write(self.dir / "ota.json", json.dumps(self.state).encode())

    def running(self) -> dict[str, str]:
        """``{name, version}`` of the model the agent should run."""
        active = self.state["active"]
        return {"name": active["name"], "version": active["version"]} if active else \
            dict(self.shipped)

    def active_bundle(self) -> Path | None:
        """The promoted bundle directory, or None to run the shipped bundle."""
        active = self.state["active"]
        return Path(active["path"]) if active else None

    # --- status messages -------------------------------------------------------------------
    def _status(self, rollout_id: str, bundle: dict[str, str], status: str, *,
                detail: str = "", progress: float | None = None,
                missing: dict[str, list[int]] | None = None) -> bytes:
        return messages.model_status_message(
            self.config.site, self.config.device, rollout_id, bundle, status, ts=time.time(),
            detail=detail, progress=progress, missing=missing)

    def _refuse(self, offer: dict[str, Any], reason: str) -> list[bytes]:
        self.refused += 1
        log.warning("model bundle refused: %s", reason)
        pending = self.state["pending"]
        if pending and pending["rollout_id"] == offer["rollout_id"]:
            self._discard()
        return [self._status(offer["rollout_id"], offer["bundle"], "failed", detail=reason)]

    def dispatch(self, topic: str, payload: bytes) -> list[bytes]:
        """Route a ``model/offer``, ``model/chunk`` or ``cmd/rollback`` message; a payload
        that fails validation is counted in ``invalid`` and dropped."""
        try:
            if topic.endswith("/model/offer"):
                return self.on_offer(payload)
            if topic.endswith("/model/chunk"):
                return self.on_chunk(payload)
            if topic.endswith("/cmd/rollback"):
                return self.on_rollback(messages.decode_command(payload))
        except MessageError as exc:
            self.invalid += 1
            log.warning("OTA message on %s dropped: %s", topic, exc)
        except OSError as exc:
            self.io_errors += 1
            log.error("OTA state under %s: %s", self.dir, exc)
        return []

    # --- offer and chunks ------------------------------------------------------------------
    def on_offer(self, payload: bytes) -> list[bytes]:
        """Accept (or resume, or refuse) an offer; reply with the chunks still missing."""
        offer = parse_offer(payload)
        pending = self.state["pending"]
        running = self.running()
        if offer["bundle"] == running:
            return [self._status(offer["rollout_id"], offer["bundle"], "active")]
        if _newer_or_equal(running["version"], offer["bundle"]["version"]) and \
                running["name"] == offer["bundle"]["name"]:
            return self._refuse(offer, f"version {offer['bundle']['version']} is not newer "
                                       f"than the running {running['version']}")
        if pending and pending["rollout_id"] == offer["rollout_id"]:
            if pending["phase"] == "shadow":
                return [self._status(offer["rollout_id"], offer["bundle"], "shadow")]
        else:
            if pending:
                self._discard()
            self.state["pending"] = {"rollout_id": offer["rollout_id"], "offer": offer,
                                     "phase": "downloading", "shadow_seen": 0}
            self._save()
        missing = self._missing()
        if not any(missing.values()):
            return self._complete()
        return [self._status(offer["rollout_id"], offer["bundle"], "downloading",
                             progress=self._progress(missing), missing=missing)]

    def _staging(self) -> Path:
        return self.dir / "staging" / self.state["pending"]["rollout_id"]

    def _missing(self) -> dict[str, list[int]]:
        offer, staging = self.state["pending"]["offer"], self._staging()
        return {f["name"]: [i for i in range(f["chunks"])
                            if not (staging / f"{f['name']}.{i}").exists()]
                for f in offer["files"]}

    def _progress(self, missing: dict[str, list[int]]) -> float:
        total = sum(f["chunks"] for f in self.state["pending"]["offer"]["files"])
        return 1 - sum(len(v) for v in missing.values()) / total

    def on_chunk(self, payload: bytes) -> list[bytes]:
        """Store one verified chunk; verify and start the shadow run when complete."""
        chunk = parse_chunk(payload)
        pending = self.state["pending"]
        if not pending or pending["rollout_id"] != chunk["rollout_id"] or \
                pending["phase"] != "downloading":
            return []
        spec = {f["name"]: f for f in pending["offer"]["files"]}.get(chunk["file"])
        if spec is None or chunk["count"] != spec["chunks"] or chunk["index"] >= spec["chunks"]:
            raise MessageError(f"chunk {chunk['file']}#{chunk['index']} is not in the offer")
        data = messages.chunk_data(chunk)
        staging = self._staging()
        atomic_write(staging / f"{chunk['file']}.{chunk['index']}", data)
        missing = self._missing()
        if any(missing.values()):
            return []
        return self._complete()

    def _complete(self) -> list[bytes]:
        """Assemble, verify and load the candidate; start its shadow run."""
        pending = self.state["pending"]
        offer = pending["offer"]
        bundle_dir = self.dir / "bundles" / f"{offer['bundle']['name']}-" \
                                            f"{offer['bundle']['version']}"
        try:
            self._assemble(offer, bundle_dir)
            loaded = self.loader(bundle_dir, self.config.trusted_keys, self.config.spec_hash)
            manifest = loaded.manifest
            if {"name": manifest.name, "version": manifest.version} != offer["bundle"]:
                raise BundleError(f"bundle is {manifest.name} {manifest.version}, "
                                  f"not the offered {offer['bundle']}")
        except BundleError as exc:
            shutil.rmtree(bundle_dir, ignore_errors=True)
            return self._refuse(offer, str(exc))
        shutil.rmtree(self._staging(), ignore_errors=True)
        pending.update(phase="shadow", path=str(bundle_dir), shadow_seen=0)
        self._save()
        self._start_shadow(loaded)
        rid, bundle = offer["rollout_id"], offer["bundle"]
        return [self._status(rid, bundle, "verified"), self._status(rid, bundle, "shadow")]

    def _assemble(self, offer: dict[str, Any], bundle_dir: Path) -> None:
        shutil.rmtree(bundle_dir, ignore_errors=True)
        bundle_dir.mkdir(parents=True)
        staging = self._staging()
        for f in offer["files"]:
            h = hashlib.sha256()
            with open(bundle_dir / f["name"], "wb") as out:
                for i in range(f["chunks"]):
                    data = (staging / f"{f['name']}.{i}").read_bytes()
                    h.update(data)
                    out.write(data)
            size = (bundle_dir / f["name"]).stat().st_size
            if size != f["size"] or h.hexdigest() != f["sha256"]:
                raise BundleError(f"file {f['name']} does not match the offer's size and hash")

    def _start_shadow(self, loaded: Any) -> None:
        """Shadow-run ``loaded`` for the offer's ``shadow_windows`` (else the policy's)."""
        self.candidate = loaded
        policy = self.config.shadow
        windows = self.state["pending"]["offer"].get("shadow_windows")
        if isinstance(windows, int) and not isinstance(windows, bool) and windows > 0:
            policy = replace(policy, windows=windows)
        self.shadow = ShadowCheck(loaded.detector, float(loaded.anomaly_floor), policy)

    def resume(self) -> list[bytes]:
        """After a restart: check the promoted model still verifies and loads (else fall
        back to last-known-good), then resume a download or restart a shadow run."""
        out = self._check_active()
        pending = self.state["pending"]
        if not pending:
            return out
        offer = pending["offer"]
        if pending["phase"] == "downloading":
            missing = self._missing()
            return [*out, self._status(offer["rollout_id"], offer["bundle"], "downloading",
                                       progress=self._progress(missing), missing=missing)]
        try:
            loaded = self.loader(Path(pending["path"]), self.config.trusted_keys,
                                 self.config.spec_hash)
        except BundleError as exc:
            return self._refuse(offer, str(exc))
        self._start_shadow(loaded)  # the shadow run starts over after a reboot
        return [*out, self._status(offer["rollout_id"], offer["bundle"], "shadow")]

    def _check_active(self) -> list[bytes]:
        active = self.state["active"]
        if not active:
            return []
        try:
            self.loader(Path(active["path"]), self.config.trusted_keys, self.config.spec_hash)
        except BundleError as exc:
            log.error("promoted model %s %s no longer loads (%s); back to last-known-good",
                      active["name"], active["version"], exc)
            return self.on_rollback({"args": {"rollout_id": active.get("rollout_id", "")}})
        return []

    # --- shadow, promotion, rollback --------------------------------------------------------
    def observe(self, z: npt.NDArray[np.float32],
                running: npt.NDArray[np.bool_] | None = None,
                confirmed: npt.NDArray[np.bool_] | None = None) -> list[bytes]:
        """Feed the windows the running model scored to the candidate in shadow, with the
        running model's alert per window and whether it is on a confirmed fault
        (:meth:`ShadowCheck.observe`)."""
        if self.shadow is None:
            return []
        verdict = self.shadow.observe(z, running, confirmed)
        if verdict is None:
            return []
        offer = self.state["pending"]["offer"]
        if not verdict.ok:
            shutil.rmtree(self.state["pending"]["path"], ignore_errors=True)
            return self._refuse(offer, f"shadow check failed: {verdict.reason}")
        self.state["previous"] = self.state["active"]
        self.state["active"] = {**offer["bundle"], "path": self.state["pending"]["path"],
                                "rollout_id": offer["rollout_id"]}
        self.state["pending"] = None
        self._save()
        self.shadow = None
        log.info("model %s %s promoted (%s)", offer["bundle"]["name"],
                 offer["bundle"]["version"], verdict.reason)
        return [self._status(offer["rollout_id"], offer["bundle"], "active",
                             detail=verdict.reason)]

    def on_rollback(self, command: dict[str, Any]) -> list[bytes]:
        """Cancel a pending update or return to last-known-good (``rollback`` command)."""
        rid = str(command.get("args", {}).get("rollout_id", ""))
        pending, active = self.state["pending"], self.state["active"]
        if pending and (not rid or pending["rollout_id"] == rid):
            offer = pending["offer"]
            self._discard()
            return [self._status(offer["rollout_id"], offer["bundle"], "rolled_back",
                                 detail="update cancelled; the running model is unchanged")]
        if active and (not rid or active.get("rollout_id") == rid):
            self.state["active"], self.state["previous"] = self.state["previous"], None
            self._save()
            back = self.running()
            return [self._status(active.get("rollout_id", rid), active, "rolled_back",
                                 detail=f"back to {back['name']} {back['version']}")]
        return []

    def _discard(self) -> None:
        pending = self.state["pending"]
        shutil.rmtree(self.dir / "staging" / pending["rollout_id"], ignore_errors=True)
        if pending.get("path"):
            shutil.rmtree(pending["path"], ignore_errors=True)
        self.state["pending"] = None
        self.shadow = None
        self.candidate = None
        self._save()


def _newer_or_equal(running: str, offered: str) -> bool:
    try:
        return parse_semver(running) >= parse_semver(offered)
    except BundleError:
        return False


def parse_offer(payload: bytes) -> dict[str, Any]:
    """Validate a ``foreshock.model_offer/1`` payload; MessageError names the problem."""
    return messages.decode_model_offer(payload)


def parse_chunk(payload: bytes) -> dict[str, Any]:
    """Validate a ``foreshock.model_chunk/1`` payload (its data is checked on arrival)."""
    return messages.decode_model_chunk(payload)
