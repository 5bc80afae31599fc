"""Incidents an operator confirmed as real faults, kept across restarts.

A signed ``cmd/feedback`` with ``label: confirmed`` names an incident id; while a candidate
model runs in shadow it must keep flagging the windows of such an incident (docs/learning.md,
"Shadow check"). :class:`ConfirmedIncidents` keeps the newest ``limit`` ids in order of
confirmation (the oldest is forgotten first) in ``<service.state_dir>/confirmed_incidents.json``,
written atomically on every change, so a reboot between the label and the next model update
does not forget it. An unreadable file is moved aside (``.bad``), logged, and the set starts
empty; nothing else is lost.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from foreshock.files import atomic_write

log = logging.getLogger(__name__)

SCHEMA: Final = "foreshock.confirmed_incidents/1"


class ConfirmedIncidents:
    """Ordered set of confirmed incident ids, saved in ``path`` (None: memory only)."""

    def __init__(self, path: Path | None, limit: int = 256) -> None:
        if limit < 1:
            raise ValueError(f"limit {limit!r} must be >= 1")
        self.path, self.limit = path, limit
        self._ids: dict[str, None] = dict.fromkeys(self._load())

    def __contains__(self, incident: object) -> bool:
        return incident in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._ids))

    def note(self, incident: str, label: str) -> bool:
        """Record an operator's label for ``incident``: ``confirmed`` adds it (the newest),
        any other label removes it. True when the set changed (and was saved)."""
        if label == "confirmed":
            if incident in self._ids:
                return False
            self._ids[incident] = None
            while len(self._ids) > self.limit:
                del self._ids[next(iter(self._ids))]
        elif incident in self._ids:
            del self._ids[incident]
        else:
            return False
        self._save()
        return True

    def _load(self) -> list[str]:
        if self.path is None or not self.path.exists():
            return []
        try:
            table = json.loads(self.path.read_bytes())
            ids = table["incidents"]
            if table.get("schema") != SCHEMA or not all(isinstance(i, str) for i in ids):
                raise ValueError(f"not a {SCHEMA} file")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            bad = self.path.with_name(self.path.name + ".bad")
            self.path.replace(bad)
            log.error("confirmed incidents in %s unreadable (%s); moved to %s, starting empty",
                      self.path, exc, bad)
            return []
        return list(ids)[-self.limit:]

    def _save(self) -> None:
        if self.path is not None:
            body = {"schema": SCHEMA, "incidents": list(self._ids)}
            atomic_write(self.path, json.dumps(body).encode())
