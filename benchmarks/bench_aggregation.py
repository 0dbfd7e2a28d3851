"""Aggregation throughput and memory for 1,000 / 10,000 learner delta files, plus cohort learning.

Every (size, method) pair runs in its own subprocess so peak-memory numbers are independent.
Two memory figures per run: the tracemalloc peak (numpy + Python heap; numpy reports its buffers
to tracemalloc) and the growth of the process's peak RSS during the aggregation.

    python -m benchmarks.bench_aggregation            # full: 1,000 and 10,000 learners
    python -m benchmarks.bench_aggregation --quick    # small sizes, seconds
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "aggregation.json"
METHODS = ("fedavg", "median", "baseline_mean", "baseline_median")
_NOW = datetime(2025, 1, 1, tzinfo=UTC)


def head_shapes() -> dict[str, tuple[int, ...]]:
    """Realistic delta layout: the heads of the real CurriculumNet."""
    from aivo_fl.ml.model import build_model, head_state

    return {k: tuple(v.shape) for k, v in head_state(build_model()).items()}


def write_deltas(directory: Path, n: int, seed: int = 0) -> list[Path]:
    """A learner store as local training leaves it: <learner>/delta.safetensors + manifest.json."""
    from aivo_fl.ml.artifacts import save_artifact
    from aivo_fl.ml.cloning import DELTA_NAME

    rng = np.random.default_rng(seed)
    shapes = head_shapes()
    paths = []
    for i in range(n):
        directory_i = directory / f"learner-{i:05d}"
        tensors = {k: (0.05 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}
        save_artifact(directory_i, tensors, {"kind": "learner-clone", "learner_id": directory_i.name}, DELTA_NAME)
        paths.append(directory_i / DELTA_NAME)
    return paths


def _run_method(method: str, paths: list[Path], learners_root: Path) -> Any:
    """Returns what the caller keeps afterwards (for aivo-fl: the per-learner records it persists)."""
    from aivo_fl.ml.round.candidate import RoundState, build_candidate
    from aivo_fl.ml.round.gather import LearnerUpdate
    from aivo_fl.ml.round.options import PrivacySettings, RoundOptions

    shapes = head_shapes()
    if method.startswith("baseline"):
        # The naive way: every learner's delta in one list, then numpy over the stack.
        loaded = [load_file(str(p)) for p in paths]
        reduce = np.mean if method == "baseline_mean" else np.median
        return {k: reduce(np.stack([d[k] for d in loaded]), axis=0) for k in shapes}
    updates = [LearnerUpdate(f"l{i}", p, 150, "1.0.0", _NOW - timedelta(hours=1), 0.01) for i, p in enumerate(paths)]
    base = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    state = RoundState("1.0.0", base, ["1.0.0"], updates, learners_root)
    result = build_candidate(
        state,
        RoundOptions(strategy=method),
        PrivacySettings(enabled=False, noise_multiplier=0.0, clip_norm=1.0),
        _NOW,
        np.random.default_rng(0),
    )
    return updates, result


def _worker(method: str, directory: Path) -> dict[str, Any]:
    paths = sorted(directory.glob("*/delta.safetensors"))
    _run_method(method, paths[:3], directory)  # warm imports and caches outside the measurement
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    _run_method(method, paths, directory)
    seconds = time.perf_counter() - started
    rss_growth_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    tracemalloc.start()
    kept = _run_method(method, paths, directory)
    # What is still allocated while the output is alive: the input update records and the
    # per-learner contributions (one row each in the registry). The rest of the peak is working
    # memory, the part that must not grow with the learner count.
    retained, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del kept
    return {
        "method": method,
        "learners": len(paths),
        "seconds": seconds,
        "updates_per_second": len(paths) / seconds,
        "peak_heap_mb": peak / 2**20,
        "records_mb": retained / 2**20,
        "working_mb": (peak - retained) / 2**20,
        "rss_growth_mb": rss_growth_kb / 1024,
    }


def _measure(method: str, directory: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_aggregation", "--worker", method, str(directory)],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cohort_results(quick: bool) -> list[dict[str, Any]]:
    from benchmarks.cohort_rounds import simulate_rounds

    if quick:
        return simulate_rounds(n_learners=6, rounds=2)
    return simulate_rounds(n_learners=12, rounds=5)


def run(quick: bool = False) -> dict[str, Any]:
    sizes = (100, 1_000) if quick else (1_000, 10_000)
    shapes = head_shapes()
    rows: list[dict[str, Any]] = []
    file_bytes = 0
    with tempfile.TemporaryDirectory(prefix="bench-aggregation-") as tmp:
        for n in sizes:
            directory = Path(tmp) / str(n)
            directory.mkdir()
            file_bytes = write_deltas(directory, n)[0].stat().st_size
            rows.extend(_measure(method, directory) for method in METHODS)
    for row in rows:
        base = next(
            r
            for r in rows
            if r["learners"] == row["learners"]
            and r["method"] == ("baseline_mean" if row["method"] == "fedavg" else "baseline_median")
        )
        row["speed_vs_baseline"] = row["updates_per_second"] / base["updates_per_second"]
        row["heap_vs_baseline"] = row["peak_heap_mb"] / max(base["peak_heap_mb"], 1e-9)
    cohort = _cohort_results(quick)
    result = {
        "quick": quick,
        "head_parameters": int(sum(np.prod(s) for s in shapes.values())),
        "delta_file_bytes": file_bytes,
        "aggregation": rows,
        "cohort_rounds": cohort,
    }
    _print_table(result)
    return result


def _print_table(result: dict[str, Any]) -> None:
    print(f"Aggregation of heads-only deltas ({result['head_parameters']} float32 parameters per learner)")
    print(
        f"{'learners':>8} {'method':<16} {'upd/s':>9} {'seconds':>8} {'heap MB':>8} {'records':>8} "
        f"{'working':>8} {'RSS+ MB':>8} {'speed x':>8} {'heap x':>7}"
    )
    for r in result["aggregation"]:
        print(
            f"{r['learners']:>8} {r['method']:<16} {r['updates_per_second']:>9.0f} {r['seconds']:>8.2f} "
            f"{r['peak_heap_mb']:>8.2f} {r['records_mb']:>8.2f} {r['working_mb']:>8.2f} {r['rss_growth_mb']:>8.1f} "
            f"{r['speed_vs_baseline']:>8.2f} {r['heap_vs_baseline']:>7.3f}"
        )
    print("\nCohort rounds (primary head; 'main' is the active version after the round, on the learners' held-out")
    print("data; 'candidate' is the round's candidate on the same data; 'curric.': active version, curriculum)")
    print(
        f"{'round':>5} {'main before':>11} {'candidate':>9} {'accepted':>8} {'main':>6} {'personal':>8} "
        f"{'curric.':>7} {'epsilon':>9} {'eps total':>9}"
    )
    for r in result["cohort_rounds"]:
        print(
            f"{r['round']:>5} {r['main_accuracy_before']:>11.3f} {r['main_accuracy_after']:>9.3f} "
            f"{r['accepted']!s:>8} {r['main_accuracy_on_learners']:>6.3f} {r['personalized_accuracy']:>8.3f} "
            f"{r['curriculum_accuracy']:>7.3f} {_eps(r['epsilon_round']):>9} {_eps(r['epsilon_total']):>9}"
        )


def _eps(value: float | None) -> str:
    return "off" if value is None else f"{value:.3g}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker[0], Path(args.worker[1]))))
        return
    result = run(quick=args.quick)
    from aivo_fl.ml.artifacts import write_file_atomic

    write_file_atomic(RESULTS_PATH, (json.dumps(result, indent=2) + "\n").encode())
    print(f"\nwrote {RESULTS_PATH}")


if __name__ == "__main__":
    main()
