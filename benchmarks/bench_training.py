"""Fast training loop vs a straightforward PyTorch loop, same model/data/epochs/batch size.

python -m benchmarks.bench_training          # full defaults, writes benchmarks/results/training.json
python -m benchmarks.bench_training --quick  # a few epochs, for a smoke check
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from aivo_fl.ml.data import HEAD_CLASSES, PRIMARY_HEAD, generate_curriculum
from aivo_fl.ml.model import build_model, evaluate_tensors, samples_to_tensors
from aivo_fl.ml.training import TrainingConfig, configure_cpu, cosine_lr, split_train_val, train_model

RESULTS_PATH = Path(__file__).parent / "results" / "training.json"


def plain_training(n_samples: int, config: TrainingConfig) -> dict[str, Any]:
    """The baseline: DataLoader, per-head modules, stock AdamW, .item() per step."""
    configure_cpu(config.num_threads)  # same threads and denormal policy as the fast loop
    samples = generate_curriculum(n_samples, seed=config.seed)
    train, val = split_train_val(samples, config.val_fraction, config.seed)
    x_train, y_train = samples_to_tensors(train)
    x_val, y_val = samples_to_tensors(val)
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
        "val_accuracy": result.val_accuracy,
        "bayes_ceiling": result.bayes_ceiling,
    }


def run(quick: bool = False) -> dict[str, Any]:
    n_samples = 10_000
    config = TrainingConfig()
    if quick:
        config = replace(config, epochs=5)
    fast = fast_training(n_samples, config)
    plain = plain_training(n_samples, config)
    train, _ = split_train_val(generate_curriculum(n_samples, seed=config.seed), config.val_fraction, config.seed)
    floor = matmul_floor(len(train), config)
    for entry in (fast, plain):
        entry["seconds_per_epoch"] = entry["seconds"] / config.epochs
    # 1.0 = the fast loop runs at the matmul floor; 0.0 = no better than the plain loop.
    gap_closed = (plain["seconds_per_epoch"] - fast["seconds_per_epoch"]) / max(
        plain["seconds_per_epoch"] - floor["seconds_per_epoch"], 1e-9
    )
    results = {
        "n_samples": n_samples,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "torch_threads": torch.get_num_threads(),
        "fast": fast,
        "plain": plain,
        "matmul_floor": floor,
        "speedup": plain["seconds"] / fast["seconds"],
        "fast_vs_floor": fast["seconds_per_epoch"] / floor["seconds_per_epoch"],
        "gap_closed": gap_closed,
        "bayes_ceiling": fast["bayes_ceiling"],
        "quick": quick,
    }
    print(format_table(results))
    return results


def format_table(results: dict[str, Any]) -> str:
    rows = [
        f"{'loop':<8}{'s/epoch':>10}{'total s':>10}{'val acc':>10}",
        f"{'fast':<8}{results['fast']['seconds_per_epoch']:>10.3f}{results['fast']['seconds']:>10.1f}"
        f"{results['fast']['val_accuracy']:>10.4f}",
        f"{'plain':<8}{results['plain']['seconds_per_epoch']:>10.3f}{results['plain']['seconds']:>10.1f}"
        f"{results['plain']['val_accuracy']:>10.4f}",
        f"{'floor':<8}{results['matmul_floor']['seconds_per_epoch']:>10.3f}{'':>10}{'':>10}"
        f"   (GEMMs only: {results['matmul_floor']['gflop_per_epoch']:.2f} GFLOP/epoch at "
        f"{results['matmul_floor']['gflops']:.1f} GFLOP/s)",
        f"speedup: {results['speedup']:.2f}x   fast = {results['fast_vs_floor']:.2f}x the floor, "
        f"{100 * results['gap_closed']:.0f}% of the plain-to-floor gap closed",
        f"bayes ceiling (val): {results['bayes_ceiling']:.4f}   "
        f"epochs={results['epochs']} batch={results['batch_size']}",
    ]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    results = run(quick=args.quick)
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS_PATH.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(RESULTS_PATH)


if __name__ == "__main__":
    main()
