"""Local training of many learners: batched (stacked personal layers, grouped bmm) vs one at a time.

Speed at both personalization depths: learners per second for one week of a population
(10,000 learners; --quick: 1,000) trained with `train_many`, against the plain loop (`train_one`
per learner, autograd + torch.optim.SGD, one model reused) on a sample of the same learners, and
against two floors: the FLOP floor (the personal layers' forward and backward matmul FLOPs at this
machine's best 512x512 GEMM rate) and the matmul floor (the batched step's own small weight
matmuls, timed alone at this week's rows per learner-step). The two paths are also compared
numerically.

Which depth learns more is measured by the fl_quality benchmark (`--depth guide`), with the
product's own rounds.
"""

from __future__ import annotations

import copy
import functools
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from aivo_fl.ml.model import (
    PERSONALIZATION_DEPTHS,
    CurriculumNet,
    architecture_summary,
    frozen_layers_for,
    samples_to_tensors,
)
from aivo_fl.ml.runtime import configure_cpu
from aivo_fl.ml.simulation.population import Population, PopulationConfig
from aivo_fl.ml.simulation.world import generate_curriculum
from aivo_fl.ml.training.batched import train_many
from aivo_fl.ml.training.local import LearnerBatch, LocalTrainingConfig, personal_tensors, train_one
from aivo_fl.ml.training.main_model import TrainingConfig, train_model
from benchmarks.report import Column, cli
from benchmarks.report import table as report_table

CONFIG = LocalTrainingConfig()


def _best_seconds(fn: Callable[[], object], reps: int) -> float:
    """Seconds per call, the best of 5 timings: a floor takes the machine's peak, not a moment when
    other work held the core."""
    fn()
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, time.perf_counter() - started)
    return best / reps


def _gemm_flops_per_second() -> float:
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    return 2 * 512**3 / _best_seconds(lambda: a @ b, 10)


def _personal_matmul_flops(model: CurriculumNet, samples: int) -> float:
    """Matmul FLOPs per epoch: forward (2 * in * out), weight gradient (2 * in * out) and input
    gradient (2 * in * out) per sample and personal linear weight, except that a lowest personal
    layer that is linear needs no input gradient (its input is the frozen features)."""
    weights = [p for k, p in model.named_parameters() if k.endswith("weight") and p.dim() == 2 and p.requires_grad]
    lowest = model.trunk[model.frozen_layers] if model.frozen_layers < len(model.trunk) else None
    no_input_grad = lowest.weight.numel() if isinstance(lowest, torch.nn.Linear) else 0
    return samples * (6.0 * sum(p.numel() for p in weights) - 2.0 * no_input_grad)


def _matmul_floor_seconds(model: CurriculumNet, learner_steps: int, rows: int) -> float:
    """The batched step's weight matmuls alone, at this week's mean rows per learner-step: forward,
    input gradient (not for a lowest linear layer) and fused update per personal linear weight, timed
    on a stack of 256 learners. A learner's step has only ~10 rows, so these small matmuls run far
    below the large-GEMM rate of the FLOP floor and stream the learner's weights on every pass: this
    is what the stacked formulation costs before any other work."""
    group, per_learner_step = 256, 0.0
    lowest = model.trunk[model.frozen_layers] if model.frozen_layers < len(model.trunk) else None
    for k, p in model.named_parameters():
        if not (k.endswith("weight") and p.dim() == 2 and p.requires_grad):
            continue
        w, x, dy = (
            torch.randn(group, *p.shape),
            torch.randn(group, rows, p.shape[1]),
            torch.randn(group, rows, p.shape[0]),
        )
        calls = [(torch.bmm, (x, w.transpose(1, 2)), {}), (w.baddbmm_, (dy.transpose(1, 2), x), {"alpha": -1e-6})]
        if not (isinstance(lowest, torch.nn.Linear) and p is lowest.weight):
            calls.append((torch.bmm, (dy, w), {}))
        for fn, args, kwargs in calls:
            per_learner_step += _best_seconds(functools.partial(fn, *args, **kwargs), 3) / group
    return per_learner_step * learner_steps


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
    # The plain loop as a server would run it: one model, each learner's start loaded into it, its
    # trained tensors copied out. (A deepcopy per learner would cost more than a whole local step.)
    clone = copy.deepcopy(model)
    params = dict(clone.named_parameters())
    looped, started = [], time.perf_counter()
    for i in chosen:
        with torch.no_grad():
            for k in start:
                params[k].copy_(start[k])
        train_one(clone, batches[i], start, CONFIG)
        looped.append({k: params[k].detach().clone() for k in start})
    loop_s = time.perf_counter() - started
    max_diff = max(
        float((got[k] - trained[i][k]).abs().max()) for i, got in zip(chosen, looped, strict=True) for k in start
    )
    samples = sum(b.x.shape[0] for b in batches)
    floor_s = _personal_matmul_flops(model, samples) * CONFIG.epochs / _gemm_flops_per_second()
    learner_steps = CONFIG.epochs * sum(-(-b.x.shape[0] // CONFIG.batch_size) for b in batches)
    matmul_s = _matmul_floor_seconds(model, learner_steps, round(samples * CONFIG.epochs / learner_steps))
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
        "learner_steps": learner_steps,
        "matmul_floor_seconds": matmul_s,
        "batched_over_matmul_floor": batched_s / matmul_s,
        "max_abs_difference": max_diff,
    }


def run(quick: bool = False) -> dict[str, Any]:
    configure_cpu(1)
    torch.manual_seed(0)
    n_speed, loop_sample = (1_000, 100) if quick else (10_000, 300)
    main, trained = train_model(
        generate_curriculum(3_000 if quick else 10_000, seed=0),
        TrainingConfig(epochs=10 if quick else 30, seed=0, log_every=10**6, num_threads=1),
    )
    speed_population = Population(PopulationConfig(n_learners=n_speed, eval_learners=n_speed // 20))
    speed = [_speed(main, speed_population, d, loop_sample) for d in sorted(PERSONALIZATION_DEPTHS)]
    return {
        "config": {"local": CONFIG.__dict__, "speed_learners": n_speed},
        "main_val_accuracy": trained.val_accuracy,
        # The machine is shared: the load while this ran says how far to trust absolute seconds.
        "load_average_1min": os.getloadavg()[0],
        "speed": speed,
    }


COLUMNS = (
    Column("depth", "depth"),
    Column("trainable_params", "trainable", "{:,}"),
    Column("learners", "learners", "{:,}"),
    Column("batched_learners_per_s", "batched/s", "{:.0f}"),
    Column("loop_learners_per_s", "loop/s", "{:.0f}"),
    Column("speedup", "batched/loop", "{:.1f}x"),
    Column("batched_over_floor", "x FLOP floor", "{:.1f}x"),
    Column("batched_over_matmul_floor", "x matmul floor", "{:.1f}x"),
    Column("max_abs_difference", "max |diff|", "{:.1e}"),
)


def table(result: dict[str, Any]) -> str:
    local = result["config"]["local"]
    title = (
        f"local training: {local['epochs']} epochs, batch {local['batch_size']}, SGD lr {local['learning_rate']}, "
        f"mu {local['proximal_mu']}; main model val accuracy {result['main_val_accuracy']:.2%}; "
        f"load average {result['load_average_1min']:.1f}"
    )
    return report_table(result["speed"], COLUMNS, title)


if __name__ == "__main__":
    cli("local_training", run, table, __doc__)
