"""Ports for peer processes are chosen where outgoing connections cannot take them."""

from __future__ import annotations

import socket

import pytest

from gossipfl.simulation import processes
from gossipfl.simulation.processes import _ephemeral_range, free_ports


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    low, high = _ephemeral_range()
    assert 1024 < low < high
    ports = free_ports(40)
    assert len(set(ports)) == 40
    assert all(10_000 <= port < low for port in ports)
    sockets = []
    try:
        for port in ports:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(s)
            s.bind(("127.0.0.1", port))
    finally:
        for s in sockets:
            s.close()


def test_a_port_in_use_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", free_ports(1)[0]))
        taken.listen()
        busy = taken.getsockname()[1]
        # only three candidates: the busy port and its two neighbours
        monkeypatch.setattr(processes, "_LOWEST_PORT", busy - 1)
        monkeypatch.setattr(processes, "_ephemeral_range", lambda: (busy + 2, busy + 3))
        for _ in range(10):
            assert sorted(processes.free_ports(2)) == [busy - 1, busy + 1]
