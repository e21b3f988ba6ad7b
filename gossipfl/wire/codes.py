"""Refusal codes: why a peer refuses a handshake, a message or a request.

Codes are small unsigned integers on the wire (see ``docs/protocol.md``); the text that
accompanies them is for humans. New codes may be added in later protocol versions; a
decoder refuses codes it does not know rather than guess.
"""

from __future__ import annotations

from enum import IntEnum


class RefusalCode(IntEnum):
    """Why a peer refuses. Values are part of the protocol: never renumber."""

    #: Anything not covered below; the text says what.
    OTHER = 0
    #: The Hello's protocol version is not one we speak.
    VERSION_MISMATCH = 1
    #: The Hello names another network id.
    NETWORK_MISMATCH = 2
    #: The model layouts differ; the text names the first differing tensor.
    LAYOUT_MISMATCH = 3
    #: No codec in common.
    NO_COMMON_CODEC = 4
    #: The peer is not on our allowlist.
    NOT_ALLOWED = 5
    #: We received bytes we could not decode (bad msgpack, bad schema, bad digest...).
    MALFORMED = 6
    #: A frame, message or model exceeded our limits.
    TOO_LARGE = 7
    #: A message arrived out of order (e.g. an Update before the Hello).
    UNEXPECTED = 8
    #: A PullRequest for a model we do not have (any more).
    NOT_AVAILABLE = 9
    #: We are overloaded or rate-limiting this peer; try later.
    BUSY = 10
    #: We are shutting down.
    SHUTTING_DOWN = 11
    #: The Hello states another job (the text names the differing settings).
    JOB_MISMATCH = 12


#: Every code value this version knows.
KNOWN_CODES: frozenset[int] = frozenset(int(code) for code in RefusalCode)
