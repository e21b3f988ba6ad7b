"""What a merge may know about time: the round it runs in.

Most rules are pure functions of the vectors they merge. A few are not: BALANCE tightens
its acceptance radius as training advances (``e^(−κ t/T)``). Rather than giving every rule
a clock, the caller passes a :class:`MergeContext` to :meth:`MergeRule.merge
<gossipfl.merge.MergeRule.merge>`; rules that do not need it ignore it.
"""

from __future__ import annotations

from dataclasses import dataclass

from gossipfl.errors import ConfigError


@dataclass(frozen=True, slots=True)
class MergeContext:
    """The round a merge belongs to.

    Attributes:
        round: the current round t, counted from 0.
        total_rounds: the planned number of rounds T (at least 1). ``round`` may exceed it
            (a run extended past its plan); rules then keep decaying rather than fail.
    """

    round: int
    total_rounds: int

    def __post_init__(self) -> None:
        if not (type(self.round) is int and type(self.total_rounds) is int):
            self._check_types()  # plain ints, as every merge of a run passes, need no loop
        if self.round < 0:
            raise ConfigError(f"MergeContext.round must be >= 0, got {self.round}")
        if self.total_rounds < 1:
            raise ConfigError(f"MergeContext.total_rounds must be >= 1, got {self.total_rounds}")

    def _check_types(self) -> None:
        for name in ("round", "total_rounds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"MergeContext.{name} must be an int, got {value!r}")

    @property
    def progress(self) -> float:
        """t / T: 0 at the first round, 1 at the planned last one."""
        return self.round / self.total_rounds
