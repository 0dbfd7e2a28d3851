"""Aggregation from disk at 10,000 and 100,000 learners: aivo-fl's round against Flower, side by side.

The learner store is written once per size, as local training leaves it (a copy-on-write clone by
``clone_for_learner``, then the one clone file with the heads, the update and the manifest with the
session's record, the bytes of ``train_learner``), and every variant reads those same files, each in its own subprocess
(independent memory figures):

* ``aivo-fl, DP on``: ``build_candidate`` with the product's privacy defaults (fedavg, clip 1.0,
  noise multiplier 0.1, sample rate 1): every file read once under every check (inside the store,
  no link, regular file, size cap and SHA-256 from the manifest, safetensors names, dtypes and
  shapes, finite values, norm), clipped, weighted and folded into the running sum; accounting,
  noise and the server step included. ``aivo-fl, DP off``: the same without clipping and noise.
* Flower 1.42 (in ``.venv-flower``, created on first use: flwr's pins conflict with Dagster's):
  every delta loaded into memory, then Flower's own weighted average (see
  ``benchmarks/aggregation_baselines.py``); plain numpy the same way; and just reading the files.

    python -m benchmarks aggregation            # 10,000 and 100,000 learners (about 10 minutes)
    python -m benchmarks aggregation --quick    # 1,000 learners
    python -m benchmarks.bench_aggregation --sizes 10000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.aggregation_baselines import measure, read_index
from benchmarks.report import Column, run_and_report
from benchmarks.report import table as report_table

ROOT = Path(__file__).resolve().parent.parent
FLOWER_VENV = ROOT / ".venv-flower"
FLWR_VERSION = "1.42.0"
_NOW = datetime(2025, 1, 1, tzinfo=UTC)
VERSION = "1.0.0"
OURS = ("aivo_dp", "aivo_no_dp")
BASELINES = ("read_files", "numpy_mean")
FLOWER = ("flower_aggregate", "flower_fedavg")
LABELS = {
    "aivo_dp": "aivo-fl fedavg, DP on (defaults)",
    "aivo_no_dp": "aivo-fl fedavg, DP off",
    "flower_aggregate": "Flower: load all + aggregate()",
    "flower_fedavg": "Flower: load all + FedAvg's aggregate_arrayrecords()",
    "numpy_mean": "numpy: load all + np.average",
    "read_files": "just read the files (one per learner)",
}


def write_learners(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` learners who trained once, as local training leaves their folders; returns the index."""
    from aivo_fl.ml.model import build_model, head_state
    from aivo_fl.ml.store.artifacts import save_main_model
    from aivo_fl.ml.store.cloning import clone_for_learner

    main_root, learners_root = root / "main", root / "learners"
    model = build_model(seed)
    save_main_model(main_root, VERSION, model, {"benchmark": True}, seed)
    heads = head_state(model)
    rng = np.random.default_rng(seed)
    learners = []
    for i in range(n):
        learner = f"learner-{i:06d}"
        clone_for_learner(main_root, learners_root, learner, VERSION)
        delta = {k: (0.05 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in heads.items()}
        samples = int(rng.integers(4, 40))
        _write_trained(learners_root / learner, learner, heads, delta, samples)
        learners.append((learner, samples))
    index = root / "offered.json"
    index.write_text(json.dumps({"learners_root": str(learners_root), "learners": learners}))
    return index


def _write_trained(
    directory: Path, learner: str, start: dict[str, np.ndarray], delta: dict[str, np.ndarray], samples: int
) -> None:
    """The file ``train_learner`` leaves (``save_trained_clone``: heads, update and the manifest with
    the session's record in one file), the same bytes, without the batch's flush (which only makes
    them durable)."""
    from aivo_fl.ml.store.clone_file import CLONE_NAME
    from aivo_fl.ml.store.cloning import save_trained_clone
    from aivo_fl.ml.store.safe_files import MANIFEST_NAME
    from aivo_fl.ml.training.clones import TrainingSessionResult

    heads = {k: start[k] + delta[k] for k in start}
    clone = json.loads((directory / MANIFEST_NAME).read_bytes())
    session = TrainingSessionResult(
        learner, VERSION, None, samples, 5, 1.1, 0.5, 1.0, 0.55, 0.5, directory / CLONE_NAME,
        _NOW - timedelta(hours=2), _NOW - timedelta(hours=1), 0.2,
    )  # fmt: skip
    save_trained_clone(directory, heads, delta, {**clone, "last_training": session.to_json()}, sync=False)


def _round_of(index: Path, dp: bool) -> Callable[[int | None], Any]:
    """A fedavg round over the first ``limit`` offered learners (all: None). The offered rows (the
    registry's, in production) are built here, outside the timing, as Flower's replies are given."""
    from aivo_fl.config import Settings
    from aivo_fl.ml.round.candidate import RoundState, build_candidate
    from aivo_fl.ml.round.gather import LearnerUpdate
    from aivo_fl.ml.round.options import PrivacySettings, RoundOptions

    offered = read_index(index)
    privacy = Settings(_env_file=None).privacy()  # type: ignore[call-arg]
    if not dp:
        privacy = PrivacySettings(enabled=False, noise_multiplier=0.0, clip_norm=privacy.clip_norm)
    updates = [
        LearnerUpdate(path.parent.name, path, n, VERSION, _NOW - timedelta(hours=1), 0.05) for path, n in offered
    ]
    heads = {k: np.zeros(s, np.float32) for k, s in _head_shapes().items()}
    root = offered[0][0].parent.parent

    def run(limit: int | None) -> Any:
        state = RoundState(VERSION, heads, [VERSION], updates[:limit] if limit else updates, root)
        return build_candidate(state, RoundOptions(), privacy, _NOW, np.random.default_rng(0))

    return run


def _head_shapes() -> dict[str, tuple[int, ...]]:
    from aivo_fl.ml.model import build_model, head_state

    return {k: tuple(v.shape) for k, v in head_state(build_model()).items()}


def _worker(method: str, index: Path, mode: str) -> dict[str, Any]:
    return measure(method, len(read_index(index)), _round_of(index, method == "aivo_dp"), mode == "heap")


def flower_python() -> Path:
    """``.venv-flower``'s interpreter, with flwr installed on first use (numpy and safetensors pinned
    to this interpreter's versions, so both sides run the same numpy)."""
    python = FLOWER_VENV / "bin" / "python"
    stamp = FLOWER_VENV / f".flwr-{FLWR_VERSION}"
    if stamp.exists():
        return python
    import safetensors

    print(f"setting up {FLOWER_VENV} (flwr=={FLWR_VERSION}) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(FLOWER_VENV)], check=True)
    packages = [f"flwr=={FLWR_VERSION}", f"numpy=={np.__version__}", f"safetensors=={safetensors.__version__}"]
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *packages], check=True)
    stamp.touch()
    return python


def _measure(method: str, index: Path, python: Path | None = None, mode: str = "time") -> dict[str, Any]:
    if method in OURS:
        command = [sys.executable, "-m", "benchmarks.bench_aggregation", "--worker", method, str(index), mode]
    else:
        command = [str(python or sys.executable), str(ROOT / "benchmarks" / "aggregation_baselines.py"), method]
        command += [str(index), mode]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _size(n: int, tmp: Path, python: Path | None, repeats: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every variant on the same ``n`` learners; ``repeats`` rounds interleaving the variants (the
    machine is shared: each keeps its fastest round), the first also measuring the heap."""
    root = tmp / str(n)
    started = time.perf_counter()
    index = write_learners(root, n)
    setup = {"learners": n, "write_seconds": time.perf_counter() - started}
    _measure("read_files", index)  # warm the page cache: every variant reads warm files
    methods = [*BASELINES, *OURS, *(FLOWER if python else ())]
    rows = {m: _measure(m, index, python, "heap") for m in methods}
    for _ in range(repeats - 1):
        for m in methods:
            again = _measure(m, index, python)
            rows[m]["seconds"] = min(rows[m]["seconds"], again["seconds"])
    for row in rows.values():
        row["updates_per_second"] = n / row["seconds"]
        row["repeats"] = repeats
    shutil.rmtree(root)
    return list(rows.values()), setup


def _ratios(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        same = {r["method"]: r for r in rows if r["learners"] == row["learners"]}
        flower = [same[m]["updates_per_second"] for m in FLOWER if m in same]
        row["vs_flower"] = row["updates_per_second"] / max(flower) if flower else None  # the faster Flower
        row["vs_read_files"] = row["updates_per_second"] / same["read_files"]["updates_per_second"]


def run(quick: bool = False, sizes: list[int] | None = None) -> dict[str, Any]:
    sizes = sizes or ([1_000] if quick else [10_000, 100_000])
    try:
        python: Path | None = flower_python()
        flower_error = None
    except (subprocess.CalledProcessError, OSError) as exc:
        python, flower_error = None, f"Flower baseline skipped: could not set up {FLOWER_VENV}: {exc}"
        print(flower_error)
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    setups = []
    with tempfile.TemporaryDirectory(prefix="bench-aggregation-") as tmp:
        for n in sizes:
            size_rows, setup = _size(n, Path(tmp), python, repeats=2 if quick else 3)
            rows += size_rows
            setups.append(setup)
    _ratios(rows)
    result = {
        "cohort_rounds": _cohort_results(quick),
        "head_parameters": int(sum(np.prod(s) for s in _head_shapes().values())),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "cpus": len(os.sched_getaffinity(0)),
        "flower_error": flower_error,
        "setup": setups,
        "aggregation": rows,
    }
    return result


def _cohort_results(quick: bool) -> list[dict[str, Any]]:
    from aivo_fl.ml.simulation.cohort import simulate_rounds

    return simulate_rounds(n_learners=6, rounds=2) if quick else simulate_rounds(n_learners=12, rounds=5)


COLUMNS = (
    Column("learners", "learners", "{:,}"),
    Column("label", "method"),
    Column("updates_per_second", "upd/s", "{:,.0f}"),
    Column("seconds", "seconds", "{:.2f}"),
    Column("peak_heap_mb", "heap MB", "{:.1f}"),
    Column("rss_growth_mb", "RSS+ MB", "{:.1f}"),
    Column("vs_flower", "vs Flower", "{:.2f}x"),
    Column("vs_read_files", "vs read", "{:.2f}x"),
    Column("read_time_ratio", "time / read time", "{:.2f}x"),
)
COHORT_COLUMNS = (
    Column("round", "round"),
    Column("main_accuracy_before", "main before", "{:.3f}"),
    Column("main_accuracy_after", "candidate", "{:.3f}"),
    Column("accepted", "accepted"),
    Column("main_accuracy_on_learners", "main", "{:.3f}"),
    Column("personalized_accuracy", "personal", "{:.3f}"),
    Column("curriculum_accuracy", "curric.", "{:.3f}"),
    Column("epsilon_round", "epsilon", "{:.3g}"),
    Column("epsilon_total", "eps total", "{:.3g}"),
)


def table(result: dict[str, Any]) -> str:
    rows = [
        {**r, "label": LABELS[r["method"]], "read_time_ratio": 1 / r["vs_read_files"]} for r in result["aggregation"]
    ]
    before, after = result["load_average_before"], result["load_average_after"]
    title = f"Aggregation from disk ({result['head_parameters']} float32 parameters per update)"
    out = [report_table(rows, COLUMNS, title)]
    out.append(f"load average {before[0]:.1f} before, {after[0]:.1f} after, on {result['cpus']} CPUs")
    out.append(
        "\nCohort rounds (primary head; 'main' is the active version after the round, on the learners' held-out\n"
        "data; 'candidate' is the round's candidate on the same data; 'curric.': active version, curriculum;\n"
        "epsilon '-': DP off)"
    )
    out.append(report_table(result["cohort_rounds"], COHORT_COLUMNS))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", type=int, nargs="+", help="learner counts (default 10,000 and 100,000)")
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "INDEX", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker[0], Path(args.worker[1]), args.worker[2])))
        return
    run_and_report("aggregation", partial(run, sizes=args.sizes), table, args.quick)


if __name__ == "__main__":
    main()
