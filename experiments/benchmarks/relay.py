"""Throughput of the libp2p transport through a circuit relay against a direct connection.

Prints ONE JSON object. Every peer is its own OS process, as real peers are: the sender
runs in this one, each receiver in a process this script starts, and the relay in a
third. Per configuration the sender pushes ``--mib`` MiB of random "weights" in frames of
``--frame-mib`` MiB through :class:`~gossipfl.transport.libp2p.Libp2pTransport` (as
shipped: Noise + Yamux with our fast path), and stops the clock when the receiver
acknowledges the last byte, so the time covers delivery. Everything is on 127.0.0.1;
hole punching is off everywhere, so a relayed connection stays relayed. Configurations:

``direct``
    the sender dials the receiver's TCP address;
``relayed``
    a relay process runs ``TransportConfig(relay_service=True)`` with an allowlist of
    the three peers; the receiver listens on nothing (``listen=[]``, as a peer behind NAT
    is to the others) and holds a reservation on the relay; the sender dials the
    receiver's circuit address ``<relay>/p2p-circuit/p2p/<receiver>``. The end-to-end
    Noise + Yamux connection travels inside one Yamux stream of each hop's own Noise +
    Yamux connection (sender to relay, relay to receiver), which the relay splices: it
    never sees the end-to-end plaintext, but every byte crosses its interpreter (hop
    Noise decrypted, Yamux demuxed, read in 64 KiB pieces, written to the other hop's
    stream, Yamux framed, hop Noise encrypted), and both ends encrypt and decrypt every
    byte twice (end to end, and for their hop).

The sender checks ``Libp2pTransport.path`` before and after measuring (``direct`` /
``relayed via <relay id>``) and reports it. Each configuration is warmed up with one
transfer, then measured ``--repeats`` times, configurations interleaved so that a noisy
machine hurts both alike. Reported: median and best MiB/s, the ratio of medians
relayed/direct and the median of the per-round ratios (each round times one direct
transfer and, right after, one relayed transfer), and CPU milliseconds per MiB of each
process over the timed transfers (the sender's from ``time.process_time``, the
receivers' and the relay's from ``/proc/<pid>/stat``, Linux only: ``null`` elsewhere),
with their sum per configuration and its ratio direct/relayed, which the machine's noise
hardly moves.

    .venv/bin/python experiments/benchmarks/relay.py           # 64 MiB, 3 repeats
    .venv/bin/python experiments/benchmarks/relay.py --quick   # 8 MiB, a few seconds
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

# The sibling benchmark (this directory is the script's sys.path[0]): one way to sum up
# transfer times for both.
from transport import summarize

from gossipfl.identity import generate_identity, load_identity, save_identity
from gossipfl.transport.base import Received
from gossipfl.transport.libp2p import Libp2pTransport, TransportConfig

MiB = 1 << 20
ACK = b"ack"
BYE = b"bye"
CONFIGS = ("direct", "relayed")
PEERS = ("relay", "direct_sender", "direct_receiver", "relayed_sender", "relayed_receiver")
START_TIMEOUT = 60.0
TRANSFER_TIMEOUT = 120.0
"""Seconds one transfer may take, plus one per MiB: a lost frame fails the run."""
SHUTDOWN_NOISE = (
    ("libp2p.relay.circuit_v2.transport", "Failed to fetch stored addresses"),
    ("libp2p.relay.circuit_v2.protocol", "Unexpected error reading from stream"),
    ("libp2p.relay.circuit_v2.protocol", "Error writing to destination stream"),
)
"""py-libp2p messages this benchmark hides: the sender's circuit dial warns that the
receiver has no stored address (it dials the circuit address it was given), and the
relay logs errors when the receiver exits and its circuit is reset. Anything else still
reaches stderr; a real fault mid-transfer fails the run (no acknowledgement in time)."""


class _DropShutdownNoise(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_known_noise() -> None:
    for logger_name, prefix in SHUTDOWN_NOISE:
        logging.getLogger(logger_name).addFilter(_DropShutdownNoise(prefix))


def transport_config(frame: int) -> TransportConfig:
    # Hole punching off: the relayed connection must stay relayed while we measure.
    return TransportConfig(max_frame=max(frame, 1024), hole_punching=False)


# ------------------------------------------------------------ child processes


async def run_relay(key: Path, allow: list[str], frame: int) -> None:
    """The relay: prints its address, relays until its stdin is closed."""
    config = replace(transport_config(frame), relay_service=True)
    async with Libp2pTransport.open(
        identity=load_identity(key),
        listen=["/ip4/127.0.0.1/tcp/0"],
        allow=allow,
        config=config,
    ) as transport:
        print(json.dumps({"address": transport.listen_addrs[0]}), flush=True)
        await stdin_closed()


async def stdin_closed() -> None:
    """Return when the parent closes our stdin (a pipe), or dies."""
    async with trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())) as stdin:
        while await stdin.receive_some():
            pass


async def run_receiver(
    key: Path, allow: list[str], relay: str | None, total: int, frame: int
) -> None:
    """A receiver: listens on 127.0.0.1 (direct) or on nothing with a reservation on
    ``relay`` (relayed); prints the address to dial; acknowledges every ``total`` bytes;
    returns on ``BYE``, or when its stdin is closed."""
    async with trio.open_nursery() as nursery:

        async def stop_when_told() -> None:
            await stdin_closed()
            nursery.cancel_scope.cancel()

        nursery.start_soon(stop_when_told)
        await _receive(key, allow, relay, total, frame)  # closes the transport gracefully
        nursery.cancel_scope.cancel()


async def _receive(key: Path, allow: list[str], relay: str | None, total: int, frame: int) -> None:
    config = transport_config(frame)
    listen = ["/ip4/127.0.0.1/tcp/0"]
    if relay is not None:
        config = replace(config, relays=(relay,))
        listen = []
    async with Libp2pTransport.open(
        identity=load_identity(key), listen=listen, allow=allow, config=config
    ) as transport:
        if relay is not None:
            with trio.fail_after(START_TIMEOUT):
                await transport.wait_for_reservations()
            (address,) = [a for a in transport.listen_addrs if "/p2p-circuit" in a]
        else:
            address = transport.listen_addrs[0]
        print(json.dumps({"address": address}), flush=True)
        got = 0
        async for event in transport.events():
            if not isinstance(event, Received):
                continue
            if event.data == BYE:
                return
            got += len(event.data)
            if got >= total:
                got = 0
                await transport.send(event.peer, ACK)


# -------------------------------------------------------------------- parent


def proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the ")" closing the command name: state is field 3, utime 14, stime 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def child_address(name: str, proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"the {name} process exited before printing its address")
    address: str = json.loads(line)["address"]
    return address


@dataclass
class Sender:
    """One sender transport, connected to one receiver process."""

    name: str
    payload: list[bytes]
    transport: Libp2pTransport
    peer: str
    receiver_pid: int
    relay_pid: int | None = None
    times: list[float] = field(default_factory=list)
    cpu: dict[str, float | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.events = self.transport.events()

    async def transfer(self) -> float:
        mib = sum(len(chunk) for chunk in self.payload) / MiB
        start = time.perf_counter()
        with trio.fail_after(TRANSFER_TIMEOUT + mib):
            for chunk in self.payload:
                await self.transport.send(self.peer, chunk)
            async for event in self.events:
                if isinstance(event, Received) and event.data == ACK:
                    break
        return time.perf_counter() - start

    def _cpu_now(self) -> dict[str, float | None]:
        now: dict[str, float | None] = {
            "sender": time.process_time(),
            "receiver": proc_cpu_seconds(self.receiver_pid),
        }
        if self.relay_pid is not None:
            now["relay"] = proc_cpu_seconds(self.relay_pid)
        return now

    async def measure(self) -> None:
        before = self._cpu_now()
        self.times.append(await self.transfer())
        after = self._cpu_now()
        for who, start in before.items():
            end = after[who]
            spent = None if start is None or end is None else end - start
            total = self.cpu.get(who, 0.0)
            self.cpu[who] = None if spent is None or total is None else total + spent


async def run(total: int, frame: int, repeats: int) -> dict[str, Any]:
    payload_source = os.urandom(frame)
    payload = []
    for start in range(0, total, frame):
        size = min(frame, total - start)
        payload.append(payload_source[:size] if size < frame else payload_source)
    identities = {name: generate_identity() for name in PEERS}
    relay_allow = [identities[n].peer_id for n in ("relay", "relayed_sender", "relayed_receiver")]
    direct_allow = [identities[n].peer_id for n in ("direct_sender", "direct_receiver")]
    procs: dict[str, subprocess.Popen[str]] = {}
    paths: dict[str, dict[str, str]] = {}
    senders: list[Sender] = []
    with tempfile.TemporaryDirectory(prefix="gossipfl-relay-bench-") as tmp:
        keys = {name: Path(tmp) / f"{name}.key" for name in PEERS}
        for name, identity in identities.items():
            save_identity(identity, keys[name])
        common = ("--bytes", str(total), "--frame", str(frame))
        try:
            procs["relay"] = start_child(
                "--role", "relay", "--key", str(keys["relay"]),
                "--allow", ",".join(relay_allow), *common,
            )  # fmt: skip
            relay_address = child_address("relay", procs["relay"])
            procs["direct"] = start_child(
                "--role", "direct", "--key", str(keys["direct_receiver"]),
                "--allow", ",".join(direct_allow), *common,
            )  # fmt: skip
            procs["relayed"] = start_child(
                "--role", "relayed", "--key", str(keys["relayed_receiver"]),
                "--allow", ",".join(relay_allow), "--relay-address", relay_address, *common,
            )  # fmt: skip
            addresses = {name: child_address(name, procs[name]) for name in CONFIGS}
            async with trio.open_nursery() as nursery:
                for name, allow in (("direct", direct_allow), ("relayed", relay_allow)):
                    transport = await nursery.start(
                        _hold_transport, keys[f"{name}_sender"], allow, transport_config(frame)
                    )
                    with trio.fail_after(START_TIMEOUT):
                        peer = await transport.dial(addresses[name])
                    relay_pid = procs["relay"].pid if name == "relayed" else None
                    senders.append(
                        Sender(name, payload, transport, peer, procs[name].pid, relay_pid)
                    )
                for sender in senders:
                    path = str(sender.transport.path(sender.peer))
                    paths[sender.name] = {"before": path}
                    if path.startswith("relayed") != (sender.name == "relayed"):
                        raise RuntimeError(f"{sender.name} configuration connected {path}")
                for sender in senders:  # warm-up: connection set-up, window growth
                    await sender.transfer()
                for _ in range(repeats):
                    for sender in senders:
                        await sender.measure()
                for sender in senders:
                    paths[sender.name]["after"] = str(sender.transport.path(sender.peer))
                    await sender.transport.send(sender.peer, BYE)
                nursery.cancel_scope.cancel()
        finally:
            for proc in procs.values():
                assert proc.stdin is not None
                proc.stdin.close()  # every child's signal to stop (receivers also stop on BYE)
            for name in ("direct", "relayed", "relay"):  # the relay last: circuits end first
                if (proc := procs.get(name)) is None:
                    continue
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    print(f"the {name} process did not exit; killed", file=sys.stderr)
                    proc.kill()
                    proc.wait()
    mib_timed = total * repeats / MiB
    results: dict[str, Any] = {}
    for sender in senders:
        results[sender.name] = summarize(sender.times, total)
        results[sender.name]["path"] = paths[sender.name]
        cpu = {
            who: None if spent is None else round(spent / mib_timed * 1000, 2)
            for who, spent in sender.cpu.items()
        }
        known = [ms for ms in cpu.values() if ms is not None]
        cpu["all"] = round(sum(known), 2) if len(known) == len(cpu) else None
        results[sender.name]["cpu_ms_per_mib"] = cpu
    return results


async def _hold_transport(
    key: Path,
    allow: list[str],
    config: TransportConfig,
    task_status: trio.TaskStatus[Libp2pTransport] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with Libp2pTransport.open(
        identity=load_identity(key), listen=[], allow=allow, config=config
    ) as transport:
        task_status.started(transport)
        await trio.sleep_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 MiB, for smoke tests")
    parser.add_argument("--mib", type=int, default=None, help="MiB per transfer (default 64)")
    parser.add_argument("--frame-mib", type=float, default=None, help="frame size (default 4)")
    parser.add_argument("--repeats", type=int, default=None, help="timed transfers per config")
    parser.add_argument("--role", choices=("relay", *CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--key", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--allow", help=argparse.SUPPRESS)
    parser.add_argument("--relay-address", help=argparse.SUPPRESS)
    parser.add_argument("--bytes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--frame", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quiet_known_noise()

    if args.role:
        allow = args.allow.split(",")
        if args.role == "relay":
            trio.run(run_relay, args.key, allow, args.frame)
        else:
            trio.run(run_receiver, args.key, allow, args.relay_address, args.bytes, args.frame)
        return 0

    total = (args.mib or (8 if args.quick else 64)) * MiB
    frame = int((args.frame_mib or (2 if args.quick else 4)) * MiB)
    repeats = args.repeats or (2 if args.quick else 3)
    started = time.perf_counter()
    load_before = os.getloadavg()
    results = trio.run(run, total, frame, repeats)
    load_after = os.getloadavg()
    direct = results["direct"]["mib_per_s_median"]
    relayed = results["relayed"]["mib_per_s_median"]
    # Rounds run direct then relayed back to back: their time ratio shares the noise.
    per_round = [
        d / r
        for d, r in zip(results["direct"]["seconds"], results["relayed"]["seconds"], strict=True)
    ]
    # CPU of all processes per MiB, direct over relayed: what the ratio would be if the
    # processes shared one core (noise-proof: CPU time does not count others' turns).
    cpu_direct = results["direct"]["cpu_ms_per_mib"]["all"]
    cpu_relayed = results["relayed"]["cpu_ms_per_mib"]["all"]
    cpu_ratio = None if not (cpu_direct and cpu_relayed) else round(cpu_direct / cpu_relayed, 3)
    report = {
        "benchmark": "relay",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "quick": bool(args.quick),
        "bytes_per_transfer": total,
        "frame_bytes": frame,
        "repeats": repeats,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "load_average_1min": [round(load_before[0], 2), round(load_after[0], 2)],
        },
        "baseline": "direct",
        "results": results,
        "ratio_relayed_to_direct": round(relayed / direct, 3),
        "ratio_per_round": [round(x, 3) for x in per_round],
        "ratio_per_round_median": round(statistics.median(per_round), 3),
        "relayed_path": results["relayed"]["path"]["before"],
        "relay_cpu_ms_per_mib": results["relayed"]["cpu_ms_per_mib"]["relay"],
        "cpu_ratio_direct_to_relayed": cpu_ratio,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    json.dump(report, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
