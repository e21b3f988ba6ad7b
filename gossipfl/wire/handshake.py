"""Deciding whether two peers can exchange models, from their Hello messages."""

from __future__ import annotations

from gossipfl.model.layout import compare_layouts
from gossipfl.wire.codes import RefusalCode
from gossipfl.wire.job import describe_job_mismatch
from gossipfl.wire.messages import Hello, Refusal


def check_hello(*, mine: Hello, theirs: Hello) -> str | None:
    """``None`` if we can talk to the sender of ``theirs``, else one sentence saying
    what differs: the protocol version, the network id, the job's settings, the first
    differing tensor of the model layouts, or the absence of a common codec (checked in
    that order: a different job often explains a different layout, and says it better)."""
    refusal = refuse_hello(mine=mine, theirs=theirs)
    return None if refusal is None else refusal.text


def refuse_hello(*, mine: Hello, theirs: Hello) -> Refusal | None:
    """Like :func:`check_hello`, but as the :class:`Refusal` to send back."""
    who = f"peer {theirs.name!r}" if theirs.name else "the peer"
    if theirs.version != mine.version:
        return Refusal(
            code=RefusalCode.VERSION_MISMATCH,
            text=f"{who} speaks protocol version {theirs.version}, we speak {mine.version}",
        )
    if theirs.network_id != mine.network_id:
        return Refusal(
            code=RefusalCode.NETWORK_MISMATCH,
            text=f"{who} is in network {theirs.network_id!r}, we are in {mine.network_id!r}",
        )
    if theirs.job != mine.job:
        return Refusal(
            code=RefusalCode.JOB_MISMATCH,
            text=f"another job: {describe_job_mismatch(mine.job, theirs.job, who=who)}",
        )
    problem = compare_layouts(mine.layout, theirs.layout)
    if problem is not None:
        return Refusal(code=RefusalCode.LAYOUT_MISMATCH, text=f"model layouts differ: {problem}")
    if common_codecs(mine, theirs) == ():
        return Refusal(
            code=RefusalCode.NO_COMMON_CODEC,
            text=(
                f"no codec in common: {who} decodes {', '.join(theirs.codecs)}; "
                f"we decode {', '.join(mine.codecs)}"
            ),
        )
    return None


def common_codecs(mine: Hello, theirs: Hello) -> tuple[str, ...]:
    """Codecs both sides decode, in *their* order of preference (the codec to send them
    is the first one of this tuple)."""
    ours = set(mine.codecs)
    return tuple(codec for codec in theirs.codecs if codec in ours)
