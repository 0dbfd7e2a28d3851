"""Choosing the fl_quality knobs, on the TUNING seeds only (never a reported seed).

Each variant of :class:`~aivo_fl.ml.simulation.population_rounds.Knobs` runs on the same worlds
(one per tuning seed and personalization depth) under the given configurations; the figure is the
cold start after the last round as a share of the gap from round 0 to the strongest central model,
and the paired difference to the frozen defaults (same seeds, same learners), with 95% intervals.
The log goes to ``benchmarks/results/fl_quality_tuning/``.

    python -m benchmarks.fl_quality_tuning [--rounds 13] [--learners 2000] [--variants NAME ...]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from typing import Any

from aivo_fl.ml.runtime import configure_cpu
from aivo_fl.ml.simulation.intervals import bootstrap, difference, gap_closed, stack, verdict
from aivo_fl.ml.simulation.population_rounds import TUNING_SEEDS, Knobs, run_configuration
from aivo_fl.ml.training.local import LocalTrainingConfig
from benchmarks.bench_fl_quality import TUNING_RESULTS, privacy_of, world_of

_DEFAULTS = Knobs()
VARIANTS: dict[str, Knobs] = {
    "frozen defaults": _DEFAULTS,
    "server sgd 3": replace(_DEFAULTS, server_learning_rate=3.0),
    "server sgd 10": replace(_DEFAULTS, server_learning_rate=10.0),
    "server momentum 0.6": replace(_DEFAULTS, server_optimizer="momentum", server_learning_rate=0.6),
    "server adam 0.02": replace(_DEFAULTS, server_optimizer="adam"),
    "server adam 0.05": replace(_DEFAULTS, server_optimizer="adam", server_learning_rate=0.05),
    "local 10 epochs": replace(_DEFAULTS, local=LocalTrainingConfig(epochs=10, proximal_mu=0.1)),
    "guide depth": replace(_DEFAULTS, depth="guide"),
}


def _final(world: Any, result: dict[str, Any]) -> list:
    last = result["measured"][-1]["cold"]
    return [
        (last[0][:, 0], last[1]),
        world.cohort["round 0"][0][:, 0],
        world.cohort[f"strongest@{world.weeks}"][0][:, 0],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=13)
    parser.add_argument("--learners", type=int, default=2_000)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--configurations", nargs="+", default=["no DP", "small-school preset"])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(TUNING_SEEDS))
    args = parser.parse_args()
    if not set(args.seeds) <= set(TUNING_SEEDS):
        parser.error(f"tuning runs use tuning seeds {TUNING_SEEDS} only")
    configure_cpu(1)
    started = time.perf_counter()
    worlds: dict[tuple[int, str], Any] = {}
    found: dict[str, dict[str, list]] = {}
    for name in args.variants:
        knobs = VARIANTS[name]
        for seed in args.seeds:
            key = (seed, knobs.depth)
            if key not in worlds:
                worlds[key] = world_of(seed, False, args.learners, args.rounds, knobs)
            for configuration in args.configurations:
                result = run_configuration(worlds[key], privacy_of(configuration), knobs)
                accepted = sum(bool(r.get("accepted")) for r in result["rounds"][1:])
                cold, round0, strongest = _final(worlds[key], result)
                found.setdefault(configuration, {}).setdefault(name, []).append((cold, round0, strongest, accepted))
                print(
                    f"{name:<22} seed {seed} {configuration:<18} cold {100 * result['accuracy']:.2f} "
                    f"accepted {accepted}/{args.rounds}",
                    flush=True,
                )
    summary = _summarize(found, args.variants)
    log = {
        "seeds": args.seeds,
        "rounds": args.rounds,
        "learners": args.learners,
        "summary": summary,
        "seconds": time.perf_counter() - started,
        "variants": {n: VARIANTS[n].describe() for n in args.variants},
    }
    TUNING_RESULTS.mkdir(parents=True, exist_ok=True)
    path = TUNING_RESULTS / f"sweep_seeds{'-'.join(map(str, args.seeds))}_r{args.rounds}_{int(time.time())}.json"
    path.write_text(json.dumps(log, indent=2, default=str))
    print(f"written {path}")


def _summarize(found: dict[str, dict[str, list]], variants: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for configuration, by_variant in found.items():
        base = by_variant[variants[0]]
        for name, runs in by_variant.items():
            gap = bootstrap([stack(c[0], r0, s, total=c[1]) for c, r0, s, _ in runs], gap_closed)
            cold = bootstrap([stack(c[0], total=c[1]) for c, _, _, _ in runs])
            paired = bootstrap(
                [stack(c[0], b[0][0], total=c[1]) for (c, *_), b in zip(runs, base, strict=True)], difference
            )
            out[f"{configuration} / {name}"] = {
                "cold": cold.as_dict(),
                "gap_closed_strongest": gap.as_dict(),
                "vs_defaults": paired.as_dict(),
                "accepted": [r[3] for r in runs],
            }
            print(
                f"{configuration:<18} {name:<22} cold {100 * cold.mean:.2f} "
                f"[{100 * cold.low:.2f}, {100 * cold.high:.2f}] "
                f"gap {100 * gap.mean:.0f}% [{100 * gap.low:.0f}, {100 * gap.high:.0f}] vs defaults {verdict(paired)}"
            )
    return out


if __name__ == "__main__":
    main()
