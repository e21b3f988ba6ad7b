"""Helpers for tests that need a *plain* py-libp2p host: a naive or hostile peer that does
not use gossipfl's transport (raw streams, garbage frames, stock settings), or a host on
which to show a py-libp2p behaviour our workarounds exist for.

Like ``trio.testing``, this ships with the library so that the tests of other packages
(the peer daemon, the CLI) can use it too. Hosts listen on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import AsyncIterator
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.stream_muxer.yamux import yamux as _yamux

from gossipfl.transport.libp2p.config import GOSSIP_PROTOCOL
from gossipfl.transport.libp2p.workarounds import close_connections

LOOPBACK = "/ip4/127.0.0.1/tcp/0"


def noise_session_keys() -> tuple[Any, Any]:
    """The two ends (initiator, responder) of a finished Noise NN handshake with
    libp2p's cipher suite: transport keys for a batched Noise writer and its reader
    (:class:`~gossipfl.transport.libp2p.fastpath.BatchedNoiseReadWriter`) without a
    host, for tests of the framing itself."""
    from noise.connection import NoiseConnection  # type: ignore[import-untyped]

    initiator = NoiseConnection.from_name(b"Noise_NN_25519_ChaChaPoly_SHA256")
    responder = NoiseConnection.from_name(b"Noise_NN_25519_ChaChaPoly_SHA256")
    initiator.set_as_initiator()
    responder.set_as_responder()
    initiator.start_handshake()
    responder.start_handshake()
    responder.read_message(initiator.write_message())
    initiator.read_message(responder.write_message())
    return initiator, responder


def reading_session(reader: Any) -> Any:
    """A :class:`~gossipfl.transport.libp2p.fastpath.BatchedSecureSession` reading from
    the batched Noise ``reader`` (no handshake fields: for tests of its reads)."""
    from gossipfl.transport.libp2p.fastpath import BatchedSecureSession

    session = BatchedSecureSession.__new__(BatchedSecureSession)
    session.conn = reader
    session._message, session._offset = b"", 0
    session._scratch = None
    session.last_header = b""
    session.window_waiters = None
    return session


@contextlib.asynccontextmanager
async def open_stock_host(*, listen: str | None = LOOPBACK, **options: Any) -> AsyncIterator[IHost]:
    """A py-libp2p host with the library's defaults (``options`` go to ``new_host``),
    listening on ``listen`` (``None``: not listening). Closed on exit.

    Note that py-libp2p's ``host.run`` wraps exceptions raised inside the block in
    ``ExceptionGroup`` s.
    """
    options.setdefault("key_pair", create_new_key_pair())
    addrs = [multiaddr.Multiaddr(listen)] if listen else []
    host = new_host(listen_addrs=addrs or None, **options)
    async with host.run(addrs):
        try:
            yield host
        finally:
            # Shielded: when the block is cancelled (or another host crashed), cleanup
            # must still close the sockets.
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await close_connections(host.get_network())
                await host.close()


def full_address(host: IHost) -> str:
    """``host``'s first listen address, ending in ``/p2p/<its id>``."""
    text = str(host.get_addrs()[0])
    suffix = f"/p2p/{host.get_id()}"
    return text if text.endswith(suffix) else text + suffix


async def connect(host: IHost, address: str) -> ID:
    """Connect ``host`` to the peer at ``address`` (``.../p2p/<id>``); return its ID."""
    info: PeerInfo = info_from_p2p_addr(multiaddr.Multiaddr(address))
    await host.connect(info)
    return info.peer_id


async def open_raw_stream(host: IHost, address: str, protocol: str = GOSSIP_PROTOCOL) -> INetStream:
    """Connect to ``address`` and open a stream on ``protocol``: no framing, no checks,
    whatever bytes the test writes go to the peer as they are."""
    peer = await connect(host, address)
    return await host.new_stream(peer, [TProtocol(protocol)])


# ------------------------------------------------- a peer that ignores Yamux's rules

_HEADER = struct.Struct(_yamux.YAMUX_HEADER_FORMAT)


def _yamux_of(stream: INetStream) -> Any:
    muxed = getattr(stream, "muxed_stream", None)
    if not isinstance(muxed, _yamux.YamuxStream):
        raise TypeError("not a py-libp2p Yamux stream")
    return muxed


async def write_ignoring_window(stream: INetStream, data: bytes, *, chunk: int = 1 << 20) -> None:
    """Write ``data`` on ``stream`` as Yamux DATA frames of ``chunk`` bytes (at most 16 MiB,
    py-libp2p's frame cap), whatever the receiver's window: what a peer that ignores
    flow control does. The stream's own ``send_window`` is left alone."""
    muxed = _yamux_of(stream)
    view = memoryview(data)
    for start in range(0, len(view), chunk):
        piece = view[start : start + chunk]
        header = _HEADER.pack(0, _yamux.TYPE_DATA, 0, muxed.stream_id, len(piece))
        await muxed.conn._write_frame(header + bytes(piece))


async def open_bare_streams(host: IHost, peer: ID, count: int) -> list[int]:
    """Open ``count`` Yamux streams to ``peer`` (already connected) with bare SYN frames:
    no protocol negotiation, no bookkeeping on our side, no backlog limit. Returns their
    stream IDs."""
    conn = host.get_network().get_connections(peer)[0].muxed_conn
    if not isinstance(conn, _yamux.Yamux):
        raise TypeError("not a py-libp2p Yamux connection")
    ids: list[int] = []
    for _ in range(count):
        sid = conn.next_stream_id
        conn.next_stream_id += 2
        await conn._write_frame(_HEADER.pack(0, _yamux.TYPE_WINDOW_UPDATE, _yamux.FLAG_SYN, sid, 0))
        ids.append(sid)
    return ids
