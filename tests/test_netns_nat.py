"""Peers behind two real NATs train together through a relay on the "Internet".

The Internet is made of network namespaces (tests/netns_nat.py): two sites, each a
router namespace that masquerades and drops unsolicited inbound traffic with a peer
behind it on a private address, and one public namespace with the relay. Neither NATed
peer can dial the other, so the models they exchange must go through the relay; their
connections to the relay must be direct. The test prints what share of the model
traffic was relayed, and the relayed throughput.

Needs root, iproute2's ``ip`` and pyroute2 (a dev dependency: ``make install``); it is
skipped, saying which is missing, otherwise.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gossipfl.cli import main
from gossipfl.daemon.testing import Daemon, kill_all, metrics, start_daemon

try:
    import netns_nat
except ImportError as exc:  # pyroute2 missing
    netns_nat = None
    MISSING = f"pyroute2 is not installed ({exc}): `make install`, or pip install pyroute2==0.9.7"

pytestmark = [pytest.mark.network, pytest.mark.timeout(150)]

PORT = 4141
ROUNDS = 6
HIDDEN = 2048
"""A torch MLP of 150k parameters (600 kB a model): enough bytes for a rate to mean
something."""


@pytest.fixture
def internet() -> Iterator[Any]:
    if netns_nat is None:
        pytest.skip(MISSING)
    if shutil.which("ip") is None:
        pytest.skip("`ip` (iproute2) is not installed: `apt-get install -y iproute2`")
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces and NAT rules needs root")
    # Root with `ip` but no nf_tables is a broken test machine: that fails, loudly.
    with netns_nat.nat_internet(sites=2, relays=1) as net:
        yield net


def unreachable(ns: str, address: str, port: int) -> bool:
    """True if a TCP connection from namespace ``ns`` to ``address:port`` fails."""
    sock = netns_nat.ns_socket(ns)
    sock.settimeout(1.0)
    try:
        sock.connect((address, port))
    except OSError:  # refused, unreachable, or timed out (dropped by a NAT router)
        return True
    finally:
        sock.close()
    return False


def round_rows(home: Path) -> list[dict[str, Any]]:
    return [r for r in metrics(home) if r["kind"] == "round"]


def run_job(
    net: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[dict[str, Path], dict[str, str]]:
    """Start the relay and the two NATed peers (with ``extra`` arguments), check that the
    NATs are real, wait for the job to end; return each one's home and peer ID."""
    relay_host = net.relays[0]
    hosts = {"relay": relay_host, "a": net.sites[0].peer, "b": net.sites[1].peer}
    homes = {name: tmp_path / name for name in hosts}
    ids = {}
    for name, home in homes.items():
        assert main(["init", "--home", str(home), "--quiet"]) == 0
        ids[name] = capsys.readouterr().out.strip()
    common = (
        "--rule", "mean", "--rounds", str(ROUNDS), "--set", "training.deadline=3.0",
        "--set", "output.eval_every=3", "--set", "topology.min_peers=3",
        "--set", "network.exchange_interval=0.3", "--set", "training.backend=torch",
        "--set", "training.model=mlp", "--set", f"training.hidden={HIDDEN}",
        # the relay's dial-back to a NATed peer waits out its 3 s timeout: let the check
        # answer before the short job ends, even on a busy machine
        "--set", "topology.settle=6.0", *extra,
    )  # fmt: skip

    def allow(*names: str) -> list[str]:
        return [arg for name in names for arg in ("--allow", ids[name])]

    def listen(name: str) -> tuple[str, str]:
        return ("--listen", f"/ip4/{hosts[name].ip}/tcp/{PORT}")

    daemons: list[Daemon | None] = []
    try:
        relay = start_daemon(
            homes["relay"], *listen("relay"), "--relay-service", *allow("a", "b"), *common,
            prefix=net.prefix_for(relay_host.ns),
        )  # fmt: skip
        daemons.append(relay)
        address = relay.addresses[0]
        assert address.startswith(f"/ip4/{relay_host.ip}/tcp/{PORT}/p2p/"), address
        for name, other in (("a", "b"), ("b", "a")):
            args = (*listen(name), "--relay", address, "--bootstrap", address)
            # -v: the transport logs each connection's path at info
            daemons.append(
                start_daemon(
                    homes[name], *args, *allow("relay", other), *common,
                    prefix=net.prefix_for(hosts[name].ns), verbose=1,
                )
            )  # fmt: skip
        # The NATs are real: each NATed peer listens, and nobody outside reaches it.
        for name, other in (("a", "b"), ("b", "a")):
            assert unreachable(hosts[other].ns, hosts[name].ip, PORT)
            assert unreachable(relay_host.ns, hosts[name].ip, PORT)
            assert not unreachable(hosts[name].ns, relay_host.ip, PORT)
        for daemon in daemons:
            assert daemon is not None
            assert daemon.process.wait(timeout=120) == 0, daemon.stderr()
    finally:
        kill_all(daemons)
    for name, home in homes.items():
        rows = round_rows(home)
        assert len(rows) == ROUNDS, name
        if name != "relay":
            # both neighbours' models (the relay's and the other NATed peer's) every round
            assert all(r["received"] == r["expected"] == 2 for r in rows), rows
    check_reachability(net, homes, ids)
    return homes, ids


def check_reachability(net: Any, homes: dict[str, Path], ids: dict[str, str]) -> None:
    """Each peer's dial-back check told its operator the truth: the relay is reachable at
    its public address; the NATed peers are not reachable from outside."""
    for name, home in homes.items():
        rows = [r for r in metrics(home) if r["kind"] == "reachability"]
        assert rows, f"{name} reported no reachability"
        log = (home / "stderr.log").read_text()
        if name == "relay":
            address = f"/ip4/{net.relays[0].ip}/tcp/{PORT}/p2p/{ids['relay']}"
            assert rows[-1]["state"] == "reachable", rows
            assert rows[-1]["addresses"] == [address]
            assert f"this peer is reachable at {address}" in log
        else:
            assert rows[-1]["state"] == "unreachable", rows
            assert "this peer is not reachable from outside" in log


def test_two_peers_behind_two_nats_train_together_through_a_public_relay(
    internet: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Hole punching off: every byte between the two NATed peers crosses the relay."""
    homes, ids = run_job(internet, tmp_path, capsys, "--no-hole-punching")
    for name, other in (("a", "b"), ("b", "a")):
        log = (homes[name] / "stderr.log").read_text()
        assert f"connected to peer {ids[other]} (relayed via {ids['relay']})" in log, log
        assert f"{ids[other]} (direct)" not in log, log
        assert f"connected to peer {ids['relay']} (direct)" in log, log
    report_traffic(internet, homes)


def test_two_peers_behind_two_nats_punch_a_hole_and_go_direct(
    internet: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The two NATed peers meet through the relay, punch a hole through both NATs (DCUtR:
    a TCP simultaneous open from their listening ports) and move their streams to the
    direct connection, losing no model on the way."""
    homes, ids = run_job(internet, tmp_path, capsys)
    logs = {name: (homes[name] / "stderr.log").read_text() for name in ("a", "b")}
    for name, other in (("a", "b"), ("b", "a")):
        log = logs[name]
        assert f"connected to peer {ids[other]} (relayed via {ids['relay']})" in log, log
        assert f"peer {ids[other]}: direct" in log, log  # the operator's path line
        paths = [r for r in metrics(homes[name]) if r["kind"] == "path"]
        assert [r["path"] for r in paths if r["neighbour"] == ids[other]][-1] == "direct"
    punched = [
        line for log in logs.values() for line in log.splitlines() if "hole punching to" in line
    ]
    assert any("worked" in line for line in punched), punched
    report_punched_traffic(internet, homes)


def traffic(homes: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Each peer's transport byte counts, from the ``stop`` row of its metrics."""
    out = {}
    for name, home in homes.items():
        rows = metrics(home)
        assert rows[-1]["kind"] == "stop"
        out[name] = rows[-1]["traffic"]
    return out


def report_traffic(net: Any, homes: dict[str, Path]) -> None:
    """Print the share of model bytes that went over the relay, and the relayed rate.

    The peers count their frame bytes per neighbour and how many went over relayed
    connections. Everything between the two NATed peers must be relayed, nothing else;
    the kernel's counters of the relay's interface confirm that the relay carried it.

    The rate is the relayed bytes of rounds 1..last over the time from the first round
    row to the last: rounds also train and merge, so it is a lower bound on what the
    relay can carry, not a measurement of its capacity (experiments/benchmarks/relay.py
    measures that)."""
    t = traffic(homes)
    ids = {name: metrics(home)[0]["peer"] for name, home in homes.items()}
    between = t["a"]["bytes_sent_to"][ids["b"]] + t["b"]["bytes_sent_to"][ids["a"]]
    relayed = t["a"]["bytes_sent_relayed"] + t["b"]["bytes_sent_relayed"]
    total = sum(x["bytes_sent"] for x in t.values())
    assert relayed == between  # every byte between them, and nothing else
    assert t["relay"]["bytes_sent_relayed"] == 0
    rows = {name: metrics(home) for name, home in homes.items()}
    first = min(r["time"] for n in "ab" for r in rows[n] if r["kind"] == "round")
    last = max(r["time"] for n in "ab" for r in rows[n] if r["kind"] == "round")
    window = last - first
    rate = relayed * (ROUNDS - 1) / ROUNDS / window
    received, transmitted = netns_nat.interface_bytes(net.relays[0].ns, "eth0")
    print(
        f"\nmodel traffic: {relayed / 1e6:.2f} MB relayed ({relayed / total:.0%}), "
        f"{(total - relayed) / 1e6:.2f} MB direct; relayed throughput >= {rate / 1e6:.2f} MB/s "
        f"({ROUNDS - 1} rounds in {window:.2f} s); relay interface rx "
        f"{received / 1e6:.2f} MB, tx {transmitted / 1e6:.2f} MB"
    )
    assert rate > 0
    assert 0.25 < relayed / total < 0.5  # a third with three peers alike
    # Everything the relay forwarded it first received, and then sent on.
    assert received >= t["a"]["bytes_sent"] + t["b"]["bytes_sent"]
    assert transmitted >= t["relay"]["bytes_sent"] + relayed


def report_punched_traffic(net: Any, homes: dict[str, Path]) -> None:
    """Print (and bound) the share of the two NATed peers' model bytes that still went
    over the relay once they could punch a hole: what they sent before the direct
    connection was up. The relay's interface counters agree (what it received beyond
    the peers' own models to it, give or take packet headers)."""
    t = traffic(homes)
    ids = {name: metrics(home)[0]["peer"] for name, home in homes.items()}
    between = t["a"]["bytes_sent_to"][ids["b"]] + t["b"]["bytes_sent_to"][ids["a"]]
    relayed = t["a"]["bytes_sent_relayed"] + t["b"]["bytes_sent_relayed"]
    to_relay = t["a"]["bytes_sent_to"][ids["relay"]] + t["b"]["bytes_sent_to"][ids["relay"]]
    received, _ = netns_nat.interface_bytes(net.relays[0].ns, "eth0")
    print(
        f"\nmodel traffic between the NATed peers: {between / 1e6:.2f} MB, of which "
        f"{relayed / 1e6:.2f} MB ({relayed / between:.0%}) over the relay, the rest direct; "
        f"relay interface rx {received / 1e6:.2f} MB against {to_relay / 1e6:.2f} MB of "
        "their models to the relay itself"
    )
    assert relayed < between / 2  # most of it went direct
    assert received >= to_relay + relayed
    assert received < to_relay * 1.1 + relayed + 1e6  # headers; nothing else crossed it
