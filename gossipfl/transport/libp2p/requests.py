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

import contextlib
import logging
from collections.abc import Awaitable, Callable

import trio
from libp2p.abc import INetStream
from libp2p.exceptions import BaseLibp2pError

from gossipfl.peerlog import PeerWarnings
from gossipfl.transport.base import PeerUnreachable
from gossipfl.transport.libp2p.budgets import Report
from gossipfl.transport.libp2p.framing import FrameError, FrameReader, FrameTooLarge, encode_prefix
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
    report: Report | None = None,
) -> None:
    """Read one request from ``stream``, answer it with ``handler``'s reply, hang up.

    A request announced above ``max_request`` is reported (kind ``bad_frame``); other
    failures (a timeout, a truncated request) are only logged. After the reply the stream
    is half-closed and still read until the requester hangs up (it resets the stream as
    soon as it has the reply), for at most ``timeout``: a stream that nobody reads would
    let the peer pile bytes up in Yamux's buffer, and any byte it sends after its request
    is a protocol violation (reported, kind ``bad_request``)."""
    reader = _reader(stream, max_request, timeout)
    try:
        with trio.fail_after(timeout):
            body = await reader.next_bytes()
        if body is None:
            raise FrameError("the stream ended before a request")
        reply = await handler(peer, body)
        if reply is not None:
            with trio.fail_after(timeout):
                await _write_frame(stream, reply, max_reply)
    except (FrameError, trio.TooSlowError, BaseLibp2pError, ValueError) as exc:
        reason = "timed out" if isinstance(exc, trio.TooSlowError) else str(exc)
        if report is not None and isinstance(exc, FrameTooLarge):
            report(peer, "bad_frame", f"a {protocol} request: {exc}")
        warnings.warn(logger, peer, "dropped a %s request from peer %s: %s", protocol, peer, reason)
        await reset_quietly(stream)
        return
    await _hang_up(
        stream, peer, protocol=protocol, timeout=timeout, report=report, trailing=reader.pending
    )


async def _hang_up(
    stream: INetStream,
    peer: str,
    *,
    protocol: str,
    timeout: float,
    report: Report | None,
    trailing: int,
) -> None:
    """Half-close a served request stream, wait (reading) for the requester to hang up,
    then reset it."""
    with trio.CancelScope(shield=True), trio.move_on_after(1.0):
        try:
            await stream.close()
        except Exception:
            logger.debug("closing a %s stream failed", protocol, exc_info=True)
    if not trailing:
        # A reset or the end of the stream: the requester is done.
        with trio.move_on_after(timeout), contextlib.suppress(BaseLibp2pError):
            trailing = len(await stream.read(1 << 16))
    if trailing and report is not None:
        report(peer, "bad_request", f"sent more bytes on a {protocol} stream after its request")
    await reset_quietly(stream)


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
            reply = await _reader(stream, max_reply, timeout).next_bytes()
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
