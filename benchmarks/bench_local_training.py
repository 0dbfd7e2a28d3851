"""Local training of many learners: batched (vmap over stacked personal layers) vs one at a time.

Part 1, speed, at both personalization depths: learners per second for one week of a population
(10,000 learners; --quick: 1,000) trained with `train_many`, against the plain loop (`train_one`
per learner, autograd + torch.optim.SGD) on a sample of the same learners, and against the FLOP
floor (the matmul FLOPs of the personal layers' forward and backward at this machine's measured
GEMM rate). The two paths are also compared numerically.

Part 2, quality: a small FedAvg experiment (no DP, server learning rate 1) at both depths. Round 0
is the curriculum-trained main model; each week the active learners train locally (from main +
their kept offset, with the proximal term), the sample-weighted mean of their updates moves the
main model. Reported per round: cold-start accuracy on the held-out evaluation cohort, curriculum
accuracy and the share of the gap to the central oracle closed; at the end, clones vs main on the
learners' own held-out interactions.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import numpy as np
import torch

from aivo_fl.ml.batched_training import (
    LearnerBatch,
    LocalTrainingConfig,
    personal_tensors,
    train_active_learners,
    train_many,
    train_one,
)
from aivo_fl.ml.data import PRIMARY_HEAD, generate_curriculum
from aivo_fl.ml.evaluation import (
    accuracy,
    cold_start_accuracy,
    gap_closed,
    personalized_accuracy,
    train_oracle,
)
from aivo_fl.ml.model import (
    PERSONALIZATION_DEPTHS,
    CurriculumNet,
    architecture_summary,
    frozen_layers_for,
    samples_to_tensors,
)
from aivo_fl.ml.population import Population, PopulationConfig, concat_samples
from aivo_fl.ml.training import TrainingConfig, configure_cpu, train_model

CONFIG = LocalTrainingConfig()


def _gemm_flops_per_second() -> float:
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    a @ b
    started, reps = time.perf_counter(), 20
    for _ in range(reps):
        a @ b
    return 2 * 512**3 * reps / (time.perf_counter() - started)


def _personal_matmul_flops(model: CurriculumNet, samples: int) -> float:
    """Forward (2 * in * out) + backward (4 * in * out) per sample and personal linear weight."""
    weights = [p for k, p in model.named_parameters() if k.endswith("weight") and p.dim() == 2 and p.requires_grad]
    return 6.0 * samples * sum(p.numel() for p in weights)


def _speed(main: CurriculumNet, population: Population, depth: str, loop_sample: int) -> dict[str, Any]:
    model = copy.deepcopy(main)
    model.frozen_layers = frozen_layers_for(depth)
    for name, p in model.named_parameters():
        p.requires_grad_(name in personal_tensors(model))
    data = population.week(1).train().by_learner()
    batches = [LearnerBatch(i, *samples_to_tensors(s)) for i, s in data.items()]
    start = personal_tensors(model)
    started = time.perf_counter()
    trained = train_many(model, batches, [start] * len(batches), CONFIG)
    batched_s = time.perf_counter() - started

    rng = np.random.default_rng(0)
    chosen = rng.choice(len(batches), min(loop_sample, len(batches)), replace=False)
    max_diff, started = 0.0, time.perf_counter()
    for i in chosen:
        clone = copy.deepcopy(model)
        train_one(clone, batches[i], start, CONFIG)
        params = dict(clone.named_parameters())
        max_diff = max(max_diff, max(float((params[k].detach() - trained[i][k]).abs().max()) for k in start))
    loop_s = time.perf_counter() - started
    samples = sum(b.x.shape[0] for b in batches)
    floor_s = _personal_matmul_flops(model, samples) * CONFIG.epochs / _gemm_flops_per_second()
    return {
        "depth": depth,
        "trainable_params": architecture_summary(model).trainable_params,
        "learners": len(batches),
        "samples": samples,
        "batched_seconds": batched_s,
        "batched_learners_per_s": len(batches) / batched_s,
        "loop_learners_measured": len(chosen),
        "loop_learners_per_s": len(chosen) / loop_s,
        "speedup": (len(batches) / batched_s) / (len(chosen) / loop_s),
        "floor_seconds": floor_s,
        "batched_over_floor": batched_s / floor_s,
        "max_abs_difference": max_diff,
    }


def _fedavg(model: CurriculumNet, deltas: list[dict[str, torch.Tensor]], samples: list[int]) -> None:
    total = float(sum(samples))
    with torch.no_grad():
        params = dict(model.named_parameters())
        for key in deltas[0]:
            params[key].add_(sum(d[key] * (n / total) for d, n in zip(deltas, samples, strict=True)))


def _quality(main: CurriculumNet, population: Population, depth: str, weeks: int, val: Any) -> dict[str, Any]:
    model = copy.deepcopy(main)
    model.frozen_layers = frozen_layers_for(depth)
    cohort = population.evaluation_cohort
    round0 = cold_start_accuracy(model, cohort)
    pooled = concat_samples([population.week(w).train().samples for w in range(1, weeks + 1)])
    started = time.perf_counter()
    oracle = accuracy(train_oracle(model, pooled), cohort.samples)
    oracle_s = time.perf_counter() - started
    offsets: dict[int, dict[str, torch.Tensor]] = {}
    rounds = []
    for week in range(1, weeks + 1):
        started = time.perf_counter()
        update = train_active_learners(model, population.week(week).train(), offsets, CONFIG)
        offsets = update.offsets
        _fedavg(model, update.deltas, update.samples)
        cold = cold_start_accuracy(model, cohort)
        rounds.append(
            {
                "round": week,
                "learners": len(update.learners),
                "cold_start": cold,
                "curriculum": accuracy(model, val),
                "gap_closed": gap_closed(cold, round0, oracle),
                "seconds": time.perf_counter() - started,
            }
        )
    main_personal = personal_tensors(model)
    personal = {i: {k: main_personal[k] + o[k] for k in o} for i, o in offsets.items()}
    heldout = population.week(weeks).evaluation()
    pers = personalized_accuracy(model, personal, heldout)
    return {
        "depth": depth,
        "round0_cold_start": round0,
        "round0_curriculum": accuracy(main, val),
        "oracle": oracle,
        "oracle_seconds": oracle_s,
        "rounds": rounds,
        "personalized_clones": pers.clones,
        "personalized_main": pers.main,
        "personalized_learners": pers.learners,
    }


def run(quick: bool = False) -> dict[str, Any]:
    configure_cpu(1)
    torch.manual_seed(0)
    n_speed, loop_sample = (1_000, 100) if quick else (10_000, 300)
    n_quality, weeks = (600, 2) if quick else (2_000, 4)
    main, trained = train_model(
        generate_curriculum(3_000 if quick else 10_000, seed=0),
        TrainingConfig(epochs=10 if quick else 30, seed=0, log_every=10**6, num_threads=1),
    )
    val = generate_curriculum(2_000, seed=1)
    speed_population = Population(PopulationConfig(n_learners=n_speed, eval_learners=n_speed // 20))
    quality_population = Population(PopulationConfig(n_learners=n_quality, eval_learners=n_quality // 10, seed=1))
    speed = [_speed(main, speed_population, d, loop_sample) for d in sorted(PERSONALIZATION_DEPTHS)]
    quality = [_quality(main, quality_population, d, weeks, val) for d in sorted(PERSONALIZATION_DEPTHS)]
    # One yardstick for both depths: the best oracle (the guide's trains more layers). Each depth's
    # own oracle only says how far it got towards what it could reach.
    common = max(q["oracle"] for q in quality)
    for q in quality:
        for r in q["rounds"]:
            r["gap_closed_best_oracle"] = gap_closed(r["cold_start"], q["round0_cold_start"], common)
    _print(speed, quality, trained.val_accuracy)
    return {
        "config": {"local": CONFIG.__dict__, "speed_learners": n_speed, "quality_learners": n_quality, "weeks": weeks},
        "main_val_accuracy": trained.val_accuracy,
        "speed": speed,
        "quality": quality,
        "best_oracle": common,
    }


def _print(speed: list[dict[str, Any]], quality: list[dict[str, Any]], main_val: float) -> None:
    print(
        f"local training: {CONFIG.epochs} epochs, batch {CONFIG.batch_size}, SGD lr {CONFIG.learning_rate}, "
        f"mu {CONFIG.proximal_mu}; main model val accuracy {main_val:.2%}"
    )
    print(
        f"{'depth':<6} {'trainable':>9} {'learners':>8} {'batched/s':>10} {'loop/s':>8} {'speedup':>8} "
        f"{'x floor':>8} {'max |diff|':>10}"
    )
    for r in speed:
        print(
            f"{r['depth']:<6} {r['trainable_params']:>9,} {r['learners']:>8} {r['batched_learners_per_s']:>10.0f} "
            f"{r['loop_learners_per_s']:>8.0f} {r['speedup']:>7.1f}x {r['batched_over_floor']:>7.1f}x "
            f"{r['max_abs_difference']:>10.1e}"
        )
    print(
        f"\n{'depth':<6} {'round':>5} {'learners':>8} {'cold start':>10} {'curriculum':>10} {'gap (own)':>10} "
        f"{'gap (best)':>10} {'s':>6}"
    )
    for q in quality:
        print(
            f"{q['depth']:<6} {0:>5} {'':>8} {q['round0_cold_start']:>10.2%} {q['round0_curriculum']:>10.2%} "
            f"{'':>10} {'':>10} {'':>6}   oracle {q['oracle']:.2%}"
        )
        for r in q["rounds"]:
            print(
                f"{q['depth']:<6} {r['round']:>5} {r['learners']:>8} {r['cold_start']:>10.2%} "
                f"{r['curriculum']:>10.2%} {r['gap_closed']:>10.0%} {r['gap_closed_best_oracle']:>10.0%} "
                f"{r['seconds']:>6.1f}"
            )
        print(
            f"{q['depth']:<6} personalized: clones {q['personalized_clones']:.2%} vs main "
            f"{q['personalized_main']:.2%} on {q['personalized_learners']} learners' held-out data"
        )
    final = {q["depth"]: q["rounds"][-1]["gap_closed_best_oracle"] for q in quality}
    best = max(final, key=lambda d: -1.0 if math.isnan(final[d]) else final[d])
    print(f"closes more of the gap to the best oracle ({PRIMARY_HEAD} head): {best}")
