"""What every benchmark shares: the machine it ran on, its table, its JSON, its command line.

A benchmark module defines ``run(quick: bool) -> dict`` (measuring against a plain baseline in the
same run) and ``table(result) -> str``; ``python -m benchmarks NAME`` or ``python -m
benchmarks.bench_NAME`` runs it, prints the table with the machine's load beside it, and writes
``benchmarks/results/NAME.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """CPUs this process may use, the load average now, and this process's peak resident memory."""
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        # Linux reports ru_maxrss in KiB.
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def machine_line(state: dict[str, Any]) -> str:
    load = state["load_average"]
    return f"{state['cpus']} CPUs, load average {load[0]:.1f} (1 min), peak RSS {state['peak_rss_mb']:.0f} MB"


@dataclass(frozen=True)
class Column:
    """One column: the row's key, its header, a format for its value ("-" when absent or NaN)."""

    key: str
    header: str
    fmt: str = "{}"
    width: int = 0  # 0: as wide as the header or the widest value

    def cell(self, row: dict[str, Any]) -> str:
        value = row.get(self.key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return self.fmt.format(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[Column], title: str | None = None) -> str:
    """Rows as a right-aligned text table (the first column left-aligned)."""
    cells = [[c.cell(r) for c in columns] for r in rows]
    widths = [
        max(c.width, len(c.header), *(len(line[i]) for line in cells)) if cells else max(c.width, len(c.header))
        for i, c in enumerate(columns)
    ]

    def line(values: Sequence[str]) -> str:
        first, *rest = values
        return " ".join([first.ljust(widths[0]), *(v.rjust(w) for v, w in zip(rest, widths[1:], strict=True))])

    out = [title] if title else []
    out += [line([c.header for c in columns]), "-" * (sum(widths) + len(widths) - 1)]
    out += [line(values) for values in cells]
    return "\n".join(out)


def write_result(name: str, result: dict[str, Any]) -> Path:
    """``benchmarks/results/NAME.json``, written whole (a crash leaves the previous one)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def run_and_report(
    name: str, run: Callable[..., dict[str, Any]], table_of: Callable[[dict[str, Any]], str], quick: bool
) -> dict[str, Any]:
    """Run one benchmark, stamp it with the machine's state, print its table, write its JSON."""
    result = run(quick=quick)
    result = {"benchmark": name, "quick": quick, **result, "machine": machine()}
    print(table_of(result))
    print(machine_line(result["machine"]))
    print(f"wrote {write_result(name, result)}")
    return result


def cli(
    name: str, run: Callable[..., dict[str, Any]], table_of: Callable[[dict[str, Any]], str], doc: str | None
) -> None:
    """``python -m benchmarks.bench_NAME [--quick]``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds, not minutes)")
    run_and_report(name, run, table_of, parser.parse_args().quick)
