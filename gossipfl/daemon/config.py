"""The configuration of a peer daemon (``gossipfl start``), read from ``config.toml``.

The file is the one ``gossipfl init`` writes: its sections and keys map one to one onto the
dataclasses below, and a missing key takes the default the template shows. Settings come,
in increasing priority, from the defaults, the file, the command-line flags and ``--set
key=value`` overrides (``--set training.lr=0.05``, ``--set topology.k=3``).

The ``topology``, ``rule`` and ``attack`` sections take ``name`` plus free-form parameters
of that family, rule or attack (checked when the daemon builds them). A few keys are
advanced and appear only as comments in the template (``[network] dht``, the heartbeat
and membership timings); they are read all the same.

Relative paths (the key file, the roster, a data file, the output directory) are relative
to the config file's directory, or to the home directory when there is no file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gossipfl.configfile import Scalar, TomlConfig, parse_value, read_toml
from gossipfl.errors import ConfigError
from gossipfl.learning.learner import LearnerConfig, TrainingSettings

if TYPE_CHECKING:
    from gossipfl.attacks.insider import Insider

PROTOCOLS = ("sync", "async", "epidemic")
CODECS = ("fp32", "fp16", "int8")
MODES = ("train", "consensus")


@dataclass
class IdentitySection:
    key_file: str = "identity.key"
    """This peer's Ed25519 private key; created on first start if missing."""


@dataclass
class NetworkSection:
    network_id: str = "gossipfl"
    listen: list[str] = field(default_factory=lambda: ["/ip4/0.0.0.0/tcp/4141"])
    bootstrap: list[str] = field(default_factory=list)
    allow: list[str] = field(default_factory=list)
    """Peer IDs allowed to connect. Empty: any peer (with a roster: the roster's peers)."""
    mdns: bool = False
    dht: bool = False
    """Also look peers up in a Kademlia DHT run by the members of the job."""
    dial_timeout: float = 10.0
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 5.0
    """A neighbour silent this long is not waited for (a frozen process)."""
    exchange_interval: float = 1.0
    """Seconds between two membership exchanges with a random member."""
    member_timeout: float = 10.0
    """A member whose record has not been refreshed for this long has left."""


@dataclass
class TopologySection:
    name: str = "exponential"
    roster: str = ""
    """A roster file (static membership: node names -> peers); empty: dynamic membership."""
    min_peers: int = 0
    """Members to wait for before round 0; 0: the whole roster (static) or 2 (dynamic)."""
    settle: float = 2.0
    """Dynamic membership: a change is applied once it has been stable this long."""
    start_timeout: float = 0.0
    """Give up waiting for ``min_peers`` after this many seconds and start; 0: never."""
    params: dict[str, Scalar] = field(default_factory=dict)


@dataclass
class RuleSection:
    name: str = "cs-plus"
    params: dict[str, Scalar] = field(default_factory=dict)


@dataclass
class TrainingSection(TrainingSettings):
    """Local training (model, backend, lr, momentum, weight_decay, batch_size,
    local_steps, hidden: see :class:`~gossipfl.learning.learner.TrainingSettings`) and
    the gossip around it."""

    rounds: int = 100
    protocol: str = "sync"
    deadline: float = 5.0
    codec: str = "fp32"
    mode: str = "train"
    """``train``, or ``consensus`` (no data: average random vectors, a network check)."""
    seed: int = 0
    dimension: int = 100
    """Consensus mode: length of the random vector."""
    step_time: float = 0.0
    """Seconds added to every round's local step, to play a slower device in a testbed
    (``simulate --transport libp2p`` passes each peer's simulated step time here)."""


@dataclass
class DataSection:
    name: str = "digits"
    partition: str = "dirichlet"
    alpha: float = 1.0
    shard: int | None = None
    """This peer's shard index; unset: its roster index, or its place in the membership."""
    shards: int | None = None
    """How many shards the training set is cut into; unset: the roster or membership size."""
    file: str = ""
    """A data set in an ``.npz`` file (x_train, y_train, x_test, y_test) instead of ``name``."""


@dataclass
class OutputSection:
    dir: str = "state"
    checkpoint_every: int = 1
    eval_every: int = 5
    """Evaluate on the common test split every this many rounds (and at the last)."""
    record_models: bool = False
    """Also append every round's model to ``models.bin`` (for ``simulate --transport
    libp2p``, which computes consensus distances from them)."""
    linger: float = 1.0
    """Seconds to keep answering neighbours after the last round, before leaving."""


@dataclass
class AttackSection:
    name: str = "none"
    """Make this peer Byzantine (tests and experiments only): an attack name."""
    params: dict[str, Scalar] = field(default_factory=dict)


@dataclass
class InsiderSection:
    name: str = "none"
    """Make this otherwise honest peer attack the runtime (tests and experiments only): a
    behaviour of :data:`gossipfl.attacks.insider.INSIDERS`, with its parameters."""
    params: dict[str, Scalar] = field(default_factory=dict)


@dataclass
class DaemonConfig(TomlConfig):
    """Everything ``gossipfl start`` reads; see the module docstring."""

    identity: IdentitySection = field(default_factory=IdentitySection)
    network: NetworkSection = field(default_factory=NetworkSection)
    topology: TopologySection = field(default_factory=TopologySection)
    rule: RuleSection = field(default_factory=RuleSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    data: DataSection = field(default_factory=DataSection)
    output: OutputSection = field(default_factory=OutputSection)
    attack: AttackSection = field(default_factory=AttackSection)
    insider: InsiderSection = field(default_factory=InsiderSection)
    base_dir: Path = field(default_factory=Path.cwd, compare=False, metadata={"setting": False})
    """Where relative paths start (the config file's directory); not a setting."""

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_toml(cls, path: str | Path) -> DaemonConfig:
        path = Path(path).expanduser()
        data = read_toml(path)
        try:
            return cls.from_dict(data, base_dir=path.resolve().parent)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    # ---------------------------------------------------------------- helpers

    def path(self, value: str) -> Path:
        """A path setting, resolved against :attr:`base_dir`."""
        return (self.base_dir / Path(value).expanduser()).resolve()

    @property
    def dynamic(self) -> bool:
        """Membership from discovery (no roster file)."""
        return not self.topology.roster

    # ------------------------------------------------------------- validation

    def validate(self) -> None:
        """Check every setting that can be checked without the network or the data."""
        net, top, tr, data, out = self.network, self.topology, self.training, self.data, self.output
        if not net.network_id.strip() or not net.network_id.isprintable():
            raise ConfigError(
                f"network.network_id must be a printable name, got {net.network_id!r}"
            )
        for name in (
            "dial_timeout",
            "heartbeat_interval",
            "heartbeat_timeout",
            "exchange_interval",
            "member_timeout",
        ):
            _positive(f"network.{name}", getattr(net, name))
        if net.heartbeat_interval >= net.heartbeat_timeout:
            raise ConfigError(
                "network.heartbeat_interval must be shorter than network.heartbeat_timeout"
            )
        if net.exchange_interval >= net.member_timeout:
            raise ConfigError("network.exchange_interval must be shorter than member_timeout")
        if top.min_peers < 0 or top.settle < 0 or top.start_timeout < 0:
            raise ConfigError("topology.min_peers, settle and start_timeout cannot be negative")
        if tr.rounds < 0:
            raise ConfigError(f"training.rounds cannot be negative, got {tr.rounds}")
        if tr.protocol not in PROTOCOLS:
            raise ConfigError(
                f"training.protocol must be one of {', '.join(PROTOCOLS)}, got {tr.protocol!r}"
            )
        if tr.codec not in CODECS:
            raise ConfigError(
                f"training.codec must be one of {', '.join(CODECS)}, got {tr.codec!r}"
            )
        if tr.mode not in MODES:
            raise ConfigError(f"training.mode must be one of {', '.join(MODES)}, got {tr.mode!r}")
        _positive("training.deadline", tr.deadline)
        if not 0 <= tr.step_time < math.inf:
            raise ConfigError(f"training.step_time must be >= 0 seconds, got {tr.step_time}")
        if tr.dimension < 1:
            raise ConfigError(f"training.dimension must be at least 1, got {tr.dimension}")
        if tr.mode == "train":
            self.learner_config().validate()
            from gossipfl.data import DATASETS, PARTITIONS

            if not data.file and data.name not in DATASETS:
                raise ConfigError(
                    f"unknown data set {data.name!r}; choose one of: {', '.join(sorted(DATASETS))} "
                    "(or give data.file)"
                )
            if data.partition not in PARTITIONS:
                raise ConfigError(
                    f"data.partition must be one of {', '.join(PARTITIONS)}, got {data.partition!r}"
                )
            if data.partition == "dirichlet":
                _positive("data.alpha", data.alpha)
        if data.shards is not None and data.shards < 1:
            raise ConfigError(f"data.shards must be at least 1, got {data.shards}")
        if data.shard is not None and (
            data.shard < 0 or (data.shards is not None and data.shard >= data.shards)
        ):
            raise ConfigError(
                f"data.shard must be in 0..shards-1, got shard {data.shard} of {data.shards}"
            )
        if out.checkpoint_every < 1 or out.eval_every < 0:
            raise ConfigError("output.checkpoint_every must be >= 1 and output.eval_every >= 0")
        if out.linger < 0:
            raise ConfigError(f"output.linger cannot be negative, got {out.linger}")
        from gossipfl.attacks import NO_ATTACK, attack_class
        from gossipfl.merge import RULES

        if self.rule.name not in RULES:
            raise ConfigError(
                f"unknown merge rule {self.rule.name!r}; choose one of: {', '.join(RULES)}"
            )
        if self.attack.name.strip().lower() != NO_ATTACK:
            attack_class(self.attack.name)
        self.insider_behaviour()

    def learner_config(self) -> LearnerConfig:
        """The :class:`~gossipfl.learning.LearnerConfig` of ``[training]``."""
        return self.training.learner_config(init_seed=self.training.seed)

    @property
    def is_byzantine(self) -> bool:
        return self.attack.name.strip().lower() != "none"

    def insider_behaviour(self) -> Insider | None:
        """The behaviour of ``[insider]``, built; None for an honest peer."""
        from gossipfl.attacks.insider import NO_INSIDER, make_insider

        if self.insider.name.strip().lower() == NO_INSIDER:
            if self.insider.params:
                raise ConfigError("[insider] has parameters, but its name is 'none'")
            return None
        return make_insider(self.insider.name, **self.insider.params)


def _positive(key: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{key} must be a positive number, got {value!r}")


__all__ = [
    "AttackSection",
    "DaemonConfig",
    "DataSection",
    "IdentitySection",
    "InsiderSection",
    "NetworkSection",
    "OutputSection",
    "RuleSection",
    "TopologySection",
    "TrainingSection",
    "parse_value",
]
