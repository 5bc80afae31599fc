"""Transactions of the gateway store: one per write method, or one for a whole group of
them (:meth:`Transactions.group`, the gateway's group commit).

A backend provides :meth:`Transactions._begin` (a new transaction, committed on normal
exit) and may provide :meth:`Transactions._begin_group` (PostgreSQL pipelines it) and
:meth:`Transactions._refuses` (which of its errors mean the database refused a value).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from foreshock.errors import StoreError


class RecordRefused(StoreError):
    """The database refused a message's data (PostgreSQL: a NUL character in JSON text, a
    number out of range; SQLite: an integer beyond 64 bits). The message's fault, not the
    store's: storing it again cannot succeed, so the gateway counts it invalid and
    acknowledges it instead of having it delivered again for ever."""


class _Group:
    """The open transaction of :meth:`Store.group`: its cursor, and whether a write failed."""

    def __init__(self, cur: Any) -> None:
        self.cur = cur
        self.failed: BaseException | None = None


class Transactions:
    """The transaction half of :class:`gateway.store.Store`; ``_lock`` serialises the
    store's callers (a group holds it for its whole block)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._group: _Group | None = None  # set and read only with _lock held

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        """One transaction (a write method's), or the open group's when this thread holds
        one."""
        with self._lock:
            if self._group is not None:
                with self._joined(self._group) as cur:
                    yield cur
                return
            with self._begin() as cur:
                yield cur

    @contextmanager
    def _begin(self) -> Iterator[Any]:  # pragma: no cover - overridden
        """A new transaction, committed on normal exit (called with _lock held)."""
        raise NotImplementedError
        yield None

    @contextmanager
    def _begin_group(self) -> Iterator[Any]:
        """The transaction of a group; PostgreSQL pipelines it."""
        with self._begin() as cur:
            yield cur

    @contextmanager
    def _joined(self, group: _Group) -> Iterator[Any]:
        if group.failed is not None:
            raise StoreError(f"an earlier write of this store group failed: {group.failed}")
        try:
            yield group.cur
        except BaseException as exc:
            group.failed = exc
            raise

    @contextmanager
    def group(self) -> Iterator[None]:
        """Join the write methods this thread calls inside into one transaction.

        Committed when the block ends normally; rolled back when it raises, and also when a
        write inside failed even though the caller caught the error (a partial write is
        never committed: then the group raises StoreError). Other threads' store calls wait
        until the group ends. A group inside a group is the same group.
        """
        with self._lock:
            if self._group is not None:
                yield
                return
            in_body = False
            try:
                with self._begin_group() as cur:
                    group = self._group = _Group(cur)
                    try:
                        in_body = True
                        yield
                        in_body = False
                    finally:
                        self._group = None
                    if group.failed is not None:
                        raise StoreError(f"a write of this store group failed: "
                                         f"{group.failed}; the group is rolled back")
            except StoreError:
                raise
            except Exception as exc:
                if in_body:
                    raise  # the caller's own error, after the rollback
                if self._refuses(exc):
                    raise RecordRefused(f"store group not committed: {exc}") from exc
                raise StoreError(f"store group not committed: {exc}") from exc

    def _refuses(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the database refusing a value (see :class:`RecordRefused`)."""
        return isinstance(exc, OverflowError)
