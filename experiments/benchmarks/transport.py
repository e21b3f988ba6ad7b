"""Throughput of the libp2p transport against a plain trio TCP socket, in the same run.

Prints ONE JSON object. A receiver runs in a separate OS process (one per configuration,
started by this script), the sender in this one, so each side has its own interpreter
and event loop as real peers do. Per configuration the sender pushes ``--mib`` MiB of
random "weights" in frames of ``--frame-mib`` MiB, and stops the clock when the receiver
acknowledges the last byte (so the time covers everything: framing, encryption, flow
control, copies, the acknowledgement's round trip). Configurations:

``tcp``
    plain trio TCP socket, same 4-byte length-prefixed frames, same frame reader;
``tcp_in_place``
    the same, with large frames received straight into the frame (``recv_into``: the
    best a plain socket does with this framing, and the stricter baseline);
``libp2p``
    :class:`~gossipfl.transport.libp2p.Libp2pTransport` as shipped (Noise + Yamux with
    our batching and large Yamux frames);
``libp2p_untuned``
    the same transport with ``yamux_chunk=0`` and ``batch_noise=False``, i.e. py-libp2p's
    own Noise and Yamux code paths (close to the "defaults" figure of DESIGN.md).

Each configuration is warmed up with one transfer, then measured ``--repeats`` times,
configurations interleaved so that a noisy machine hurts all alike. Reported: median and
best MiB/s, the CPU time (user + system) each side's process spent per transfer (the
receiver puts its CPU clock in its acknowledgement), the ratio of medians to plain TCP
(issue 12's target: ``TARGET_RATIO``) and to TCP in place, and parameters per second:
float32 over TCP (4 bytes per parameter) against int8 over libp2p (1 + 4/256 bytes per
parameter: int8 values plus one float32 scale per block of 256).

Beside them, the crypto ceiling: ChaCha20-Poly1305 (Noise's cipher here) encrypting
and decrypting the same bytes in this process, in Noise-sized messages, into
preallocated buffers. Sender and receiver each need one of the two per byte, so a
transfer cannot beat the slower of the two rates when the processes run on separate
cores (``ceiling_mib_per_s_two_cores``), nor ``1 / (1/encrypt + 1/decrypt)`` when they
share one (``ceiling_mib_per_s_one_core``). Measured before and after the transfers;
the report keeps the higher of each.

``socket_plus_cipher`` adds the two, per side: TCP in place's CPU (its socket work,
measured in the same run) plus the cipher's time for the bytes -- what an encrypted
transport that added nothing else to TCP in place would cost. ``libp2p_cpu_share`` is
``Libp2pTransport``'s CPU per side divided by that (1.0: no overhead beyond socket and
cipher), and ``ratio_to_tcp_in_place`` the ratio such a transport would show when each
side has a core of its own. It is an estimate, not a bound: a transport may drive its
socket more cheaply than the baseline does (fewer, larger writes), and the cipher's cost
in a transfer is not exactly its cost in a loop.

    .venv/bin/python experiments/benchmarks/transport.py           # 100 MiB, 7 repeats
    .venv/bin/python experiments/benchmarks/transport.py --quick   # 8 MiB, a few seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import time
from typing import Any

import trio
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from gossipfl.transport.base import Received
from gossipfl.transport.libp2p import Libp2pTransport, TransportConfig
from gossipfl.transport.libp2p.framing import PREFIX, FrameReader

MiB = 1 << 20
GiB = 1 << 30
TARGET_RATIO = 0.6
"""libp2p throughput ÷ plain TCP throughput to reach (issue 12; 1/3 before it)."""
NOISE_PLAINTEXT = 65535 - 16
INT8_BYTES_PER_PARAM = 1 + 4 / 256
FP32_BYTES_PER_PARAM = 4
ACK = b"ack"
CPU = struct.Struct("<d")
BYE = b"bye"
CONFIGS = ("tcp", "tcp_in_place", "libp2p", "libp2p_untuned")


def transport_config(name: str, frame: int) -> TransportConfig:
    max_frame = max(frame, 1024)
    if name == "libp2p_untuned":
        return TransportConfig(max_frame=max_frame, yamux_chunk=0, batch_noise=False)
    return TransportConfig(max_frame=max_frame)


# ------------------------------------------------------------------ receivers


def ack() -> bytes:
    """The receiver's acknowledgement of a whole transfer, with its process's CPU time so
    far (user + system), from which the sender learns what the receiving side cost."""
    return ACK + CPU.pack(time.process_time())


def receiver_cpu_of(reply: bytes) -> float:
    if len(reply) != len(ACK) + CPU.size or not reply.startswith(ACK):
        raise RuntimeError(f"unexpected reply from the receiver: {reply[:16]!r}")
    (seconds,) = CPU.unpack_from(reply, len(ACK))
    return float(seconds)


async def receive_libp2p(name: str, total: int, frame: int) -> None:
    async with Libp2pTransport.open(config=transport_config(name, frame)) as transport:
        print(json.dumps({"address": transport.listen_addrs[0]}), flush=True)
        got = 0
        async for event in transport.events():
            if not isinstance(event, Received):
                continue
            if event.data == BYE:
                return
            got += len(event.data)
            if got >= total:
                got = 0
                await transport.send(event.peer, ack())


class SocketInPlace:
    """Reads a plain trio socket straight into a frame (``FrameReader``'s ``in_place``)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.socket = stream.socket

    def reserve(self, size: int) -> bool:
        return True

    def release(self, size: int) -> None:
        pass

    async def read_into(self, view: memoryview) -> int:
        got: int = await self.socket.recv_into(view)
        return got


async def receive_tcp(total: int, frame: int, *, in_place: bool = False) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    print(json.dumps({"address": f"127.0.0.1:{port}"}), flush=True)
    stream = await listeners[0].accept()
    for listener in listeners:
        await listener.aclose()
    async with stream:
        reader = FrameReader(
            stream.receive_some,
            max_frame=max(frame, 1024),
            read_timeout=60,
            in_place=SocketInPlace(stream) if in_place else None,
        )
        got = 0
        while (body := await reader.next_frame()) is not None:
            if body == BYE:
                return
            got += len(body)
            if got >= total:
                got = 0
                reply = ack()
                await stream.send_all(PREFIX.pack(len(reply)) + reply)


# -------------------------------------------------------------------- senders


@dataclasses.dataclass(frozen=True)
class Timing:
    """One timed transfer: wall seconds, and the CPU seconds (user + system) each side's
    process spent on it."""

    wall: float
    sender_cpu: float
    receiver_cpu: float


class Sender:
    """One connection to one receiver process; ``transfer()`` times one full transfer."""

    def __init__(self, name: str, payload: list[bytes]) -> None:
        self.name = name
        self.payload = payload
        self.receiver_cpu = 0.0

    async def transfer(self) -> Timing:
        start, cpu = time.perf_counter(), time.process_time()
        reply = await self.push()
        wall, sender_cpu = time.perf_counter() - start, time.process_time() - cpu
        # The receiver's CPU clock is cumulative; it idles (blocked, no CPU) between
        # transfers, so the difference between two acknowledgements is one transfer's.
        receiver_cpu = receiver_cpu_of(reply) - self.receiver_cpu
        self.receiver_cpu += receiver_cpu
        return Timing(wall, sender_cpu, receiver_cpu)

    async def push(self) -> bytes:
        """Send the payload; return the receiver's acknowledgement."""
        raise NotImplementedError


class Libp2pSender(Sender):
    def __init__(self, name: str, payload: list[bytes], transport: Libp2pTransport, peer: str):
        super().__init__(name, payload)
        self.transport = transport
        self.peer = peer
        self.events = transport.events()

    async def push(self) -> bytes:
        for chunk in self.payload:
            await self.transport.send(self.peer, chunk)
        async for event in self.events:
            if isinstance(event, Received) and event.data.startswith(ACK):
                return event.data
        raise RuntimeError(f"the {self.name} transport closed before the acknowledgement")

    async def bye(self) -> None:
        await self.transport.send(self.peer, BYE)


class TcpSender(Sender):
    def __init__(self, name: str, payload: list[bytes], stream: trio.SocketStream):
        super().__init__(name, payload)
        self.stream = stream
        self.reader = FrameReader(stream.receive_some, max_frame=1024, read_timeout=60)

    async def push(self) -> bytes:
        for chunk in self.payload:
            await self.stream.send_all(PREFIX.pack(len(chunk)))
            await self.stream.send_all(chunk)
        reply = await self.reader.next_frame()
        if reply is None:
            raise RuntimeError(f"the {self.name} receiver closed before the acknowledgement")
        return reply

    async def bye(self) -> None:
        await self.stream.send_all(PREFIX.pack(len(BYE)) + BYE)


def start_receiver(name: str, total: int, frame: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--receiver",
            name,
            "--bytes",
            str(total),
            "--frame",
            str(frame),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )


def receiver_address(name: str, proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"the {name} receiver exited before printing its address")
    address: str = json.loads(line)["address"]
    return address


async def run(total: int, frame: int, repeats: int, names: tuple[str, ...]) -> dict[str, Any]:
    payload_source = os.urandom(frame)
    payload = []
    for start in range(0, total, frame):
        size = min(frame, total - start)
        payload.append(payload_source[:size] if size < frame else payload_source)
    procs: list[subprocess.Popen[str]] = []
    results: dict[str, list[Timing]] = {name: [] for name in names}
    try:
        async with trio.open_nursery() as nursery:
            senders: list[Sender] = []
            procs.extend(start_receiver(name, total, frame) for name in names)
            for name, proc in zip(names, procs, strict=True):
                address = receiver_address(name, proc)
                if name.startswith("tcp"):
                    host, port = address.rsplit(":", 1)
                    stream = await trio.open_tcp_stream(host, int(port))
                    senders.append(TcpSender(name, payload, stream))
                else:
                    transport = await nursery.start(_hold_transport, transport_config(name, frame))
                    peer = await transport.dial(address)
                    senders.append(Libp2pSender(name, payload, transport, peer))
            for sender in senders:  # warm-up: connection set-up, window growth
                await sender.transfer()
            for _ in range(repeats):
                for sender in senders:
                    results[sender.name].append(await sender.transfer())
            for sender in senders:
                await sender.bye()  # type: ignore[attr-defined]
            nursery.cancel_scope.cancel()
    finally:
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return {name: summarize_timings(times, total) for name, times in results.items()}


async def _hold_transport(
    config: TransportConfig,
    task_status: trio.TaskStatus[Libp2pTransport] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with Libp2pTransport.open(config=config) as transport:
        task_status.started(transport)
        await trio.sleep_forever()


def crypto_rates(total: int = 64 * MiB, repeats: int = 3) -> tuple[float, float]:
    """ChaCha20-Poly1305 encrypt and decrypt rates (bytes/s, best of ``repeats``) over
    ``total`` bytes in Noise-sized messages, into preallocated buffers (no allocation)."""
    aead = ChaCha20Poly1305(ChaCha20Poly1305.generate_key())
    plain = memoryview(bytearray(os.urandom(total)))
    count = -(-total // NOISE_PLAINTEXT)
    sealed = memoryview(bytearray(total + 16 * count))
    opened = memoryview(bytearray(total))
    spans = []
    for i in range(count):
        start = i * NOISE_PLAINTEXT
        end = min(start + NOISE_PLAINTEXT, total)
        spans.append((i.to_bytes(12, "little"), start, end, start + 16 * i))
    best_enc = best_dec = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for nonce, start, end, at in spans:
            aead.encrypt_into(nonce, plain[start:end], None, sealed[at : at + end - start + 16])
        t1 = time.perf_counter()
        for nonce, start, end, at in spans:
            aead.decrypt_into(nonce, sealed[at : at + end - start + 16], None, opened[start:end])
        t2 = time.perf_counter()
        best_enc, best_dec = min(best_enc, t1 - t0), min(best_dec, t2 - t1)
    assert opened == plain
    return total / best_enc, total / best_dec


def crypto_ceiling(samples: list[tuple[float, float]]) -> dict[str, Any]:
    encrypt = max(e for e, _ in samples)
    decrypt = max(d for _, d in samples)
    return {
        "cipher": "ChaCha20-Poly1305 (cryptography), 65519-byte messages, into buffers",
        "encrypt_gib_per_s": round(encrypt / GiB, 2),
        "decrypt_gib_per_s": round(decrypt / GiB, 2),
        "encrypt_plus_decrypt_gib_per_s": round(1 / (1 / encrypt + 1 / decrypt) / GiB, 2),
        "ceiling_mib_per_s_two_cores": round(min(encrypt, decrypt) / MiB, 1),
        "ceiling_mib_per_s_one_core": round(1 / (1 / encrypt + 1 / decrypt) / MiB, 1),
    }


def summarize(times: list[float], total: int) -> dict[str, Any]:
    """Median and best MiB/s of transfers that took ``times`` seconds (relay.py too)."""
    rates = [total / t / MiB for t in times]
    return {
        "seconds": [round(t, 4) for t in times],
        "mib_per_s_median": round(statistics.median(rates), 1),
        "mib_per_s_best": round(max(rates), 1),
        "seconds_median": round(statistics.median(times), 4),
    }


def summarize_timings(timings: list[Timing], total: int) -> dict[str, Any]:
    """:func:`summarize` of the wall times, and the median CPU of each side."""
    return {
        **summarize([t.wall for t in timings], total),
        "sender_cpu_s_median": round(statistics.median(t.sender_cpu for t in timings), 4),
        "receiver_cpu_s_median": round(statistics.median(t.receiver_cpu for t in timings), 4),
    }


def socket_plus_cipher(
    in_place: dict[str, Any],
    libp2p: dict[str, Any],
    total: int,
    crypto: list[tuple[float, float]],
) -> dict[str, Any]:
    """What an encrypted transport would cost per side if it added nothing to TCP in
    place but the cipher (measured in this run), and how ``libp2p`` compares.

    Each side of an encrypted transfer moves the bytes through its socket, as TCP in
    place does (its measured CPU per side), and encrypts or decrypts them (the in-process
    cipher rates, best of the runs). With each side on a core of its own, such a transfer
    takes about the busier side's sum; the ratio to TCP in place is then given two ways:
    with TCP in place's wall time, and with its busier side's CPU (the load inflates wall
    times beyond the CPU used; on an idle machine the two agree).
    """
    encrypt = max(e for e, _ in crypto)
    decrypt = max(d for _, d in crypto)
    sender = in_place["sender_cpu_s_median"] + total / encrypt
    receiver = in_place["receiver_cpu_s_median"] + total / decrypt
    busier = max(sender, receiver)
    in_place_cpu = max(in_place["sender_cpu_s_median"], in_place["receiver_cpu_s_median"])
    return {
        "sender_cpu_s": round(sender, 4),
        "receiver_cpu_s": round(receiver, 4),
        "ratio_to_tcp_in_place": round(in_place["seconds_median"] / busier, 3),
        "ratio_to_tcp_in_place_by_cpu": round(in_place_cpu / busier, 3),
        "libp2p_cpu_share": {
            "sender": round(libp2p["sender_cpu_s_median"] / sender, 3),
            "receiver": round(libp2p["receiver_cpu_s_median"] / receiver, 3),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 MiB, for smoke tests")
    parser.add_argument("--mib", type=int, default=None, help="MiB per transfer (default 100)")
    parser.add_argument("--frame-mib", type=float, default=None, help="frame size (default 8)")
    parser.add_argument("--repeats", type=int, default=None, help="timed transfers per config")
    parser.add_argument("--receiver", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--bytes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--frame", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.receiver:
        if args.receiver.startswith("tcp"):
            trio.run(
                functools.partial(receive_tcp, in_place=args.receiver == "tcp_in_place"),
                args.bytes,
                args.frame,
            )
        else:
            trio.run(receive_libp2p, args.receiver, args.bytes, args.frame)
        return 0

    total = (args.mib or (8 if args.quick else 100)) * MiB
    frame = int((args.frame_mib or (2 if args.quick else 8)) * MiB)
    repeats = args.repeats or (2 if args.quick else 7)
    started = time.perf_counter()
    load_before = os.getloadavg()
    crypto = [crypto_rates(16 * MiB if args.quick else 64 * MiB)]
    results = trio.run(run, total, frame, repeats, CONFIGS)
    crypto.append(crypto_rates(16 * MiB if args.quick else 64 * MiB))
    load_after = os.getloadavg()
    ceiling = crypto_ceiling(crypto)
    tcp = results["tcp"]["mib_per_s_median"]
    tcp_in_place = results["tcp_in_place"]["mib_per_s_median"]
    tuned = results["libp2p"]["mib_per_s_median"]
    untuned = results["libp2p_untuned"]["mib_per_s_median"]
    ratio = tuned / tcp
    ratio_in_place = tuned / tcp_in_place
    estimate = socket_plus_cipher(results["tcp_in_place"], results["libp2p"], total, crypto)
    tcp_fp32_params = tcp * MiB / FP32_BYTES_PER_PARAM
    int8_params = tuned * MiB / INT8_BYTES_PER_PARAM
    report = {
        "benchmark": "transport",
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
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after],
        },
        "baseline": "tcp",
        "results": results,
        "ratio_libp2p_to_tcp": round(ratio, 3),
        "ratio_libp2p_to_tcp_in_place": round(ratio_in_place, 3),
        "ratio_untuned_to_tcp": round(untuned / tcp, 3),
        "speedup_over_untuned": round(tuned / untuned, 2),
        "target_ratio": round(TARGET_RATIO, 3),
        "meets_target": ratio >= TARGET_RATIO,
        "meets_target_in_place": ratio_in_place >= TARGET_RATIO,
        "socket_plus_cipher": estimate,
        "crypto": ceiling,
        "ratio_libp2p_to_crypto_ceiling_two_cores": round(
            tuned / ceiling["ceiling_mib_per_s_two_cores"], 3
        ),
        "ratio_libp2p_to_crypto_ceiling_one_core": round(
            tuned / ceiling["ceiling_mib_per_s_one_core"], 3
        ),
        "ratio_crypto_ceiling_two_cores_to_tcp": round(
            ceiling["ceiling_mib_per_s_two_cores"] / tcp, 3
        ),
        "params_per_s": {
            "tcp_fp32": round(tcp_fp32_params),
            "libp2p_fp32": round(tuned * MiB / FP32_BYTES_PER_PARAM),
            "libp2p_int8": round(int8_params),
            "int8_libp2p_to_fp32_tcp": round(int8_params / tcp_fp32_params, 3),
        },
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    json.dump(report, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
