"""train_model vs a straightforward PyTorch loop (same model/data/epochs/batch size), trainings
sharing the machine (one alone vs two at once, in separate processes), and what the model learns:
test accuracy against the Bayes ceiling on the seeds reported, for the defaults and two baselines.

python -m benchmarks training          # full defaults, writes benchmarks/results/training.json
python -m benchmarks training --quick  # a few epochs, for a smoke check
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from aivo_fl.ml.model import build_model, evaluate_tensors, samples_to_tensors
from aivo_fl.ml.runtime import allowed_cpus, configure_cpu
from aivo_fl.ml.samples import HEAD_CLASSES, PRIMARY_HEAD
from aivo_fl.ml.simulation.world import generate_curriculum
from aivo_fl.ml.training.main_model import TrainingConfig, cosine_lr, split_curriculum, train_model
from benchmarks.report import run_and_report


def plain_training(n_samples: int, config: TrainingConfig) -> dict[str, Any]:
    """The baseline: DataLoader, per-head modules, stock AdamW, .item() per step."""
    configure_cpu(config.num_threads)  # same threads and denormal policy as train_model
    samples = generate_curriculum(n_samples, seed=config.seed)
    splits = split_curriculum(samples, config.val_fraction, config.test_fraction, config.seed)
    x_train, y_train = samples_to_tensors(splits.train)
    x_val, y_val = samples_to_tensors(splits.validation)
    model = build_model(config.seed)
    first = model.trunk[0].weight
    optimizer = torch.optim.AdamW(
        [
            {"params": [first], "weight_decay": config.input_weight_decay},
            {"params": [p for p in model.parameters() if p is not first], "weight_decay": config.weight_decay},
        ],
        lr=config.learning_rate,
    )
    loader = DataLoader(
        TensorDataset(x_train, y_train),
        batch_size=config.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(config.seed),
    )
    started = time.perf_counter()
    for epoch in range(config.epochs):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(
                epoch, config.epochs, config.learning_rate, config.final_learning_rate, config.warmup_epochs
            )
        model.train()
        total = 0.0
        for xb, yb in loader:
            optimizer.zero_grad()
            features = model.trunk(xb)
            loss = sum(
                F.cross_entropy(model.heads[head](features), yb[:, i]) for i, head in enumerate(HEAD_CLASSES)
            ) / len(HEAD_CLASSES)
            loss.backward()
            optimizer.step()
            total += loss.item()
    seconds = time.perf_counter() - started
    val_metrics = evaluate_tensors(model, x_val, y_val)
    return {"seconds": seconds, "val_accuracy": val_metrics[PRIMARY_HEAD]["accuracy"]}


def matmul_floor(n_train: int, config: TrainingConfig) -> dict[str, Any]:
    """One epoch of nothing but the model's GEMMs (forward, input and weight gradients), at batch size.

    The issue's floor: an epoch's FLOPs at this machine's own matmul rate, measured with the exact
    layer shapes (heads fused into one GEMM) into preallocated outputs, best of three epochs.
    """
    configure_cpu(config.num_threads)
    model = build_model(config.seed)
    layers = [(m.in_features, m.out_features) for m in model.trunk if isinstance(m, torch.nn.Linear)]
    heads = list(model.heads.values())
    layers.append((heads[0].in_features, sum(h.out_features for h in heads)))
    steps = -(-n_train // config.batch_size)
    b = config.batch_size
    acts = [torch.randn(b, fan_in) for fan_in, _ in layers]
    weights = [torch.randn(fan_in, fan_out) for fan_in, fan_out in layers]
    outs = [torch.empty(b, fan_out) for _, fan_out in layers]
    grad_w = [torch.empty(fan_in, fan_out) for fan_in, fan_out in layers]
    grad_x = [torch.empty(b, fan_in) for fan_in, _ in layers]
    flops = steps * sum((3 if i else 2) * 2 * b * fi * fo for i, (fi, fo) in enumerate(layers))

    def epoch() -> float:
        started = time.perf_counter()
        for _ in range(steps):
            for x, w, y in zip(acts, weights, outs, strict=True):
                torch.mm(x, w, out=y)
            for i in range(len(layers)):
                torch.mm(acts[i].t(), outs[i], out=grad_w[i])
                if i:  # no gradient is needed for the input features
                    torch.mm(outs[i], weights[i].t(), out=grad_x[i])
        return time.perf_counter() - started

    epoch()  # warm-up
    seconds = min(epoch() for _ in range(3))
    return {"seconds_per_epoch": seconds, "gflop_per_epoch": flops / 1e9, "gflops": flops / seconds / 1e9}


def fast_training(n_samples: int, config: TrainingConfig) -> dict[str, Any]:
    _, result = train_model(generate_curriculum(n_samples, seed=config.seed), config)
    return {
        "seconds": result.seconds,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "val_accuracy": result.val_accuracy,
        "test_accuracy": result.test_accuracy,
        "bayes_ceiling": result.bayes_ceiling,
        "gap_points": 100 * result.gap_to_ceiling,
    }


# The defaults (input decay, weight averaging, patience) were chosen on data seeds 10-13; these are
# reported. Seed 0 is a fresh demo's.
REPORT_SEEDS = (0, 1, 2)
# The baselines keep the defaults' three-way split and their selection (the epoch with the lowest
# validation loss), so all three are judged on the same test samples; they differ in regularization.
QUALITY_CONFIGS = {
    # The previous hyperparameters (input decay 20, raw weights), all 100 epochs run.
    "decay 20, no stopping": {"input_weight_decay": 20.0, "average_fraction": 0.0, "patience": 10**6},
    # The same with early stopping: the plain fix.
    "decay 20, stopping": {"input_weight_decay": 20.0, "average_fraction": 0.0},
    "defaults": {},
}


def quality(quick: bool) -> dict[str, Any]:
    """Test accuracy against the Bayes ceiling (same test samples) per configuration and seed."""
    n_samples, seeds = (2_000, (0,)) if quick else (10_000, REPORT_SEEDS)
    runs: dict[str, list[dict[str, Any]]] = {}
    for name, overrides in QUALITY_CONFIGS.items():
        config = replace(TrainingConfig(log_every=10**6), **overrides)
        if quick:
            config = replace(config, epochs=10)
        runs[name] = [fast_training(n_samples, replace(config, seed=seed)) | {"seed": seed} for seed in seeds]
    return {"n_samples": n_samples, "seeds": list(seeds), "runs": runs, "summary": _quality_summary(runs)}


def _mean_interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t interval (0 for one value)."""
    from scipy import stats

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, float(stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5)


def _quality_summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    summary = {}
    for name, rows in runs.items():
        gap, gap_ci = _mean_interval([r["gap_points"] for r in rows])
        summary[name] = {
            "gap_points": gap,
            "gap_ci95": gap_ci,
            "worst_gap_points": max(r["gap_points"] for r in rows),
            "test_accuracy": statistics.fmean(r["test_accuracy"] for r in rows),
            "epochs_run": statistics.fmean(r["epochs_run"] for r in rows),
            "seconds": statistics.fmean(r["seconds"] for r in rows),
        }
    return summary


def worker(threads: int, epochs: int) -> None:
    """One training in its own process; it starts when the parent says go, so a pair really overlaps."""
    samples = generate_curriculum(10_000, seed=0)
    config = TrainingConfig(epochs=epochs, log_every=10**6, num_threads=threads or None)
    print("ready", flush=True)
    sys.stdin.readline()
    _, result = train_model(samples, config)
    print(json.dumps({"seconds_per_epoch": result.seconds_per_epoch, "threads": torch.get_num_threads()}))


def spawn(thread_counts: list[int], epochs: int) -> list[dict[str, Any]]:
    """Trainings in parallel processes (0 threads = the default); each one's own timing."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bench_training", "--worker", str(t), str(epochs)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        for t in thread_counts
    ]
    for p in procs:  # imports and data generation done everywhere before anyone trains
        p.stdout.readline()
    outs = [p.communicate("go\n")[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a training worker failed: {outs}")
    return [json.loads(out.strip().splitlines()[-1]) for out in outs]


def sharing(quick: bool) -> dict[str, Any]:
    """One training alone vs two at once, in separate processes, alternated `repeats` times (medians:
    the machine is shared). The pair's figure is its slower member. On an idle machine with 2+ CPUs
    the ideal is 1.0x alone; 2.0x is what running the two one after the other would cost. The same
    pair with one thread per CPU each (the old default) runs fewer epochs: it is per-epoch time."""
    epochs, repeats = (3, 1) if quick else (10, 3)
    cpus = allowed_cpus()
    alone, pair = [], []
    for _ in range(repeats):
        alone.append(spawn([0], epochs)[0])
        pair.append(max(spawn([0, 0], epochs), key=lambda r: r["seconds_per_epoch"]))
    oversubscribed = max(spawn([cpus, cpus], max(1, epochs // 5)), key=lambda r: r["seconds_per_epoch"])
    alone_s = statistics.median(r["seconds_per_epoch"] for r in alone)
    pair_s = statistics.median(r["seconds_per_epoch"] for r in pair)
    return {
        "epochs": epochs,
        "repeats": repeats,
        "allowed_cpus": cpus,
        "threads": alone[0]["threads"],
        "alone_s_per_epoch": alone_s,
        "pair_s_per_epoch": pair_s,
        "pair_all_cpus_threads": oversubscribed["threads"],
        "pair_all_cpus_s_per_epoch": oversubscribed["seconds_per_epoch"],
        "pair_vs_alone": pair_s / alone_s,
        "pair_all_cpus_vs_alone": oversubscribed["seconds_per_epoch"] / alone_s,
        "runs": {"alone": alone, "pair": pair},
    }


def run(quick: bool = False) -> dict[str, Any]:
    n_samples = 10_000
    config = TrainingConfig()
    if quick:
        config = replace(config, epochs=5)
    fast = fast_training(n_samples, config)
    threads = torch.get_num_threads()
    plain = plain_training(n_samples, config)
    splits = split_curriculum(
        generate_curriculum(n_samples, seed=config.seed), config.val_fraction, config.test_fraction, config.seed
    )
    floor = matmul_floor(len(splits.train), config)
    fast["seconds_per_epoch"] = fast["seconds"] / fast["epochs_run"]
    plain["seconds_per_epoch"] = plain["seconds"] / config.epochs
    # 1.0 = train_model runs at the matmul floor; 0.0 = no better than the plain loop.
    gap_closed = (plain["seconds_per_epoch"] - fast["seconds_per_epoch"]) / max(
        plain["seconds_per_epoch"] - floor["seconds_per_epoch"], 1e-9
    )
    results = {
        "n_samples": n_samples,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "torch_threads": threads,
        "train_model": fast,
        "plain": plain,
        "matmul_floor": floor,
        "speedup": plain["seconds"] / fast["seconds"],
        "train_model_vs_floor": fast["seconds_per_epoch"] / floor["seconds_per_epoch"],
        "gap_closed": gap_closed,
        "bayes_ceiling": fast["bayes_ceiling"],
        "sharing": sharing(quick),
        "quality": quality(quick),
    }
    return results


def table(results: dict[str, Any]) -> str:
    ours, plain, floor, share = results["train_model"], results["plain"], results["matmul_floor"], results["sharing"]
    rows = [
        f"{'loop':<12}{'s/epoch':>10}{'total s':>10}{'val acc':>10}",
        f"{'train_model':<12}{ours['seconds_per_epoch']:>10.3f}{ours['seconds']:>10.1f}{ours['val_accuracy']:>10.4f}"
        f"   ({ours['epochs_run']} epochs run, epoch {ours['best_epoch']} kept)",
        f"{'plain':<12}{plain['seconds_per_epoch']:>10.3f}{plain['seconds']:>10.1f}{plain['val_accuracy']:>10.4f}",
        f"{'floor':<12}{floor['seconds_per_epoch']:>10.3f}{'':>10}{'':>10}"
        f"   (GEMMs only: {floor['gflop_per_epoch']:.2f} GFLOP/epoch at {floor['gflops']:.1f} GFLOP/s)",
        f"speedup: {results['speedup']:.2f}x   train_model = {results['train_model_vs_floor']:.2f}x the floor, "
        f"{100 * results['gap_closed']:.0f}% of the plain-to-floor gap closed",
        f"bayes ceiling (test): {results['bayes_ceiling']:.4f}   "
        f"epochs={results['epochs']} batch={results['batch_size']} threads={results['torch_threads']}",
        "",
        f"sharing the machine ({share['allowed_cpus']} CPUs allowed; s/epoch, median of {share['repeats']}):",
        f"  one alone, {share['threads']} thread(s): {share['alone_s_per_epoch']:.3f}",
        f"  two at once, {share['threads']} thread(s) each: slower one {share['pair_s_per_epoch']:.3f} "
        f"= {share['pair_vs_alone']:.2f}x alone",
        f"  two at once, {share['pair_all_cpus_threads']} threads each (all CPUs, the old default): slower one "
        f"{share['pair_all_cpus_s_per_epoch']:.3f} = {share['pair_all_cpus_vs_alone']:.2f}x alone",
        "",
        quality_table(results["quality"]),
    ]
    return "\n".join(rows)


def quality_table(quality: dict[str, Any]) -> str:
    seeds = ", ".join(str(s) for s in quality["seeds"])
    rows = [
        f"what the main model learns ({quality['n_samples']:,} curriculum samples, data seeds {seeds}; "
        "test split: selected nothing; gap = Bayes ceiling - test accuracy, in points, mean with 95% interval):",
        f"  {'training':<22}{'gap':>16}{'worst':>8}{'test acc':>10}{'epochs':>8}{'seconds':>9}",
    ]
    for name, s in quality["summary"].items():
        rows.append(
            f"  {name:<22}{s['gap_points']:>9.2f} ± {s['gap_ci95']:<4.2f}{s['worst_gap_points']:>8.2f}"
            f"{100 * s['test_accuracy']:>9.2f}%{s['epochs_run']:>8.0f}{s['seconds']:>9.0f}"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", nargs=2, metavar=("THREADS", "EPOCHS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(int(args.worker[0]), int(args.worker[1]))
        return
    run_and_report("training", run, table, args.quick)


if __name__ == "__main__":
    main()
