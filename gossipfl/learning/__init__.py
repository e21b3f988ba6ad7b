"""Local training: the models peers train between gossip rounds.

A :class:`Learner` owns a model, a shard of data and an optimizer. The peer runtime only
needs three things from it: a flat view of the model (``adapter``), ``train(round)`` to
run the local step(s) of a round, and ``evaluate(x, y)``. Two back ends: numpy (softmax
regression, for installs without torch and for very large simulations) and torch
(softmax regression and an MLP).
"""

from __future__ import annotations

from gossipfl.learning.learner import (
    MODELS,
    Learner,
    LearnerConfig,
    LearnerFactory,
    evaluate_many,
    learner_factory,
    make_learner,
)

__all__ = [
    "MODELS",
    "Learner",
    "LearnerConfig",
    "LearnerFactory",
    "evaluate_many",
    "learner_factory",
    "make_learner",
]
