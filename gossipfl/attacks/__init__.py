"""Attacks: what lying (Byzantine) neighbours send, to test the merge rules against.

Every attack has the same shape::

    from gossipfl.attacks import ATTACKS, make_attack

    attack = make_attack("alie", z="1")      # string values parse, as from a CLI
    message = attack.craft(view, rng)       # view: what the attacker knows (AttackView)

A view is either *omniscient* (the simulator's oracle: the target's model, its honest
neighbours' models and the target's mixing weights, as in the papers) or *local* (a live
peer: only the models it received; see :mod:`gossipfl.attacks.local` and
:func:`arm_peer`). In a simulation, ``gossipfl simulate --byzantine B --attack NAME``
adds B Byzantine peers; see docs/attacks.md for each attack's formula and parameters.
"""

from __future__ import annotations

from gossipfl.attacks.base import Attack, AttackInputError, AttackView
from gossipfl.attacks.local import (
    LiveByzantine,
    LocalAttacker,
    ObservingTransport,
    ReceivedModels,
    arm_peer,
    local_view,
)
from gossipfl.attacks.omission import Omission
from gossipfl.attacks.poisoning import LabelFlip, flip_labels, with_flipped_labels
from gossipfl.attacks.registry import (
    ATTACKS,
    NO_ATTACK,
    attack_class,
    attack_help,
    attacks_help,
    make_attack,
)
from gossipfl.attacks.statistical import (
    ALittleIsEnough,
    Gaussian,
    InnerProductManipulation,
    SignFlip,
    alie_z,
    alie_z_local,
)
from gossipfl.attacks.targeted import Dissensus, Isolation, SampleDuplication, Spectral

__all__ = [
    "ATTACKS",
    "NO_ATTACK",
    "ALittleIsEnough",
    "Attack",
    "AttackInputError",
    "AttackView",
    "Dissensus",
    "Gaussian",
    "InnerProductManipulation",
    "Isolation",
    "LabelFlip",
    "LiveByzantine",
    "LocalAttacker",
    "ObservingTransport",
    "Omission",
    "ReceivedModels",
    "SampleDuplication",
    "SignFlip",
    "Spectral",
    "alie_z",
    "alie_z_local",
    "arm_peer",
    "attack_class",
    "attack_help",
    "attacks_help",
    "flip_labels",
    "local_view",
    "make_attack",
    "with_flipped_labels",
]
