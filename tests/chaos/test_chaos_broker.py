"""Chaos: the broker stopped and SIGKILLed mid-stream, with the gateway's subscriptions
shared (as shipped) and unshared."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import problems
from scenarios import broker_restarts

pytestmark = pytest.mark.slow


@pytest.mark.xfail(strict=True, reason=(
    "mosquitto (2.0.11) does not restore shared subscriptions from persistence: after a "
    "broker restart, records the agents publish before the gateway resubscribes get a "
    "PUBACK, are deleted from the outbox, and reach no one (gateway/service.py subscribes "
    "record kinds as $share/<group>/...; see docs/reliability.md)"))
def test_broker_restarts_shared_gateway_subscriptions(tmp_path: Path) -> None:
    result = broker_restarts(tmp_path, share_group="chaos", cycles=2)
    assert not problems(result), result.as_dict()


def test_broker_restarts_unshared_gateway_subscriptions(tmp_path: Path) -> None:
    result = broker_restarts(tmp_path, share_group="")
    assert result.faults == {"broker_stop": 2, "broker_sigkill": 2}
    assert not problems(result), result.as_dict()
