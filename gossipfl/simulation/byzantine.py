"""Byzantine peers in a simulated run: placement, the oracle, and the attacking peers.

``[byzantine] count = B, degree = k, attack = NAME`` adds B Byzantine peers to the honest
topology, each linked to k random honest peers (:func:`gossipfl.topology.attach_byzantine`);
every honest node's mixing weights are then those of the combined graph, as a real peer
would compute them from its degree. Byzantine peers are real :class:`~gossipfl.peer.Peer`
objects with an outgoing hook that replaces each model they send by the attack's message
for that target; they are never evaluated or counted in the metrics.

Omniscience (the papers' threat model) comes from a :class:`ModelOracle`: each honest peer
carries a hook that records the model it sends and passes it on unchanged. A Byzantine
peer sends ``byzantine.lag`` simulated seconds after the honest step time, so by then the
oracle holds the round's honest models around its target; if one is still missing (a
straggler), the newest earlier model stands in and the view counts as stale. With
``byzantine.omniscient = false`` the Byzantine peers instead work from the models they
received, exactly as a live Byzantine peer does (:mod:`gossipfl.attacks.local`).

``attack = "none"`` means no Byzantine peers at all, whatever ``count`` says: it is the
attack-free baseline of an experiment grid.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import networkx as nx
import numpy as np

from gossipfl.attacks import (
    NO_ATTACK,
    Attack,
    AttackView,
    LocalAttacker,
    ObservingTransport,
    ReceivedModels,
    make_attack,
    with_flipped_labels,
)
from gossipfl.attacks.registry import canonical_name
from gossipfl.errors import ConfigError
from gossipfl.merge import MergeRule, make_rule
from gossipfl.merge.context import MergeContext
from gossipfl.protocol.events import PeerId
from gossipfl.protocol.neighbourhood import Neighbourhood
from gossipfl.simulation.config import SimulationConfig
from gossipfl.topology import (
    PlacementReport,
    Topology,
    attach_byzantine,
    fiedler_vector,
    placement_report,
)
from gossipfl.topology.generators import derived_seed
from gossipfl.transport import Transport

if TYPE_CHECKING:
    from gossipfl.data import Dataset
    from gossipfl.learning import LearnerFactory

logger = logging.getLogger(__name__)

F32 = np.ndarray[Any, np.dtype[np.float32]]
Hook = Callable[[str, int, F32], F32 | None]
TrainFn = Callable[[int], Mapping[str, float] | None]

#: The merge rule the evidence recommends against Byzantine neighbours (docs/robustness.md):
#: CS+ with its defaults stayed within 2 points of the attack-free run under every attack
#: of the matrix, at no cost without attack.
RECOMMENDED_RULE = "cs-plus"

#: Seed word separating Byzantine data draws from every other use of the run's seed.
_DATA_WORD = 0xB1
_ATTACK_WORD = 0xB2


def byzantine_active(config: SimulationConfig) -> bool:
    """True when the run has Byzantine peers: a count above 0 and an attack other than none."""
    return config.byzantine.count > 0 and canonical_name(config.byzantine.attack) != NO_ATTACK


def build_attack(config: SimulationConfig) -> Attack:
    """The configured attack with ``[byzantine]``'s free-form parameters."""
    return make_attack(config.byzantine.attack, **config.byzantine.params)


@dataclass(frozen=True)
class ByzantinePlacement:
    """The combined topology and what it means for the honest nodes."""

    honest_topology: Topology
    topology: Topology
    honest: int
    byzantine: tuple[int, ...]
    report: PlacementReport

    def summary(self) -> dict[str, Any]:
        """The placement facts for a run's summary (JSON-ready)."""
        return {
            "byzantine_attached": len(self.byzantine),
            "delta_max": self.report.delta_max,
            "undefended": list(self.report.undefended),
            "honest_spectral_gap": self.report.honest_spectral_gap,
            "max_byzantine_neighbours": max(
                (row.byzantine_neighbours for row in self.report.rows), default=0
            ),
        }


def place_byzantine(config: SimulationConfig, honest: Topology) -> ByzantinePlacement | None:
    """Attach the configured Byzantine peers to ``honest`` (None if the run has none).

    Raises :class:`ConfigError` when the run cannot host Byzantine peers: a protocol other
    than sync rounds, or a topology that changes from round to round.
    """
    if not byzantine_active(config):
        return None
    build_attack(config)  # unknown attacks and bad parameters fail before anything runs
    if config.protocol != "sync":
        raise ConfigError(
            f"Byzantine peers run with protocol = 'sync' only (got {config.protocol!r}): "
            "their attacks target one synchronous gossip round"
        )
    if not honest.is_static or honest.directed:
        raise ConfigError(
            f"Byzantine peers need a static undirected topology; {honest.name!r} is "
            + ("directed" if honest.is_static else "time-varying")
        )
    bz = config.byzantine
    combined, byzantine = attach_byzantine(
        nx.Graph(honest.graph(0)), bz.count, bz.degree, config.seed
    )
    weighting = honest.weighting or "metropolis"
    topology = Topology.from_graph(
        combined,
        weighting=weighting,
        name=f"{honest.name}+{bz.count}byz",
        family=honest.family,
        params=dict(honest.params),
        description=f"{honest.name} with {bz.count} Byzantine peers of degree {bz.degree}",
        seed=config.seed,
    )
    report = placement_report(combined, byzantine=byzantine, weighting=weighting)
    return ByzantinePlacement(honest, topology, honest.n, byzantine, report)


SPECTRAL_RULES = frozenset({"cs-plus", "clipped-gossip"})
"""The gossip clipping rules: what they tolerate is stated against the honest graph's
spectral gap (see :func:`check_defended`)."""


def check_defended(config: SimulationConfig, placement: ByzantinePlacement | None) -> None:
    """Refuse a placement that cannot be defended, unless ``byzantine.allow_undefended``
    is set, naming the node and the condition:

    - **no local honest majority** at an honest node (d_i < 2b_i + 1), whatever the rule:
      the attackers are as many as the honest neighbours (or more); to the node they are
      indistinguishable from a group of honest peers that disagree, so no rule can be
      expected to defend it, and a run reporting its accuracy measures the placement,
      not the rule;
    - for the gossip clipping rules (:data:`SPECTRAL_RULES`), **Byzantine weight at or
      above the honest spectral gap** (δ_max ≥ γ). Clipping bounds each Byzantine
      message's pull by the node's radius, but the pull comes back every round, in the
      attacker's chosen direction, with total weight up to δ_i; honest gossip shrinks
      disagreement by about γ per round. Their theory (ClippedGossip, CS+) needs δ_max
      small against γ; the measured matrix (docs/robustness.md) puts the line at δ_max = γ
      on digits and MNIST-1D alike: 4 Byzantine peers of degree 2 give δ_max = 2/7 ≈ 0.29,
      held on the 4×4 torus (γ = 0.40), broken by the line-searched spectral attack on
      random 4-regular graphs (γ ≈ 0.21–0.25).

    A study of exactly that (ClippedGossip's ring) opts in.
    """
    if placement is None or config.byzantine.allow_undefended:
        return
    report = placement.report
    rows = {row.node: row for row in report.rows}
    how = (
        "Lower byzantine.count or byzantine.degree, use a better-connected topology, or "
        "set byzantine.allow_undefended = true (--allow-undefended) to study it anyway"
    )
    if report.undefended:
        first = rows[report.undefended[0]]
        more = len(report.undefended) - 1
        others = f" (and {more} more honest node{'s' if more > 1 else ''})" if more else ""
        raise ConfigError(
            f"honest node {first.node} has {first.byzantine_neighbours} Byzantine neighbours "
            f"among its {first.degree}{others}: without a local honest majority (d >= 2b+1 = "
            f"{2 * first.byzantine_neighbours + 1}) no rule can tell the attackers from honest "
            f"neighbours that disagree. {how}"
        )
    gap = report.honest_spectral_gap
    if config.rule.name in SPECTRAL_RULES and report.delta_max >= gap:
        worst = max(report.rows, key=lambda row: row.byzantine_weight)
        raise ConfigError(
            f"honest node {worst.node} gives its {worst.byzantine_neighbours} Byzantine "
            f"neighbours a mixing weight of {worst.byzantine_weight:.3f}, at or above the "
            f"honest graph's spectral gap ({gap:.3f}): {config.rule.name!r} clips each "
            "attacker's pull, but the attackers pull every round and honest gossip pulls "
            f"back only about {gap:.3f} of the disagreement per round, so it cannot hold "
            f"the node (delta_max < spectral gap is needed). {how}"
        )


def rule_params(
    config: SimulationConfig, placement: ByzantinePlacement | None, node: int
) -> dict[str, Any]:
    """The rule parameters of honest node ``node``: the configured ones, with ``b`` set
    to the node's own number of Byzantine neighbours when ``byzantine.known_b`` asks for
    it (and the rule has a ``b``): 0 in a run without Byzantine peers."""
    from gossipfl.merge import rule_parameters

    params = dict(config.rule.params)
    if not config.byzantine.known_b:
        return params
    if "b" in {p.name for p in rule_parameters(config.rule.name)}:
        rows = placement.report.rows if placement is not None else ()
        params["b"] = next((r.byzantine_neighbours for r in rows if r.node == node), 0)
    return params


class DetectorNeighbourhood:
    """An honest node's neighbourhood as a perfect detector would leave it: the Byzantine
    neighbours are not waited for and not merged, and their weight stays with the node
    (``byzantine.oracle = true``). Sends are unchanged. It is no defence anyone can
    deploy -- it knows who the attackers are -- but the best any rule can do against a
    placement, so the measure of how far a real rule falls short."""

    def __init__(self, inner: Neighbourhood, byzantine: Collection[PeerId]) -> None:
        self._inner = inner
        self._byzantine = frozenset(byzantine)
        self._last: tuple[Mapping[PeerId, float], dict[PeerId, float]] | None = None

    @property
    def static(self) -> bool:
        return bool(getattr(self._inner, "static", False))

    def receive_from(self, round: int) -> Mapping[PeerId, float]:
        heard = self._inner.receive_from(round)
        if self._last is None or self._last[0] is not heard:  # static: filtered once
            kept = {peer: w for peer, w in heard.items() if peer not in self._byzantine}
            self._last = (heard, kept)
        return self._last[1]

    def send_to(self, round: int) -> Sequence[PeerId]:
        return self._inner.send_to(round)


class ModelOracle:
    """The honest models of recent rounds, recorded as the honest peers send them."""

    def __init__(self, *, keep_rounds: int = 6) -> None:
        self._keep = keep_rounds
        self._rounds: dict[int, dict[int, F32]] = {}
        self._newest = -1

    def recorder(self, node: int) -> Hook:
        """An outgoing hook for honest ``node``: records and sends its model unchanged."""

        def record(_target: str, round: int, vector: F32) -> F32:
            self.record(node, round, vector)
            return vector

        return record

    def record(self, node: int, round: int, vector: F32) -> None:
        self._rounds.setdefault(round, {})[node] = vector
        if round > self._newest:
            self._newest = round
            for old in [r for r in self._rounds if r < round - self._keep]:
                del self._rounds[old]

    def model(self, node: int, round: int) -> tuple[F32 | None, bool]:
        """``node``'s model of ``round`` and True; else its newest earlier one (or its
        oldest later one) and False; (None, False) when it has sent nothing recently."""
        exact = self._rounds.get(round, {}).get(node)
        if exact is not None:
            return exact, True
        earlier = [r for r in self._rounds if r < round and node in self._rounds[r]]
        if earlier:
            return self._rounds[max(earlier)][node], False
        later = [r for r in self._rounds if r > round and node in self._rounds[r]]
        if later:
            return self._rounds[min(later)][node], False
        return None, False


@dataclass(frozen=True)
class _TargetShape:
    honest_neighbours: tuple[int, ...]
    weights: np.ndarray[Any, np.dtype[np.float64]]
    self_weight: float
    byzantine_weights: np.ndarray[Any, np.dtype[np.float64]]

    @property
    def byzantine_weight(self) -> float:
        return float(self.byzantine_weights.sum())

    @property
    def byzantine_count(self) -> int:
        return int(self.byzantine_weights.size)


class OmniscientAttacker:
    """Outgoing hook of one Byzantine peer: crafts, per target, the attack's message from
    the oracle's view of the target's honest neighbourhood."""

    def __init__(
        self,
        attack: Attack,
        oracle: ModelOracle,
        topology: Topology,
        *,
        honest: int,
        index: Mapping[str, int],
        seed: int,
        rule_of: Callable[[int], MergeRule] | None = None,
        total_rounds: int = 1,
        fiedler: np.ndarray[Any, np.dtype[np.float64]] | None = None,
    ) -> None:
        """``rule_of(target)`` builds the target's merge rule (for attacks that search
        their scale; plain averaging is assumed without it); ``fiedler`` is the honest
        graph's Fiedler vector (for the spectral attack)."""
        self.attack = attack
        self.stale_views = 0
        self.crafted = 0
        self._oracle = oracle
        self._topology = topology
        self._honest = honest
        self._index = index
        self._population = topology.n
        self._byzantine_total = topology.n - honest
        self._rng = np.random.default_rng(seed)
        self._shapes: dict[int, _TargetShape] = {}
        self._rule_of = rule_of
        self._rules: dict[int, MergeRule] = {}
        self._total_rounds = max(1, total_rounds)
        self._fiedler = fiedler
        self._projection: tuple[int, np.ndarray[Any, np.dtype[np.float64]] | None] = (-1, None)

    def _shape(self, target: int) -> _TargetShape:
        shape = self._shapes.get(target)
        if shape is None:
            weights = self._topology.weights(target, 0)  # static: every round alike
            honest = tuple(j for j in sorted(weights) if j < self._honest)
            bad = [w for j, w in sorted(weights.items()) if j >= self._honest]
            shape = _TargetShape(
                honest_neighbours=honest,
                weights=np.array([weights[j] for j in honest], dtype=np.float64),
                self_weight=self._topology.self_weight(target, 0),
                byzantine_weights=np.array(bad, dtype=np.float64),
            )
            self._shapes[target] = shape
        return shape

    def view(self, target: int, round: int, own: F32) -> AttackView:
        """What this attacker knows about honest ``target`` in ``round``."""
        shape = self._shape(target)
        x_i, exact = self._oracle.model(target, round)
        stale = not exact
        rows: list[F32] = []
        weights: list[float] = []
        for j, w in zip(shape.honest_neighbours, shape.weights, strict=True):
            x_j, fresh = self._oracle.model(j, round)
            stale = stale or not fresh
            if x_j is not None:
                rows.append(x_j)
                weights.append(float(w))
        if stale:
            self.stale_views += 1
        n = own.shape[0]
        stack = np.stack(rows) if rows else np.empty((0, n), np.float32)
        w = np.asarray(weights, dtype=np.float64)
        spectral = None
        if self.attack.uses_spectral and self._fiedler is not None:
            projection = self._spectral_projection(round)
            if projection is not None:
                spectral = float(self._fiedler[target]) * projection
        merge = self._merge_of(target, round, x_i, stack, w, shape) if x_i is not None else None
        return AttackView(
            round=round,
            own=own,
            neighbours=stack,
            weights=w,
            target=x_i,
            target_weight=shape.self_weight,
            byzantine_weight=shape.byzantine_weight,
            byzantine_count=shape.byzantine_count,
            population=self._population,
            byzantine_total=self._byzantine_total,
            omniscient=True,
            merge=merge,
            spectral=spectral,
        )

    def _spectral_projection(self, round: int) -> np.ndarray[Any, np.dtype[np.float64]] | None:
        """``Σ_k u_k x_k`` over the honest models of ``round`` (computed once per round;
        the newest earlier model stands in for one not yet sent)."""
        cached_round, cached = self._projection
        if cached_round == round:
            return cached
        assert self._fiedler is not None
        total: np.ndarray[Any, np.dtype[np.float64]] | None = None
        for k in range(self._honest):
            x_k, _ = self._oracle.model(k, round)
            if x_k is None:
                continue
            term = float(self._fiedler[k]) * x_k.astype(np.float64)
            total = term if total is None else total + term
        self._projection = (round, total)
        return total

    def _merge_of(
        self,
        target: int,
        round: int,
        x_i: F32,
        stack: F32,
        weights: np.ndarray[Any, np.dtype[np.float64]],
        shape: _TargetShape,
    ) -> Callable[[F32], F32] | None:
        """The target's merge of ``round`` as a function of the message all its Byzantine
        neighbours send (None without ``rule_of``)."""
        if self._rule_of is None:
            return None
        rule = self._rules.get(target)
        if rule is None:
            rule = self._rules[target] = self._rule_of(target)
        context = MergeContext(round=max(round, 0), total_rounds=self._total_rounds)
        all_weights = np.concatenate([weights, shape.byzantine_weights])
        copies = shape.byzantine_count

        def merge(message: F32) -> F32:
            rows = np.concatenate([stack, np.broadcast_to(message, (copies, message.shape[0]))])
            return rule.merge(x_i, rows, all_weights, context=context)

        return merge

    def __call__(self, target: str, round: int, vector: F32) -> F32 | None:
        node = self._index.get(target)
        if node is None or node >= self._honest:
            return vector  # never happens with attach_byzantine (no Byzantine-Byzantine links)
        if self.attack.withholds(round):
            return None
        self.crafted += 1
        return self.attack.craft(self.view(node, round, vector), self._rng)


@dataclass
class ByzantinePeer:
    """Everything the runner needs to start one Byzantine peer."""

    node: int
    model: object
    train: TrainFn | None
    outgoing: OmniscientAttacker | LocalAttacker
    wrap: Callable[[Transport], Transport] = field(default=lambda t: t)


@dataclass
class ByzantineSetup:
    """The Byzantine side of a run: placement, oracle and the attacking peers."""

    placement: ByzantinePlacement
    attack: Attack
    oracle: ModelOracle
    peers: list[ByzantinePeer]
    lag: float

    def recorder(self, node: int) -> Hook:
        """The oracle hook for honest ``node``."""
        return self.oracle.recorder(node)

    def summary(self, nodes: Collection[int] | None = None) -> dict[str, Any]:
        """Placement and attack facts for the run's summary; the attack's counts over
        the Byzantine peers of ``nodes`` only, if given (those a shard ran)."""
        out = self.placement.summary()
        ran = [p for p in self.peers if nodes is None or p.node in nodes]
        out["attack_detail"] = self.attack.describe()
        out["omniscient"] = all(isinstance(p.outgoing, OmniscientAttacker) for p in self.peers)
        out["stale_views"] = sum(
            p.outgoing.stale_views for p in ran if isinstance(p.outgoing, OmniscientAttacker)
        )
        out["crafted"] = sum(p.outgoing.crafted for p in ran)
        return out


def setup_byzantine(
    config: SimulationConfig,
    placement: ByzantinePlacement,
    ids: Sequence[str],
    *,
    dataset: Dataset | None = None,
    make: LearnerFactory | None = None,
) -> ByzantineSetup:
    """Build the attack, the oracle and one :class:`ByzantinePeer` per Byzantine node.

    In train mode every Byzantine peer holds a model of the honest architecture (the
    handshake checks the layout); only a training attack (label-flip) trains it, on a
    random share of the training data the size of an honest peer's average share, with
    flipped labels. In consensus mode Byzantine models are zero vectors.
    """
    attack = build_attack(config)
    if attack.trains and (dataset is None or make is None):
        raise ConfigError(f"attack {attack.name!r} trains a model: it needs mode = 'train'")
    bz = config.byzantine
    if not 0 <= bz.lag < config.network.deadline:
        raise ConfigError(
            f"byzantine.lag must be in [0, network.deadline = {config.network.deadline}), "
            f"got {bz.lag}: a later message misses the round"
        )
    oracle = ModelOracle()
    index = {peer_id: node for node, peer_id in enumerate(ids)}
    peers: list[ByzantinePeer] = []
    fiedler = (
        fiedler_vector(nx.Graph(placement.honest_topology.graph(0)))
        if attack.uses_spectral and bz.omniscient
        else None
    )

    def rule_of(target: int) -> MergeRule:
        return make_rule(config.rule.name, **rule_params(config, placement, target))

    for node in placement.byzantine:
        seed = derived_seed(config.seed, _ATTACK_WORD, node)
        model, train = _byzantine_model(config, attack, node, dataset, make)
        if bz.omniscient:
            hook: OmniscientAttacker | LocalAttacker = OmniscientAttacker(
                attack,
                oracle,
                placement.topology,
                honest=placement.honest,
                index=index,
                seed=seed,
                rule_of=rule_of,
                total_rounds=config.rounds,
                fiedler=fiedler,
            )
            peers.append(ByzantinePeer(node, model, train, hook))
        else:
            received = ReceivedModels()
            local = LocalAttacker(attack, received, seed=seed)
            peers.append(
                ByzantinePeer(
                    node,
                    model,
                    train,
                    local,
                    wrap=_observing(received),
                )
            )
    return ByzantineSetup(placement, attack, oracle, peers, bz.lag)


def _observing(received: ReceivedModels) -> Callable[[Transport], Transport]:
    """Wraps a Byzantine peer's transport so its attacker sees what it receives."""

    def wrap(transport: Transport) -> Transport:
        return ObservingTransport(transport, received)

    return wrap


def _byzantine_model(
    config: SimulationConfig,
    attack: Attack,
    node: int,
    dataset: Dataset | None,
    make: LearnerFactory | None,
) -> tuple[object, TrainFn | None]:
    if dataset is None or make is None:
        return {"x": np.zeros(config.dimension, np.float32)}, None
    rng = np.random.default_rng(derived_seed(config.seed, _DATA_WORD, node))
    total = len(dataset.y_train)
    share = max(1, total // config.peers)
    indices = np.sort(rng.choice(total, size=min(share, total), replace=False))
    data = with_flipped_labels(dataset) if attack.trains else dataset
    learner = make(data, indices, derived_seed(config.seed, node))
    return learner.adapter, (learner.train if attack.trains else None)


__all__ = [
    "RECOMMENDED_RULE",
    "ByzantinePeer",
    "ByzantinePlacement",
    "ByzantineSetup",
    "ModelOracle",
    "OmniscientAttacker",
    "build_attack",
    "byzantine_active",
    "place_byzantine",
    "setup_byzantine",
]
