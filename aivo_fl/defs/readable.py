"""Metadata as a person reads it in the UI: accuracies in percent with two decimals, losses to four.

Still numbers (not text), so the UI keeps plotting them across materializations.
"""


def percent(fraction: float) -> float:
    """0.656499981880188 -> 65.65 (shown under a `_pct` key)."""
    return round(100 * float(fraction), 2)


def rounded(value: float, digits: int = 4) -> float:
    return round(float(value), digits)
