"""Staged model rollout: offer a signed bundle in chunks, canary first, abort on failures.

A :class:`RolloutManager` offers the bundle (docs/schemas/model-offer.json) to the canary
devices and sends each device exactly the chunks it reports missing in its
``downloading`` status (docs/schemas/model-chunk.json), so an interrupted download
resumes. Per-device status (offered, downloading, verified, shadow, active, failed,
rolled_back) is kept in the store's ``rollout_devices`` table. When every canary is
``active`` the rollout widens to the other devices. When failed or rolled-back devices
reach ``abort_on_pct`` of those offered, it aborts: no further offers, and a ``rollback``
command to every device that took the bundle, which returns it to its last-known-good model.

The gateway verifies the bundle's signature before it publishes it (the device verifies
it again: the gateway is not trusted with the fleet's models).
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from foreshock import bundle as fsbundle
from foreshock import messages, topics
from foreshock.errors import ConfigError, MessageError
from gateway.ingest import ROLLOUT_STATUSES
from gateway.store import RolloutRow, Store

log = logging.getLogger(__name__)
OFFER_SCHEMA: Final = messages.MODEL_OFFER_SCHEMA
CHUNK_SCHEMA: Final = messages.MODEL_CHUNK_SCHEMA
STATUSES: Final = ROLLOUT_STATUSES
FAILED: Final = ("failed", "rolled_back")
Publish = Callable[[str, bytes, int], None]


@dataclass(frozen=True)
class RolloutPlan:
    """What to roll out where. ``devices`` in canary order (the first ``canary`` go first)."""

    bundle: Path
    site: str
    devices: tuple[str, ...]
    canary: int = 1
    abort_on_pct: float = 20.0
    chunk_bytes: int = 64 * 1024
    shadow_windows: int = 100

    def __post_init__(self) -> None:
        topics.check_id(self.site, "site")
        for d in self.devices:
            topics.check_id(d, "device")
        if not self.devices:
            raise ConfigError("rollout has no target devices",
                              hint="check --to, and that the fleet registry lists devices")
        if self.canary < 1:
            raise ConfigError(f"--canary {self.canary} must be at least 1")
        if not 0 < self.abort_on_pct <= 100:
            raise ConfigError(f"--abort-on {self.abort_on_pct} must be in 0..100 (percent)")
        if not 1024 <= self.chunk_bytes <= 4 * 1024 * 1024:
            raise ConfigError(f"chunk_bytes {self.chunk_bytes} must be 1 KiB..4 MiB")


@dataclass(frozen=True)
class BundleFile:
    name: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def read_bundle(path: Path, trusted: Sequence[Any]) -> tuple[fsbundle.Manifest, list[BundleFile]]:
    """Verify a bundle directory and read its files (flat directory only)."""
    manifest = fsbundle.verify(Path(path), [fsbundle.load_public_key(k) if not
                                            hasattr(k, "verify") else k for k in trusted])
    files = sorted(p for p in Path(path).iterdir() if p.is_file())
    return manifest, [BundleFile(p.name, p.read_bytes()) for p in files]


def offer_message(rollout_id: str, manifest: fsbundle.Manifest, files: list[BundleFile],
                  chunk_bytes: int, shadow_windows: int) -> bytes:
    return messages.model_offer_message(
        rollout_id, {"name": manifest.name, "version": manifest.version},
        [{"name": f.name, "size": len(f.data), "sha256": f.sha256,
          "chunks": _chunks(f, chunk_bytes)} for f in files],
        chunk_bytes=chunk_bytes, shadow_windows=shadow_windows, ts=time.time())


def chunk_message(rollout_id: str, f: BundleFile, index: int, chunk_bytes: int) -> bytes:
    return messages.model_chunk_message(rollout_id, f.name, index, _chunks(f, chunk_bytes),
                                        f.data[index * chunk_bytes:(index + 1) * chunk_bytes])


def _chunks(f: BundleFile, chunk_bytes: int) -> int:
    return max(1, math.ceil(len(f.data) / chunk_bytes))


class RolloutManager:
    """Drives one rollout from model status messages (``on_status``); thread-safe."""

    def __init__(self, plan: RolloutPlan, store: Store, publish: Publish,
                 trusted_keys: Sequence[Any], rollout_id: str | None = None,
                 command_key: Ed25519PrivateKey | None = None) -> None:
        self.plan = plan
        self.command_key = command_key  # signs cmd/rollback (devices refuse unsigned ones)
        self.store = store
        self.publish = publish
        self.manifest, self.files = read_bundle(plan.bundle, trusted_keys)
        self.rollout_id = rollout_id or f"r-{uuid.uuid4().hex[:10]}"
        self.status: dict[str, str] = {}
        self.state = "new"
        self.created_ts = time.time()
        self._lock = threading.RLock()
        self._by_name = {f.name: f for f in self.files}

    @property
    def bundle(self) -> dict[str, str]:
        return {"name": self.manifest.name, "version": self.manifest.version}

    def _save(self) -> None:
        p = self.plan
        self.store.save_rollout(RolloutRow(
            self.rollout_id, self.manifest.name, self.manifest.version, p.site, p.canary,
            p.abort_on_pct, self.state, self.created_ts, time.time(),
            {"devices": list(p.devices), "canary_devices": list(self.canaries())}))

    def canaries(self) -> tuple[str, ...]:
        return self.plan.devices[:self.plan.canary]

    def start(self) -> str:
        """Offer the bundle to the canary devices; returns the rollout id."""
        with self._lock:
            self.state = "canary"
            self._save()
            self._offer(self.canaries())
        log.info("rollout %s of %s %s: canary %s", self.rollout_id, self.manifest.name,
                 self.manifest.version, ", ".join(self.canaries()))
        return self.rollout_id

    def _offer(self, devices: Sequence[str]) -> None:
        payload = offer_message(self.rollout_id, self.manifest, self.files,
                                self.plan.chunk_bytes, self.plan.shadow_windows)
        for device in devices:
            self._set(device, "offered", {})
            self.publish(topics.model_offer(self.plan.site, device), payload, 1)

    def reoffer(self) -> None:
        """Offer again to devices still downloading (after they reconnect: resumes)."""
        with self._lock:
            pending = [d for d, s in self.status.items() if s in ("offered", "downloading")]
            if self.state in ("canary", "widening"):
                self._offer(pending)

    def _set(self, device: str, status: str, detail: dict[str, Any]) -> None:
        self.status[device] = status
        self.store.set_rollout_device(self.rollout_id, self.plan.site, device, status, detail,
                                      time.time())

    def on_status(self, topic: str, payload: bytes) -> None:
        """Handle a ``model/status`` message (other topics and rollouts are ignored)."""
        try:
            site, device, kind = topics.parse(topic)
        except ValueError:
            return
        if kind != "model/status" or site != self.plan.site:
            return
        try:
            msg = messages.decode_model_status(payload)
        except MessageError as exc:
            log.warning("bad model status from %s: %s", device, exc)
            return
        if msg["rollout_id"] != self.rollout_id:
            return
        with self._lock:
            if device not in self.status:
                return
            self._set(device, str(msg["status"]), {k: msg[k] for k in ("detail", "progress")
                                                   if k in msg})
            if msg["status"] == "downloading" and isinstance(msg.get("missing_chunks"), dict):
                self._send_missing(device, msg["missing_chunks"])
            self._evaluate()

    def _send_missing(self, device: str, missing: dict[str, Any]) -> None:
        topic = topics.model_chunk(self.plan.site, device)
        for name, indexes in missing.items():
            f = self._by_name.get(name)
            if f is None or not isinstance(indexes, list):
                continue
            for i in indexes:
                if isinstance(i, int) and 0 <= i < _chunks(f, self.plan.chunk_bytes):
                    self.publish(topic, chunk_message(self.rollout_id, f, i,
                                                      self.plan.chunk_bytes), 1)

    def _evaluate(self) -> None:
        """Abort on too many failures; widen when every canary is decided; then complete."""
        if self.state not in ("canary", "widening"):
            return
        offered = list(self.status)
        failed = [d for d in offered if self.status[d] in FAILED]
        decided = ("active", *FAILED)
        if failed and 100 * len(failed) / len(offered) >= self.plan.abort_on_pct:
            self._abort(failed)
        elif self.state == "canary" and all(self.status.get(d) in decided
                                             for d in self.canaries()):
            self.state = "widening"
            self._save()
            self._offer([d for d in self.plan.devices if d not in self.status])
            self._evaluate()
        elif self.state == "widening" and all(self.status.get(d) in decided
                                               for d in self.plan.devices):
            self.state = "complete"
            self._save()

    def _abort(self, failed: list[str]) -> None:
        self.state = "aborted"
        self._save()
        log.warning("rollout %s aborted: %s failed", self.rollout_id, ", ".join(failed))
        for device, status in self.status.items():
            if status in FAILED:
                continue
            cmd = messages.command_message("rollback", {"rollout_id": self.rollout_id},
                                           issued_by="gateway-rollout", ts=time.time(),
                                           command_id=f"{self.rollout_id}-{device}",
                                           key=self.command_key)
            self.publish(topics.command(self.plan.site, device, "rollback"), cmd, 1)

    def summary(self) -> dict[str, int]:
        with self._lock:
            counts: dict[str, int] = {}
            for s in self.status.values():
                counts[s] = counts.get(s, 0) + 1
            return counts

    def done(self) -> bool:
        """Complete, or aborted with every device that took the bundle back off it."""
        with self._lock:
            if self.state == "complete":
                return True
            return self.state == "aborted" and all(s in FAILED for s in self.status.values())
