"""Attacks by name, built from parameters as they come from a CLI flag or a TOML file.

``make_attack("alie", z="1")`` parses each value by the parameter's declared type and
rejects unknown attacks and parameters with a :class:`~gossipfl.errors.ConfigError` that
lists the valid choices. ``"none"`` (:data:`NO_ATTACK`) is not an attack: configurations
use it to say that no Byzantine peer takes part.
"""

from __future__ import annotations

import types
from collections.abc import Mapping

from gossipfl.attacks.base import Attack
from gossipfl.attacks.omission import Omission
from gossipfl.attacks.poisoning import LabelFlip
from gossipfl.attacks.statistical import (
    ALittleIsEnough,
    Gaussian,
    InnerProductManipulation,
    SignFlip,
)
from gossipfl.attacks.targeted import Dissensus, Isolation, SampleDuplication, Spectral
from gossipfl.errors import ConfigError
from gossipfl.textparams import build

#: The configuration value meaning "no attack, no Byzantine peers".
NO_ATTACK = "none"

#: Every attack by name. Read-only: build attacks with :func:`make_attack`.
ATTACKS: Mapping[str, type[Attack]] = types.MappingProxyType(
    {
        cls.name: cls
        for cls in (
            SignFlip,
            LabelFlip,
            Gaussian,
            ALittleIsEnough,
            InnerProductManipulation,
            Dissensus,
            Isolation,
            SampleDuplication,
            Spectral,
            Omission,
        )
    }
)


def canonical_name(name: str) -> str:
    """Lower case with ``_`` read as ``-``: ``Sign_Flip`` → ``sign-flip``."""
    return name.strip().lower().replace("_", "-")


def attack_class(name: str) -> type[Attack]:
    """The class registered as ``name``; :class:`ConfigError` listing the valid names."""
    try:
        return ATTACKS[canonical_name(name)]
    except KeyError:
        raise ConfigError(
            f"unknown attack {name!r}; valid attacks: {', '.join(ATTACKS)} "
            f"(or {NO_ATTACK!r} for no Byzantine peers)"
        ) from None


def make_attack(name: str, **params: object) -> Attack:
    """Build attack ``name`` with ``params`` (strings are parsed by parameter type).

    Raises :class:`ConfigError` for an unknown attack or parameter (listing the valid
    ones), a value that does not parse, or a value out of range.
    """
    cls = attack_class(name)
    return build(cls, kind="attack", name=cls.name, params=params)


def attack_help(name: str) -> str:
    """One attack's summary and one line per parameter with its default."""
    cls = attack_class(name)
    lines = [f"{cls.name}: {cls.summary}"]
    for f in cls.parameters():
        default = "unset" if f.default is None else repr(f.default)
        lines.append(f"    {f.name} (default {default}): {f.metadata.get('doc', '')}")
    return "\n".join(lines)


def attacks_help() -> str:
    """Help text for every attack, in registry order."""
    return "\n".join(attack_help(name) for name in ATTACKS)


__all__ = [
    "ATTACKS",
    "NO_ATTACK",
    "attack_class",
    "attack_help",
    "attacks_help",
    "canonical_name",
    "make_attack",
]
