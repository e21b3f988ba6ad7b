"""What ``gossipfl simulate`` prints about Byzantine peers, and its no-argument showcase.

The showcase answers, in under a minute, the question the project exists for: does a peer
survive lying neighbours? It runs the same attacked network twice -- once with the
recommended merge rule, once with plain gossip (``mean``) -- and prints them side by side,
ending with a one-line verdict.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from gossipfl.simulation import SimulationConfig
from gossipfl.simulation.byzantine import RECOMMENDED_RULE, ByzantinePlacement

#: The showcase: 16 honest peers on a 4×4 torus with non-IID digits, 4 Byzantine peers
#: (each linked to 2 honest ones) running the dissensus attack.
SHOWCASE_SETTINGS: tuple[str, ...] = (
    "peers=16",
    "rounds=100",
    "topology.name=torus",
    "data.partition=dirichlet",
    "data.alpha=0.1",
    "byzantine.count=4",
    "byzantine.degree=2",
    "byzantine.attack=dissensus",
    f"rule.name={RECOMMENDED_RULE}",
    "output.eval_every=5",
)
BASELINE_RULE = "mean"


def showcase_configs(
    *, out: str | None = None, plot: bool = True
) -> tuple[SimulationConfig, SimulationConfig]:
    """The showcase's two configs: the recommended rule, and plain gossip as baseline."""
    extra = [f"output.dir={json.dumps(out)}"] if out is not None else []
    robust = SimulationConfig().with_overrides([*SHOWCASE_SETTINGS, *extra])
    robust.output.plot = plot
    baseline = robust.with_overrides([f"rule.name={BASELINE_RULE}"])
    return robust, baseline


def print_placement(placement: ByzantinePlacement, config: SimulationConfig, console: Any) -> None:
    """Before a run: δ_max, the honest gap, and every honest node without a local honest
    majority (d_i ≥ 2b_i + 1), which no rule can be expected to defend."""
    report = placement.report
    console.print(
        f"[bold]Byzantine placement[/bold]: {len(placement.byzantine)} Byzantine peers "
        f"({config.byzantine.attack}), each linked to {config.byzantine.degree} honest peers; "
        f"δ_max = {report.delta_max:.3f} (largest Byzantine weight at an honest node), "
        f"honest spectral gap {report.honest_spectral_gap:.3g}"
    )
    if report.undefended:
        rows = {row.node: row for row in report.rows}
        listed = ", ".join(
            f"{node} (d={rows[node].degree}, b={rows[node].byzantine_neighbours})"
            for node in report.undefended
        )
        console.print(
            f"[bold red]undefended[/bold red]: {len(report.undefended)} honest node(s) lack a "
            f"local honest majority (d ≥ 2b+1): {listed}"
        )
    else:
        attacked = sum(1 for row in report.rows if row.byzantine_neighbours)
        most = max((row.byzantine_neighbours for row in report.rows), default=0)
        console.print(
            f"every honest node keeps a local honest majority (d ≥ 2b+1); {attacked} of "
            f"{len(report.rows)} have Byzantine neighbours, at most {most} each"
        )


def verdict(robust: dict[str, Any], baseline: dict[str, Any]) -> str:
    """One line comparing the two runs' final honest accuracy."""
    rule, attack, count = robust["rule"], robust["attack"], robust["byzantine"]
    acc, worst = robust["honest_mean_acc"], robust["honest_min_acc"]
    base, base_worst = baseline["honest_mean_acc"], baseline["honest_min_acc"]
    if acc is None or base is None:
        return "no accuracy was measured (consensus mode)"
    ours = f"{rule} kept {100 * acc:.1f}% mean accuracy (worst peer {100 * worst:.1f}%)"
    setting = f"under {attack} from {count} Byzantine peers"
    plain = f"plain gossip ({baseline['rule']})"
    theirs = f"{100 * base:.1f}% (worst {100 * base_worst:.1f}%)"
    if acc - base > 0.02:
        return f"{ours} {setting}; {plain} fell to {theirs}."
    if base - acc > 0.02:
        return f"{rule} did worse than {plain} {setting}: {100 * acc:.1f}% against {theirs}."
    return f"{ours} {setting}; {plain} reached {theirs}: this attack does not separate them."


def run_showcase(
    args: argparse.Namespace,
    run_with_progress: Callable[..., Any],
    err: Any,
    out: Any,
) -> int:
    """Run the showcase (see the module doc); print a table, or one JSON object."""
    from gossipfl.simulation import run_simulation, write_run
    from gossipfl.simulation.byzantine import place_byzantine
    from gossipfl.simulation.results import new_run_dir
    from gossipfl.simulation.runner import build_topology_for

    robust_cfg, baseline_cfg = showcase_configs(out=args.out, plot=not args.no_plot)
    err.print(
        "[bold]robustness showcase[/bold]: the same attacked network, merged with "
        f"{RECOMMENDED_RULE} and with plain gossip ({BASELINE_RULE})"
    )
    placement = place_byzantine(robust_cfg, build_topology_for(robust_cfg))
    if placement is not None:
        print_placement(placement, robust_cfg, err)
    robust = run_with_progress(robust_cfg, err, run_simulation, label=RECOMMENDED_RULE)
    baseline = run_with_progress(baseline_cfg, err, run_simulation, label=BASELINE_RULE)
    run_dir = new_run_dir(robust_cfg.output.dir)
    write_run(robust, run_dir, plot=robust_cfg.output.plot)
    write_run(baseline, run_dir / "baseline", plot=baseline_cfg.output.plot)
    summary = robust.summary()
    summary["run_dir"] = str(run_dir)
    base_summary = baseline.summary()
    base_summary["run_dir"] = str(run_dir / "baseline")
    summary["baseline"] = base_summary
    summary["verdict"] = verdict(summary, base_summary)
    if args.json:
        sys.stdout.write(json.dumps(summary) + "\n")
        return 0
    out.print(side_by_side(robust, baseline))
    out.print(
        f"wall {robust.wall_s + baseline.wall_s:.1f}s for both runs · spectral gap "
        f"{robust.spectral_gap:.3g} · run directory [bold]{run_dir}[/bold] "
        "(baseline in baseline/)"
    )
    out.print(f"\n[bold]verdict[/bold]: {summary['verdict']}")
    return 0


def side_by_side(robust: Any, baseline: Any) -> Any:
    """A ``rich`` table: per evaluated round, both runs' mean and worst honest accuracy."""
    from rich.table import Table

    cfg = robust.config
    table = Table(
        title=(
            f"{cfg.peers} honest peers · {cfg.topology.name} · {cfg.data_label()} Dirichlet "
            f"α={cfg.data.alpha:g} · {cfg.byzantine.count} Byzantine ({cfg.byzantine.attack})"
        )
    )
    table.add_column("round", justify="right")
    for name in (robust.config.rule.name, baseline.config.rule.name):
        table.add_column(f"{name}\nmean acc", justify="right")
        table.add_column(f"{name}\nworst peer", justify="right")
    ours = {s.round: s for s in robust.summaries if s.mean_acc is not None}
    theirs = {s.round: s for s in baseline.summaries if s.mean_acc is not None}
    rounds = sorted(set(ours) & set(theirs))
    if rounds:
        step = max(1, len(rounds) // 10)
        picked = rounds[step - 1 :: step]
        if picked[-1] != rounds[-1]:
            picked.append(rounds[-1])
        for r in picked:
            a, b = ours[r], theirs[r]
            table.add_row(
                str(r + 1),
                _pct(a.mean_acc),
                _pct(a.min_acc),
                _pct(b.mean_acc),
                _pct(b.min_acc),
                style="bold" if r == rounds[-1] else None,
            )
    return table


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


__all__ = [
    "BASELINE_RULE",
    "SHOWCASE_SETTINGS",
    "print_placement",
    "run_showcase",
    "showcase_configs",
    "side_by_side",
    "verdict",
]
