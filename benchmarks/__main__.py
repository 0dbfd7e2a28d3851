"""`python -m benchmarks [--quick] [NAME ...]`: every benchmark, a table each, JSON in benchmarks/results/.

Each benchmark compares against a plain baseline measured in the same run and reports the ratio:
the machines are shared and noisy, so absolute seconds are only indicative.
"""

from __future__ import annotations

import argparse
import importlib
import time

from benchmarks.report import run_and_report

BENCHMARKS = (
    "training",
    "aggregation",
    "sensor",
    "provisioning",
    "workers",
    "training_runs",
    "export",
    "local_training",
    "fl_quality",
    "privacy",
    "population",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds, not minutes)")
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(BENCHMARKS)} (default: all)")
    args = parser.parse_args()
    unknown = set(args.names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    for name in args.names or BENCHMARKS:
        started = time.perf_counter()
        print(f"\n=== benchmark: {name} ===", flush=True)
        module = importlib.import_module(f"benchmarks.bench_{name}")
        run_and_report(name, module.run, module.table, args.quick)
        print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
