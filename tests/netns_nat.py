"""A tiny NATed Internet made of Linux network namespaces, for tests.

Not part of the package: it needs pyroute2 (a dev dependency, pinned to 0.9.7 in
constraints.txt, because its nftables API is a prototype that may change), root, and
iproute2's ``ip``. The NAT rules are programmed over netlink by pyroute2, so neither
``nft`` nor ``iptables`` need be installed; the kernel needs nf_tables with nat, masq
and ct (built in or loadable), veth and bridge.

``nat_internet(sites=2, relays=1)`` builds::

    relay0 203.0.113.10 ---+
                           |   bridge br0 in namespace "<prefix>inet" (the Internet)
    site1 router wan .1 ---+--- site2 router wan .2
      | lan 10.0.1.1/24           | lan 10.0.2.1/24
    site1 peer 10.0.1.2         site2 peer 10.0.2.2

Each router masquerades what leaves its WAN interface and drops whatever arrives on it
unsolicited (like a home router): a peer can dial out, and nothing can dial in, not
even with a route to the private subnet. Relays have no route to any private subnet.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pyroute2 import netns as pr_netns
from pyroute2.nftables.expressions import genex
from pyroute2.nftables.main import NFTables

PUBLIC_NET = "203.0.113"  # TEST-NET-3 (RFC 5737): never routed on the real Internet

# pyroute2's pushns switches the *calling thread's* namespace; namespaces and the
# sockets opened in them are per thread, so one lock keeps two threads from mixing.
_NS_LOCK = threading.Lock()
_serial = itertools.count(1)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


@contextlib.contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """Run the with-block in namespace ``ns`` (this thread only).

    A socket keeps the namespace it was made in, so a socket made here talks from
    ``ns`` after the block too: that is all it takes to reach into a namespace from
    this process."""
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)  # opening never creates a namespace
    with _NS_LOCK:
        try:
            pr_netns.pushns(fd)
        finally:
            os.close(fd)
        try:
            yield
        finally:
            pr_netns.popns()


def ns_socket(
    ns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM
) -> socket.socket:
    """A socket in namespace ``ns``. Close it before the namespace is deleted: an open
    socket keeps a deleted namespace alive."""
    with in_netns(ns):
        return socket.socket(family, kind)


def _sysctl(ns: str, key: str, value: str) -> None:
    with in_netns(ns), open("/proc/sys/" + key.replace(".", "/"), "w") as f:
        f.write(value)  # /proc/sys/net/* is that of the opener's namespace


# -- nftables expressions: what `nft` would compile the rules to -----------------------

_META_IIFNAME, _META_OIFNAME = 6, 7
_CT_STATE = 0
_CT_ESTABLISHED, _CT_RELATED = 1 << 1, 1 << 2
_DROP, _ACCEPT = 0, 1
_EQ, _NEQ = 0, 1
Expressions = list[Any]


def _data(value: bytes) -> dict[str, Any]:
    return {"attrs": [("NFTA_DATA_VALUE", value)]}


def _interface_is(key: int, name: str) -> Expressions:
    value = name.encode().ljust(16, b"\0")  # IFNAMSIZ
    return [
        genex("meta", {"dreg": 1, "key": key}),
        genex("cmp", {"sreg": 1, "op": _EQ, "data": _data(value)}),
    ]


def _ct_state_in(mask: int) -> Expressions:
    return [
        genex("ct", {"dreg": 1, "key": _CT_STATE}),
        genex(
            "bitwise",
            {
                "sreg": 1,
                "dreg": 1,
                "len": 4,
                "mask": _data(struct.pack("=I", mask)),
                "xor": _data(b"\0" * 4),
            },
        ),
        genex("cmp", {"sreg": 1, "op": _NEQ, "data": _data(b"\0" * 4)}),
    ]


def _verdict(code: int) -> Expressions:
    verdict = {"attrs": [("NFTA_DATA_VERDICT", {"attrs": [("NFTA_VERDICT_CODE", code)]})]}
    return [genex("immediate", {"dreg": 0, "data": verdict})]


def nat_router_rules(ns: str, wan: str = "wan", block_inbound: bool = True) -> None:
    """Make namespace ``ns`` a NAT router; in ``nft`` terms::

        table ip nat { chain postrouting { type nat hook postrouting priority 100;
            oifname "wan" masquerade } }
        table ip filter {
          chain forward { type filter hook forward priority 0;
            iifname "wan" ct state established,related accept
            iifname "wan" drop }
          chain input { ...the same two rules... } }

    The input chain matters too: dropping an unsolicited packet to the router itself
    before conntrack confirms it leaves no conntrack entry that could clash with (and
    re-map the port of) the peer's later outbound mapping, so UDP hole punching works as
    on a typical home router."""
    with in_netns(ns):
        nft = NFTables(nfgen_family=2)  # NFPROTO_IPV4; the netlink socket stays in ns
    try:
        nft.table("add", name="nat")
        nft.chain(
            "add", table="nat", name="postrouting", hook="postrouting", type="nat", priority=100
        )
        masquerade = (_interface_is(_META_OIFNAME, wan), [genex("masq", {})])
        nft.rule("add", table="nat", chain="postrouting", expressions=masquerade)
        if not block_inbound:
            return
        nft.table("add", name="filter")
        from_wan = _interface_is(_META_IIFNAME, wan)
        for hook in ("forward", "input"):
            nft.chain("add", table="filter", name=hook, hook=hook, type="filter", priority=0)
            answers = (from_wan, _ct_state_in(_CT_ESTABLISHED | _CT_RELATED), _verdict(_ACCEPT))
            nft.rule("add", table="filter", chain=hook, expressions=answers)
            nft.rule("add", table="filter", chain=hook, expressions=(from_wan, _verdict(_DROP)))
    finally:
        nft.close()  # an open netlink socket would keep the namespace alive


# -- the topology -----------------------------------------------------------------------


@dataclass(frozen=True)
class Host:
    ns: str
    ip: str


@dataclass(frozen=True)
class Site:
    router: Host
    """``router.ip`` is the public (WAN) address the site's peer appears as."""
    lan_ip: str
    subnet: str
    peer: Host


@dataclass(frozen=True)
class Internet:
    prefix: str
    switch_ns: str
    relays: list[Host]
    sites: list[Site]
    namespaces: list[str]

    @staticmethod
    def cmd(ns: str, *argv: str) -> list[str]:
        """The command line that runs ``argv`` in namespace ``ns``."""
        return ["ip", "netns", "exec", ns, *argv]

    @staticmethod
    def prefix_for(ns: str) -> tuple[str, ...]:
        """``ip netns exec NS``, for :func:`gossipfl.daemon.testing.start_daemon`."""
        return ("ip", "netns", "exec", ns)


def interface_bytes(ns: str, interface: str) -> tuple[int, int]:
    """(received, transmitted) bytes of ``interface`` in namespace ``ns``, as the kernel
    counts them (IP packets, headers included)."""
    stats = []
    for direction in ("rx", "tx"):
        path = f"/sys/class/net/{interface}/statistics/{direction}_bytes"
        done = subprocess.run(
            ["ip", "netns", "exec", ns, "cat", path],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        )
        stats.append(int(done.stdout))
    return stats[0], stats[1]


def _veth(a_ns: str, a_if: str, b_ns: str, b_if: str) -> None:
    # both ends are made in their namespaces at once: no name clash in the root namespace
    ip("link", "add", a_if, "netns", a_ns, "type", "veth", "peer", "name", b_if, "netns", b_ns)
    ip("-n", a_ns, "link", "set", a_if, "up")
    ip("-n", b_ns, "link", "set", b_if, "up")


def _new_ns(name: str, made: list[str]) -> str:
    ip("netns", "add", name)
    made.append(name)
    ip("-n", name, "link", "set", "lo", "up")
    return name


def delete_namespaces(names: Sequence[str]) -> None:
    for ns in reversed(names):  # deleting a namespace deletes its veth ends too
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


@contextlib.contextmanager
def nat_internet(
    sites: int = 2, relays: int = 1, prefix: str | None = None, block_inbound: bool = True
) -> Iterator[Internet]:
    """Build the topology of the module doc; remove every namespace afterwards, also
    when building fails half way. Stop the processes and close the sockets living in
    the namespaces before leaving the block."""
    if not (1 <= sites <= 200 and 1 <= relays <= 50):
        raise ValueError(f"sites={sites}, relays={relays}: 1..200 sites, 1..50 relays")
    p = prefix or f"gfnat{os.getpid()}-{next(_serial)}-"
    made: list[str] = []
    try:
        switch = _new_ns(p + "inet", made)
        ip("-n", switch, "link", "add", "br0", "type", "bridge")
        ip("-n", switch, "link", "set", "br0", "up")
        relay_hosts = []
        for i in range(relays):
            ns = _new_ns(f"{p}relay{i}", made)
            address = f"{PUBLIC_NET}.{10 + i}"
            _veth(ns, "eth0", switch, f"r{i}")
            ip("-n", switch, "link", "set", f"r{i}", "master", "br0")
            ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            relay_hosts.append(Host(ns, address))
        site_list = []
        for n in range(1, sites + 1):
            router = _new_ns(f"{p}site{n}-router", made)
            peer = _new_ns(f"{p}site{n}-peer", made)
            wan_ip, lan_ip, peer_ip = f"{PUBLIC_NET}.{n}", f"10.0.{n}.1", f"10.0.{n}.2"
            _veth(router, "wan", switch, f"s{n}")
            ip("-n", switch, "link", "set", f"s{n}", "master", "br0")
            ip("-n", router, "addr", "add", f"{wan_ip}/24", "dev", "wan")
            _veth(router, "lan", peer, "eth0")
            ip("-n", router, "addr", "add", f"{lan_ip}/24", "dev", "lan")
            ip("-n", peer, "addr", "add", f"{peer_ip}/24", "dev", "eth0")
            ip("-n", peer, "route", "add", "default", "via", lan_ip)
            _sysctl(router, "net.ipv4.ip_forward", "1")
            site = Site(Host(router, wan_ip), lan_ip, f"10.0.{n}.0/24", Host(peer, peer_ip))
            site_list.append(site)
        for site in site_list:
            nat_router_rules(site.router.ns, block_inbound=block_inbound)
        yield Internet(p, switch, relay_hosts, site_list, list(made))
    finally:
        delete_namespaces(made)
