"""What a running daemon tells its operator.

The start banner (peer ID, full listen addresses, a ready-to-paste join command) goes to
stdout, so scripts can read it; everything else goes to stderr: a rich progress bar when
stderr is a terminal, plain lines when it is not (a log file, ``journalctl``, a test), one
per evaluated round and at least every twentieth of the run.

Rounds are counted from 1 in everything printed for people (``round 1/30`` ...
``finished: rounds 1..30``), as shards are (``shard 1 of 3``); ``metrics.jsonl``, the
checkpoints and ``[data] shard`` count from 0, as code does. The methods here take the
0-based numbers and do the conversion, so no caller has to.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import IO, Any


class Reporter:
    """Prints the banner, status lines and round progress; see the module docstring.

    Args:
        out: where the banner goes (stdout).
        err: where progress and warnings go (stderr).
        fancy: a rich progress bar (default: when ``err`` is a terminal).
        quiet: print the banner only.
    """

    def __init__(
        self,
        *,
        out: IO[str] | None = None,
        err: IO[str] | None = None,
        fancy: bool | None = None,
        quiet: bool = False,
    ) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.fancy = self.err.isatty() if fancy is None else fancy
        self.quiet = quiet
        self._progress: Any = None
        self._task: Any = None
        self._rounds = 0
        self._last_line = -1

    # ------------------------------------------------------------------ banner

    def banner(self, lines: Sequence[tuple[str, str]]) -> None:
        """Aligned ``label: value`` lines on stdout (a value may span several lines)."""
        width = max((len(label) for label, _ in lines), default=0) + 1
        for label, value in lines:
            first, *rest = value.split("\n") if value else [""]
            print(f"{label + ':':<{width}} {first}", file=self.out)
            for more in rest:
                print(f"{'':<{width}} {more}", file=self.out)
        self.out.flush()

    # ------------------------------------------------------------------ status

    def say(self, text: str) -> None:
        """A status line on stderr (above the progress bar when there is one)."""
        if self.quiet:
            return
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.err, flush=True)

    def warn(self, text: str) -> None:
        """A warning on stderr, even when quiet."""
        if self._progress is not None:
            self._progress.console.print(f"WARNING: {text}", style="bold red", markup=False)
        else:
            print(f"WARNING: {text}", file=self.err, flush=True)

    # ---------------------------------------------------------------- progress

    def start(self, rounds: int, first_round: int = 0) -> None:
        self._rounds = rounds
        self._last_line = -rounds  # the first round is always shown
        if self.quiet or not self.fancy:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]training[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rounds"),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=Console(file=self.err),
        )
        self._progress.start()
        self._task = self._progress.add_task(
            "train", total=rounds, completed=first_round, status=""
        )

    def round(
        self,
        round: int,
        *,
        accuracy: float | None,
        loss: float | None,
        received: int,
        expected: int,
        members: int,
        epsilon: float | None = None,
    ) -> None:
        """Round ``round`` (0-based) is done; ``epsilon``: DP-SGD's spend so far."""
        if self.quiet:
            return
        status = f"in {received}/{expected}  members {members}"
        if epsilon is not None:
            status = f"ε {epsilon:.2f}  " + status
        if loss is not None:
            status = f"loss {loss:.3f}  " + status
        if accuracy is not None:
            status = f"acc {100 * accuracy:5.1f}%  " + status
        if self._progress is not None:
            self._progress.update(self._task, completed=round + 1, status=status)
            return
        every = max(1, self._rounds // 20)
        last = round + 1 >= self._rounds
        if accuracy is not None or last or round - self._last_line >= every:
            self._last_line = round
            print(f"round {round + 1}/{self._rounds}  {status}", file=self.err, flush=True)

    def finished(
        self,
        reason: str,
        *,
        first_round: int,
        last_round: int,
        accuracy: float | None = None,
    ) -> None:
        """The last line: why the peer stopped and which rounds it trained (0-based
        arguments, printed from 1), on stderr unless quiet."""
        if self.quiet:
            return
        done = describe_rounds(first_round, last_round)
        tail = f", test accuracy {100 * accuracy:.1f}%" if accuracy else ""
        print(f"{reason}: {done}{tail}", file=self.err, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def describe_rounds(first_round: int, last_round: int) -> str:
    """``rounds 1..30`` for 0-based rounds 0..29 (``round 5`` for one round), or ``no
    round completed``: what a person reads counts from 1, like the progress lines."""
    if last_round < first_round:
        return "no round completed"
    if last_round == first_round:
        return f"round {first_round + 1}"
    return f"rounds {first_round + 1}..{last_round + 1}"


__all__ = ["Reporter", "describe_rounds"]
