"""The aggregation benchmark's baselines and its measuring harness, in plain numpy + safetensors.

No aivo_fl import: the Flower baselines run this module under a separate interpreter
(``.venv-flower``, where ``flwr`` is installed: its pins conflict with Dagster's), on the very same
files. Each baseline loads every learner's delta into memory first, the way a Flower server holds
every client's reply before aggregating:

* ``flower_aggregate``: ``flwr.server.strategy.aggregate.aggregate`` over (ndarrays, num_examples),
  what Flower's classic ``FedAvg`` calls;
* ``flower_fedavg``: ``aggregate_arrayrecords`` over ``RecordDict`` replies (an ``ArrayRecord`` of
  ``Array`` plus a ``MetricRecord`` of ``num-examples``), what ``flwr.serverapp.strategy.FedAvg``
  (the Message API, current in flwr 1.42) calls;
* ``numpy_mean``: a sample-weighted ``np.average`` over the stacked deltas;
* ``read_files``: only open and read each learner's clone file (no parsing, no checks).

A learner's update is the ``update.*`` tensors of its one clone file (``clone.safetensors``, see
``aivo_fl/ml/store/clone_file.py``); the baselines load those with ``safetensors`` as any reader would.

    python benchmarks/aggregation_baselines.py METHOD INDEX.json heap|time   # prints one JSON line
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

CLONE_NAME = "clone.safetensors"  # aivo_fl.ml.store.clone_file.CLONE_NAME (no aivo_fl import here)
UPDATE = "update."

Offered = list[tuple[Path, int]]  # (clone file, num_samples) per learner


def read_index(index: Path) -> Offered:
    """The learners offered to the round: written once by the benchmark, read outside the timing."""
    data = json.loads(index.read_text())
    root = Path(data["learners_root"])
    return [(root / learner / CLONE_NAME, samples) for learner, samples in data["learners"]]


def _update(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return {name[len(UPDATE) :]: value for name, value in load_file(str(path)).items() if name.startswith(UPDATE)}


def _load(path: Path) -> list[np.ndarray]:
    tensors = _update(path)
    return [tensors[name] for name in sorted(tensors)]


def read_files(offered: Offered) -> int:
    total = 0
    for path, _ in offered:
        with open(path, "rb") as fh:
            total += len(fh.read())
    return total


def numpy_mean(offered: Offered) -> list[np.ndarray]:
    loaded = [_load(path) for path, _ in offered]
    weights = np.asarray([n for _, n in offered], dtype=np.float64)
    return [np.average(np.stack(layer), axis=0, weights=weights) for layer in zip(*loaded, strict=True)]


def flower_aggregate(offered: Offered) -> list[np.ndarray]:
    from flwr.server.strategy.aggregate import aggregate

    results = [(_load(path), n) for path, n in offered]
    return aggregate(results)


def flower_fedavg(offered: Offered) -> Any:
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    def reply(path: Path, n: int) -> RecordDict:
        arrays = ArrayRecord({name: Array(value) for name, value in sorted(_update(path).items())})
        return RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": n})})

    replies = [reply(path, n) for path, n in offered]
    return aggregate_arrayrecords(replies, "num-examples")


METHODS: dict[str, Callable[[Offered], Any]] = {
    "read_files": read_files,
    "numpy_mean": numpy_mean,
    "flower_aggregate": flower_aggregate,
    "flower_fedavg": flower_fedavg,
}


def measure(name: str, learners: int, run: Callable[[int | None], Any], heap: bool = True) -> dict[str, Any]:
    """Time ``run(None)`` (every learner); with ``heap``, run it again under tracemalloc for its peak.

    ``run(3)`` first warms imports and caches outside the measurement. The RSS figure is the growth
    of the process's peak RSS during the timed run (what the kernel really had to give it).
    """
    run(3)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    run(None)
    seconds = time.perf_counter() - started
    rss_growth_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    result = {"method": name, "learners": learners, "seconds": seconds, "rss_growth_mb": rss_growth_kb / 1024}
    if heap:
        tracemalloc.start()
        kept = run(None)
        retained, peak = tracemalloc.get_traced_memory()  # retained: what the result still holds
        tracemalloc.stop()
        del kept
        result |= {"peak_heap_mb": peak / 2**20, "retained_mb": retained / 2**20}
    return result


def main(argv: list[str]) -> None:
    method, index, mode = argv
    offered = read_index(Path(index))
    versions = {"numpy": np.__version__}
    if method.startswith("flower"):
        import flwr

        versions["flwr"] = flwr.__version__
    result = measure(method, len(offered), lambda n: METHODS[method](offered[:n] if n else offered), mode == "heap")
    print(json.dumps({**result, "versions": versions, "python": sys.executable, "pid": os.getpid()}))


if __name__ == "__main__":
    main(sys.argv[1:])
