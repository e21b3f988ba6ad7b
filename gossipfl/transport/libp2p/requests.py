"""One request, one reply, on a side protocol: small control exchanges next to the gossip
streams (the peer daemon's membership exchange uses it).

A request opens a fresh stream on its protocol, writes one length-prefixed frame, reads one
frame back and closes. Both frames use :mod:`~gossipfl.transport.libp2p.framing`, so sizes
are checked before anything is allocated and a truncated or frozen exchange is an error,
not a short message. Everything is bounded in time: a peer that accepts the stream and then
says nothing costs at most ``timeout``.

The serving side is guarded like the gossip handler: whatever the requester sends (garbage,
a frame above the limit, nothing at all), the handler logs it with the peer ID, resets the
stream and carries on; it never raises into py-libp2p.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio
from libp2p.abc import INetStream
from libp2p.exceptions import BaseLibp2pError

from gossipfl.peerlog import PeerWarnings
from gossipfl.transport.base import PeerUnreachable
from gossipfl.transport.libp2p.framing import FrameError, FrameReader, encode_prefix
from gossipfl.transport.libp2p.streams import reset_quietly

logger = logging.getLogger(__name__)

RequestHandler = Callable[[str, bytes], Awaitable[bytes | None]]
"""Called with the authenticated peer ID and the request body; returns the reply body, or
``None`` to hang up without replying."""


def _reader(stream: INetStream, max_frame: int, timeout: float) -> FrameReader:
    async def read_some(n: int) -> bytes:
        try:
            return await stream.read(n)
        except BaseLibp2pError as exc:
            raise EOFError(str(exc) or type(exc).__name__) from exc

    return FrameReader(read_some, max_frame=max_frame, read_timeout=timeout, min_read=4096)


async def _write_frame(stream: INetStream, body: bytes, max_frame: int) -> None:
    await stream.write(encode_prefix(len(body), max_frame) + body)


async def serve_request(
    stream: INetStream,
    peer: str,
    handler: RequestHandler,
    *,
    protocol: str,
    max_request: int,
    max_reply: int,
    timeout: float,
    warnings: PeerWarnings,
) -> None:
    """Read one request from ``stream``, answer it with ``handler``'s reply, close."""
    try:
        with trio.fail_after(timeout):
            body = await _reader(stream, max_request, timeout).next_frame()
        if body is None:
            raise FrameError("the stream ended before a request")
        reply = await handler(peer, body)
        if reply is not None:
            with trio.fail_after(timeout):
                await _write_frame(stream, reply, max_reply)
    except (FrameError, trio.TooSlowError, BaseLibp2pError, ValueError) as exc:
        reason = "timed out" if isinstance(exc, trio.TooSlowError) else str(exc)
        warnings.warn(logger, peer, "dropped a %s request from peer %s: %s", protocol, peer, reason)
        await reset_quietly(stream)
        return
    with trio.CancelScope(shield=True), trio.move_on_after(1.0):
        try:
            await stream.close()
        except Exception:
            logger.debug("closing a %s stream failed", protocol, exc_info=True)


async def send_request(
    open_stream: Callable[[], Awaitable[INetStream]],
    payload: bytes,
    *,
    peer: str,
    protocol: str,
    max_request: int,
    max_reply: int,
    timeout: float,
) -> bytes:
    """Open a stream with ``open_stream``, send ``payload``, return the reply.

    Raises:
        PeerUnreachable: the stream could not be opened, the peer hung up, replied with
            something that is not a frame, or took longer than ``timeout`` in all.
    """
    stream: INetStream | None = None
    try:
        with trio.fail_after(timeout):
            stream = await open_stream()
            await _write_frame(stream, payload, max_request)
            reply = await _reader(stream, max_reply, timeout).next_frame()
    except trio.TooSlowError:
        raise PeerUnreachable(
            f"{protocol} request to {peer} timed out after {timeout:g} s"
        ) from None
    except (FrameError, BaseLibp2pError) as exc:
        raise PeerUnreachable(f"{protocol} request to {peer} failed: {exc}") from exc
    finally:
        if stream is not None:
            await reset_quietly(stream)
    if reply is None:
        raise PeerUnreachable(f"peer {peer} closed the {protocol} stream without replying")
    return reply


__all__ = ["RequestHandler", "send_request", "serve_request"]
