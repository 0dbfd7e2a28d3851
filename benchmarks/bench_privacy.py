"""Privacy over a year of weekly rounds: the guide's defaults, the user-level preset (epsilon 2,
planned for 50,000 learners), the small-school preset (epsilon 8), no DP.

Epsilon comes from dp-accounting's PLD accountant through the same ledger the product uses
(:mod:`aivo_fl.ml.privacy.ledger`), for rounds planned exactly as a round plans them
(:func:`planned_round`, the private gate's query included) on a 10,000-learner population (the
user-level preset on the 50,000 its planner needs). ``gate_cost``: each configuration's year with
and without the gate's query. Also measured: what the per-learner
ledger costs at 10,000 learners (cached per distinct history) against composing every learner
separately, and a plot of epsilon over the year (``benchmarks/results/privacy_epsilon.png``).

Accuracy: the `fl_quality` benchmark (learning/round work) trains each configuration; when its
results file is present, its accuracy per configuration fills the table's last column.

    python -m benchmarks privacy [--quick]
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

from aivo_fl.config import PRIVACY_PRESETS
from aivo_fl.ml.privacy import mechanism as privacy
from aivo_fl.ml.privacy.adaptive_clipping import DEFAULT_INITIAL_CLIP_NORM
from aivo_fl.ml.privacy.ledger import RoundPrivacy, compose_rounds, learner_totals, planned_round
from aivo_fl.ml.privacy.planner import plan
from benchmarks.report import Column, cli
from benchmarks.report import table as report_table

RESULTS = Path(__file__).resolve().parent / "results"
PLOT_PATH = RESULTS / "privacy_epsilon.png"
# Hook for the accuracy column: {"configurations": {"<name>": {"accuracy": 0.53, ...}}}.
ACCURACY_PATH = RESULTS / "fl_quality.json"
POPULATION = 10_000
PLANNED_POPULATION = 50_000  # the user-level preset's: 10,000 learners are out of its reach
WEEKS = 52
TARGET_EPSILON, TARGET_DELTA = 8.0, 1e-6


@cache
def configurations() -> dict[str, dict[str, Any]]:
    small = PRIVACY_PRESETS["user-level-epsilon-8-small-schools"]
    user = PRIVACY_PRESETS["user-level"]
    target, rounds, delta = user["privacy_target_epsilon"], user["privacy_target_rounds"], user["privacy_delta"]
    planned = plan(target, rounds, PLANNED_POPULATION, delta)
    assert planned.recommended is not None
    adaptive = dict(clip_norm=DEFAULT_INITIAL_CLIP_NORM, target_quantile=0.5)
    return {
        "guide defaults": dict(
            dp_enabled=True, noise_multiplier=0.1, clip_norm=1.0, sample_rate=1.0, delta=1e-5, target_quantile=None
        ),
        "user-level preset": dict(
            dp_enabled=True,
            noise_multiplier=planned.recommended.noise_multiplier,
            sample_rate=planned.recommended.sample_rate,
            delta=user["privacy_delta"],
            population=PLANNED_POPULATION,
            **adaptive,
        ),
        "small-school preset": dict(
            dp_enabled=True,
            noise_multiplier=small["noise_multiplier"],
            sample_rate=small["learner_sample_rate"],
            delta=small["privacy_delta"],
            **adaptive,
        ),
        "no DP": dict(dp_enabled=False, noise_multiplier=0.0, clip_norm=1.0, sample_rate=1.0, delta=1e-5),
    }


def year_of_rounds(config: dict[str, Any], weeks: int = WEEKS, gate: bool = True) -> list[RoundPrivacy]:
    config = {"population": POPULATION} | config
    rounds = [planned_round(f"week-{w + 1}", **config) for w in range(weeks)]
    return rounds if gate else [replace(r, gate_noise_multiplier=None) for r in rounds]


def gate_cost(config: dict[str, Any]) -> dict[str, float | None]:
    """The year's epsilon with and without the private gate's query."""
    delta = config["delta"]
    with_gate = compose_rounds(year_of_rounds(config), delta).epsilon
    without = compose_rounds(year_of_rounds(config, gate=False), delta).epsilon
    return {"epsilon_52": with_gate, "epsilon_52_without_gate": without}


def epsilon_curve(rounds: list[RoundPrivacy]) -> list[float | None]:
    delta = rounds[0].delta or 1e-5
    return [compose_rounds(rounds[: w + 1], delta).epsilon for w in range(len(rounds))]


def candidate_grid(quick: bool) -> list[dict[str, Any]]:
    """(z, q) pairs the preset was chosen from: 52 adaptive-clipping rounds on 10,000 learners."""
    rates = (0.1, 0.15) if quick else (0.05, 0.1, 0.15, 0.2)
    multipliers = (1.0, 1.2) if quick else (0.8, 0.9, 1.0, 1.1, 1.2, 1.3)
    rows = []
    for q in rates:
        for z in multipliers:
            config = dict(
                dp_enabled=True,
                noise_multiplier=z,
                clip_norm=1.0,
                sample_rate=q,
                delta=TARGET_DELTA,
                target_quantile=0.5,
            )
            eps = compose_rounds(year_of_rounds(config), TARGET_DELTA).epsilon
            rows.append({"q": q, "z": z, "expected_cohort": q * POPULATION, "epsilon_52": eps})
    return rows


def ledger_cost(learners: int, baseline_sample: int) -> dict[str, Any]:
    """Per-learner ledger: learners join in different weeks (52 distinct histories), preset rounds."""
    rounds = year_of_rounds(configurations()["user-level preset"])
    ledgers = {f"learner-{i}": rounds[i % WEEKS :] for i in range(learners)}
    privacy._pld_epsilon_of_counts.cache_clear()  # cold: nothing computed before counts
    started = time.perf_counter()
    totals = learner_totals(ledgers, TARGET_DELTA)
    cached = time.perf_counter() - started
    # Baseline: the accountant once per learner (identical rounds still composed in one step).
    sample = list(ledgers.values())[:baseline_sample]
    started = time.perf_counter()
    for history in sample:
        counts = Counter(r.event() for r in history)
        privacy._pld_epsilon_of_counts.__wrapped__(tuple(counts.items()), TARGET_DELTA)
    per_learner = (time.perf_counter() - started) / len(sample)
    return {
        "learners": learners,
        "distinct_histories": len({t.epsilon for t in totals.values()}),
        "cached_seconds": cached,
        "baseline_seconds_per_learner": per_learner,
        "baseline_seconds_extrapolated": per_learner * learners,
        "speedup": per_learner * learners / cached,
    }


def accuracy_of(name: str) -> float | None:
    if not ACCURACY_PATH.is_file():
        return None
    return json.loads(ACCURACY_PATH.read_text()).get("configurations", {}).get(name, {}).get("accuracy")


def run(quick: bool = False) -> dict[str, Any]:
    rows, curves = [], {}
    for name, config in configurations().items():
        curve = epsilon_curve(year_of_rounds(config))
        curves[name] = curve
        rows.append(
            {
                "configuration": name,
                "noise_multiplier": config["noise_multiplier"] if config["dp_enabled"] else None,
                "sample_rate": config["sample_rate"],
                "population": config.get("population", POPULATION),
                "adaptive_clipping": config.get("target_quantile") is not None,
                "delta": config["delta"],
                "epsilon_1": curve[0],
                "epsilon_52": curve[-1],
                "accuracy": accuracy_of(name),
            }
        )
    result = {
        "population": POPULATION,
        "weeks": WEEKS,
        "rows": rows,
        "curves": curves,
        "candidates": candidate_grid(quick),
        "gate_cost": {name: gate_cost(c) for name, c in configurations().items() if c["dp_enabled"]},
        "ledger": ledger_cost(2_000 if quick else POPULATION, 5 if quick else 20),
        "plot": str(PLOT_PATH),
    }
    _plot(curves, {r["configuration"]: r["delta"] for r in rows})
    return result


def _shown(eps: float | None) -> str:
    return "no guarantee" if eps is None else f"{eps:.3g}"


COLUMNS = (
    Column("configuration", "configuration"),
    Column("noise_multiplier", "z", "{:g}"),
    Column("sample_rate", "q", "{:g}"),
    Column("adaptive_clipping", "adaptive"),
    Column("delta", "delta", "{:g}"),
    Column("epsilon_1", "eps 1", "{:.3g}"),
    Column("epsilon_52", "eps 52", "{:.3g}"),
    Column("accuracy", "accuracy", "{:.2%}"),
)


def table(result: dict[str, Any]) -> str:
    """Epsilon per configuration ("-": no guarantee, or accuracy pending), the candidates, the ledger's cost."""
    title = f"Epsilon over {WEEKS} weekly rounds, {POPULATION:,} learners (user-level: {PLANNED_POPULATION:,}; PLD)"
    out = [report_table(result["rows"], COLUMNS, title)]
    out.append(
        f"\nCandidates (52 rounds, adaptive clipping, delta {TARGET_DELTA:g}; target epsilon <= {TARGET_EPSILON:g})"
    )
    for c in result["candidates"]:
        ok = "ok" if c["epsilon_52"] <= TARGET_EPSILON else "over"
        out.append(
            f"  q={c['q']:<5g} z={c['z']:<4g} cohort~{c['expected_cohort']:>6,.0f}  eps={c['epsilon_52']:6.3f}  {ok}"
        )
    led = result["ledger"]
    out.append(
        f"\nPer-learner ledger, {led['learners']:,} learners ({led['distinct_histories']} distinct histories): "
        f"{led['cached_seconds']:.2f} s cached vs {led['baseline_seconds_extrapolated']:.1f} s composing each learner "
        f"({led['baseline_seconds_per_learner'] * 1e3:.1f} ms/learner, measured on a sample): {led['speedup']:.0f}x"
    )
    out.append(f"Plot: {result['plot']}")
    return "\n".join(out)


def _plot(curves: dict[str, list[float | None]], deltas: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    weeks = list(range(1, WEEKS + 1))
    for name, curve in curves.items():
        if all(e is None for e in curve):
            ax.plot([], [], " ", label=f"{name}: no guarantee (infinite)")
            continue
        ax.plot(weeks, curve, label=f"{name} (delta {deltas[name]:g})")
    ax.axhline(TARGET_EPSILON, color="grey", linestyle="--", linewidth=1, label=f"epsilon {TARGET_EPSILON:g}")
    ax.set_yscale("log")
    ax.set_xlabel("weekly round")
    ax.set_ylabel("epsilon spent (worst-case learner)")
    ax.set_title(f"Epsilon over a year, {POPULATION:,} learners")
    ax.legend()
    fig.tight_layout()
    PLOT_PATH.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT_PATH, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    cli("privacy", run, table, __doc__)
