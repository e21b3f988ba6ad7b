"""The exception hierarchy shared by every gossipfl module, and the wording of its hints.

Every error that gossipfl raises on purpose derives from :class:`GossipflError`, so an
application can catch the library's failures without catching its own bugs. The CLI
turns any :class:`GossipflError` into a one-line message and exit status 2.

A message is written for the person who made the mistake: what happened, then what to do
(``; did you mean 'torus'?``, ``: write --set rounds=5``). :func:`did_you_mean` and
:func:`unknown_name` word the most common hint, a misspelt name, the same way everywhere.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator


class GossipflError(Exception):
    """Base class of every error gossipfl raises deliberately."""


class ConfigError(GossipflError, ValueError):
    """A configuration that cannot work: unknown names, impossible parameters, or a
    setting the chosen topology or merge rule cannot honour. The message names the
    condition that failed, so a user can fix it without reading code."""


def close_matches(word: str, choices: Iterable[str], *, limit: int = 3) -> list[str]:
    """The choices ``word`` is most likely a misspelling of, best first.

    Case and ``_``/``-`` are ignored (``Sign_Flip`` is close to ``sign-flip``), and a
    choice that contains the word whole (``consensus`` for ``consens``) counts too,
    because a cut-off word is as common a slip as a transposed letter.
    """
    options = list(dict.fromkeys(choices))

    def key(text: str) -> str:
        return text.strip().lower().replace("_", "-")

    by_key: dict[str, str] = {}
    for option in options:
        by_key.setdefault(key(option), option)
    wanted = key(word)
    if not wanted:
        return []
    found = difflib.get_close_matches(wanted, list(by_key), n=limit, cutoff=0.6)
    if found:  # keep the runners-up only when they are about as close as the best
        best = _ratio(wanted, found[0])
        found = [k for k in found if _ratio(wanted, k) >= best - 0.1]
    elif len(wanted) >= 3:
        found = [k for k in by_key if k.startswith(wanted)][:limit]
    return [by_key[k] for k in found]


def _ratio(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b).ratio()


def did_you_mean(word: str, choices: Iterable[str], *, quote: bool = True) -> str:
    """``"; did you mean 'x'?"`` (or ``'x' or 'y'``), or ``""`` when nothing is close.

    ``quote=False`` leaves the suggestions bare, for flags (``did you mean --topology?``).
    """
    found = close_matches(word, choices)
    if not found:
        return ""
    shown = [repr(c) if quote else c for c in found]
    return f"; did you mean {' or '.join(shown)}?"


def unknown_name(kind: str, name: str, choices: Iterable[str], *, extra: str = "") -> ConfigError:
    """A :class:`ConfigError` for a name that is not one of ``choices``: the suggestion
    first (the likely fix), then every valid name (so the message is complete even when
    nothing is close), then ``extra``."""
    options = list(choices)
    return ConfigError(
        f"unknown {kind} {name!r}{did_you_mean(name, options)} "
        f"(choose one of: {', '.join(options)}{extra})"
    )


def leaf_errors(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside (nested) exception groups, or ``exc`` itself: what a trio
    nursery raised, unwrapped, so that a user's mistake reads as one line."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaf_errors(inner)
    else:
        yield exc
