"""Chaos: the broker stopped and SIGKILLed mid-stream, with the gateway's subscriptions
shared (as shipped) and unshared. The agents hold their outbox until the gateway has
announced itself since their latest connect (``[link] require_gateway``, on by default), so
records the broker PUBACKs before the gateway resubscribed are not lost."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import problems
from scenarios import broker_restarts

pytestmark = pytest.mark.slow


def test_broker_restarts_shared_gateway_subscriptions(tmp_path: Path) -> None:
    result = broker_restarts(tmp_path, share_group="chaos")
    assert result.faults == {"broker_stop": 2, "broker_sigkill": 2}
    assert not problems(result), result.as_dict()


def test_broker_restarts_unshared_gateway_subscriptions(tmp_path: Path) -> None:
    result = broker_restarts(tmp_path, share_group="")
    assert result.faults == {"broker_stop": 2, "broker_sigkill": 2}
    assert not problems(result), result.as_dict()
