"""Several hosts: three peers in three Linux network namespaces joined by a bridge.

Each namespace is a host of its own (its own interfaces, addresses, loopback), so this is
the multi-host deployment of docs/operations.md in miniature: peers listen on the
wildcard address, find each other from one bootstrap address and dynamic membership,
and train together over the bridge. The test makes (and removes) the namespaces, a veth
pair per namespace and the bridge, on a private subnet (10.77.0.0/24). It needs root and
iproute2 (`make` installs it when missing); it is skipped, saying why, otherwise.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gossipfl.cli import main
from gossipfl.daemon.testing import (
    Daemon,
    kill_all,
    metrics,
    start_daemon,
    start_daemons,
    stop_daemon,
    wait_for,
)

pytestmark = [pytest.mark.network, pytest.mark.timeout(120)]

SUBNET = "10.77.0"
HOSTS = 3


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


@pytest.fixture
def namespaces() -> Iterator[list[tuple[str, str]]]:
    """(namespace, address) for each host; everything is removed afterwards."""
    if shutil.which("ip") is None:
        pytest.skip("`ip` (iproute2) is not installed: `apt-get install -y iproute2`")
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root")
    tag = secrets.token_hex(2)
    bridge = f"gfb{tag}"
    made: list[str] = []
    try:
        try:
            ip("link", "add", bridge, "type", "bridge")
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"cannot create a bridge here: {exc.stderr.strip()}")
        ip("link", "set", bridge, "up")
        hosts = []
        for i in range(HOSTS):
            ns, outer, inner = f"gfn{tag}{i}", f"gfv{tag}{i}", f"gfp{tag}{i}"
            try:
                ip("netns", "add", ns)
            except subprocess.CalledProcessError as exc:
                pytest.skip(f"network namespaces are not permitted here: {exc.stderr.strip()}")
            made.append(ns)
            address = f"{SUBNET}.{10 + i}"
            ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            ip("link", "set", inner, "netns", ns)
            ip("link", "set", outer, "master", bridge)
            ip("link", "set", outer, "up")
            ip("-n", ns, "addr", "add", f"{address}/24", "dev", inner)
            ip("-n", ns, "link", "set", inner, "up")
            ip("-n", ns, "link", "set", "lo", "up")
            hosts.append((ns, address))
        yield hosts
    finally:
        for ns in made:  # deleting a namespace deletes its end of the veth pair, and so both
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, timeout=10)


def finished(daemon: Daemon) -> bool:
    return daemon.process.poll() is not None


def test_three_hosts_in_network_namespaces_train_together(
    namespaces: list[tuple[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    homes = [tmp_path / f"host{i}" for i in range(HOSTS)]
    ids = []
    for home in homes:
        assert main(["init", "--home", str(home), "--quiet"]) == 0
        ids.append(capsys.readouterr().out.strip())
    common = (
        "--listen", "/ip4/0.0.0.0/tcp/4141",  # the same port on every host
        "--rule", "mean",
        "--rounds", "30",
        "--min-peers", "3",
        "--set", "training.deadline=2.0",
        "--set", "output.eval_every=10",
        "--set", "network.exchange_interval=0.3",
        "--set", "topology.settle=0.5",
    )  # fmt: skip
    daemons: list[Daemon | None] = []
    try:
        first_ns = namespaces[0][0]
        allow = [a for i in ids[1:] for a in ("--allow", i)]
        first = start_daemon(homes[0], *common, *allow, prefix=("ip", "netns", "exec", first_ns))
        daemons.append(first)
        # Its join command names the bridge address, not loopback.
        assert first.join.startswith(f"gossipfl start --bootstrap /ip4/{namespaces[0][1]}/tcp/4141")
        daemons += start_daemons(
            *[
                (
                    homes[i],
                    [
                        *first.join.split()[2:],
                        *common,
                        *[a for j, p in enumerate(ids) if j != i for a in ("--allow", p)],
                    ],
                )
                for i in (1, 2)
            ],
            prefixes=[("ip", "netns", "exec", namespaces[i][0]) for i in (1, 2)],
        )
        for d in daemons:
            assert d is not None
            wait_for(functools.partial(finished, d), timeout=90, what=f"{d.home.name} done")
        for i, d in enumerate(daemons):
            assert d is not None
            assert d.process.returncode == 0, d.stderr()
            rows = metrics(d.home)
            start = rows[0]
            # Each host found both others (one of them only through the first one).
            assert start["members"] == HOSTS
            assert sorted(start["neighbours"]) == sorted(p for p in ids if p != ids[i])
            assert any(a.startswith(f"/ip4/{namespaces[i][1]}/") for a in start["addresses"])
            accuracy = [r["accuracy"] for r in rows if r.get("accuracy") is not None]
            assert accuracy[-1] >= 0.9
            rounds = [r for r in rows if r["kind"] == "round"]
            assert len(rounds) == 30
            assert sum(r["received"] for r in rounds) >= 0.9 * 30 * (HOSTS - 1)
    finally:
        for d in daemons:
            if d is not None and d.process.poll() is None:
                stop_daemon(d, signal.SIGTERM)
        kill_all(daemons)


def test_mdns_finds_the_others_with_inits_wildcard_listen_address(
    namespaces: list[tuple[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No bootstrap address at all: mDNS on the bridge, with `gossipfl init`'s default
    `/ip4/0.0.0.0/tcp/4141`. (Once, every peer advertised 0.0.0.0, dialled it, reached
    its own listener, and waited for ever, blaming the allowlist.)"""
    homes = [tmp_path / f"host{i}" for i in range(HOSTS)]
    ids = []
    for home in homes:
        assert main(["init", "--home", str(home), "--quiet"]) == 0
        ids.append(capsys.readouterr().out.strip())
    common = (
        "--rule", "mean",
        "--rounds", "10",
        "--min-peers", str(HOSTS),
        "--set", "network.mdns=true",
        "--set", "training.deadline=2.0",
        "--set", "output.eval_every=10",
        "--set", "network.exchange_interval=0.3",
        "--set", "topology.settle=0.5",
    )  # fmt: skip
    daemons: list[Daemon | None] = []
    try:
        for i, (ns, _) in enumerate(namespaces):
            others = [a for j, p in enumerate(ids) if j != i for a in ("--allow", p)]
            daemons.append(
                start_daemon(homes[i], *common, *others, prefix=("ip", "netns", "exec", ns))
            )
        for d in daemons:
            assert d is not None
            wait_for(functools.partial(finished, d), timeout=90, what=f"{d.home.name} done")
        for d in daemons:
            assert d is not None
            assert d.process.returncode == 0, d.stderr()
            rows = metrics(d.home)
            assert rows[0]["members"] == HOSTS
            rounds = [r for r in rows if r["kind"] == "round"]
            assert sum(r["received"] for r in rounds) >= 0.9 * 10 * (HOSTS - 1)
            assert "0.0.0.0" not in d.stderr()
    finally:
        for d in daemons:
            if d is not None and d.process.poll() is None:
                stop_daemon(d, signal.SIGTERM)
        kill_all(daemons)
