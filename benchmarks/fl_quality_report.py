"""The fl_quality benchmark's figures: intervals over seeds and learners, the tables, the plot."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aivo_fl.ml.samples import HEAD_CLASSES
from aivo_fl.ml.simulation.intervals import Interval, bootstrap, difference, gap_closed, stack, verdict
from aivo_fl.ml.simulation.population_rounds import checkpoints

HEADS = list(HEAD_CLASSES)  # the primary head (difficulty) first


def _head(counts: tuple[np.ndarray, np.ndarray], head: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return counts[0][:, head], counts[1]


def _interval(quantities: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]], statistic=None) -> dict[str, float]:
    """Per seed, quantities measured on the same learners ((correct, total) each) -> mean and 95% interval."""
    per_seed = [stack(*(c for c, _ in q), total=q[0][1]) for q in quantities]
    return (bootstrap(per_seed) if statistic is None else bootstrap(per_seed, statistic)).as_dict()


def _samples(hits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # The curriculum test split: each sample its own unit.
    return hits.astype(np.float64), np.ones(len(hits))


def _cohort_row(per_seed: list[dict[str, Any]], name: str, r: int) -> dict[str, Any]:
    measured = [s["configurations"][name]["measured"] for s in per_seed]
    cohort = [s["world"].cohort for s in per_seed]
    row: dict[str, Any] = {"round": r}
    for h, head in enumerate(HEADS):
        row[f"cold_start_{head}"] = _interval([[_head(m[r]["cold"], h)] for m in measured])
    row["cold_start"] = row[f"cold_start_{HEADS[0]}"]
    row["fl_buys"] = _interval(
        [[_head(m[r]["cold"]), _head(c["round 0"])] for m, c in zip(measured, cohort, strict=True)], difference
    )
    row["curriculum"] = _interval([[_samples(m[r]["curriculum"])] for m in measured])
    row["curriculum_change"] = _interval(
        [[_samples(m[r]["curriculum"]), _samples(m[0]["curriculum"])] for m in measured], difference
    )
    return row


def _yardstick_row(per_seed: list[dict[str, Any]], name: str, r: int) -> dict[str, Any]:
    measured = [s["configurations"][name]["measured"] for s in per_seed]
    cohort = [s["world"].cohort for s in per_seed]
    row: dict[str, Any] = {}
    for key, label in (("strongest", "strongest"), ("matched", "matched")):
        trio = [
            [_head(m[r]["cold"]), _head(c["round 0"]), _head(c[f"{key}@{r}"])]
            for m, c in zip(measured, cohort, strict=True)
        ]
        row[f"gap_closed_{label}"] = _interval(trio, gap_closed)
        row[f"to_{label}"] = _interval([[t[2], t[0]] for t in trio], difference)
    personal = [m[r].get("personalized", {}) for m in measured]
    if all("strongest" in p for p in personal) and personal:
        row["clones"] = _interval([[_head(p["clones"])] for p in personal])
        row["clones_vs_strongest"] = _interval(
            [[_head(p["clones"]), _head(p["strongest"])] for p in personal], difference
        )
        row["clones_vs_main"] = _interval([[_head(p["clones"]), _head(p["main"])] for p in personal], difference)
        for h, head in enumerate(HEADS[1:], start=1):
            row[f"clones_vs_strongest_{head}"] = _interval(
                [[_head(p["clones"], h), _head(p["strongest"], h)] for p in personal], difference
            )
    return row


def _configuration(per_seed: list[dict[str, Any]], name: str) -> dict[str, Any]:
    runs = [s["configurations"][name] for s in per_seed]
    rounds = per_seed[0]["world"].weeks
    marks = checkpoints(rounds)
    rows = []
    for r in range(rounds + 1):
        row = _cohort_row(per_seed, name, r)
        if r in marks:
            row.update(_yardstick_row(per_seed, name, r))
        raw = [run["rounds"][r] for run in runs]
        epsilons = [x["epsilon"] for x in raw]
        row["epsilon"] = None if any(e is None for e in epsilons) else float(np.mean(epsilons))
        row["accepted"] = sum(bool(x.get("accepted", True)) for x in raw)
        row["gate_samples"] = float(np.mean([x.get("gate_samples", 0) for x in raw]))
        rows.append(row)
    e1, e52 = [run["epsilon_1"] for run in runs], [run["epsilon_52"] for run in runs]
    return {
        "privacy": runs[0]["privacy"],
        "rounds": rows,
        "accuracy": rows[-1]["cold_start"]["mean"],  # what bench_privacy reads
        "epsilon_1": None if None in e1 else float(np.mean(e1)),
        "epsilon_52": None if None in e52 else float(np.mean(e52)),
        "seconds": [run["seconds"] for run in runs],
    }


def _yardsticks(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    cohort = [s["world"].cohort for s in per_seed]
    marks = checkpoints(per_seed[0]["world"].weeks)
    out: dict[str, Any] = {
        "round 0": {h: _interval([[_head(c["round 0"], i)] for c in cohort]) for i, h in enumerate(HEADS)},
        "bayes": {h: _interval([[_head(c["bayes"], i)] for c in cohort]) for i, h in enumerate(HEADS)},
    }
    for key in ("strongest", "matched"):
        out[key] = {
            r: {h: _interval([[_head(c[f"{key}@{r}"], i)] for c in cohort]) for i, h in enumerate(HEADS)} for r in marks
        }
    out["central_settings"] = [
        {"seed": s["seed"], **s["world"].central.settings.__dict__, "validation": s["world"].central.validation}
        for s in per_seed
    ]
    return out


def _differences(per_seed: list[dict[str, Any]], configurations: Sequence[str]) -> list[dict[str, Any]]:
    """Paired differences (same seeds, same learners) between configurations after the last round."""
    last = per_seed[0]["world"].weeks
    out = []
    for a, b in itertools.combinations(configurations, 2):
        pairs = [
            [
                _head(s["configurations"][a]["measured"][last]["cold"]),
                _head(s["configurations"][b]["measured"][last]["cold"]),
            ]
            for s in per_seed
        ]
        interval = _interval(pairs, difference)
        out.append({"a": a, "b": b, "cold_start": interval, "verdict": verdict(_as_interval(interval))})
    return out


def _as_interval(d: dict[str, float]) -> Interval:
    return Interval(d["mean"], d["low"], d["high"], int(d["seeds"]))


def summarize(per_seed: list[dict[str, Any]], configurations: Sequence[str]) -> dict[str, Any]:
    return {
        "yardsticks": _yardsticks(per_seed),
        "configurations": {name: _configuration(per_seed, name) for name in configurations},
        "differences": _differences(per_seed, configurations),
        "setup_seconds": [s["setup_seconds"] for s in per_seed],
    }


# ---- text -----------------------------------------------------------------------------------


def _pct(d: dict[str, float] | None, points: bool = False) -> str:
    if d is None or math.isnan(d["mean"]):
        return "-"
    if points:
        return f"{100 * d['mean']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"
    return f"{100 * d['mean']:.2f} [{100 * d['low']:.2f}, {100 * d['high']:.2f}]"


def _share(d: dict[str, float] | None) -> str:
    if d is None or math.isnan(d["mean"]):
        return "-"
    return f"{100 * d['mean']:.0f}% [{100 * d['low']:.0f}, {100 * d['high']:.0f}]"


def _eps(value: float | None) -> str:
    return "none" if value is None else f"{value:.3g}"


def print_row_header() -> None:
    print(
        f"{'seed':>4} {'configuration':<18} {'round':>5} {'cold':>7} {'curric.':>7} {'epsilon':>9} {'gate':>6} {'s':>6}"
    )


def row_line(seed: int, name: str, r: dict[str, Any]) -> str:
    gate = "ok" if r.get("accepted") else "reject"
    return (
        f"{seed:>4} {name:<18} {r['round']:>5} {100 * r['cold_start']:>7.2f} {100 * r['curriculum']:>7.2f} "
        f"{_eps(r['epsilon']):>9} {gate:>6} {r['seconds']:>6.1f}"
    )


def table(result: dict[str, Any]) -> str:
    seeds = result["seeds"]
    lines = [
        f"\nfl_quality ({result['kind']} seeds {seeds}; tuning seeds {result['tuning_seeds']}, reported "
        f"{result['reported_seeds']}): {result['learners']:,} learners ({result['evaluation_learners']} in the "
        f"evaluation cohort), {result['rounds']} weekly rounds; means over seeds, 95% intervals (seeds and learners "
        "resampled); accuracy of the primary head (difficulty) in %, differences in points",
        f"{'configuration':<18} {'round':>5} {'cold start':>21} {'FL buys (pp)':>21} {'gap closed, strongest':>21} "
        f"{'gap closed, matched':>20} {'curriculum test':>21} {'epsilon':>9} {'gate ok':>7}",
    ]
    for name, c in result["configurations"].items():
        for r in c["rounds"]:
            lines.append(
                f"{name:<18} {r['round']:>5} {_pct(r['cold_start']):>21} {_pct(r['fl_buys'], True):>21} "
                f"{_share(r.get('gap_closed_strongest')):>21} {_share(r.get('gap_closed_matched')):>20} "
                f"{_pct(r['curriculum']):>21} {_eps(r['epsilon']):>9} {r['accepted']:>4}/{len(seeds)}"
            )
    lines += _summary_lines(result)
    return "\n".join(lines)


def _summary_lines(result: dict[str, Any]) -> list[str]:
    y, last = result["yardsticks"], result["rounds"]
    lines = ["", f"yardsticks on the evaluation cohort after round {last} (all three heads):"]
    for label, d in (
        ("round 0 (curriculum model)", y["round 0"]),
        ("strongest central model", y["strongest"][last]),
        ("head-matched oracle", y["matched"][last]),
        ("personalized Bayes ceiling", y["bayes"]),
    ):
        lines.append(f"  {label:<28} " + "  ".join(f"{h} {_pct(d[h])}" for h in HEADS))
    for s in y["central_settings"]:
        tried = ", ".join(f"{k} {100 * v:.2f}" for k, v in s["validation"].items())
        lines.append(
            f"  seed {s['seed']}: strongest central model at depth {s['depth']}, {s['epochs']} epochs "
            f"(validation learners, primary head: {tried})"
        )
    for name, c in result["configurations"].items():
        r = c["rounds"][-1]
        lines.append(
            f"\n{name} after round {last}: epsilon after 1 round {_eps(c['epsilon_1'])}, after {last}: "
            f"{_eps(r['epsilon'])}, after 52: {_eps(c['epsilon_52'])}"
        )
        lines.append("  cold start " + "  ".join(f"{h} {_pct(r[f'cold_start_{h}'])}" for h in HEADS))
        lines.append(
            f"  FL buys a new learner {_pct(r['fl_buys'], True)} pp; below the strongest central model by "
            f"{_pct(r.get('to_strongest'), True)} pp (gap closed {_share(r.get('gap_closed_strongest'))}); "
            f"vs the head-matched oracle {_pct(r.get('to_matched'), True)} pp below "
            f"(gap closed {_share(r.get('gap_closed_matched'))})"
        )
        lines.append(
            f"  curriculum test {_pct(r['curriculum'])}, change from round 0 {_pct(r['curriculum_change'], True)} pp"
        )
        if "clones_vs_strongest" in r:
            lines.append(
                f"  clones on their own held-out data {_pct(r['clones'])}: vs the strongest central model "
                f"{_pct(r['clones_vs_strongest'], True)} pp, vs the main model {_pct(r['clones_vs_main'], True)} pp"
            )
    lines.append("\npaired differences after the last round (cold start, a - b):")
    for d in result["differences"]:
        lines.append(f"  {d['a']} - {d['b']}: {d['verdict']}")
    setup = ", ".join(f"{s:.0f}" for s in result["setup_seconds"])
    lines.append(
        f"\n{result['total_seconds']:.0f} s in all (setup per seed {setup} s); "
        f"{result['cpu_seconds']:.0f} CPU-seconds; peak RSS {result['peak_rss_mb']:.0f} MB "
        f"(a configuration's worker {result['peak_rss_worker_mb']:.0f} MB); "
        f"load average {result['load_average_1min']:.1f} on {result['cpus']} CPUs"
    )
    return lines


# ---- plot -----------------------------------------------------------------------------------


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cold, curriculum, epsilon) = plt.subplots(1, 3, figsize=(15, 4.4))
    for name, c in result["configurations"].items():
        rounds = [r["round"] for r in c["rounds"]]
        for axis, key in ((cold, "cold_start"), (curriculum, "curriculum")):
            mean = [100 * r[key]["mean"] for r in c["rounds"]]
            line = axis.plot(rounds, mean, label=name)[0]
            axis.fill_between(
                rounds,
                [100 * r[key]["low"] for r in c["rounds"]],
                [100 * r[key]["high"] for r in c["rounds"]],
                color=line.get_color(),
                alpha=0.2,
            )
        if c["rounds"][-1]["epsilon"] is not None:
            epsilon.plot(rounds[1:], [r["epsilon"] for r in c["rounds"][1:]], label=name)
    y = result["yardsticks"]
    for key, label, style in (("strongest", "strongest central model", "--"), ("matched", "head-matched oracle", ":")):
        marks = sorted(int(r) for r in y[key])
        d = [y[key][r][HEADS[0]] for r in marks]
        cold.errorbar(
            marks,
            [100 * x["mean"] for x in d],
            yerr=[[100 * (x["mean"] - x["low"]) for x in d], [100 * (x["high"] - x["mean"]) for x in d]],
            color="black",
            linestyle=style,
            marker="o",
            capsize=3,
            label=label,
        )
    cold.set(title="cold start (evaluation cohort), 95% interval", xlabel="weekly round", ylabel="accuracy (%)")
    curriculum.set(title="curriculum test split", xlabel="weekly round", ylabel="accuracy (%)")
    epsilon.set(title="epsilon (worst-case learner)", xlabel="weekly round", yscale="log")
    cold.legend(fontsize=7)
    epsilon.legend(fontsize=7)
    fig.suptitle(
        f"{result['learners']:,} learners, {result['rounds']} rounds, {result['kind']} seeds {result['seeds']}"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
