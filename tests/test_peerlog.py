"""Warnings about remote peers are rate-limited per (message, peer)."""

from __future__ import annotations

import logging

import pytest

from gossipfl.peerlog import PeerWarnings

LOG = logging.getLogger("gossipfl.test.peerlog")
MSG = "bad frame from %s: %s"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOG.name]


def test_a_flood_logs_a_burst_then_counts(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    warnings = PeerWarnings(burst=3, period=10, clock=clock)
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        for i in range(1000):
            warnings.warn(LOG, "peer-a", MSG, "peer-a", i)
        assert messages(caplog) == [f"bad frame from peer-a: {i}" for i in range(3)]
        assert warnings.suppressed == 997
        clock.now = 9.9  # the same window
        warnings.warn(LOG, "peer-a", MSG, "peer-a", "late")
        assert len(messages(caplog)) == 3
        clock.now = 10.0  # a new window: logged, with the count of what was left out
        warnings.warn(LOG, "peer-a", MSG, "peer-a", "next")
        assert messages(caplog)[-1] == (
            "bad frame from peer-a: next (998 more like this from the same peer were not logged)"
        )
        warnings.warn(LOG, "peer-a", MSG, "peer-a", "again")
        assert messages(caplog)[-1] == "bad frame from peer-a: again"


def test_peers_and_messages_have_their_own_budgets(caplog: pytest.LogCaptureFixture) -> None:
    warnings = PeerWarnings(burst=1, period=60, clock=Clock())
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        for _ in range(5):
            warnings.warn(LOG, "peer-a", MSG, "peer-a", 1)
            warnings.warn(LOG, "peer-b", MSG, "peer-b", 1)
            warnings.warn(LOG, "peer-a", "refused %s", "peer-a")
    assert messages(caplog) == [
        "bad frame from peer-a: 1",
        "bad frame from peer-b: 1",
        "refused peer-a",
    ]
    assert warnings.suppressed == 12


def test_many_peer_ids_cost_bounded_memory(caplog: pytest.LogCaptureFixture) -> None:
    warnings = PeerWarnings(burst=1, period=60, max_keys=100, clock=Clock())
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        for i in range(10_000):
            warnings.warn(LOG, f"peer-{i}", MSG, f"peer-{i}", 0)
    assert len(warnings._windows) == 100
    assert len(messages(caplog)) == 10_000  # every new peer is still logged once


def test_impossible_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="burst"):
        PeerWarnings(burst=0)
