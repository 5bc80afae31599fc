"""The Foreshock exception tree.

Every error Foreshock raises on purpose derives from :class:`ForeshockError`::

    ForeshockError
    ├── ConfigError        a config file, CLI option or scenario is invalid (exit 2)
    ├── FrameError         a sensor frame cannot be decoded (dropped and counted)
    ├── MessageError       an MQTT payload does not match its documented schema
    ├── BundleError        a model bundle is unsigned, tampered, incompatible or older
    ├── DataError          a recording cannot be read (unknown format, missing channel)
    ├── OutboxError        the device outbox cannot store a record
    ├── StoreError         the gateway store cannot store or read
    └── LinkError          the MQTT link is down or refused; retriable

The CLI turns any of these into one line plus a hint; tracebacks appear only with ``--debug``.
"""

from __future__ import annotations


class ForeshockError(Exception):
    """Base of every error Foreshock raises on purpose.

    ``hint`` is an optional next step the CLI prints under the message.
    """

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class ConfigError(ForeshockError):
    """Raised at load time when a config key, CLI option or scenario value is invalid.

    The message names the key, the bad value and the allowed values.
    """

    exit_code = 2


class FrameError(ForeshockError):
    """Raised by :func:`foreshock.wire.decode` for bytes that are not a valid frame."""


class MessageError(ForeshockError):
    """Raised by :mod:`foreshock.messages` when a payload does not match its schema."""


class BundleError(ForeshockError):
    """Raised when a model bundle fails verification or cannot be loaded.

    The running model stays in place; the message says which check failed.
    """


class DataError(ForeshockError):
    """Raised when a recording cannot be read: unknown format, missing channel, bad rate."""

    exit_code = 2


class OutboxError(ForeshockError):
    """Raised when the device outbox cannot accept a record (disk full, corrupt file)."""


class StoreError(ForeshockError):
    """Raised when the gateway store cannot write or read."""


class LinkError(ForeshockError):
    """Raised when the MQTT link is down or the broker refused us. Retriable."""

    retriable = True
