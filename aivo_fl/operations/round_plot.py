"""The picture in each round's report: curriculum accuracy and epsilon across rounds, this round marked.

Matplotlib's object API (a `Figure` of its own, no pyplot state), so rendering is safe in any
process and thread and needs no display.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from aivo_fl.ml.round.status import RoundStatus

PROMOTED_COLOUR, REJECTED_COLOUR, LINE_COLOUR, MARK_COLOUR = "#2e7d32", "#c62828", "#1f4e79", "#f9a825"


@dataclass(frozen=True)
class RoundPoint:
    number: int  # 0: the version the first round started from
    status: RoundStatus | None  # None for round 0
    serving: float | None  # curriculum validation accuracy of the version serving after the round
    candidate: float | None  # the round's candidate, promoted or not
    epsilon_total: float | None  # worst-case learner's epsilon after the round; None: no guarantee


def _percent(values: list[float | None]) -> list[float]:
    return [math.nan if v is None else 100 * v for v in values]


def render_rounds(points: list[RoundPoint], this_round: int) -> bytes:
    """A PNG (about 900 x 330 pixels) of `points`, with round `this_round` marked."""
    # About half a second to import: only when a report is drawn.
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(9.0, 3.3), dpi=100, layout="constrained")
    accuracy, epsilon = figure.subplots(1, 2)
    rounds = [p.number for p in points]
    accuracy.plot(rounds, _percent([p.serving for p in points]), color=LINE_COLOUR, marker="o", label="serving")
    candidates = ((RoundStatus.PROMOTED, PROMOTED_COLOUR, "o"), (RoundStatus.REJECTED, REJECTED_COLOUR, "x"))
    for status, colour, marker in candidates:
        chosen = [p for p in points if p.status == status]
        accuracy.scatter(
            [p.number for p in chosen],
            _percent([p.candidate for p in chosen]),
            color=colour,
            marker=marker,
            zorder=3,
            label=f"candidate {status.value.lower()}",
        )
    accuracy.set(title="Curriculum validation accuracy (server-held)", xlabel="round", ylabel="%")
    totals = [p.epsilon_total for p in points[1:]]
    epsilon.plot(rounds[1:], [math.nan if e is None else e for e in totals], color=LINE_COLOUR, marker="o")
    if any(e is None for e in totals):
        epsilon.text(0.5, 0.9, "no noise in some rounds: no guarantee", transform=epsilon.transAxes, ha="center")
    epsilon.set(title="Epsilon, worst-case learner, all rounds", xlabel="round", ylabel="epsilon")
    for axes in (accuracy, epsilon):
        axes.axvline(this_round, color=MARK_COLOUR, linewidth=6, alpha=0.35, zorder=0, label="this round")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
    epsilon.set_ylim(bottom=0)
    accuracy.legend(loc="best", fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
