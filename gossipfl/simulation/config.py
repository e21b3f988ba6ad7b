"""The configuration of a simulated experiment, as typed sections that map 1:1 to TOML.

A run is fully described by one :class:`SimulationConfig`; ``config.toml`` in a run
directory is that config written out, so any run can be repeated with
``gossipfl simulate --config runs/<id>/config.toml``. Overrides use dotted keys::

    --set rounds=300 --set topology.name=ring --set rule.b=2 --set network.loss=0.1

The ``topology`` and ``rule`` sections take ``name`` plus any parameter of that family or
rule (validated when the run is built, by the topology library and the rule registry).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from gossipfl.configfile import Scalar, TomlConfig, read_toml
from gossipfl.data import Dataset
from gossipfl.errors import ConfigError
from gossipfl.learning.learner import LearnerConfig, LearnerFactory, TrainingSettings
from gossipfl.privacy.dpsgd import DPSettings
from gossipfl.privacy.section import DPSection
from gossipfl.tasks.section import TaskSection


@dataclass
class TopologySection:
    name: str = "torus"
    params: dict[str, Scalar] = field(default_factory=dict)


@dataclass
class RuleSection:
    name: str = "mean"
    params: dict[str, Scalar] = field(default_factory=dict)


@dataclass
class DataSection:
    name: str = "digits"
    partition: str = "dirichlet"
    alpha: float = 0.5
    """Dirichlet concentration (only for ``partition = "dirichlet"``)."""


@dataclass
class TrainingSection(TrainingSettings):
    step_time: float = 0.02
    """Simulated seconds one round of local training takes."""
    step_time_spread: float = 0.0
    """Heterogeneity: each peer's step time is step_time × (1 ± spread), drawn once per peer."""


@dataclass
class NetworkSection:
    codec: str = "fp32"
    deadline: float = 1.0
    """Simulated seconds a peer waits for its neighbours each round."""
    latency: float = 0.005
    jitter: float = 0.0
    bandwidth: float = math.inf
    """Bytes per simulated second per link (``inf``: unlimited)."""
    loss: float = 0.0
    duplicate: float = 0.0
    fanout: int = 1
    """Async gossip: partners per step."""
    max_staleness: int = 5
    epidemic_s: int = 2
    """Epidemic Learning: peers each peer sends to per round."""


@dataclass
class ByzantineSection:
    count: int = 0
    attack: str = "none"
    degree: int = 2
    """Each Byzantine peer is linked to this many random honest peers."""
    omniscient: bool = True
    """Byzantine peers see the honest models around their targets (the papers' threat
    model); false: only the models they receive, as a live Byzantine peer."""
    lag: float = 0.02
    """Simulated seconds a Byzantine peer's send trails the honest step, so that the
    round's honest models are known when it crafts its messages (< network.deadline).
    Small, as a capable attacker would keep it: a neighbour whose models come much later
    than the others' is no longer waited for (``PeerConfig.wait``), and an attack that
    arrives after the merge only stands in, stale, in a later round."""
    known_b: bool = False
    """Each honest peer's rule is given its own number of Byzantine neighbours b_i as its
    ``b`` (the exact per-node value that papers such as IOS assume), instead of the
    configured ``rule.b``, which is then an upper bound no peer needs to know. A live peer
    cannot know b_i; rules without a ``b`` parameter are unchanged."""
    oracle: bool = False
    """Honest peers never merge their Byzantine neighbours' models, as a perfect detector
    would do (in-process simulations only): the best any rule can do against this
    placement, the reference a rule's drop is measured against."""
    allow_undefended: bool = False
    """Run a placement the pre-run check refuses
    (:func:`gossipfl.simulation.byzantine.check_defended`): an honest node without a local
    honest majority (d_i < 2b_i + 1), which no rule can defend, or, for the gossip
    clipping rules, Byzantine weight at or above the honest spectral gap. Set it to study
    one."""
    params: dict[str, Scalar] = field(default_factory=dict)


@dataclass
class ChurnSection:
    fraction: float = 0.0
    """Share of honest peers that leave and later rejoin from their last model."""
    leave_round: int = 20
    away_rounds: int = 20


@dataclass
class OutputSection:
    dir: str = "runs"
    eval_every: int = 1
    plot: bool = True


@dataclass
class PrivacySection(DPSection):
    mia: bool = False
    """At the end of a training run, attack every honest peer's final model with a
    loss-threshold membership inference, as a neighbour that received it could
    (:mod:`gossipfl.privacy.membership`): its training samples against as many test
    samples. The summary gains ``mia_auc`` (0.5: nothing leaks), ``mia_auc_max``,
    ``mia_tpr_at_1pct_fpr`` and ``mia_advantage``."""


@dataclass
class SimulationConfig(TomlConfig):
    """Everything that defines a simulated run."""

    peers: int = 16
    rounds: int = 100
    seed: int = 0
    protocol: str = "sync"
    mode: str = "train"
    """``train`` (learning) or ``consensus`` (no training: random vectors, x <- Wx)."""
    dimension: int = 100
    """Length of the random vectors in consensus mode."""
    transport: str = "memory"
    topology: TopologySection = field(default_factory=TopologySection)
    rule: RuleSection = field(default_factory=RuleSection)
    data: DataSection = field(default_factory=DataSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    network: NetworkSection = field(default_factory=NetworkSection)
    byzantine: ByzantineSection = field(default_factory=ByzantineSection)
    churn: ChurnSection = field(default_factory=ChurnSection)
    output: OutputSection = field(default_factory=OutputSection)
    privacy: PrivacySection = field(default_factory=PrivacySection)
    task: TaskSection = field(default_factory=TaskSection)
    """Your own model and data (see :mod:`gossipfl.tasks`); unset: ``[data]`` and
    ``[training]`` choose a built-in workload."""

    @classmethod
    def from_toml(cls, path: str | Path) -> SimulationConfig:
        from gossipfl.tasks.section import anchor_task_files

        data = read_toml(path)
        anchor_task_files(data, Path(path).resolve().parent)  # a task file beside the config
        return cls.from_dict(data)

    def dp_settings(self) -> DPSettings | None:
        """The DP-SGD request of ``[privacy]`` (None without DP-SGD)."""
        return self.privacy.dp_settings()

    def learner_config(self) -> LearnerConfig:
        """The :class:`~gossipfl.learning.LearnerConfig` of ``[training]``; every peer
        starts from the model ``seed`` initializes."""
        return self.training.learner_config(init_seed=self.seed)

    def data_label(self) -> str:
        """What the peers learn, for titles: the task's short name, or the data set's."""
        return self.task.label or self.data.name

    def workload(self) -> tuple[Dataset, LearnerFactory, str]:
        """The run's data set, the factory of its peers' learners, and what they are (for
        summaries): the task of ``[task]``, or the built-in one of ``[data]`` and
        ``[training]``. Every learner starts from the model ``seed`` initializes."""
        task = self.task.build()
        if task is not None:
            from gossipfl.tasks.section import task_factory

            dataset = task.dataset(seed=self.seed)
            return dataset, task_factory(task, init_seed=self.seed), task.describe()
        from gossipfl.data import load_dataset
        from gossipfl.learning import learner_factory

        dataset = load_dataset(self.data.name, seed=self.seed)
        config = self.learner_config()
        return dataset, learner_factory(config), f"{config.model} ({config.backend})"

    def step_times(self, n: int) -> npt.NDArray[np.float64]:
        """The step time of each of ``n`` peers, ``step_time × (1 ± step_time_spread)``,
        drawn from the seed alone: the same peers are slow in memory and over libp2p."""
        tc = self.training
        spread = np.random.default_rng([self.seed, 1]).uniform(-1, 1, size=n)
        return tc.step_time * (1 + tc.step_time_spread * spread)

    def churn_nodes(self) -> list[int]:
        """The honest peers that leave and rejoin (``[churn]``), drawn from the seed alone:
        the same peers churn in memory and over libp2p. Empty when nobody leaves."""
        ch = self.churn
        if ch.fraction <= 0 or ch.leave_round >= self.rounds:
            return []
        count = max(1, round(ch.fraction * self.peers))
        chosen = np.random.default_rng([self.seed, 2]).choice(self.peers, size=count, replace=False)
        return sorted(int(i) for i in chosen)

    def validate(self) -> None:
        if self.peers < 1:
            raise ConfigError(f"peers must be at least 1, got {self.peers}")
        if self.rounds < 0:
            raise ConfigError(f"rounds cannot be negative, got {self.rounds}")
        if self.mode not in ("train", "consensus"):
            raise ConfigError(f"mode must be 'train' or 'consensus', got {self.mode!r}")
        if self.transport not in ("memory", "libp2p"):
            raise ConfigError(f"transport must be 'memory' or 'libp2p', got {self.transport!r}")
        if self.dimension < 1:
            raise ConfigError(f"dimension must be at least 1, got {self.dimension}")
        if self.output.eval_every < 1:
            raise ConfigError(f"output.eval_every must be >= 1, got {self.output.eval_every}")
        if not 0 <= self.churn.fraction <= 1:
            raise ConfigError(f"churn.fraction is a share in [0, 1], got {self.churn.fraction}")
        if self.training.step_time < 0 or not 0 <= self.training.step_time_spread < 1:
            raise ConfigError("training.step_time must be >= 0 and step_time_spread in [0, 1)")
        if self.task.name.strip():
            self.task.build()  # an unknown task or parameter is a config error, now
        self.privacy.check(self.mode)
        if self.privacy.secure_averaging:
            from gossipfl.privacy.secure_averaging import check_secure_averaging

            check_secure_averaging(rule=self.rule.name, protocol=self.protocol)
        if self.byzantine.count < 0 or self.byzantine.degree < 1:
            raise ConfigError("byzantine.count must be >= 0 and byzantine.degree >= 1")
