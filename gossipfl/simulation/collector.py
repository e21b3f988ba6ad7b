"""Collects the honest peers' round reports and turns them into metrics.

Peers do not finish a round at the same moment, so reports are held per round until every
honest peer that is present has reported that round or a later one; then the round is
final and its metrics are computed once, over all those peers together: accuracy and loss
of each model on the common test split, accuracy of the honest average model, and the
consensus distance (1/|H|) Σ‖x_i − x̄‖².
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from gossipfl.peer.reports import RoundReport
from gossipfl.protocol.events import RoundStats

FloatArray = npt.NDArray[np.float32]
Evaluate = Callable[[FloatArray], tuple[FloatArray, FloatArray]]
"""Accuracy and loss of each row of a (models × parameters) matrix."""


class _Held(NamedTuple):
    """What the metrics need of a peer's report until its round is final: a tuple, not a
    :class:`RoundReport` rebuilt around the copies (a frozen dataclass of seven fields,
    once per peer-round), nor the report itself (which would keep the peer's own vector
    alive until then)."""

    stats: RoundStats
    bytes_sent: int
    time: float
    vector: FloatArray  # a copy
    metrics: dict[str, float]  # a copy


@dataclass(frozen=True)
class RoundSummary:
    """Metrics of one round over the honest peers that reported it."""

    round: int
    peers: int
    consensus_distance: float
    mean_acc: float | None = None
    min_acc: float | None = None
    max_acc: float | None = None
    avg_model_acc: float | None = None
    mean_loss: float | None = None
    train_loss: float | None = None
    bytes_sent: int = 0
    received: int = 0
    missing: int = 0
    late: int = 0
    duplicates: int = 0
    time: float = 0.0
    epsilon: float | None = None
    """With DP-SGD: the largest ε any peer has spent so far (None without)."""

    def row(self) -> dict[str, object]:
        return {"kind": "round", **self.__dict__}


class MetricsCollector:
    """Accumulates :class:`RoundReport` objects; see the module docstring."""

    def __init__(
        self,
        honest: Iterable[str],
        *,
        rounds: int,
        evaluate: Evaluate | None = None,
        eval_every: int = 1,
        on_round: Callable[[RoundSummary], None] | None = None,
    ) -> None:
        self.present: set[str] = set(honest)
        self.rounds = rounds
        self._evaluate = evaluate
        self._eval_every = eval_every
        self._on_round = on_round
        # round -> peer -> what the metrics need of its report
        self._pending: dict[int, dict[str, _Held]] = {}
        self._last: dict[str, int] = {}
        self._at: Counter[int] = Counter({-1: len(self.present)})  # present peers per last round
        self._floor = -1  # the lowest last round among present peers
        self._bytes_before: dict[str, int] = {}
        self._next_final = 0
        self.peer_rows: list[dict[str, object]] = []
        self.summaries: list[RoundSummary] = []

    # -------------------------------------------------------------- membership

    def leave(self, peer: str) -> None:
        """The peer left: stop waiting for its reports."""
        self.present.discard(peer)
        self._recount()
        self._finalize_ready()

    def join(self, peer: str) -> None:
        self.present.add(peer)
        self._recount()

    def _recount(self) -> None:
        self._at = Counter(self._last.get(p, -1) for p in self.present)
        self._floor = min(self._at, default=-1)

    # ----------------------------------------------------------------- reports

    def add(self, report: RoundReport) -> None:
        if report.peer not in self.present or report.round < self._next_final:
            return  # absent peer, or a straggler's report of a round already final
        vector = np.array(report.vector, dtype=np.float32, copy=True)
        held = _Held(
            report.stats, report.bytes_sent, report.time, vector, dict(report.train_metrics)
        )
        self._pending.setdefault(report.round, {})[report.peer] = held
        old = self._last.get(report.peer, -1)
        if report.round > old:
            self._last[report.peer] = report.round
            self._at[old] -= 1
            self._at[report.round] += 1
            if old == self._floor and self._at[old] == 0:
                del self._at[old]
                self._floor = min(self._at)  # once per round, not once per report
        self._finalize_ready()

    def finish(self) -> None:
        """Finalize whatever is left (peers that stopped early, skipped rounds)."""
        for r in sorted(self._pending):
            self._finalize(r)

    @property
    def final_round(self) -> int:
        """Rounds below this are final."""
        return self._next_final

    def _finalize_ready(self) -> None:
        if not self.present:
            return
        ready_up_to = self._floor
        if ready_up_to < self._next_final:
            # Nothing new is final (pending rounds are all >= _next_final: add() drops
            # older reports): the usual case, once per report.
            return
        for r in sorted(k for k in self._pending if k <= ready_up_to):
            self._finalize(r)
        self._next_final = max(self._next_final, ready_up_to + 1)

    def _finalize(self, round: int) -> None:
        reports = self._pending.pop(round, {})
        if not reports:
            return
        peers = sorted(reports)
        rows = [reports[p].vector for p in peers]
        vectors, mean, distances = _consensus(rows)
        evaluate_now = self._evaluate is not None and (
            (round + 1) % self._eval_every == 0 or round == self.rounds - 1
        )
        acc = loss = None
        avg_acc = None
        if evaluate_now:
            assert self._evaluate is not None
            acc, loss = self._evaluate(np.stack(rows) if vectors is None else vectors)
            avg_acc_arr, _ = self._evaluate(mean.astype(np.float32)[None, :])
            avg_acc = float(avg_acc_arr[0])
        train_losses = [reports[p].metrics.get("loss", math.nan) for p in peers]
        sent = 0
        spent: list[float] = []  # DP-SGD's epsilon of each peer that reports one
        # Python floats of the whole column at once (each the float() of its element, bit
        # for bit), not a numpy scalar made and converted per row
        distance_of = distances.tolist()
        acc_of = loss_of = None
        if acc is not None and loss is not None:
            acc_of = np.asarray(acc, dtype=np.float64).tolist()  # exact, from float32
            loss_of = np.asarray(loss, dtype=np.float64).tolist()
        for i, p in enumerate(peers):
            stats, bytes_sent, at, _, metrics = reports[p]
            delta = bytes_sent - self._bytes_before.get(p, 0)
            self._bytes_before[p] = bytes_sent
            sent += delta
            row: dict[str, object] = {
                "kind": "peer",
                "round": round,
                "peer": p,
                "consensus_distance": distance_of[i],
                "train_loss": _finite_or_none(train_losses[i]),
                "bytes_sent": delta,
                "received": stats.received,
                "missing": len(stats.missing),
                "reused": stats.reused,
                "late": stats.late,
                "duplicates": stats.duplicates,
                "staleness_mean": stats.staleness_mean,
                "time": at,
            }
            if acc_of is not None and loss_of is not None:
                row["accuracy"] = acc_of[i]
                row["loss"] = loss_of[i]
            epsilon = metrics.get("epsilon")
            if epsilon is not None:
                row["epsilon"] = float(epsilon)
                spent.append(float(epsilon))
            self.peer_rows.append(row)
        finite = [x for x in train_losses if math.isfinite(x)]
        summary = RoundSummary(
            round=round,
            peers=len(peers),
            consensus_distance=float(distances.mean()),
            mean_acc=float(np.mean(acc)) if acc is not None else None,
            min_acc=float(np.min(acc)) if acc is not None else None,
            max_acc=float(np.max(acc)) if acc is not None else None,
            avg_model_acc=avg_acc,
            mean_loss=float(np.mean(loss)) if loss is not None else None,
            train_loss=float(np.mean(finite)) if finite else None,
            bytes_sent=sent,
            received=sum(reports[p].stats.received for p in peers),
            missing=sum(len(reports[p].stats.missing) for p in peers),
            late=sum(reports[p].stats.late for p in peers),
            duplicates=sum(reports[p].stats.duplicates for p in peers),
            time=max(reports[p].time for p in peers),
            epsilon=max(spent) if spent else None,
        )
        self.summaries.append(summary)
        if self._on_round is not None:
            self._on_round(summary)


#: Columns per pass of :func:`_consensus` over large models.
DISTANCE_CHUNK = 1 << 16


def _consensus(
    rows: list[FloatArray],
) -> tuple[FloatArray | None, npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The models stacked (small models only, else None), their float64 mean, and
    ``‖v_i − mean‖²`` for every row, in float64.

    Models of up to :data:`DISTANCE_CHUNK` parameters in one pass over their stack (the
    results keep the bits they always had). Larger ones column chunk by column chunk,
    straight from the peers' vectors: stacking 16 models of 11 million parameters took
    715 MB of fresh memory a round, and its page faults were a fifth of a 16-peer ResNet-18
    simulation's time; now a few MB of temporaries. The mean accumulates the rows in
    order in float64, as ``mean(axis=0)`` of the stack does (the same bits), and each
    chunk's rows are copied into one small buffer so the distances are summed exactly as
    before too.
    """
    n = rows[0].shape[0]
    if n <= DISTANCE_CHUNK:
        vectors = np.stack(rows)
        mean = vectors.mean(axis=0, dtype=np.float64)
        distances: npt.NDArray[np.float64] = ((vectors - mean) ** 2).sum(axis=1)
        return vectors, mean, distances
    mean = np.empty(n, dtype=np.float64)
    distances = np.zeros(len(rows), dtype=np.float64)
    block = np.empty((len(rows), DISTANCE_CHUNK), dtype=np.result_type(*rows))
    for start in range(0, n, DISTANCE_CHUNK):
        stop = min(start + DISTANCE_CHUNK, n)
        part = block[:, : stop - start]
        for i, row in enumerate(rows):
            part[i] = row[start:stop]
        center = mean[start:stop]
        center[...] = part[0]
        for i in range(1, len(rows)):
            center += part[i]
        center /= len(rows)
        diff = part - center
        distances += np.einsum("ij,ij->i", diff, diff)
    return None, mean, distances


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None
