"""Personalized-model downloads: size of each export format against fp32, and the accuracy change
on each learner's held-out interactions.

A main model is trained and stored, learners are cloned and fine-tuned exactly as the product
does (`clone_for_learner`, `train_learner`), and each clone is exported in every format and read
back (`check_export`: the safetensors parser for fp16/int8, onnxruntime for ONNX). The baseline is
the same model as one fp32 safetensors file, scored in the same run.

    python -m benchmarks export            # 10,000-sample / 100-epoch main model, 10 learners
    python -m benchmarks export --quick    # small main model, 3 learners
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from aivo_fl.ml.simulation.world import generate_cohort, generate_curriculum
from aivo_fl.ml.store.artifacts import save_main_model
from aivo_fl.ml.store.cloning import clone_for_learner, load_learner_model
from aivo_fl.ml.store.export import EXPORT_FORMATS, check_export, export_model, fp32_size
from aivo_fl.ml.training.clones import train_learner
from aivo_fl.ml.training.main_model import TrainingConfig, train_model
from benchmarks.report import cli


def _personalized_models(root: Path, learners: int, quick: bool) -> list[tuple[Any, Any]]:
    """(clone model, held-out samples) per learner, through the product's own clone and training code."""
    samples, epochs = (2_000, 10) if quick else (10_000, 100)
    model, _ = train_model(generate_curriculum(samples, seed=0), TrainingConfig(epochs=epochs, log_every=10**6))
    save_main_model(root / "main", "1.0.0", model, {}, data_seed=0)
    out = []
    for learner in generate_cohort(learners, seed=0, n_interactions=400):
        clone_for_learner(root / "main", root / "learners", learner.learner_id, "1.0.0")
        train_learner(root / "main", root / "learners", learner.learner_id, learner.train, learner.heldout, "1.0.0")
        clone, _ = load_learner_model(root / "main", root / "learners", learner.learner_id)
        out.append((clone, learner.heldout))
    return out


def _measure(models: list[tuple[Any, Any]], fmt: str) -> dict[str, Any]:
    sizes, errors, correct_fp32, correct_exported, agreeing, total = [], [], 0.0, 0.0, 0.0, 0
    export_s = check_s = 0.0
    for model, heldout in models:
        started = time.perf_counter()
        data = export_model(model, fmt, {"learnerId": "bench", "mainVersion": "1.0.0"})
        export_s += time.perf_counter() - started
        started = time.perf_counter()
        check = check_export(model, data, fmt, heldout)
        check_s += time.perf_counter() - started
        sizes.append(len(data))
        errors.append(check.max_abs_logit_error)
        n = check.heldout_samples
        correct_fp32 += check.accuracy_fp32 * n
        correct_exported += check.accuracy_exported * n
        agreeing += check.agreement * n
        total += n
    fp32 = fp32_size(models[0][0])
    return {
        "bytes": max(sizes),
        "fp32_bytes": fp32,
        "size_vs_fp32": max(sizes) / fp32,
        "max_abs_logit_error": max(errors),
        "accuracy_fp32": correct_fp32 / total,
        "accuracy_exported": correct_exported / total,
        "accuracy_change_points": 100 * (correct_exported - correct_fp32) / total,
        "agreement": agreeing / total,
        "heldout_samples": total,
        "export_seconds_per_learner": export_s / len(models),
        "check_seconds_per_learner": check_s / len(models),
    }


def run(quick: bool = False) -> dict[str, Any]:
    learners = 3 if quick else 10
    with tempfile.TemporaryDirectory(prefix="aivo-bench-export-") as tmp:
        models = _personalized_models(Path(tmp), learners, quick)
        formats = {fmt: _measure(models, fmt) for fmt in EXPORT_FORMATS}
    return {"learners": learners, "formats": formats}


def table(results: dict[str, Any]) -> str:
    rows = [
        f"{'format':<18}{'bytes':>10}{'vs fp32':>9}{'max |dlogit|':>14}{'acc fp32':>10}{'acc file':>10}"
        f"{'change pts':>12}{'agree':>8}{'export s':>10}"
    ]
    first = next(iter(results["formats"].values()))
    rows.append(f"{'fp32 (baseline)':<18}{first['fp32_bytes']:>10,}{1.0:>9.2f}")
    for fmt, r in results["formats"].items():
        rows.append(
            f"{fmt:<18}{r['bytes']:>10,}{r['size_vs_fp32']:>9.2f}{r['max_abs_logit_error']:>14.2e}"
            f"{r['accuracy_fp32']:>10.4f}{r['accuracy_exported']:>10.4f}{r['accuracy_change_points']:>12.2f}"
            f"{r['agreement']:>8.4f}{r['export_seconds_per_learner']:>10.2f}"
        )
    rows.append(f"{results['learners']} learners, {first['heldout_samples']} held-out interactions pooled")
    return "\n".join(rows)


if __name__ == "__main__":
    cli("export", run, table, __doc__)
