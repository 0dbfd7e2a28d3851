"""Each round's report for the operator: markdown with an embedded PNG of the rounds so far.

Everything in it is either computed on server-held data (the curriculum's validation split), a
privacy figure the round already released (its epsilon, recorded by the accountant), or a count
(learners taken and left out, by reason). No learner id and no statistic of a learner's own data
is read: the registry counts the contributions itself.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from aivo_fl.ml.round.status import RoundStatus
from aivo_fl.operations.round_plot import RoundPoint, render_rounds
from aivo_fl.registry import ModelRegistry, RoundSummary

CONTRIBUTED = "contributed"
# What each curve is; the report says it under the picture.
CURVES = (
    "*Curriculum validation accuracy*: the main model on the curriculum's validation split, data the "
    "server holds (no learner's). The line is the version serving learners after each round; a dot is "
    "that round's candidate, kept (promoted) or refused (rejected). The registry holds no evaluation set "
    "of new learners, so cold start (the main model for a learner without a clone) is not measured here: "
    "the curriculum is the server-held yardstick.",
    "*Epsilon*: the worst-case learner's epsilon over every recorded round, as the accountant released "
    "it with each round (none when a round ran without noise).",
)


@dataclass(frozen=True)
class RoundReport:
    markdown: str
    png: bytes


def reason_kind(reason: str) -> str:
    """ "stale: trained 9 days ago" -> "stale: trained N days ago": reasons grouped by kind, not by value."""
    return re.sub(r"\d+(?:\.\d+)*", "N", reason)


def round_points(rounds: list[RoundSummary]) -> list[RoundPoint]:
    """Round 0 (the version the first round started from) and every round after it."""
    if not rounds:
        return []
    first = rounds[0].metrics.get("curriculumAccuracyBefore")
    points = [RoundPoint(0, None, first, None, None)]
    serving = first
    for r in rounds:
        candidate = r.metrics.get("curriculumAccuracyAfter")
        if r.status == RoundStatus.PROMOTED:
            serving = candidate
        points.append(RoundPoint(r.number, r.status, serving, candidate, r.epsilon_total))
    return points


def build_round_report(registry: ModelRegistry, update_id: str) -> RoundReport:
    """The report of the recorded round `update_id`, with every round before it for context."""
    rounds = registry.round_summaries()
    this = next(r for r in rounds if r.update_id == update_id)
    png = render_rounds(round_points(rounds[: this.number]), this.number)
    private = this.epsilon_round is not None  # DP with noise: the draw's size is not released
    counts = registry.contribution_counts(update_id, before_draw=private)
    image = base64.b64encode(png).decode("ascii")
    lines = [
        f"### Round {this.number}: {_outcome(this)}",
        "",
        f"![rounds 1 to {this.number}](data:image/png;base64,{image})",
        "",
        *_figures(this, counts, private),
        "",
        *_exclusions(counts),
        "",
        *CURVES,
    ]
    return RoundReport("\n".join(lines), png)


def _outcome(r: RoundSummary) -> str:
    if r.status == RoundStatus.PROMOTED:
        return f"promoted {r.base_version} -> {r.new_version}"
    return f"rejected, {r.base_version} stays active ({r.rejection_reason or 'no reason recorded'})"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _figures(r: RoundSummary, counts: dict[str | None, int], private: bool) -> list[str]:
    m = r.metrics
    epsilon = (
        "no guarantee (released without noise)"
        if r.epsilon_total is None
        else f"{r.epsilon_round:.3g} this round, worst-case learner epsilon {r.epsilon_total:.3g}"
    )
    excluded = sum(n for reason, n in counts.items() if reason is not None)
    taken = (
        f"drawn: withheld (differential privacy), {excluded:,} left out before the draw"
        if private
        else f"{counts.get(None, 0):,} {CONTRIBUTED}, {excluded:,} left out"
    )
    improvement = m.get("performanceImprovement")
    std = m.get("improvementNoiseStd") or 0.0
    learners_change = (
        "-"
        if improvement is None
        else f"{improvement:+.2f} points" + (f" (privatized, noise std {std:.2f})" if std else " (exact: no DP)")
    )
    return [
        "| figure | value |",
        "|---|---|",
        f"| curriculum validation accuracy | {_percent(m.get('curriculumAccuracyBefore'))} -> "
        f"{_percent(m.get('curriculumAccuracyAfter'))} (trained version {_percent(m.get('curriculumReference'))}) |",
        f"| learners' held-out accuracy change | {learners_change} |",
        f"| epsilon | {epsilon} |",
        f"| learners | {taken} |",
    ]


def _exclusions(counts: dict[str | None, int]) -> list[str]:
    kinds: dict[str, int] = {}
    for reason, n in counts.items():
        if reason is not None:
            kinds[reason_kind(reason)] = kinds.get(reason_kind(reason), 0) + n
    if not kinds:
        return ["No learner was left out."]
    rows = ["**Left out, by reason** (counts only)", "", "| reason | learners |", "|---|---|"]
    rows += [f"| {kind} | {n:,} |" for kind, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))]
    return rows
